"""registry: the names a registered version is served under."""

from __future__ import annotations

import pytest

from bigbertha.core.errors import ConfigError
from bigbertha.models import registry


@pytest.mark.parametrize(
    ("model", "version", "expected"),
    [("bigbertha-llm", "3", "bigbertha-llm-v3"), ("My_LLM.v2", "12", "my-llm-v2-v12")],
)
def test_served_names_are_safe_path_and_dns_labels(model: str, version: str, expected: str) -> None:
    assert registry.served_name(model, version) == expected


def test_a_name_that_cannot_be_served_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="no valid served name"):
        registry.served_name("x" * 80, "1")

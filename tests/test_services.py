"""The harness's rules: one definition of "in CI", and no skip that could hide a failure there.

A test that cannot find a prerequisite (a binary, a tool, ../shared) calls `tests.services.missing`,
which skips on a developer's machine and fails in CI; any other skip is a test that passes in CI
without running, so none is allowed anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.services import in_ci

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "services.py"
PYTHON = [
    p
    for top in ("src", "tests", "bench", "ci")
    for p in (ROOT / top).rglob("*.py")
    if "node_modules" not in p.parts
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("TRUE", True), ("yes", True), (" on ", True)]
    + [("false", False), ("0", False), ("", False), ("no", False), ("False", False)],
)
def test_ci_is_a_true_word_and_ci_false_is_not_ci(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected
    assert in_ci({}) is False


def _hits(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(
        f"{p.relative_to(ROOT)}:{n}"
        for p in PYTHON
        if p != HARNESS
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if regex.search(line)
    )


def test_ci_is_read_in_one_place() -> None:
    reads = _hits(r"""(environ\b.{0,8}|getenv\()\(?\[?\s*["']CI["']""")
    assert not reads, f"read CI through tests.services.in_ci/IN_CI, not again at {reads}"


def test_no_skip_outside_the_missing_prerequisite_rule() -> None:
    skips = _hits(r"pytest\.(skip\(|importorskip\(|mark\.skip)")
    assert not skips, f"a skip passes in CI without running; use tests.services.missing: {skips}"

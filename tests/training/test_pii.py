"""Presidio offline, pattern recognizers only: what is redacted, what is left, idempotence."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from bigbertha.training import pii
from bigbertha.training.data import _redactor


def test_the_analyzer_needs_no_model_and_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Presidio tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    text, counts = _redactor().redact_text("mail ops@corp.internal about 10.0.0.7")
    assert text == "mail <EMAIL_ADDRESS> about <IP_ADDRESS>"
    assert counts == {"EMAIL_ADDRESS": 1, "IP_ADDRESS": 1}


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("card 4111-1111-1111-1112 fails Luhn", "4111-1111-1111-1112"),
        ("version 2.13.0 at 12:30", "2.13.0"),
        ("id 123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
        ("path /usr/local/lib/python3.11/site-packages/x", "/usr/local/lib/python3.11"),
        ("CamelCaseIdentifierWithoutAnyDigitsInIt", "CamelCaseIdentifierWithoutAnyDigitsInIt"),
        ("max_new_tokens is 256", "256"),
        ("see redis://redis:6379/0 and http://localhost:8080/x", "redis://redis:6379/0"),
        ("look at it dot by dot", "look at it dot by dot"),
        ("release 2024.01.15.1, build 1234.5678.9012, 3/4 passed", "1234.5678.9012, 3/4"),
        ('see "transformers.AutoModelForCausalLM"', "transformers.AutoModelForCausalLM"),
        ("listen on 0.0.0.0 port 6379, 30 of 100 runs", "port 6379, 30 of 100"),
    ],
)
def test_ordinary_technical_text_is_left_alone(text: str, kept: str) -> None:
    assert kept in _redactor().redact_text(text)[0]


def test_a_known_key_format_wins_over_the_entropy_rule_and_redaction_is_idempotent() -> None:
    text, counts = _redactor().redact_text("use ghp_1234567890abcdefghijABCDEFGHIJ123456 now")
    assert (text, dict(counts)) == ("use <GITHUB_TOKEN> now", {"GITHUB_TOKEN": 1})
    again, more = _redactor().redact_text(text)
    assert (again, dict(more)) == (text, {})


def test_high_entropy_rule() -> None:
    assert pii.looks_random("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert pii.looks_random("9c1004b2f1e8a7d6c5b4a3928170f6e5d4c3b2a1")  # hex
    assert not pii.looks_random("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1A")
    assert not pii.looks_random("00000000000000000000000000000000")


@pytest.mark.parametrize(
    ("text", "secret", "entity"),
    [
        ("connect to redis://:s3cretpw@redis:6379/0", "s3cretpw", "URL_PASSWORD"),
        ("git clone https://deploy:Hunter2pass@gitlab/group/repo", "Hunter2pass", "URL_PASSWORD"),
        ("write to john.doe at example dot com", "john.doe", "EMAIL_ADDRESS"),
        ("write to john [at] example [dot] com", "john", "EMAIL_ADDRESS"),
        ("write to john%40example.com", "john", "EMAIL_ADDRESS"),
        ("card 4111.1111.1111.1111", "4111.1111", "CREDIT_CARD"),
        ("card 4111/1111/1111/1111", "4111/1111", "CREDIT_CARD"),
        ("my ssn is 219-09-9999", "219-09-9999", "US_SSN"),
        ("my ssn is 123 45 6789", "123 45 6789", "US_SSN"),
        ('password = "Zx9kQ2mV7pL4tR8wY3nB6cH1jF5d"', "Zx9kQ2mV7pL4", "SECRET_VALUE"),
        ('DB_PASSWORD="Zx9kQ2mV7pL4tR8wY3nB6cH1jF5d"', "Zx9kQ2mV7pL4", "SECRET_VALUE"),
        ('creds = "Zx9kQ2mV7pL4tR8wY3nB6cH1jF5d"', "Zx9kQ2mV7pL4", "HIGH_ENTROPY_SECRET"),
        ("card 4111 1111 1111 1111, CVV: 837", "837", "CARD_SECURITY_CODE"),
        ("card 4111 1111 1111 1111 expires 11/29", "11/29", "CARD_EXPIRY"),
        ("card 4111-1111-1111-1111 11/29 837", "837", "CARD_SECURITY_CODE"),
    ],
)
def test_the_second_probes_cases_are_redacted(text: str, secret: str, entity: str) -> None:
    """Issue 25 item 3: each of these reached the training file before."""
    redacted, counts = _redactor().redact_text(text)
    assert secret not in redacted and secret.replace(" ", "") not in redacted.replace(" ", "")
    assert counts[entity] == 1, (redacted, counts)
    assert _redactor().redact_text(redacted) == (redacted, {})  # idempotent

"""Untrusted JSON bodies: strict UTF-8, no lone surrogates, bounded nesting, an object on top."""

from __future__ import annotations

import time

import pytest

from bigbertha.core import payloads
from bigbertha.core.errors import InputError


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\xff\xfe{}", "body: not valid UTF-8 (byte 0xff at offset 0)"),
        (b'{"q": "caf\xe9"}', "body: not valid UTF-8 (byte 0xe9 at offset 10)"),
        (b'{"q": "\\ud800"}', "body: contains an unpaired surrogate"),
        (b'{"q": ["\\udfff x"]}', "body: contains an unpaired surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "body: JSON nested 100000 deep; at most 32"),
        (b'{"a":' * 33 + b"1" + b"}" * 33, "body: JSON nested 33 deep"),
        (b"[1,2]", "body: must be a JSON object, not list"),
        (b"null", "body: must be a JSON object, not NoneType"),
        (b'"text"', "body: must be a JSON object, not str"),
        (b'{"a": NaN}', "body: not valid JSON (NaN is not JSON)"),
        (b'{"a": -Infinity}', "body: not valid JSON (-Infinity is not JSON)"),
        (b"{not json", "body: not valid JSON"),
        (b"", "body: not valid JSON"),
    ],
)
def test_bad_bodies_are_one_line_input_errors(raw: bytes, error: str) -> None:
    with pytest.raises(InputError) as info:
        payloads.json_object(raw)
    assert str(info.value).startswith(error)
    assert "\n" not in str(info.value)


def test_good_bodies_parse_and_brackets_inside_strings_do_not_nest() -> None:
    assert payloads.json_object(b'{"q": "[[[[{{{{ \\" ]]", "n": [1, {"a": []}]}') == {
        "q": '[[[[{{{{ " ]]',
        "n": [1, {"a": []}],
    }
    assert payloads.json_object('{"q": "Grüße 🤖 \\ud83e\\udd16"}'.encode()) == {"q": "Grüße 🤖 🤖"}
    assert payloads.nesting_depth(b'{"a": "[[[["}') == 1
    assert payloads.nesting_depth(b'{"a": {"b": [[]]}}') == 4
    assert payloads.json_object(b'{"a":' * 32 + b"1" + b"}" * 32, what="x")


def test_the_depth_scan_is_linear() -> None:
    """A megabyte of string or of brackets is scanned without recursion or backtracking."""
    for raw in (b'{"q": "' + b"x" * 1_000_000 + b'"}', b'"' + b"x\\" * 500_000, b"[" * 1_000_000):
        started = time.perf_counter()
        payloads.nesting_depth(raw)
        assert time.perf_counter() - started < 5  # generous: a quadratic scan takes minutes

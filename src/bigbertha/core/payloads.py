"""Untrusted JSON request bodies, decoded strictly: every HTTP entry point reads them here.

`json_object(raw)` accepts only what a well-behaved client sends: UTF-8 (no invalid bytes, no
escaped lone surrogates), JSON without NaN/Infinity, nested at most `MAX_DEPTH` deep, and an
object at the top. Anything else is an `InputError` with one line naming what is wrong, which
the servers answer with 400: never a 500, a RecursionError, or a failure further in (a lone
surrogate used to reach the Redis client and be logged as "Redis unreachable").
"""

from __future__ import annotations

import json
import re
from typing import Any

from bigbertha.core.errors import InputError

#: Deeper nesting is refused before parsing: no body we read nests beyond 8 (MinIO's records).
MAX_DEPTH = 32

# Strings (escapes included) are skipped whole; what is left are the brackets that nest.
_NESTING = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def nesting_depth(raw: bytes) -> int:
    """How deep `raw`'s arrays and objects nest (linear time, no recursion)."""
    depth = deepest = 0
    for match in _NESTING.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(raw: bytes, *, what: str = "body", max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in `raw`; InputError ("<what>: <reason>") for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise InputError(f"{what}: JSON nested {depth} deep; at most {max_depth}")
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise InputError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: must be a JSON object, not {type(data).__name__}")
    try:
        # "\ud800" is valid JSON but no UTF-8 text: it would fail later, wherever it is written.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what}: contains an unpaired surrogate ({exc.reason})") from None
    return data

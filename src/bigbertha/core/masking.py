"""Credentials inside URIs, masked wherever text is printed or logged: one function, one rule.

Settings hold URIs that may carry a password (`redis://:pw@redis:6379/0`,
`https://user:pw@mlflow/`, `...?token=...`), and libraries quote them in their exceptions.
`mask_credentials` replaces the password of a URI's userinfo (RFC 3986 section 3.2.1, the part
before ``@``) and the value of a query parameter named like a credential with ``***``,
anywhere in a text: one URI, an error line or a formatted log record. The user name and
host stay readable, so a message still says which server was meant.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ : userinfo never holds an unescaped "/", "@", quote or space
# (RFC 3986: unreserved, pct-encoded, sub-delims and ":"), so the match stays inside one URI.
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"'<>]*:)[^\s/@\"'<>]+(?=@)")
# ?password=... / &access_key=... / ;token=... (also aws_secret_access_key, X-Amz-Signature).
_QUERY = re.compile(
    r"([?&;][\w.-]*(?:passw(?:or)?d|pwd|token|secret|access[_-]?key|api[_-]?key|signature|"
    r"credential)[\w.-]*=)[^&;#\s\"'<>]+",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """`text` with every URI's password and credential-named query values shown as ``***``."""
    if "://" not in text and "=" not in text:
        return text  # the common case on a hot path (log records)
    return _QUERY.sub(rf"\1{MASK}", _USERINFO.sub(rf"\1{MASK}", text))

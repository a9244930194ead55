"""Sign-on: who a request comes from, when ``chat.auth.enabled``.

The UI signs people in with Streamlit's own OpenID Connect support (``st.login``, Authlib's
authorization-code flow with PKCE, a signed cookie): `streamlit_secrets` writes the ``[auth]``
section it reads into a private file at server start, from settings (the chart fills them from
Secrets), so no secret is ever in a ConfigMap or on the command line.

The JSON API takes the same provider's JWTs as bearer tokens, the way kube-apiserver's OIDC
authenticator does: the signature against the issuer's published keys (its discovery
document's ``jwks_uri``, cached, fetched again for a key id it has not seen), ``iss`` the
issuer, ``aud`` the client id or one of ``chat.auth.audiences`` (scripts' service accounts),
``exp`` in the future. The person is the token's ``sub`` under its issuer, the same subject the
UI's sign-on gives (`subject`), so a person is one pseudonym in the UI and the API.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.chat.limits import Refused
from bigbertha.core.errors import ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from bigbertha.core.settings import AuthSettings

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16_384  # a JWT bigger than this is refused unread
# Asymmetric algorithms only: an HS256 token would be signed with a key the provider shares.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
REFRESH_MIN_SECONDS = 30.0  # an unknown key id fetches the keys again at most this often
KEYS_TTL_SECONDS = 3600.0  # and they are fetched again this often regardless (key rotation)


class Unauthenticated(Refused):
    """No usable bearer token: 401, its message says which check failed."""

    status = 401
    reason = "unauthenticated"


def subject(issuer: str, sub: str) -> str:
    """What a signed-in person's pseudonym is made from: the subject under its issuer."""
    return f"oidc:{issuer.rstrip('/')}:{sub}"


def streamlit_secrets(auth: AuthSettings) -> Path:
    """A secrets.toml with Streamlit's ``[auth]`` section, readable by this user only, for the
    server's ``secrets.files`` option."""
    assert auth.issuer and auth.client_id and auth.client_secret and auth.cookie_secret
    fields = {
        "redirect_uri": auth.redirect_uri,
        "cookie_secret": auth.cookie_secret.get_secret_value(),
        "client_id": auth.client_id,
        "client_secret": auth.client_secret.get_secret_value(),
        "server_metadata_url": discovery_url(auth.issuer),
    }
    # JSON strings are TOML basic strings (same escapes), so a value cannot break the file.
    text = "[auth]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    folder = Path(tempfile.mkdtemp(prefix="bigbertha-signon-"))  # 0700
    path = folder / "secrets.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class BearerVerifier:
    """Checks the API's bearer tokens against the provider's keys; thread-safe."""

    def __init__(self, auth: AuthSettings) -> None:
        if not auth.issuer or not auth.client_id:
            raise ConfigError("chat.auth: bearer tokens need issuer and client_id")
        self.issuer = auth.issuer
        self.audiences = [auth.client_id, *auth.audiences]
        self.timeout = auth.timeout_seconds
        self._lock = threading.Lock()
        self._keys: Any = None
        self._fetched = 0.0

    def person_subject(self, authorization: str | None) -> str:
        """The subject of a request's ``Authorization`` header; `Unauthenticated` with the
        reason when it is missing or fails a check, `ServiceUnavailable` when the provider's
        keys cannot be fetched."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        if not authorization:
            raise Unauthenticated("Authorization: missing; send 'Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization: not a bearer token")
        token = token.strip()
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"bearer token: {len(token)} bytes; at most {MAX_TOKEN_BYTES}")
        try:
            decoded = jwt.decode(token, self._key_set(token), algorithms=ALGORITHMS)
            claims = jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                sub={"essential": True},
                exp={"essential": True},
            )
            claims.validate(decoded.claims)
        except JoseError as exc:
            raise Unauthenticated(f"bearer token: {exc.error}: {exc.description or exc}") from None
        except (ValueError, TypeError) as exc:  # not a JWT at all
            raise Unauthenticated(f"bearer token: not a JWT ({exc})") from None
        aud = decoded.claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        if not set(audiences) & set(self.audiences):
            raise Unauthenticated(f"bearer token: audience {audiences} is not this chatbot's")
        return subject(self.issuer, str(decoded.claims["sub"]))

    def _key_set(self, token: str) -> Any:
        from joserfc.jwk import KeySet
        from joserfc.jws import extract_compact

        try:
            kid = extract_compact(token.encode()).headers().get("kid")
        except Exception:  # joserfc raises several kinds for garbage: all mean "not a JWT"
            raise Unauthenticated("bearer token: not a JWT") from None
        with self._lock:
            now = time.monotonic()
            stale = self._keys is None or now - self._fetched > KEYS_TTL_SECONDS
            unknown = (
                kid is not None
                and self._keys is not None
                and not any(key.kid == kid for key in self._keys.keys)
            )
            if stale or (unknown and now - self._fetched > REFRESH_MIN_SECONDS):
                self._keys = KeySet.import_key_set(self._fetch_keys())  # type: ignore[arg-type]
                self._fetched = now
            return self._keys

    def _fetch_keys(self) -> dict[str, Any]:
        metadata = self._get(discovery_url(self.issuer))
        if metadata.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
            raise ServiceUnavailable(
                f"chat.auth.issuer {self.issuer!r}: the provider says its issuer is "
                f"{metadata.get('issuer')!r}"
            )
        return self._get(str(metadata["jwks_uri"]))

    def _get(self, url: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310
                body = json.loads(response.read(1_000_001))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ServiceUnavailable(f"sign-on provider {url}: {exc}") from exc
        if not isinstance(body, dict):
            raise ServiceUnavailable(f"sign-on provider {url}: not a JSON object")
        return body

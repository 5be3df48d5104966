"""Who may call the ops listener (api/ops.py). VTEX's credentials open nothing there.

The rules, first match wins:

1. `GET /healthz` is open, as on the VTEX port.
2. `/codec/*`: `Authorization: Bearer <OPS_TOKEN>` when OPS_TOKEN is set (the `temporal` CLI's
   `--codec-auth`); else, when CODEC_JWKS_URL is set, a bearer JWT signed by a key of that JWKS,
   unexpired, for CODEC_JWT_AUDIENCE and (when set) from CODEC_JWT_ISSUER (the Temporal UI's
   OIDC access token); else, when OPS_TOKEN is set and CODEC_OPEN is not, 401; else open: only
   where the ops listener listens protects it, and `python -m api` says so at start. CODEC_OPEN
   is for a Temporal UI without a login, which can send no token (docker-compose.yml).
3. Every other route (`/metrics`, `/docs`, `/openapi.json`, the operators' actions
   `/orders/...`, the seller's price and stock changes `/catalog/changes`): `Bearer <OPS_TOKEN>`
   when OPS_TOKEN is set, else open. A JWT does not open these.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from api.errors import ApiError
from config import Settings

log = logging.getLogger("api")

# Signatures by a key of the IdP's JWKS only: never HS* (whose "key" would be the public key
# itself, anyone's to sign with) or "none".
# How long the codec answers 503 at once after the JWKS could not be read.
JWKS_RETRY_SECONDS = 10.0
# Checks waiting for the JWKS beyond this answer 503 at once rather than queue.
MAX_WAITING_CHECKS = 8
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


def unauthorized(message: str) -> ApiError:
    """The 401 of a missing or refused bearer token."""
    return ApiError(401, "Unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class JwtVerifier:
    """Checks a JWT against an IdP's JWKS, fetched on first use and cached (PyJWT's
    PyJWKClient: five minutes, and again when a token names a key id it does not know, at most
    every 30 s)."""

    def __init__(self, jwks_url: str, audience: str, issuer: str = "") -> None:
        """Args:
        jwks_url: The IdP's JWKS document (`jwks_uri` of its OpenID configuration).
        audience: What the token's `aud` must hold.
        issuer: What its `iss` must be, when not empty.
        """
        self._jwks = jwt.PyJWKClient(jwks_url, timeout=5)
        self._jwks_url = jwks_url
        self._audience = audience
        self._issuer = issuer or None
        # Checks run on a pool of their own, one at a time (PyJWKClient fetches under a lock
        # anyway): a JWKS that hangs then holds one thread, never the default pool that the VTEX
        # port's catalog reads use.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jwks")
        # After a failed fetch, every check answers 503 at once until then (monotonic seconds):
        # callers retrying against a dead IdP do not queue a 5 s fetch each.
        self._unreadable_until = 0.0
        self._waiting = 0

    def _unavailable(self) -> ApiError:
        return ApiError(
            503,
            "ServiceUnavailable",
            "the token cannot be checked now: the JWKS (CODEC_JWKS_URL) cannot be read",
            headers={"Retry-After": "5"},
        )

    def _check(self, token: str) -> None:
        if time.monotonic() < self._unreadable_until:
            raise self._unavailable()
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.InvalidTokenError as err:
            raise unauthorized(f"the bearer token is not a JWT: {err}") from err
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, ValueError, OSError) as err:
            # OSError: a connection the IdP cut mid-answer, which PyJWT does not wrap.
            # The IdP's fault (or CODEC_JWKS_URL's), not the caller's: retry later.
            log.warning("codec: the JWKS at %s cannot be read: %s", self._jwks_url, err)
            self._unreadable_until = time.monotonic() + JWKS_RETRY_SECONDS
            raise self._unavailable() from err
        except jwt.PyJWKClientError as err:  # No key of the JWKS has the token's key id.
            raise unauthorized(f"the JWT is not signed by a key of the JWKS: {err}") from err
        try:
            jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "aud"]},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as err:
            # TypeError/ValueError: a header's algorithm of another family than the key its kid
            # names (RS256 on an EC key), which PyJWT reports as a key it cannot read.
            raise unauthorized(f"the JWT is refused: {err}") from err

    async def check(self, token: str) -> None:
        """Return if the token is valid; raise the 401 (or, the JWKS out of reach, the 503)."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as err:
            raise unauthorized(f"the bearer token is not a JWT: {err}") from err
        if algorithm not in ALGORITHMS:  # refused before any fetch of the JWKS
            raise unauthorized(f"the JWT is refused: algorithm {algorithm!r} is not allowed")
        if self._waiting >= MAX_WAITING_CHECKS:
            raise self._unavailable()
        self._waiting += 1
        try:
            # Off the event loop: the JWKS fetch is a blocking HTTP call.
            await asyncio.get_running_loop().run_in_executor(self._pool, self._check, token)
        finally:
            self._waiting -= 1


@dataclass
class OpsAccess:
    """The ops listener's credentials, as the settings configure them."""

    ops_token: str = ""
    jwt_verifier: JwtVerifier | None = None
    codec_open: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> OpsAccess:
        """OPS_TOKEN and the codec's JWKS, if set."""
        verifier = None
        if settings.codec_jwks_url:
            verifier = JwtVerifier(
                settings.codec_jwks_url, settings.codec_jwt_audience, settings.codec_jwt_issuer
            )
        return cls(settings.ops_token, verifier, settings.codec_open and verifier is None)

    def _is_ops_token(self, token: str | None) -> bool:
        return (
            bool(self.ops_token)
            and token is not None
            and secrets.compare_digest(token.encode(), self.ops_token.encode())
        )

    def check_ops_token(self, authorization: str | None) -> None:
        """Rule 3: OPS_TOKEN, when set."""
        if self.ops_token and not self._is_ops_token(bearer_token(authorization)):
            raise unauthorized("send Authorization: Bearer <OPS_TOKEN>")

    async def check_codec_caller(self, authorization: str | None) -> None:
        """Rule 2: OPS_TOKEN, else a JWT of the JWKS, else open when neither is configured."""
        token = bearer_token(authorization)
        if self._is_ops_token(token):
            return
        if self.jwt_verifier is not None:
            if token is None:
                raise unauthorized("send Authorization: Bearer <an access token of the UI's IdP>")
            await self.jwt_verifier.check(token)
            return
        if self.ops_token and not self.codec_open:
            raise unauthorized("send Authorization: Bearer <OPS_TOKEN>")

    def summary(self) -> str:
        """Who may call what, for the start log."""
        if not self.ops_token and self.jwt_verifier is None:
            return (
                "NO authentication: whoever reaches it reads the metrics, decodes payloads and "
                "changes prices and stock"
            )
        ops = (
            "OPS_TOKEN required (but /healthz)"
            if self.ops_token
            # A JWT opens the codec only (rule 3): without OPS_TOKEN the rest stays open.
            else "NO OPS_TOKEN: whoever reaches it reads the metrics, acts on orders and changes "
            "prices and stock"
        )
        if self.codec_open:
            return f"{ops}; codec: OPEN (CODEC_OPEN): whoever reaches it decodes payloads"
        codec = ["OPS_TOKEN"] if self.ops_token else []
        if self.jwt_verifier is not None:
            codec.append("a JWT from CODEC_JWKS_URL")
        return f"{ops}; codec: {' or '.join(codec)}"


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on (or names) this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # A host name: it may resolve to anything.


def ops_problem(settings: Settings) -> str | None:
    """Why the ops listener must not start as configured, or None."""
    if settings.codec_jwks_url and not settings.codec_jwt_audience:
        return (
            "CODEC_JWKS_URL is set but CODEC_JWT_AUDIENCE is not: any token the IdP signs, for "
            "any of its applications, would open the codec. Set the audience of the Temporal "
            "UI's access tokens"
        )
    jwks = urlsplit(settings.codec_jwks_url)
    if settings.codec_jwks_url and not (
        jwks.scheme == "https" or (jwks.scheme == "http" and is_loopback(jwks.hostname or ""))
    ):
        # Whoever could alter the JWKS on its way could sign their own tokens.
        return f"CODEC_JWKS_URL={settings.codec_jwks_url!r}: an https:// URL is needed"
    if settings.ops_token and settings.ops_token in (
        settings.seller_app_key,
        settings.seller_app_token,
    ):
        return "OPS_TOKEN is one of VTEX's credentials (SELLER_APP_KEY/TOKEN): give it its own"
    for origin in (settings.codec_cors_origins or "").split(","):
        parts = urlsplit(origin.strip())
        if origin.strip() and (parts.scheme not in ("http", "https") or not parts.netloc):
            return f"CODEC_CORS_ORIGINS: {origin.strip()!r} is not an origin (http://host:port)"
    return None

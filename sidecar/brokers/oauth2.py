"""The `oauth2` broker: an access token from an OAuth 2.0 token endpoint with the client
credentials grant (RFC 6749 §4.4), cached and refreshed before it expires, for the egress
proxy to inject (docs/brokers.md, "Secretless HTTP egress").

The client secret comes from a `SecretSource` (a file re-read when it rotates, or the
environment) and goes only to the token endpoint, in HTTP Basic authentication (RFC 6749
§2.3.1). One token is shared by every grant on the upstream: the upstream sees the sidecar's
client, and the grant decides which of the agent's requests may use it. Errors name the
endpoint's HTTP status, never its body (which may echo what was sent).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp

from .base import (
    BrokerUnavailable,
)
from .sources import SecretSource
from .static import UpstreamSecretBroker

#: Used when the endpoint gives no `expires_in` (RFC 6749 §5.1 only recommends it).
DEFAULT_LIFETIME = 300.0
MAX_TOKEN_RESPONSE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """How to reach the token endpoint."""

    token_url: str
    client_id: str
    client_secret: SecretSource = field(repr=False)
    scope: str = ""
    ssl: ssl.SSLContext | None = field(default=None, repr=False)
    """Trust for an https token endpoint (None: the system's)."""
    timeout: float = 5.0
    refresh_before: float = 30.0
    """Refresh this many seconds before expiry (at most half the token's lifetime)."""


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str = field(repr=False)
    refresh_at: float
    expires_at: float


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: each part is form-urlencoded (Appendix B) before Basic encoding.
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + b64encode(pair).decode("ascii")


class OAuth2Broker(UpstreamSecretBroker):
    """One upstream's client-credentials token, cached until shortly before it expires."""

    NAME = "oauth2"

    def __init__(
        self,
        upstream: str,
        credentials: ClientCredentials,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(upstream)
        self._cc = credentials
        self._monotonic = monotonic
        self._cached: _Cached | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def secret(self) -> str:
        return await self.token()

    async def token(self) -> str:
        """The cached token, or a new one when it is due for refresh (one fetch at a time)."""
        cached = self._cached
        if cached is not None and self._monotonic() < cached.refresh_at:
            return cached.token
        async with self._lock:
            cached = self._cached
            now = self._monotonic()
            if cached is not None and now < cached.refresh_at:
                return cached.token
            try:
                self._cached = cached = await self._fetch()
            except BrokerUnavailable:
                if cached is not None and now < cached.expires_at:
                    return cached.token  # still valid: refresh again on the next request
                raise
            return cached.token

    def invalidate(self, token: str) -> None:
        """The upstream refused `token` (HTTP 401): fetch a new one next time."""
        if self._cached is not None and self._cached.token == token:
            self._cached = None

    async def _fetch(self) -> _Cached:
        cc = self._cc
        form = {"grant_type": "client_credentials"}
        if cc.scope:
            form["scope"] = cc.scope
        headers = {
            "Authorization": _basic(cc.client_id, cc.client_secret.current()),
            "Accept": "application/json",
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cc.timeout),
                connector=aiohttp.TCPConnector(ssl=cc.ssl if cc.ssl is not None else True),
            )
        started = self._monotonic()
        try:
            async with self._session.post(
                cc.token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(MAX_TOKEN_RESPONSE + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise BrokerUnavailable(
                self.NAME, f"token endpoint of {self.upstream} unreachable ({type(err).__name__})"
            ) from err
        if status != 200:
            raise BrokerUnavailable(
                self.NAME, f"token endpoint of {self.upstream} answered HTTP {status}", "refused"
            )
        return self._parse(body, started)

    def _parse(self, body: bytes, started: float) -> _Cached:
        # RFC 6749 §5.1: a JSON object with access_token, token_type and (recommended)
        # expires_in; only Bearer tokens (RFC 6750) can be injected as a header.
        bad = BrokerUnavailable(
            self.NAME, f"token endpoint of {self.upstream} answered no usable token", "bad_response"
        )
        if len(body) > MAX_TOKEN_RESPONSE:
            raise bad
        try:
            document = json.loads(body)
        except ValueError:
            raise bad from None
        if not isinstance(document, dict):
            raise bad
        token = document.get("access_token")
        kind = document.get("token_type")
        lifetime = document.get("expires_in", DEFAULT_LIFETIME)
        if (
            not isinstance(token, str)
            or not token
            or not token.isascii()
            or any(c in token for c in "\r\n\0 ")
            or not isinstance(kind, str)
            or kind.lower() != "bearer"
            or isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or lifetime <= 0
        ):
            raise bad
        # Counted from when the request left, so the cache never outlives the token.
        expires_at = started + float(lifetime)
        refresh_at = expires_at - min(self._cc.refresh_before, float(lifetime) / 2)
        return _Cached(token, refresh_at, expires_at)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""Where an agent's identity token comes from, asked before every call (so rotated
JWT-SVIDs and refreshed OIDC token files are picked up)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeAlias


class IdentityTokenSource(Protocol):
    """Where an agent's identity token comes from; asked before every call."""

    def token(self) -> str:
        """The current token (JWT-SVID or OIDC ID token)."""
        ...


IdentityToken: TypeAlias = "str | Callable[[], str] | IdentityTokenSource | None"
"""A fixed identity token, a provider called before every RPC (a callable, or an object with
`.token()` such as `TokenFile` or `WorkloadApiToken`, so rotated JWT-SVIDs and refreshed OIDC
token files are picked up), or None: then the file named by $JIT_SIDECAR_IDENTITY_TOKEN_FILE
if set, else no token (dev mode)."""


class TokenFile:
    """A token kept fresh in a file by someone else: a Kubernetes projected service-account
    token, or a JWT-SVID written by spiffe-helper. Re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        st = self.path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._token = self.path.read_text().strip()
            self._stamp = stamp
        return self._token


class WorkloadApiToken:
    """JWT-SVIDs for `audience` from the SPIFFE Workload API (a SPIRE agent), fetched again
    once half of the current one's lifetime has passed.

    `socket` defaults to the SPIFFE_ENDPOINT_SOCKET environment variable.
    """

    def __init__(
        self, audience: str = "jit-sidecar", socket: str | None = None, *, timeout: float = 5.0
    ) -> None:
        from spiffe import WorkloadApiClient

        self._client = WorkloadApiClient(socket, default_timeout=timeout)
        self._audience = audience
        self._token = ""
        self._refresh_at = 0.0

    def token(self) -> str:
        now = time.time()
        if not self._token or now >= self._refresh_at:
            svid = self._client.fetch_jwt_svid(audience={self._audience})
            self._token = svid.token
            self._refresh_at = now + max(1.0, (svid.expiry - now) / 2)
        return self._token

    def close(self) -> None:
        self._client.close()


class _Credentials:
    """Per-call `authorization` metadata from a fixed token or a provider."""

    def __init__(self, identity_token: IdentityToken) -> None:
        if identity_token is None and os.environ.get("JIT_SIDECAR_IDENTITY_TOKEN_FILE"):
            identity_token = TokenFile(os.environ["JIT_SIDECAR_IDENTITY_TOKEN_FILE"])
        self._source = identity_token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        source = self._source
        if source is None or isinstance(source, str):
            token = source
        elif hasattr(source, "token"):
            token = source.token()
        else:
            token = source()
        return (("authorization", f"Bearer {token}"),) if token else ()

"""Keys of the allowed OIDC issuers (e.g. a Kubernetes API server), fetched off the hot path.

For each issuer in the allow-list: GET `{issuer}/.well-known/openid-configuration` (its
`issuer` must equal ours exactly), then GET its `jwks_uri`, with `requests` in a worker
thread. Keys are refreshed every `oidc_refresh` seconds; a failed refresh keeps serving the
keys fetched last until they are `oidc_keys_max_age` old, after which the issuer's tokens are
refused (fail closed) until a fetch succeeds again. A token with an unknown `kid` triggers one
refetch, at most once per `UNKNOWN_KID_INTERVAL` seconds per issuer, shared by every caller
that waits for it. Authenticating a token never does I/O otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from .jws import VerifyKey, parse_jwks

log = logging.getLogger("jit_sidecar.identity")

UNKNOWN_KID_INTERVAL = 30.0
UNKNOWN_KID_WAIT = 3.0
FETCH_TIMEOUT = 5.0
RETRY_AFTER_FAILURE = 30.0
_MAX_DOCUMENT_BYTES = 1 << 20


class OidcFetchError(Exception):
    """Discovery or JWKS fetch failed (message names the URL, never a credential)."""


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """One issuer's keys and when they were fetched (monotonic seconds)."""

    keys: Mapping[str, VerifyKey]
    fetched_at: float
    generation: int


def _get_json(session: requests.Session, url: str, *, verify: str | bool, token: str | None) -> Any:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with session.get(
            url, headers=headers, timeout=FETCH_TIMEOUT, verify=verify, stream=True
        ) as response:
            if response.status_code != 200:
                raise OidcFetchError(f"GET {url} answered {response.status_code}")
            body = response.raw.read(_MAX_DOCUMENT_BYTES + 1, decode_content=True)
    except requests.RequestException as err:
        raise OidcFetchError(f"GET {url} failed: {type(err).__name__}") from err
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise OidcFetchError(f"GET {url}: document larger than {_MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as err:
        raise OidcFetchError(f"GET {url}: not JSON") from err


def _same_origin_or_https(issuer: str, jwks_uri: str) -> bool:
    """jwks_uri must be https, or plain http on the issuer's own (loopback test) origin."""
    target, origin = urlsplit(jwks_uri), urlsplit(issuer)
    if target.scheme == "https":
        return True
    return target.scheme == origin.scheme == "http" and target.netloc == origin.netloc


class HttpKeyFetcher:
    """Fetches an issuer's JWKS through its discovery document (blocking; run in a thread)."""

    def __init__(self, *, ca_file: Path | None = None, token_file: Path | None = None) -> None:
        self._verify: str | bool = str(ca_file) if ca_file else True
        self._token_file = token_file
        self._session = requests.Session()

    def _token(self) -> str | None:
        if self._token_file is None:
            return None
        try:
            return self._token_file.read_text().strip() or None
        except OSError as err:
            raise OidcFetchError(f"cannot read oidc_fetch_token_file: {err.strerror}") from err

    def __call__(self, issuer: str) -> dict[str, VerifyKey]:
        token = self._token()
        discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = _get_json(self._session, discovery_url, verify=self._verify, token=token)
        if not isinstance(doc, dict) or doc.get("issuer") != issuer:
            raise OidcFetchError(f"{discovery_url}: `issuer` is not exactly {issuer!r}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _same_origin_or_https(issuer, jwks_uri):
            raise OidcFetchError(f"{discovery_url}: jwks_uri missing or not https")
        jwks = _get_json(self._session, jwks_uri, verify=self._verify, token=token)
        try:
            keys, problems = parse_jwks(jwks, uses=(None, "sig"))
        except ValueError as err:
            raise OidcFetchError(f"{jwks_uri}: {err}") from err
        for problem in problems:
            log.warning("JWKS of %s: skipped %s", issuer, problem)
        return keys

    def close(self) -> None:
        self._session.close()


class OidcKeys:
    """In-memory keys per allowed issuer, refreshed in the background."""

    def __init__(
        self,
        issuers: Sequence[str],
        fetch: Callable[[str], Mapping[str, VerifyKey]],
        *,
        refresh: float,
        max_age: float,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuers = tuple(issuers)
        self._fetch = fetch
        self._refresh = refresh
        self._max_age = max_age
        self._unknown_kid_interval = unknown_kid_interval
        self._monotonic = monotonic
        self._current: dict[str, IssuerKeys] = {}
        self._generation = 0
        self._last_forced: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fetch every issuer's keys now, then refresh them in the background until `stop`."""
        await asyncio.gather(*(self.fetch(i) for i in self.issuers))
        self._runner = asyncio.get_running_loop().create_task(self.run(self._stopping))

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._runner, 10)

    def keys(self, issuer: str) -> IssuerKeys | None:
        """The issuer's keys while younger than max_age, else None (fail closed)."""
        current = self._current.get(issuer)
        if current is None or self._monotonic() - current.fetched_at > self._max_age:
            return None
        return current

    async def fetch(self, issuer: str) -> bool:
        """Fetch now (one fetch per issuer at a time); True when keys were stored."""
        running = self._inflight.get(issuer)
        if running is None:
            running = asyncio.get_running_loop().create_task(self._fetch_into_cache(issuer))
            self._inflight[issuer] = running
            running.add_done_callback(lambda _t: self._inflight.pop(issuer, None))
        return await asyncio.shield(running)

    async def _fetch_into_cache(self, issuer: str) -> bool:
        try:
            keys = await asyncio.to_thread(self._fetch, issuer)
        except Exception as err:
            log.error(
                "cannot fetch the keys of OIDC issuer %s: %s",
                issuer,
                err,
                extra={"cause": "oidc_fetch_failed"},
            )
            return False
        previous = self._current.get(issuer)
        if previous is None or dict(previous.keys) != dict(keys):
            self._generation += 1
            log.info("OIDC issuer %s: %d keys", issuer, len(keys), extra={"count": len(keys)})
        generation = self._generation
        self._current[issuer] = IssuerKeys(dict(keys), self._monotonic(), generation)
        return True

    async def key_for(self, issuer: str, kid: str) -> tuple[IssuerKeys | None, VerifyKey | None]:
        """The issuer's current keys and the one named `kid`; an unknown kid triggers one
        (rate-limited) refetch first."""
        current = self.keys(issuer)
        key = current.keys.get(kid) if current is not None else None
        if key is None and await self.refetch_for_unknown_kid(issuer):
            current = self.keys(issuer)
            key = current.keys.get(kid) if current is not None else None
        return current, key

    async def refetch_for_unknown_kid(self, issuer: str) -> bool:
        """Refetch because a token named a kid we do not know, unless done < 30 s ago."""
        now = self._monotonic()
        last = self._last_forced.get(issuer)
        if last is not None and now - last < self._unknown_kid_interval:
            return False
        self._last_forced[issuer] = now
        try:
            # Bounded so the RPC stays well inside rpc_timeout; the fetch itself goes on.
            return await asyncio.wait_for(self.fetch(issuer), UNKNOWN_KID_WAIT)
        except TimeoutError:
            return False

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch every issuer now, then refresh each on its schedule until `stop`."""
        next_due = {}
        for issuer in self.issuers:
            current = self._current.get(issuer)
            next_due[issuer] = current.fetched_at + self._refresh if current else 0.0
        while not stop.is_set():
            now = self._monotonic()
            for issuer, due in next_due.items():
                if due <= now:
                    ok = await self.fetch(issuer)
                    delay = self._refresh if ok else min(RETRY_AFTER_FAILURE, self._refresh)
                    next_due[issuer] = self._monotonic() + delay
            sleep = max(0.05, min(next_due.values()) - self._monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sleep)

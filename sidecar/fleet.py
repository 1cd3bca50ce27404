"""A sidecar's membership of a fleet: the revocation view kept current from Redis.

`Fleet` is what the engine consults (the `FleetGate` protocol of `sidecar.revocations`):
may a grant be issued now, is a token barred fleet-wide, and the public key of a token
another sidecar signed. Behind it, on the event loop:

- a reader that follows the revocation stream (XREAD BLOCK from the last entry it saw) and
  merges every entry into the in-memory `RevocationView`; after a reconnect it resumes from
  that entry when the stream still holds everything since, or else reloads the revocation
  index (a full resynchronisation), before the view counts as fresh again;
- revocations that concern this sidecar's own grants (a kill switch or an operator's revoke
  made elsewhere) are handed to the engine, which ends them locally with the proper reason so
  its state and audit log agree;
- a maintenance loop registers this sidecar's public keys (their expiry follows the key's
  lifetime plus the longest token TTL), refreshes the fleet's keys and notices when Redis lost
  its data (its epoch changed), in which case the store republishes what is ours.

Writes (registrations, revocations) go through `RedisStore` on the journal's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ConfigError
from .metrics import Metrics
from .revocations import FleetKey, Revocation, RevocationView
from .store.redis import (
    KEY_MARGIN,
    REDIS_ERRORS,
    REGISTER_KEY,
    SNAPSHOT,
    RedisStore,
    SharedStateUnavailable,
    connect_async,
    key_value,
    redacted,
)
from .store.sqlite import SqliteStore
from .tokens import token_kid, verify_with

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("jit_sidecar.fleet")
READ_COUNT = 500
KEY_REFRESH = 10.0
"""Seconds between registrations of our keys and refreshes of the fleet's keys."""
KEY_FETCH_TIMEOUT = 0.25
MISSING_KEY_TTL = 1.0
"""Seconds an unknown kid is remembered as unknown (bounds lookups for garbage tokens)."""
FLEET_KEY_TYPES = {("OKP", "EdDSA"), ("OKP", "Ed25519"), ("EC", "ES256")}


def default_fleet_id(config: Config) -> str:
    digest = hashlib.sha256(str(config.audit_log.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class Fleet:
    """The view, its reader and the key registrations of one sidecar (see module doc)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        store: RedisStore,
        *,
        view: RevocationView | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.fleet_id = store.fleet_id
        self.keys = store.keys
        self.view = view or RevocationView(config.fleet_stale_after)
        # Short enough that an idle stream still confirms freshness well within the bound.
        self._block_ms = max(10, int(min(config.fleet_stale_after / 4, 0.5) * 1000))
        self._client: Any = None
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_id: str | None = None
        self._epoch: str | None = None
        self._need_sync = True
        self._catching_up = True
        self._tasks: list[asyncio.Task[None]] = []
        self._applying: set[asyncio.Task[None]] = set()
        self._missing: dict[str, float] = {}
        self._pending_kids: set[str] = set()
        self._failing = False
        """The reader's last attempt failed (so the next success is logged)."""
        self._keys_registered = False
        """Our public keys are in Redis (others can verify what we sign)."""
        metrics.fleet_view_staleness.set_function(self.view.staleness)
        metrics.fleet_view_entries.set_function(lambda: len(self.view))

    @classmethod
    def open(cls, config: Config, metrics: Metrics) -> Fleet:
        """Local SQLite store + Redis store + view, from the configuration."""
        path = Path(config.local_state.partition(":")[2])
        if not path.name:
            raise ConfigError("local_state must be sqlite:PATH")
        fleet_id = config.fleet_id or default_fleet_id(config)
        store = RedisStore(config, SqliteStore(path), fleet_id=fleet_id, metrics=metrics)
        log.info("fleet member %s on %s", fleet_id, redacted(config.state))
        return cls(config, metrics, store)

    # ================================================================== life cycle
    async def start(self, engine: Engine, checks: dict[str, Callable[[], str]]) -> None:
        """Join the fleet: first synchronisation, key registration, background loops.

        Never fails for want of Redis: the view stays stale (introspection fails closed,
        /readyz says why) and grants are refused until Redis answers.
        """
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        # Generous: a full resync reads the whole revocation index in one reply. Staleness
        # is judged by time, not by this timeout.
        self._client = connect_async(self.config, max(5.0, self._block_ms / 1000 + 1.0))
        self.store.listener = self._local_revocations
        self.store.live = True
        self._epoch = await asyncio.to_thread(self.store.known_epoch)
        engine.keys.fleet_jwks = self.jwks
        checks["fleet"] = self.readiness
        try:
            await self._sync()
            await self._read_once(block=False)
        except REDIS_ERRORS as err:
            self._lost(err)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="fleet-reader"),
            asyncio.create_task(self._maintain(), name="fleet-maintenance"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._applying]:
            task.cancel()
        for task in [*self._tasks, *self._applying]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.store.listener = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    # ================================================================== FleetGate
    def check_issuable(self) -> None:
        if not self.store.issuable() or not self._keys_registered:
            why = self.store.problem or "our public keys are not registered yet"
            raise SharedStateUnavailable(
                f"shared state unavailable ({why}); new grants are refused until Redis is back"
            )

    def barred(self, claims: Mapping[str, Any], now: float) -> str:
        return self.view.barred(claims, now)

    async def verify(self, token: str, *, issuer: str, now: float) -> dict[str, Any] | None:
        kid = token_kid(token)
        if kid is None or self._engine is None or self._engine.keys.owns(kid):
            return None
        key = self.view.key(kid, now)
        if key is None:
            key = await self._fetch_key(kid, now)
        if key is None or key.owner == self.fleet_id:
            return None
        return verify_with(token, key.jwk, issuer=issuer)

    # ================================================================== views for others
    def jwks(self, now: float) -> Iterable[Mapping[str, str]]:
        """Public keys of the other sidecars (ours are added by the key ring)."""
        return [k.jwk for k in self.view.keys(now) if k.owner != self.fleet_id]

    def readiness(self) -> str:
        problems = []
        if self.view.is_stale():
            stale = self.view.staleness()
            age = "never synchronised" if stale == float("inf") else f"stale for {stale:.1f} s"
            problems.append(f"revocation view {age} ({self.view.problem or 'catching up'})")
        if self.store.unavailable_since is not None:
            problems.append(
                f"Redis unavailable for writes ({self.store.problem}); "
                f"{self.store.depth} changes queued in the outbox"
            )
        return "; ".join(problems) or "ok"

    # ================================================================== reader
    async def _read_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                if self._need_sync:
                    await self._sync()
                await self._read_once(block=not self._catching_up)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as err:
                self._lost(err)
                log.debug(
                    "fleet reader: %s: %s (retrying in %.2f s)", type(err).__name__, err, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception:
                log.exception("fleet reader failed; resynchronising")
                self._need_sync = True
                await asyncio.sleep(delay)

    async def _read_once(self, *, block: bool) -> None:
        started = time.monotonic()
        response = await self._client.xread(
            {self.keys.feed: self._last_id or "0-0"},
            count=READ_COUNT,
            block=self._block_ms if block else None,
        )
        count = 0
        now = time.time()
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                self._last_id = entry_id
                count += 1
                self._entry(entry_id, fields, now)
        if self._pending_kids:
            await self._load_keys(list(self._pending_kids))
            self._pending_kids.clear()
        if count < READ_COUNT:
            # Everything published before this read started is in the view now.
            self._catching_up = False
            self.view.mark_synced(started)
            if self._failing:
                self._failing = False
                log.warning("revocation stream resumed; the view is current again")

    def _entry(self, entry_id: str, fields: Mapping[str, str], now: float) -> None:
        kind = fields.get("kind")
        if kind == "rev":
            try:
                expires = int(fields["x"]) / 1000
            except (KeyError, ValueError):
                return
            rev = Revocation.from_member(fields.get("m", ""), expires, fields.get("d", ""))
            if rev is None:
                log.warning("malformed revocation entry %s ignored", entry_id)
                return
            if not self._catching_up:
                sent = _stream_id(entry_id)[0] / 1000
                self.metrics.fleet_propagation.observe(max(0.0, now - sent))
            self._merge(rev)
        elif kind == "key" and fields.get("kid"):
            self._pending_kids.add(fields["kid"])

    async def _sync(self) -> None:
        """(Re)join the stream: resume from the last entry seen when nothing since has been
        trimmed and Redis kept its data, otherwise reload the whole revocation index."""
        self._catching_up = True
        keys = [self.keys.revocations, self.keys.feed, self.keys.epoch, self.keys.keyset]
        candidate = secrets.token_hex(8)
        now_ms = int(time.time() * 1000)
        epoch, last, first, _, _ = await self._client.eval(
            SNAPSHOT, 4, *keys, now_ms, candidate, "0"
        )
        full = epoch != self._epoch or not self._resumable(last, first)
        log.debug(
            "fleet sync: %s (stream %s..%s, last seen %s)",
            "full" if full else "incremental",
            first,
            last,
            self._last_id,
        )
        if full:
            epoch, last, first, revs, kids = await self._client.eval(
                SNAPSHOT, 4, *keys, now_ms, candidate, "1"
            )
            for member, score in zip(revs[::2], revs[1::2], strict=True):
                rev = Revocation.from_member(member, float(score) / 1000)
                if rev is not None:
                    self._merge(rev)
            await self._load_keys(list(kids))
            self._last_id = last or "0-0"
        self.metrics.fleet_resyncs.labels(kind="full" if full else "incremental").inc()
        if epoch != self._epoch:
            if self._epoch is not None:
                log.warning("Redis lost the fleet's data (new epoch); republishing ours")
                self.store.request_repair()
            self._epoch = epoch
            await asyncio.to_thread(self.store.remember_epoch, epoch)
        # After any reconnect: whatever Redis lost or we could not write, our keys are back.
        await self._register_keys()
        self._need_sync = False

    def _resumable(self, last: str, first: str) -> bool:
        """True when the stream still holds every entry after the last one we saw.

        Trimming removes the oldest entries first, so that holds while the stream's first
        entry is not newer than ours (or nothing was added since ours).
        """
        if self._last_id is None or not last:
            return False  # never synchronised, or the stream is gone
        seen = _stream_id(self._last_id)
        if _stream_id(last) < seen:
            return False  # a different stream than the one we followed
        return _stream_id(last) == seen or (bool(first) and _stream_id(first) <= seen)

    def _lost(self, err: BaseException) -> None:
        if not self._failing:
            self._failing = True
            self.metrics.fleet_redis_errors.labels(side="read").inc()
            log.error(
                "lost the revocation stream (%s: %s); introspection fails closed once the view "
                "is %.1f s old",
                type(err).__name__,
                err,
                self.config.fleet_stale_after,
                extra={"reason": "store_unavailable"},
            )
        self.view.problem = f"Redis unreachable: {type(err).__name__}: {err}"
        self._need_sync = True

    # ================================================================== revocations
    def _merge(self, rev: Revocation) -> None:
        """Merge into the view; hand the engine what concerns grants it issued."""
        if not self.view.add(rev) or rev.origin == self.fleet_id or self._engine is None:
            return
        if not self._engine.fleet_targets(rev):
            return
        task = asyncio.get_running_loop().create_task(self._apply(rev))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _apply(self, rev: Revocation) -> None:
        assert self._engine is not None
        try:
            count = await self._engine.apply_fleet_revocation(rev)
        except Exception:
            log.exception("could not apply a fleet revocation locally")
            return
        if count:
            self.metrics.fleet_remote_revocations.labels(scope=rev.scope).inc(count)

    def _local_revocations(self, revocations: list[Revocation]) -> None:
        """Our own revocations enter our view before the call that made them returns: the
        journal resolves the commit through the same loop, after this callback."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._add_own, revocations)

    def _add_own(self, revocations: list[Revocation]) -> None:
        for rev in revocations:
            self.view.add(rev)

    # ================================================================== keys
    async def _register_keys(self) -> None:
        assert self._engine is not None
        now = time.time()
        minid = int((now - self.config.redis_stream_retention) * 1000)
        for published in self._engine.keys.published(now):
            expires = published.retire_at or now + self.config.max_ttl + KEY_MARGIN
            kid = published.jwk["kid"]
            value = key_value(published.jwk, self.fleet_id, expires)
            await self._client.eval(
                REGISTER_KEY,
                3,
                self.keys.key(kid),
                self.keys.keyset,
                self.keys.feed,
                kid,
                value,
                int(expires * 1000),
                int(now * 1000),
                minid,
            )
        self._keys_registered = True

    async def _load_keys(self, kids: list[str]) -> None:
        if not kids:
            return
        values = await self._client.mget([self.keys.key(kid) for kid in kids])
        for kid, value in zip(kids, values, strict=True):
            key = parse_key(kid, value)
            if key is not None:
                self.view.add_key(key)

    async def _fetch_key(self, kid: str, now: float) -> FleetKey | None:
        """A key announced so recently that the stream has not delivered it yet."""
        mono = time.monotonic()
        if self.view.is_stale() or self._missing.get(kid, 0.0) > mono:
            return None
        if len(self._missing) > 4096:
            self._missing.clear()
        try:
            async with asyncio.timeout(KEY_FETCH_TIMEOUT):
                await self._load_keys([kid])
        except (*REDIS_ERRORS, TimeoutError):
            return None
        key = self.view.key(kid, now)
        if key is None:
            self._missing[kid] = mono + MISSING_KEY_TTL
        return key

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH)
            try:
                await self._register_keys()
                kids = await self._client.zrangebyscore(
                    self.keys.keyset, int(time.time() * 1000), "+inf"
                )
                await self._load_keys(list(kids))
                epoch = await self._client.get(self.keys.epoch)
                if epoch != self._epoch:
                    self._keys_registered = False
                    self._need_sync = True  # flushed or replaced under us
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as err:
                log.debug("fleet maintenance skipped: %s", err)
            except Exception:
                log.exception("fleet maintenance failed")
            self.view.prune(time.time())


def parse_key(kid: str, value: str | None) -> FleetKey | None:
    """A key registration read from Redis; None unless it is a well-formed public key."""
    if not value:
        return None
    try:
        document = json.loads(value)
        jwk = {str(k): str(v) for k, v in document["jwk"].items()}
        owner = str(document["sidecar"])
        expires_at = float(document["exp"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    # Only the asymmetric keys sidecars sign with, public members only: a registration
    # carrying a private member, a symmetric key or another algorithm is refused outright.
    if (
        jwk.get("kid") != kid
        or (jwk.get("kty"), jwk.get("alg")) not in FLEET_KEY_TYPES
        or {"d", "k", "p", "q"} & set(jwk)
    ):
        return None
    return FleetKey(jwk, expires_at, owner)

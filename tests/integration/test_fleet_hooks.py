"""`Fleet` in-process with its `FleetHooks` callbacks instead of an engine: two fleet members
on a real redis-server (the session one, kept apart by key prefix) with real SQLite and real
signing keys; the hooks record what the fleet asks of its sidecar."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import rfc3339
from sidecar.config import Config, load
from sidecar.events import Recorded, from_record
from sidecar.fleet import Fleet, FleetHooks
from sidecar.metrics import Metrics
from sidecar.revocations import Revocation
from sidecar.store.redis import RedisStore, SharedStateUnavailable
from sidecar.store.redis_layout import Keys, parse_key
from sidecar.store.sqlite import SqliteStore
from sidecar.tokens import KeyRing, SigningKey, generate_private_key
from tests.harness import RedisServer, wait_for

KILLED = "spiffe://example.org/x/killed"
SPARED = "spiffe://example.org/x/spared"
OWN = "spiffe://example.org/x/own"
ISSUER = "https://jit.example"


class Member:
    """One fleet member: its store, key ring and fleet, and hooks that record every call."""

    def __init__(self, tmp: Path, url: str, prefix: str, name: str, *, ends: int = 0) -> None:
        self.config = fleet_config(tmp, url, prefix, name)
        self.metrics = Metrics()
        self.store = RedisStore(
            self.config, SqliteStore(tmp / f"{name}.db"), fleet_id=name, metrics=self.metrics
        )
        self.signer = SigningKey.from_private_key(generate_private_key("EdDSA"))
        self.ring = KeyRing(self.signer)
        self.fleet = Fleet(self.config, self.metrics, self.store)
        self.asked: list[Revocation] = []
        """Every revocation the fleet asked `covers` about."""
        self.ended: list[Revocation] = []
        """Every revocation handed to `end`."""
        self.ends = ends
        self.seq = 0

    def hooks(self) -> FleetHooks:
        return FleetHooks(
            owns=self.ring.owns,
            published=self.ring.published,
            covers=self.covers,
            end=self.end,
        )

    def covers(self, rev: Revocation) -> bool:
        self.asked.append(rev)
        return rev.target == KILLED

    async def end(self, rev: Revocation) -> int:
        self.ended.append(rev)
        return self.ends

    async def order(self, subject: str, cutoff: float) -> None:
        """Publish a subject cutoff (the kill switch) as this member's journal would."""
        self.seq += 1
        record = {
            "event": "revocation_ordered",
            "time": rfc3339(cutoff),
            "seq": self.seq,
            "scope": "subject",
            "subject": subject,
            "cutoff": rfc3339(cutoff),
            "revocation_expires_at": rfc3339(cutoff + 600),
            "reason": "kill_switch",
        }
        recorded = Recorded(self.seq, from_record(record))
        await asyncio.to_thread(self.store.apply, [recorded], (), self.seq)

    def token(self, subject: str, iat: int) -> str:
        return self.signer.sign(
            {
                "iss": ISSUER,
                "sub": subject,
                "aud": "docs",
                "iat": iat,
                "nbf": iat,
                "exp": iat + 60,
                "jti": "g-" + secrets.token_hex(4),
                "txn": "t-1",
            }
        )

    async def close(self) -> None:
        await self.fleet.stop()
        self.store.close()


def fleet_config(tmp: Path, url: str, prefix: str, name: str) -> Config:
    return load(
        {
            "identity": "dev",
            "issuer": ISSUER,
            "state": url,
            "local_state": f"sqlite:{tmp / name}.db",
            "audit_log": str(tmp / f"{name}-audit.jsonl"),
            "redis_prefix": prefix,
            "redis_timeout": "1",
            "fleet_id": name,
        },
        env={},
    )


async def until(what: str, condition: Callable[[], bool]) -> None:
    """Poll off the loop, which the fleet's reader needs meanwhile."""
    await asyncio.to_thread(wait_for, condition, 5.0, 0.01, what)


def run(tmp_path: Path, url: str, body: Callable[[Member, Member], Awaitable[None]]) -> None:
    prefix = "t" + secrets.token_hex(4)

    async def main() -> None:
        a = Member(tmp_path, url, prefix, "a", ends=2)
        b = Member(tmp_path, url, prefix, "b")
        try:
            await body(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_fleet_is_built_before_its_hooks_and_refuses_until_started(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Built without an engine, a fleet refuses new grants (store_unavailable) and verifies
    no token, not even one of a started member, until it is started with its hooks; once
    started, our public key (never its private half) is registered in Redis, grants are
    allowed and the other member's token verifies."""
    seen: dict[str, Any] = {}

    async def body(a: Member, b: Member) -> None:
        await b.fleet.start(b.hooks())
        token = b.token(KILLED, int(time.time()))
        with pytest.raises(SharedStateUnavailable) as refused:
            a.fleet.check_issuable()
        seen["refused"] = refused.value.reason.value
        seen["verified_before"] = await a.fleet.verify(token, issuer=ISSUER, now=time.time())
        await a.fleet.start(a.hooks())
        a.fleet.check_issuable()  # raises if not
        seen["verified_after"] = await a.fleet.verify(token, issuer=ISSUER, now=time.time())
        keys = Keys(a.config.redis_prefix)
        with redis_server.client() as client:
            seen["registered"] = client.get(keys.key(a.signer.kid))
        seen["kid"] = a.signer.kid

    run(tmp_path, redis_server.url, body)
    assert seen["refused"] == "store_unavailable"
    assert seen["verified_before"] is None
    assert seen["verified_after"] is not None
    assert seen["verified_after"]["sub"] == KILLED
    assert '"d"' not in seen["registered"]
    registered = parse_key(seen["kid"], seen["registered"])
    assert registered is not None
    assert registered.owner == "a"


def test_fleet_asks_its_hooks_about_revocations_made_elsewhere(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A kill switch B orders reaches A's view and A's `covers`; only the revocation it
    covers goes to `end` (once), whose count feeds jit_fleet_remote_revocations_total; A's
    own orders never come back to its hooks; A verifies B's tokens (never its own) and serves
    B's public key but not its own as the fleet's."""
    seen: dict[str, Any] = {}

    async def body(a: Member, b: Member) -> None:
        await a.fleet.start(a.hooks())
        await b.fleet.start(b.hooks())
        now = time.time()
        before = int(now) - 1
        killed, spared = b.token(KILLED, before), b.token(SPARED, before)
        seen["verified"] = await a.fleet.verify(killed, issuer=ISSUER, now=now)
        seen["own"] = await a.fleet.verify(a.token(KILLED, before), issuer=ISSUER, now=now)
        seen["jwks"] = {k["kid"] for k in a.fleet.jwks(now)}
        await b.order(KILLED, now)
        await b.order(SPARED, now)
        await a.order(OWN, now)
        await until("A to see B's orders", lambda: len(a.asked) == 2 and len(a.ended) == 1)
        await until("B to see A's order", lambda: len(b.asked) == 1)
        await until("A's end to finish", lambda: _remote(a) == 2)
        await asyncio.sleep(0.2)  # room for a wrong extra call to show
        seen["asked"] = [(r.target, r.origin) for r in a.asked]
        seen["ended"] = [(r.scope, r.target, r.reason, r.origin) for r in a.ended]
        seen["b_asked"] = [(r.target, r.origin) for r in b.asked]
        seen["remote"] = _remote(a)
        claims = [await a.fleet.verify(t, issuer=ISSUER, now=now) for t in (killed, spared)]
        seen["barred"] = [a.fleet.barred(c, now) if c else "unverified" for c in claims]
        seen["kids"] = (a.signer.kid, b.signer.kid)

    run(tmp_path, redis_server.url, body)
    b_kid = seen["kids"][1]
    assert seen["verified"] is not None
    assert seen["verified"]["sub"] == KILLED
    assert seen["own"] is None
    assert seen["jwks"] == {b_kid}
    assert seen["asked"] == [(KILLED, "b"), (SPARED, "b")]
    assert seen["ended"] == [("subject", KILLED, "kill_switch", "b")]
    assert seen["b_asked"] == [(OWN, "a")]
    assert seen["remote"] == 2
    assert seen["barred"] == ["kill_switch", "kill_switch"]


def _remote(member: Member) -> float:
    """jit_fleet_remote_revocations_total{scope="subject"} of a member."""
    value = member.metrics.registry.get_sample_value(
        "jit_fleet_remote_revocations_total", {"scope": "subject"}
    )
    return value or 0.0

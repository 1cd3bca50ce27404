"""The Shared Signals transmitter without HTTP: the engine's `on_access_ended` hook (real
journal, audit file and SQLite), and the transmitter's durable queue (real SQLite) under a
hand-moved clock: what is queued, in which order, for how long, and what an audit failure
prevents."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit import AuditFile
from sidecar.config import load
from sidecar.engine import Engine, EngineMetrics, engine_settings
from sidecar.errors import Reason
from sidecar.events import Event
from sidecar.journal import CommitError, Journal
from sidecar.jws import parse
from sidecar.metrics import Metrics
from sidecar.model import AccessEnded, Identity, Intent, Outcome
from sidecar.ssf.events import SESSION_REVOKED, TOKEN_REVOKED, VERIFICATION
from sidecar.ssf.queue import EventQueue
from sidecar.ssf.transmitter import DELIVERY_GRACE, POLL, StreamError, Transmitter
from sidecar.store.sqlite import SqliteStore
from sidecar.tokens import KeyRing, SigningKey, generate_private_key
from tests.fakes import ManualClock, ScriptedPolicy

ME = Identity("spiffe://t/agent/me", "t", "dev")
BASE = "http://127.0.0.1:9464"


def test_engine_tells_every_end_of_access_once(tmp_path: Path) -> None:
    """Completing a task, revoking one grant, the kill switch and a deadline each reach the
    hook once, as a task end or a single grant; a grant's own expiry does not."""
    heard: list[AccessEnded] = []
    clock = ManualClock()
    store = SqliteStore(tmp_path / "state.db")
    journal = Journal(AuditFile(tmp_path / "audit.jsonl"), store)
    engine = Engine(
        engine_settings(load({"identity": "dev"}, env={})),
        policy=ScriptedPolicy(),
        keys=KeyRing(SigningKey.from_private_key(generate_private_key("EdDSA"))),
        store=store,
        journal=journal,
        metrics=EngineMetrics(Metrics()),
        clock=clock,
        on_access_ended=lambda ends: heard.extend(ends),
    )
    journal.start()

    async def body() -> dict[str, str]:
        async def task(goal: str, duration: int = 300) -> str:
            t = await engine.begin_task(ME, task_id="", goal=goal, max_duration=duration, labels={})
            return t.task_id

        done, single, killed, short = [await task(goal) for goal in "abcd"]
        lapsed = await task("e", 5)
        granted = await engine.request_grant(ME, done, Intent("x.read", "x://1"), 60)
        one = await engine.request_grant(ME, single, Intent("x.read", "x://2"), 60)
        expiring = await engine.request_grant(ME, short, Intent("x.read", "x://3"), 10)
        assert granted.grant and one.grant and expiring.grant
        await engine.complete_task(ME, done, Outcome.SUCCEEDED)
        await engine.revoke_grant(ME, one.grant.grant_id)
        clock.advance(11)  # `expiring` passes its exp; `lapsed` its deadline
        for _ in range(3):
            await engine.sweep()
        await engine.revoke_subject(ME.subject)
        return {
            "done": done,
            "single": single,
            "killed": killed,
            "short": short,
            "lapsed": lapsed,
            "grant": one.grant.grant_id,
            "granted_exp": str(granted.grant.expires_at),
        }

    try:
        ids = asyncio.run(body())
    finally:
        journal.close()
        store.close()
    summary = [(e.task_id, e.grant_id, e.reason, e.state) for e in heard]
    assert summary == [
        (ids["done"], "", "completed", "succeeded"),
        (ids["single"], ids["grant"], "revoked_by_agent", ""),
        (ids["lapsed"], "", "task_expired", "expired"),
        *[(ids[name], "", "kill_switch", "failed") for name in ("single", "killed", "short")],
    ]
    assert heard[0].expires_at == float(ids["granted_exp"])
    assert all(e.subject == ME.subject for e in heard)


class Rig:
    """A transmitter on a real SQLite queue, audited into a list (or failing to audit)."""

    def __init__(self, path: Path) -> None:
        self.clock = ManualClock()
        self.metrics = Metrics()
        self.audited: list[dict[str, Any]] = []
        self.audit_fails = False
        self.key = SigningKey.from_private_key(generate_private_key("EdDSA"))
        self.path = path
        self.transmitter = self.open()

    def open(self) -> Transmitter:
        return Transmitter(
            issuer="https://jit-sidecar.local",
            keys=KeyRing(self.key),
            queue=EventQueue(self.path),
            metrics=self.metrics,
            clock=self.clock,
            record=self.record,
        )

    async def record(self, events: Sequence[Event]) -> None:
        if self.audit_fails:
            raise CommitError("audit down", Reason.AUDIT_UNAVAILABLE, durable=False)
        self.audited.extend(e.record() for e in events)

    def end(self, task_id: str, expires_in: float = 60, grant_id: str = "") -> AccessEnded:
        now = self.clock.now()
        return AccessEnded(task_id, ME.subject, "completed", now, now + expires_in, grant_id)

    def gauge(self, name: str, stream: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"stream": stream}) or 0.0


def events_of(answer: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for token in answer["sets"].values():
        claims = parse(token).claims
        ((kind, event),) = claims["events"].items()
        out.append((kind, {**event, "txn": claims.get("txn")}))
    return out


def test_queue_keeps_order_survives_reopening_and_drops_what_expired(tmp_path: Path) -> None:
    """SETs are handed out in order, stay until acknowledged (also across a restart), and
    are dropped once the tokens they speak of are past exp plus the grace."""
    rig = Rig(tmp_path / "ssf.db")

    async def first() -> str:
        stream = await rig.transmitter.create({"delivery": {"method": POLL}}, BASE)
        rig.transmitter.access_ended([rig.end("t1"), rig.end("t2", grant_id="g2")])
        rig.transmitter.access_ended([rig.end("t3", expires_in=1)])
        await rig.transmitter.stop()
        return str(stream["stream_id"])

    stream_id = asyncio.run(first())
    rig.transmitter = rig.open()  # a restart: same file

    async def second() -> tuple[Any, Any, Any, float]:
        one = await rig.transmitter.poll(stream_id, {"returnImmediately": True, "maxEvents": 2})
        depth = rig.gauge("jit_ssf_queue_depth", stream_id)
        rig.clock.advance(1 + DELIVERY_GRACE)  # t3's tokens are gone: so is its SET
        two = await rig.transmitter.poll(
            stream_id, {"ack": list(one["sets"]), "returnImmediately": True}
        )
        three = await rig.transmitter.poll(
            stream_id, {"ack": list(two["sets"]), "returnImmediately": True}
        )
        await rig.transmitter.stop()
        return one, two, three, depth

    one, two, three, depth = asyncio.run(second())
    assert [(k, e["txn"]) for k, e in events_of(one)] == [
        (SESSION_REVOKED, "t1"),
        (TOKEN_REVOKED, "t2"),
    ]
    assert events_of(one)[1][1]["jti"] == "g2"
    assert one["moreAvailable"] is True
    assert depth == 3
    assert two == {"sets": {}, "moreAvailable": False}  # t3's SET expired
    assert three == {"sets": {}, "moreAvailable": False}
    assert rig.gauge("jit_ssf_queue_depth", stream_id) == 0


def test_stream_changes_are_audited_or_refused(tmp_path: Path) -> None:
    """Each stream change leaves an audit record naming the stream and never the push
    secret; when the audit log refuses, the change does not happen (fail closed)."""
    rig = Rig(tmp_path / "ssf.db")

    async def body() -> tuple[list[dict[str, Any]], str]:
        created = await rig.transmitter.create(
            {
                "aud": "rs-1",
                "delivery": {
                    "method": "urn:ietf:rfc:8935",
                    "endpoint_url": "http://127.0.0.1:9/x",
                    "authorization_header": "Bearer s3cr3t-value",
                },
            },
            BASE,
        )
        rig.audit_fails = True
        with pytest.raises(CommitError):
            await rig.transmitter.create({"aud": "rs-2"}, BASE)
        with pytest.raises(CommitError):
            await rig.transmitter.delete(created["stream_id"])
        streams = rig.transmitter.streams()
        await rig.transmitter.stop()
        return streams, str(created["stream_id"])

    streams, stream_id = asyncio.run(body())
    assert [s["stream_id"] for s in streams] == [stream_id]
    assert [(r["event"], r["change"], r["aud"]) for r in rig.audited] == [
        ("ssf_stream_changed", "created", "rs-1")
    ]
    assert "s3cr3t" not in str(rig.audited) + str(streams)


def test_disabled_stream_keeps_nothing_and_verification_needs_a_live_stream(
    tmp_path: Path,
) -> None:
    """A disabled stream queues no SETs (SSF 1.0 §8.1.2) and refuses verification; enabled
    again, its verification SET carries the state."""
    rig = Rig(tmp_path / "ssf.db")

    async def body() -> tuple[Any, StreamError, Any]:
        stream = await rig.transmitter.create({}, BASE)
        sid = stream["stream_id"]
        await rig.transmitter.set_status({"stream_id": sid, "status": "disabled"})
        rig.transmitter.access_ended([rig.end("lost")])
        with pytest.raises(StreamError) as refused:
            rig.transmitter.verify({"stream_id": sid})
        await rig.transmitter.set_status({"stream_id": sid, "status": "enabled"})
        rig.transmitter.verify({"stream_id": sid, "state": "s-1"})
        answer = await rig.transmitter.poll(sid, {"returnImmediately": True})
        await rig.transmitter.stop()
        return stream, refused.value, answer

    stream, refused, answer = asyncio.run(body())
    assert stream["delivery"]["endpoint_url"] == f"{BASE}/ssf/poll/{stream['stream_id']}"
    assert refused.status == 400
    assert events_of(answer) == [(VERIFICATION, {"state": "s-1", "txn": None})]


@pytest.mark.parametrize(
    "body",
    [
        {"ack": "not a list"},
        {"maxEvents": -1},
        {"maxEvents": True},
        {"returnImmediately": "yes"},
        {"setErrs": []},
    ],
)
def test_bad_poll_requests_are_refused(tmp_path: Path, body: dict[str, Any]) -> None:
    """A poll body that is not RFC 8936's shape gets 400 invalid_request, and hands out
    nothing."""
    rig = Rig(tmp_path / "ssf.db")

    async def run() -> tuple[StreamError, str]:
        stream = await rig.transmitter.create({}, BASE)
        rig.transmitter.access_ended([rig.end("kept")])
        with pytest.raises(StreamError) as err:
            await rig.transmitter.poll(stream["stream_id"], body)
        await rig.transmitter.stop()
        return err.value, str(stream["stream_id"])

    err, stream_id = asyncio.run(run())
    assert (err.status, err.error) == (400, "invalid_request")
    assert rig.gauge("jit_ssf_queue_depth", stream_id) == 1

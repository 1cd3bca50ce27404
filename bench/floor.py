"""In-process measurements: the floor parts the sidecar cannot avoid, and the sweep cost.

These drive the sidecar's own classes directly (no fakes): `SigningKey.sign` with the key the
sidecar serves with, the journal's per-batch durable write (`AuditFile.write` + fsync +
`SqliteStore.apply` in one transaction) in a directory on the same file system as the
sidecar's state, and `Engine.sweep()` over an engine holding 100k active grants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.audit import AuditFile
from sidecar.cache import DecisionCache
from sidecar.clock import rfc3339
from sidecar.config import load
from sidecar.engine import Engine, EngineMetrics, engine_settings
from sidecar.events import Event, GrantIssued, Recorded, TaskBegun
from sidecar.journal import Journal
from sidecar.metrics import Metrics
from sidecar.model import Grant, Identity, Intent, Task, Tier
from sidecar.policy import OpaClient, build_input
from sidecar.store import Snapshot
from sidecar.store.sqlite import SqliteStore
from sidecar.tokens import KeyRing, load_or_create_key, new_grant_id

SUBJECT = "spiffe://jit.local/agent/dev"
IDENTITY = Identity(subject=SUBJECT, trust_domain="jit.local", method="dev")


def timed(fn: Callable[[], Any], n: int, prepare: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of n calls of `fn()` (`prepare()` runs untimed before each)."""
    samples = []
    for _ in range(n):
        if prepare is not None:
            prepare()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def claims_like_engine(grant_id: str, now: int) -> dict[str, Any]:
    """The claims `Engine._sign` builds for the JIT intent."""
    return {
        "iss": "https://jit-sidecar.local",
        "sub": SUBJECT,
        "client_id": SUBJECT,
        "aud": "tickets",
        "iat": now,
        "nbf": now,
        "exp": now + 120,
        "jti": grant_id,
        "scope": "tickets.update",
        "authorization_details": [
            {"type": "jit_intent", "actions": ["tickets.update"], "locations": ["tickets://t-4711"]}
        ],
        "txn": "t-" + new_grant_id(),
        "tier": "jit",
    }


class SignProbe:
    """B_sign: `SigningKey.sign` with the sidecar's own key, on the claims it signs."""

    def __init__(self, key_path: Path) -> None:
        self.key, _ = load_or_create_key(key_path, "EdDSA", create=False)
        self.claims = claims_like_engine(new_grant_id(), int(time.time()))
        self.samples(200)

    def samples(self, n: int) -> list[float]:
        return timed(lambda: self.key.sign(self.claims), n)


def grant_event(now: float, task_id: str, grant_id: str, kid: str) -> GrantIssued:
    """The `grant_issued` event the engine commits for the JIT intent."""
    return GrantIssued(
        time=rfc3339(now),
        task_id=task_id,
        grant_id=grant_id,
        subject=SUBJECT,
        intent={
            "action": "tickets.update",
            "resource": "tickets://t-4711",
            "justification": "bench: close duplicate ticket 4711",
            "context": {},
        },
        decision_id="4f0c3a56-2d7e-4c59-9a0e-0f7f3b1d2c11",
        tier="jit",
        scope=["tickets.update"],
        audience="tickets",
        ttl_seconds=120,
        ttl_limited_by="requested",
        expires_at=rfc3339(now + 120),
        reasons=["jit_write: write, admin or secret access on the agent's own domain"],
        kid=kid,
    )


class SyncProbe:
    """B_sync: the journal's durable write for a batch of one grant, i.e. what
    `Journal._write` does per batch: audit append + fsync, then the SQLite transaction.
    In its own files, on the same file system as the sidecar's state."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.audit = AuditFile(workdir / "audit.jsonl", fsync=True)
        self.store = SqliteStore(workdir / "state.db")
        self.pending: list[Event] = []
        self.samples(20)

    def _prepare(self) -> None:
        self.pending = [grant_event(time.time(), "t-bench", new_grant_id(), "bench-kid")]

    def _write(self) -> None:
        records = [e.record() for e in self.pending]
        self.audit.write(records)
        audited = [Recorded(r["seq"], e) for r, e in zip(records, self.pending, strict=True)]
        self.store.apply(audited, (), self.audit.seq)

    def samples(self, n: int) -> list[float]:
        return timed(self._write, n, self._prepare)

    def close(self) -> None:
        self.audit.close()
        self.store.close()


def opa_bodies(rotate_every: int) -> tuple[bytes, ...]:
    """The decision requests the sidecar sends for the JIT intent, for a task holding 0 ..
    rotate_every-1 grants (the bench's RequestGrant runs begin a new task every
    `rotate_every` grants, so these are the same inputs in the same proportions)."""
    import json

    now = time.time()
    task = Task(
        task_id="t-" + new_grant_id(),
        subject=SUBJECT,
        goal="bench",
        labels={},
        started_at=now,
        deadline=now + 3600,
        heartbeat_interval=5,
        last_heartbeat=now,
    )
    intent = Intent("tickets.update", "tickets://t-4711", "bench: close duplicate ticket 4711")
    grants = [
        Grant(
            grant_id=new_grant_id(),
            task_id=task.task_id,
            subject=SUBJECT,
            action=intent.action,
            resource=intent.resource,
            tier=Tier.JIT,
            audience="tickets",
            scope=("tickets.update",),
            issued_at=now,
            expires_at=now + 120,
            kid="k",
        )
        for _ in range(rotate_every)
    ]
    return tuple(
        json.dumps(
            {"input": build_input(IDENTITY, intent, task, grants[:i], 120, now)},
            separators=(",", ":"),
        ).encode()
        for i in range(rotate_every)
    )


class ManualClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def sweep_cost(
    workdir: Path, key_path: Path, opa_url: str, grants: int = 100_000, due: int = 1000
) -> dict[str, float]:
    """Seconds per `Engine.sweep()` with `grants` active grants: with nothing due, and with
    `due` grants expiring (which includes committing their revocation records)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_sweep_cost(workdir, key_path, opa_url, grants, due))


async def _sweep_cost(
    workdir: Path, key_path: Path, opa_url: str, n_grants: int, due: int
) -> dict[str, float]:
    gc.collect()
    gc.freeze()
    try:
        return await _sweep_cost_inner(workdir, key_path, opa_url, n_grants, due)
    finally:
        gc.unfreeze()


async def _sweep_cost_inner(
    workdir: Path, key_path: Path, opa_url: str, n_grants: int, due: int
) -> dict[str, float]:
    config = load(
        {
            "state": f"sqlite:{workdir / 'state.db'}",
            "audit_log": str(workdir / "audit.jsonl"),
            "max_tasks_per_identity": 100_000,
        },
        env={},
        serving=False,
    )
    key, _ = load_or_create_key(key_path, "EdDSA", create=False)
    t0 = 1_900_000_000.0
    clock = ManualClock(t0)
    store = SqliteStore(workdir / "state.db")
    audit = AuditFile(workdir / "audit.jsonl", fsync=True)
    batches: list[float] = []
    journal = Journal(audit, store, on_batch=lambda n, seconds: batches.append(seconds))
    per_task = 1000
    tasks = [
        Task(
            task_id=f"t-sweep-{i}",
            subject=SUBJECT,
            goal="bench",
            labels={},
            started_at=t0,
            deadline=t0 + 86400,
            heartbeat_interval=86400,
            last_heartbeat=t0,
        )
        for i in range(n_grants // per_task)
    ]
    groups = 10
    grants = []
    events: list[Event] = [
        TaskBegun(
            time=rfc3339(t0),
            task_id=t.task_id,
            subject=SUBJECT,
            goal="bench",
            labels={},
            expires_at=rfc3339(t.deadline),
            heartbeat_interval_seconds=t.heartbeat_interval,
        )
        for t in tasks
    ]
    for i in range(n_grants):
        task = tasks[i // per_task]
        # `groups` x `due` grants expire at t0+10, t0+20, ...; the rest much later.
        group = i % (n_grants // due)
        expires = t0 + 10 * (group + 1) if group < groups else t0 + 3600
        grant = Grant(
            grant_id=new_grant_id(),
            task_id=task.task_id,
            subject=SUBJECT,
            action="docs.read",
            resource=f"docs://fill/{i // per_task}",
            tier=Tier.STANDING,
            audience="docs",
            scope=("docs.read",),
            issued_at=t0,
            expires_at=expires,
            kid=key.kid,
        )
        grants.append(grant)
        task.grant_ids.append(grant.grant_id)
        event = grant_event(t0, task.task_id, grant.grant_id, key.kid)
        events.append(dataclasses.replace(event, expires_at=rfc3339(expires)))
    store.apply([Recorded(0, e) for e in events], (), 0)
    del events
    engine = Engine(
        engine_settings(config),
        policy=OpaClient(opa_url, config.opa_decision_path, config.opa_timeout),
        keys=KeyRing(key),
        store=store,
        journal=journal,
        metrics=EngineMetrics(Metrics()),
        clock=clock,
        cache=DecisionCache(),
    )
    engine.restore(Snapshot(tasks=tasks, grants=grants))
    del grants, tasks
    journal.start()
    try:
        idle = []
        for _ in range(1000):
            s = time.perf_counter()
            await engine.sweep()
            idle.append(time.perf_counter() - s)
        busy, commits = [], []
        for g in range(groups):
            clock.t = t0 + 10 * (g + 1) + 0.5
            batches.clear()
            s = time.perf_counter()
            ended = await engine.sweep()
            busy.append(time.perf_counter() - s)
            commits.append(sum(batches))
            if ended != due:
                raise RuntimeError(f"sweep ended {ended} grants, expected {due}")
        # A full collection with this many grants alive (what existed before they were
        # made is frozen out, as serve() does after start-up): the event-loop pause the
        # cyclic GC adds each time the live set has grown by a quarter.
        pauses = timed(lambda: gc.collect(2), 5)
        return {
            "active": float(n_grants),
            "gc_full_s": statistics.median(pauses),
            "sweep_0_due_s": statistics.median(idle),
            "sweep_1k_due_s": statistics.median(busy),
            "sweep_1k_due_commit_s": statistics.median(commits),
        }
    finally:
        await asyncio.to_thread(journal.close)
        store.close()

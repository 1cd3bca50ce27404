"""RedisStore against a real redis-server and real SQLite, without a sidecar process: the
transactional outbox keeps every fleet change while Redis is down, refuses new grants, and
replays the changes in order once Redis is back."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import rfc3339
from sidecar.config import load
from sidecar.events import Recorded, from_record
from sidecar.metrics import Metrics
from sidecar.store.redis import RedisStore, SharedStateUnavailable
from sidecar.store.sqlite import SqliteStore
from tests.harness import RedisServer, wait_for

T0 = 1_900_000_000.0  # far enough ahead that nothing expires during the test


def typed(records: list[dict[str, Any]]) -> list[Recorded]:
    """The events the journal hands the store for these audit records."""
    return [Recorded(r["seq"], from_record(r)) for r in records]


class Log:
    """Audit-like records with increasing seq, shaped as the engine writes them."""

    def __init__(self) -> None:
        self.seq = 0

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"event": event, "time": rfc3339(T0), "seq": self.seq, **fields}

    def task(self, task_id: str) -> dict[str, Any]:
        return self.record(
            "task_begun",
            task_id=task_id,
            subject="spiffe://example.org/x/docs",
            goal="g",
            labels={},
            expires_at=rfc3339(T0 + 300),
            heartbeat_interval_seconds=5,
        )

    def grant(self, task_id: str, grant_id: str) -> dict[str, Any]:
        return self.record(
            "grant_issued",
            task_id=task_id,
            grant_id=grant_id,
            subject="spiffe://example.org/x/docs",
            intent={"action": "docs.read", "resource": "docs://a", "justification": ""},
            tier="jit",
            scope=["docs.read"],
            audience="docs",
            ttl_seconds=120,
            expires_at=rfc3339(T0 + 120),
            kid="kid-a",
        )

    def revoke(self, task_id: str, grant_id: str) -> dict[str, Any]:
        return self.record(
            "grant_revoked",
            task_id=task_id,
            grant_id=grant_id,
            subject="spiffe://example.org/x/docs",
            tier="jit",
            reason="revoked_by_agent",
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis").start()
    yield redis
    redis.stop()


def open_store(tmp_path: Path, url: str, prefix: str, metrics: Metrics) -> RedisStore:
    config = load(
        {
            "identity": "dev",
            "state": url,
            "local_state": f"sqlite:{tmp_path / 'state.db'}",
            "redis_prefix": prefix,
            "redis_timeout": "0.2",
        },
        env={},
    )
    return RedisStore(config, SqliteStore(tmp_path / "state.db"), fleet_id="a", metrics=metrics)


def test_outbox_keeps_order_and_refuses_grants_while_redis_is_down(
    tmp_path: Path, server: RedisServer
) -> None:
    """With Redis down: changes queue durably, a live grant_issued fails once (and not again
    when the journal re-applies its batch), nothing is queued twice; when Redis returns the
    replay pushes everything in order and the outbox empties."""
    prefix = "t" + secrets.token_hex(4)
    metrics = Metrics()
    log = Log()
    store = open_store(tmp_path, server.url, prefix, metrics)
    try:
        first = [log.task("t1"), log.grant("t1", "g1"), log.grant("t1", "g2")]
        store.apply(typed(first), (), log.seq)
        pushed_while_up = store.outbox.depth
        server.stop()
        store.live = True
        batch = [log.grant("t1", "g3")]
        with pytest.raises(SharedStateUnavailable):
            store.apply(typed(batch), (), log.seq)
        store.apply(typed(batch), (), log.seq)  # the journal's retry of the same batch
        revocations = [log.revoke("t1", g) for g in ("g2", "g1", "g3")]
        for record in revocations:
            store.apply(typed([record]), (), record["seq"])
        depth_while_down = store.outbox.depth
        issuable_while_down = store.issuable()
        server.start()  # same port, empty
        wait_for(lambda: store.outbox.depth == 0, 10, what="the outbox replay")
        with server.client() as client:
            feed = client.xrange(f"{{{prefix}}}:feed")
            registered = client.hgetall(f"{prefix}:{{t:t1}}:grant:g3")
            index = client.zrange(f"{prefix}:{{t:t1}}:grants", 0, -1)
        replay_count = sum(
            s.value
            for s in next(iter(metrics.fleet_replay_lag.collect())).samples
            if s.name.endswith("_count")
        )
        issuable_after = store.issuable()
    finally:
        store.close()
    assert pushed_while_up == 0
    assert depth_while_down == 4  # g3's registration (queued once) and three revocations
    assert issuable_while_down is False
    assert [json.loads(fields["m"])[1] for _, fields in feed if fields["kind"] == "rev"] == [
        "g2",
        "g1",
        "g3",
    ]
    assert registered["state"] == "revoked"
    assert sorted(index) == ["g3"]  # g1 and g2 were registered before Redis lost its data
    assert replay_count >= 4
    assert issuable_after is True

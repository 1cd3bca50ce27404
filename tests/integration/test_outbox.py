"""The transactional outbox on its own: real SQLite, a real redis-server (the session one)
and real pipelines; `emit` is a callback that records what it is asked to push and, in one
test, fails the way a bug would (a fault no real part produces on demand)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import load
from sidecar.metrics import Metrics
from sidecar.store.outbox import Change, Outbox
from sidecar.store.redis_connect import connect_sync
from sidecar.store.sqlite import SqliteStore
from tests.harness import RedisServer, wait_for


class Emitter:
    """Records every change pushed; raises while `broken` is set."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, dict[str, Any]]] = []
        self.broken = False

    def __call__(self, pipe: Any, op: str, payload: dict[str, Any], exp: float, now: float) -> None:
        if self.broken:
            raise KeyError("a bug in emit")
        pipe.ping()
        self.pushed.append((op, payload))


@pytest.fixture
def parts(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[SqliteStore, Any]]:
    config = load({"identity": "dev", "state": redis_server.url}, env={})
    local = SqliteStore(tmp_path / "state.db")
    client = connect_sync(config, 1.0)
    yield local, client
    client.close()
    local.close()


def queue(outbox: Outbox, local: SqliteStore, changes: list[Change]) -> bool:
    """Queue in a transaction of the local store, as RedisStore.apply does; then push."""
    local.apply([], (), 0, also=lambda conn: outbox.queue(conn, [(1, c) for c in changes]))
    return outbox.push(len(changes))


def outbox_rows(local: SqliteStore) -> int:
    return int(local.writer.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])


def test_push_sends_live_changes_in_order_and_drops_expired_ones(
    parts: tuple[SqliteStore, Any],
) -> None:
    """After the commit, every queued change still worth knowing is pushed in queue order,
    one already past its expiry is dropped, and the outbox is empty."""
    local, client = parts
    emit = Emitter()
    outbox = Outbox(local, client, Metrics(), emit=emit, republish=lambda conn: [])
    try:
        later = time.time() + 60
        pushed = queue(
            outbox,
            local,
            [
                Change("revoke", {"n": 1}, later),
                Change("revoke", {"n": 2}, time.time() - 1),
                Change("task", {"n": 3}, later),
            ],
        )
    finally:
        outbox.close()
    assert pushed is True
    assert emit.pushed == [("revoke", {"n": 1}), ("task", {"n": 3})]
    assert (outbox.depth, outbox_rows(local)) == (0, 0)
    assert outbox.unavailable_since is None


def test_a_failing_push_keeps_the_rows_until_the_replay_gets_through(
    parts: tuple[SqliteStore, Any],
) -> None:
    """A push that fails (here a bug in emit) loses nothing: the rows stay queued, the outbox
    says why and counts as unavailable, and the replay thread pushes them, once, in order,
    when pushing works again; then the outbox is available again."""
    local, client = parts
    emit = Emitter()
    metrics = Metrics()
    outbox = Outbox(local, client, metrics, emit=emit, republish=lambda conn: [])
    try:
        emit.broken = True
        later = time.time() + 60
        pushed = queue(outbox, local, [Change("task", {"n": 1}, later)])
        second = queue(outbox, local, [Change("revoke", {"n": 2}, later)])
        while_down = (outbox.depth, outbox_rows(local), outbox.problem)
        down = outbox.unavailable_since is not None
        emit.broken = False
        wait_for(lambda: outbox.unavailable_since is None, 10, what="the replay")
    finally:
        outbox.close()
    errors = metrics.registry.get_sample_value("jit_fleet_redis_errors_total", {"side": "write"})
    assert (pushed, second) == (False, False)
    assert while_down == (2, 2, "KeyError: 'a bug in emit'")
    assert down is True
    assert emit.pushed == [("task", {"n": 1}), ("revoke", {"n": 2})]
    assert (outbox.depth, outbox_rows(local)) == (0, 0)
    assert errors == 1

"""Redis sizing for a fleet, and the outbox replay: real redis-server, real SQLite.

    .venv/bin/python bench/fleet_sizing.py [--grants 20000] [--replay 5000]

Feeds `RedisStore` the audit records a sidecar would write (tasks of 10 grants each, then a
revocation of every grant), in group-commit batches, and reads Redis' INFO used_memory
before and after each step: bytes per active task, per active grant (its registration and
index entry) and per revocation (index member + stream entry, and without the stream entry
once the retention has trimmed it). Then stops Redis, revokes `--replay` grants (they queue
in the outbox), restarts Redis and times the replay until the outbox is empty. Also the
in-process view's memory per revocation (tracemalloc). Prints the figures and writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.clock import rfc3339  # noqa: E402
from sidecar.config import load  # noqa: E402
from sidecar.events import Recorded, from_record  # noqa: E402
from sidecar.metrics import Metrics  # noqa: E402
from sidecar.revocations import Revocation, RevocationView  # noqa: E402
from sidecar.store.redis import RedisStore  # noqa: E402
from sidecar.store.sqlite import SqliteStore  # noqa: E402
from tests.harness import RedisServer, wait_for  # noqa: E402

BATCH = 256
SUBJECT = "spiffe://example.org/ns/payments/sa/refund-agent"


class Records:
    def __init__(self) -> None:
        self.seq = 0
        self.now = time.time()

    def make(self, event: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"event": event, "time": rfc3339(self.now), "seq": self.seq, **fields}

    def task(self, task_id: str) -> dict[str, Any]:
        return self.make(
            "task_begun",
            task_id=task_id,
            subject=SUBJECT,
            goal="refund duplicate charges",
            labels={},
            expires_at=rfc3339(self.now + 3600),
            heartbeat_interval_seconds=5,
        )

    def grant(self, task_id: str, grant_id: str) -> dict[str, Any]:
        return self.make(
            "grant_issued",
            task_id=task_id,
            grant_id=grant_id,
            subject=SUBJECT,
            intent={"action": "payments.refund", "resource": f"payments://orders/{grant_id}"},
            tier="jit",
            scope=["payments.refund"],
            audience="payments-api",
            ttl_seconds=300,
            expires_at=rfc3339(self.now + 900),
            kid="uV3hQ1Jm8Qy3jP3y7v3Zl3q6Yk0d3o6p0wq3bX8Hq2c",
        )

    def revoke(self, task_id: str, grant_id: str) -> dict[str, Any]:
        return self.make(
            "grant_revoked",
            task_id=task_id,
            grant_id=grant_id,
            subject=SUBJECT,
            tier="jit",
            reason="completed",
        )


def apply_all(store: RedisStore, records: list[dict[str, Any]]) -> None:
    for i in range(0, len(records), BATCH):
        chunk = records[i : i + BATCH]
        store.apply([Recorded(r["seq"], from_record(r)) for r in chunk], (), chunk[-1]["seq"])


def settle(redis: RedisServer) -> int:
    time.sleep(0.2)
    return redis.used_memory()


def open_store(root: Path, url: str, name: str) -> RedisStore:
    config = load(
        {
            "identity": "dev",
            "state": url,
            "local_state": f"sqlite:{root / name}.db",
            "redis_prefix": "bench",
            "redis_timeout": "1",
        },
        env={},
    )
    return RedisStore(config, SqliteStore(root / f"{name}.db"), fleet_id=name, metrics=Metrics())


def sizing(root: Path, redis: RedisServer, grants: int) -> dict[str, Any]:
    store = open_store(root, redis.url, "sizing")
    rec = Records()
    tasks = max(1, grants // 10)
    ids = [(f"t-{i // 10:06d}-bench-task-id", f"g{i:08d}-0123456789abcd") for i in range(grants)]
    try:
        m0 = settle(redis)
        apply_all(store, [rec.task(f"t-{t:06d}-bench-task-id") for t in range(tasks)])
        m1 = settle(redis)
        apply_all(store, [rec.grant(t, g) for t, g in ids])
        m2 = settle(redis)
        with redis.client() as client:
            one_grant = client.memory_usage(f"bench:{{t:{ids[0][0]}}}:grant:{ids[0][1]}")
            one_index = client.memory_usage(f"bench:{{t:{ids[0][0]}}}:grants")
            one_task = client.memory_usage(f"bench:{{t:{ids[0][0]}}}:task")
        apply_all(store, [rec.revoke(t, g) for t, g in ids])
        m3 = settle(redis)
        with redis.client() as client:
            index = client.memory_usage("{bench}:revocations", samples=0)
            feed = client.memory_usage("{bench}:feed", samples=0)
            client.xtrim("{bench}:feed", maxlen=0)
        m4 = settle(redis)
    finally:
        store.close()
    return {
        "tasks": tasks,
        "grants": grants,
        "bytes_per_active_task": round((m1 - m0) / tasks),
        "bytes_per_active_grant": round((m2 - m1) / grants),
        "bytes_per_revocation_with_stream_entry": round((m3 - m2) / grants),
        "bytes_per_revocation_after_stream_trim": round((m4 - m2) / grants),
        "memory_usage_one_grant_hash": one_grant,
        "memory_usage_task_index_10_grants": one_index,
        "memory_usage_one_task_hash": one_task,
        "revocation_index_bytes_per_entry": round(index / grants),
        "stream_bytes_per_entry": round(feed / grants),
    }


def replay(root: Path, redis: RedisServer, count: int) -> dict[str, Any]:
    store = open_store(root, redis.url, "replay")
    rec = Records()
    ids = [(f"t-{i // 10:06d}-replay", f"r{i:08d}-0123456789abcd") for i in range(count)]
    try:
        apply_all(store, [rec.task(t) for t in sorted({t for t, _ in ids})])
        apply_all(store, [rec.grant(t, g) for t, g in ids])
        redis.stop()
        started = time.perf_counter()
        apply_all(store, [rec.revoke(t, g) for t, g in ids])
        queue_seconds = time.perf_counter() - started
        queued = store.outbox.depth
        redis.start()
        back = time.perf_counter()
        wait_for(lambda: store.outbox.depth == 0, 120, interval=0.001, what="the replay")
        drained = time.perf_counter() - back
    finally:
        store.close()
    return {
        "queued_revocations": queued,
        "queue_seconds_while_down": round(queue_seconds, 3),
        "replay_seconds_after_redis_back": round(drained, 3),
        "replay_rate_per_second": round(queued / drained) if drained else None,
        "note": "includes up to 0.25 s until the replay thread's next probe notices Redis",
    }


def view_memory(entries: int) -> dict[str, Any]:
    now = time.time()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    view = RevocationView(2.0)
    for i in range(entries):
        view.add(Revocation("grant", f"g{i:08d}-0123456789abcd", 0.0, "completed", now + 900))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "view_entries": len(view),
        "view_bytes_per_revocation": round((after - before) / entries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=20000)
    parser.add_argument("--replay", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jit-sizing-") as tmp:
        root = Path(tmp)
        redis = RedisServer(root / "redis").start()
        try:
            result = {
                "benchmark": "fleet sizing on Redis and outbox replay",
                "redis_version": _redis_version(redis),
                **sizing(root, redis, args.grants),
                **replay(root, redis, args.replay),
                **view_memory(args.grants),
                "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        finally:
            redis.stop()
    for key, value in result.items():
        print(f"{key:42s} {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fleet-sizing-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def _redis_version(redis: RedisServer) -> str:
    with redis.client() as client:
        return str(client.info("server")["redis_version"])


if __name__ == "__main__":
    main()

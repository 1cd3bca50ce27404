"""Fleet revocation propagation: real OPA, real Redis, real sidecar processes on loopback.

    .venv/bin/python bench/propagation.py [--trials 300] [--cluster]

Each trial issues a grant on sidecar A, checks that sidecar B introspects it as active, then
revokes it on A (RevokeGrant) and, from the moment that call returns, introspects the token
on B in a tight loop until B answers inactive. The latency is that interval (so it includes
one introspection round trip). Also reports B's own view of the lag
(jit_fleet_propagation_seconds: stream entry → view), and what sharing costs the grant
path: RequestGrant and RevokeGrant on A against the same calls on a sidecar with SQLite
only. Prints the figures and writes JSON to
bench/results/. Not part of `make test` (`make bench-propagation`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import (  # noqa: E402
    OpaServer,
    RedisClusterServers,
    RedisServer,
    SidecarProcess,
    wait_for,
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sqlite_baseline(local: SidecarProcess, trials: int) -> tuple[list[float], list[float]]:
    """The same RequestGrant / RevokeGrant calls on a sidecar without shared state."""
    grants: list[float] = []
    revokes: list[float] = []
    with local.client() as c:
        task = c.begin_task("baseline", max_duration=3600)
        for i in range(trials):
            started = time.perf_counter()
            grant = c.request_grant(task.task_id, "docs.read", f"docs://base/{i}", ttl_seconds=300)
            grants.append(time.perf_counter() - started)
            started = time.perf_counter()
            c.revoke_grant(grant.grant_id)
            revokes.append(time.perf_counter() - started)
    return grants, revokes


def run(trials: int, cluster: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp:
        root = Path(tmp)
        opa = OpaServer(root / "opa")
        opa.workdir.mkdir()
        opa.start()
        redis: RedisServer | RedisClusterServers
        redis = RedisClusterServers(root / "cluster") if cluster else RedisServer(root / "redis")
        redis.start()
        flags = ["--redis-cluster", "true"] if cluster else []
        sidecars = [
            SidecarProcess(
                root / name,
                opa.url,
                "--redis-prefix",
                "bench",
                "--fleet-id",
                name,
                "--log-level",
                "warning",
                *flags,
                shared=redis.url,
            )
            for name in ("a", "b")
        ]
        a, b = sidecars
        local = SidecarProcess(root / "local", opa.url, "--log-level", "warning")
        sidecars.append(local)
        try:
            for s in sidecars:
                s.start()
            latencies: list[float] = []
            polls: list[int] = []
            grant_calls: list[float] = []
            revoke_calls: list[float] = []
            with a.client() as ca, b.client() as cb:
                task = ca.begin_task("propagation bench", max_duration=3600)
                for i in range(trials):
                    started = time.perf_counter()
                    grant = ca.request_grant(
                        task.task_id, "docs.read", f"docs://bench/{i}", ttl_seconds=300
                    )
                    grant_calls.append(time.perf_counter() - started)
                    wait_for(lambda g=grant: cb.introspect(g.token).active, 5, interval=0.001)
                    started = time.perf_counter()
                    ca.revoke_grant(grant.grant_id)
                    returned = time.perf_counter()
                    revoke_calls.append(returned - started)
                    n = 0
                    while True:
                        n += 1
                        if not cb.introspect(grant.token).active:
                            break
                    latencies.append(time.perf_counter() - returned)
                    polls.append(n)
            baseline_grant, baseline_revoke = sqlite_baseline(local, trials)
            view_count = b.metric("jit_fleet_propagation_seconds_count")
            view_sum = b.metric("jit_fleet_propagation_seconds_sum")
        finally:
            for s in sidecars:
                s.stop()
            redis.stop()
            opa.stop()
    ms = [x * 1000 for x in latencies]

    def p(samples: list[float], q: float) -> float:
        return round(1000 * pct(samples, q), 3)

    return {
        "benchmark": "fleet revocation propagation (RevokeGrant on A returns → B inactive)",
        "redis": "cluster (3 masters)" if cluster else "single instance",
        "trials": trials,
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(pct(ms, 0.95), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "introspections_per_trial_p50": statistics.median(polls),
        "receiver_view_lag_mean_ms": round(1000 * view_sum / view_count, 3) if view_count else None,
        "request_grant_fleet_p50_p99_ms": [p(grant_calls, 0.5), p(grant_calls, 0.99)],
        "request_grant_sqlite_p50_p99_ms": [p(baseline_grant, 0.5), p(baseline_grant, 0.99)],
        "revoke_grant_fleet_p50_p99_ms": [p(revoke_calls, 0.5), p(revoke_calls, 0.99)],
        "revoke_grant_sqlite_p50_p99_ms": [p(baseline_revoke, 0.5), p(baseline_revoke, 0.99)],
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--cluster", action="store_true", help="against a 3-master Redis Cluster")
    args = parser.parse_args()
    result = run(args.trials, args.cluster)
    print(
        f"{result['trials']} trials on {result['redis']}: p50 {result['p50_ms']} ms, "
        f"p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms "
        f"(B's view lag mean {result['receiver_view_lag_mean_ms']} ms; "
        f"{result['introspections_per_trial_p50']} introspections per trial at p50)"
    )
    print(
        "RequestGrant p50/p99 ms: fleet {} vs SQLite only {}; RevokeGrant: fleet {} vs {}".format(
            result["request_grant_fleet_p50_p99_ms"],
            result["request_grant_sqlite_p50_p99_ms"],
            result["revoke_grant_fleet_p50_p99_ms"],
            result["revoke_grant_sqlite_p50_p99_ms"],
        )
    )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-cluster" if args.cluster else ""
    path = out / f"propagation{suffix}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

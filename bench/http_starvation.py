"""Grants and introspection while a local user holds idle HTTP connections (issue 13).

    .venv/bin/python bench/http_starvation.py [--attackers 300] [--samples 300] [--nofile 256]

A real sidecar (dev identity, real OPA) runs under `prlimit --nofile=N:N`. For 0 and then
`--attackers` idle connections (each sent half a request head and holds it; reopened half a
second after the sidecar closes it), measures the latency of RequestGrant over gRPC and of
POST /introspect (with the credential) on a kept-alive session and on a new connection per
request. Prints p50/p99 and writes JSON to bench/results/. Not part of `make test`.
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

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import OpaServer, running  # noqa: E402
from tests.slowloris import Attackers, LimitedSidecar, open_fds  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(samples, 0.50) * 1000, 2),
        "p99_ms": round(pct(samples, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(samples) * 1000, 2),
    }


def measure(sidecar: LimitedSidecar, samples: int) -> dict[str, Any]:
    grants: list[float] = []
    tokens: list[str] = []
    with sidecar.client() as c:
        for i in range(samples):
            if i % 40 == 0:  # the policy allows 50 grants per task
                task = c.begin_task("bench", max_duration=3600)
            started = time.perf_counter()
            grant = c.request_grant(task.task_id, "docs.read", f"docs://b/{i}", ttl_seconds=600)
            grants.append(time.perf_counter() - started)
            tokens.append(grant.token)
    kept: list[float] = []
    fresh: list[float] = []
    failures = 0
    url = sidecar.http + "/introspect"
    with requests.Session() as session:
        for token in tokens:
            started = time.perf_counter()
            r = session.post(url, data={"token": token}, headers=sidecar.http_auth, timeout=10)
            kept.append(time.perf_counter() - started)
            failures += r.status_code != 200 or r.json().get("active") is not True
    for token in tokens:
        started = time.perf_counter()
        r = requests.post(
            url,
            data={"token": token},
            headers=sidecar.http_auth | {"Connection": "close"},
            timeout=10,
        )
        fresh.append(time.perf_counter() - started)
        failures += r.status_code != 200 or r.json().get("active") is not True
    assert sidecar.proc is not None
    return {
        "request_grant": summary(grants),
        "introspect_keepalive": summary(kept),
        "introspect_new_connection": summary(fresh),
        "failures": failures,
        "open_fds": open_fds(sidecar.proc.pid),
    }


def run(attackers: int, samples: int, nofile: int) -> dict[str, Any]:
    LimitedSidecar.nofile = nofile
    out: dict[str, Any] = {
        "attackers": attackers,
        "samples": samples,
        "nofile": nofile,
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="jit-http-bench-") as tmp:
        work = Path(tmp)
        (work / "opa").mkdir()
        opa = OpaServer(work / "opa").start()
        try:
            with running(LimitedSidecar(work / "sidecar", opa.url)) as sidecar:
                measure(sidecar, 20)  # warm-up
                out["idle"] = measure(sidecar, samples)
                with Attackers(sidecar.http_port, attackers) as attack:
                    out["under_attack"] = measure(sidecar, samples)
                    out["attacker_reconnects"] = attack.reconnects
        finally:
            opa.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--nofile", type=int, default=256)
    args = parser.parse_args()
    result = run(args.attackers, args.samples, args.nofile)
    for phase in ("idle", "under_attack"):
        r = result[phase]
        print(
            f"{phase:13s} RequestGrant p50 {r['request_grant']['p50_ms']} ms "
            f"p99 {r['request_grant']['p99_ms']} ms | /introspect keep-alive p50 "
            f"{r['introspect_keepalive']['p50_ms']} ms p99 {r['introspect_keepalive']['p99_ms']} "
            f"ms | new connection p50 {r['introspect_new_connection']['p50_ms']} ms p99 "
            f"{r['introspect_new_connection']['p99_ms']} ms | failures {r['failures']} | "
            f"fds {r['open_fds']}"
        )
    out = ROOT / "bench" / "results" / "http_starvation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if result["under_attack"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

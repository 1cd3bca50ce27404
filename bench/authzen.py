"""What the AuthZEN endpoint costs over the OPA call underneath, in one run.

    .venv/bin/python -m bench.authzen [--requests 2000] [--batch 20] [--durability fsync|flush]

Starts a real `opa run --server` on rego/ and a real sidecar (dev identity, a bearer
credential on the HTTP listener), then measures, each over one keep-alive HTTP/1.1
connection, c=1:

- raw OPA: POST /v1/data/jit/authzen/decision with the AuthZEN request as input (the call
  the sidecar makes for a single evaluation);
- single: POST /access/v1/evaluation on the sidecar (parse, OPA, audit append, count,
  answer), answered by the listener's front (sidecar/http_front.py);
- single through aiohttp: the same on a connection the front handed to aiohttp (it asked
  `GET /healthz` first), i.e. the path every evaluation took before the front;
- batch: POST /access/v1/evaluations with `--batch` items (one OPA round trip), against
  `--batch` singles in a row.

Raw OPA and the single evaluations are timed alternately, call after call, so that all see
the same background load (the machine is shared); the batch and the singles in a row
likewise, round after round. Prints p50/p90/p99 in ms, the ratios docs/performance.md
reports and the 1-minute load average. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import OpaServer, SidecarProcess, running

CREDENTIAL = "bench-authzen-credential-0123456789"
WARMUP = 200
DEV = "spiffe://jit.local/agent/dev"
REQUEST = {
    "subject": {"type": "agent", "id": DEV},
    "action": {"name": "tickets.update"},
    "resource": {"type": "uri", "id": "tickets://t-1001"},
    "context": {
        "justification": "customer asked to close it",
        "task": {"id": "t-1", "labels": {"purpose": "support"}},
    },
}


def _alternating(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, list[float]]:
    """Each call timed `n` times, in turn: a, b, a, b, … (after a warm-up of each)."""
    for _ in range(min(WARMUP, n)):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def _poster(
    conn: http.client.HTTPConnection, path: str, body: Any, headers: dict[str, str]
) -> Callable[[], Any]:
    payload = json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **headers}

    def call() -> Any:
        conn.request("POST", path, payload, sent)
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {answer}")
        return answer

    return call


def _stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50": q[49], "p90": q[89], "p99": q[98]}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per figure (2000)")
    parser.add_argument("--batch", type=int, default=20, help="items per batch (20)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--durability", choices=("fsync", "flush"), default="fsync", help="the sidecar's (fsync)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        opa = OpaServer(work).start()
        token = work / "http-token"
        token.write_text(CREDENTIAL)
        sidecar = SidecarProcess(
            work / "sidecar",
            opa.url,
            "--http-token-file",
            str(token),
            "--durability",
            args.durability,
            # As bench.run: on 2 shared cores a batch's OPA query can queue past the
            # production default (250 ms), and a timed-out decision is a denial.
            "--opa-timeout",
            "2",
        )
        try:
            with running(sidecar):
                figures = _run(opa, sidecar, args.requests, args.batch)
        finally:
            opa.stop()
    for name, value in figures.items():
        if isinstance(value, dict):
            shown = " / ".join(f"{v:.3f}" for v in value.values())
            print(f"{name:<44} p50/p90/p99 {shown} ms")
        else:
            print(f"{name:<44} {value:.2f}")
    if args.json:
        figures["durability"] = args.durability
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _run(opa: OpaServer, sidecar: SidecarProcess, n: int, size: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {CREDENTIAL}"}
    to_opa = http.client.HTTPConnection("127.0.0.1", opa.port, timeout=10)
    to_sidecar = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=10)
    handed_over = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=10)
    handed_over.request("GET", "/healthz")  # not the front's: aiohttp serves it from now on
    handed_over.getresponse().read()
    raw = _poster(to_opa, "/v1/data/jit/authzen/decision", {"input": REQUEST}, {})
    single = _poster(to_sidecar, "/access/v1/evaluation", REQUEST, auth)
    through_aiohttp = _poster(handed_over, "/access/v1/evaluation", REQUEST, auth)
    items = [{"resource": {"type": "uri", "id": f"tickets://t-{1000 + i}"}} for i in range(size)]
    batch_body = {**REQUEST, "evaluations": items}
    batch = _poster(to_sidecar, "/access/v1/evaluations", batch_body, auth)
    singles = [
        _poster(to_sidecar, "/access/v1/evaluation", {**REQUEST, **item}, auth) for item in items
    ]
    assert raw()["result"]["decision"] is True
    assert single()["decision"] is True
    assert through_aiohttp() == single()
    assert all(e["decision"] for e in batch()["evaluations"])

    def in_a_row() -> None:
        for call in singles:
            call()

    rounds = max(50, n // size)
    names = (
        "raw OPA decision (jit/authzen/decision)",
        "single evaluation",
        "single evaluation through aiohttp",
        f"batch of {size} (/evaluations)",
        f"{size} single evaluations in a row",
    )
    times = _alternating({names[0]: raw, names[1]: single, names[2]: through_aiohttp}, n)
    times |= _alternating({names[3]: batch, names[4]: in_a_row}, rounds)
    figures: dict[str, Any] = {name: _stats(times[name]) for name in names}
    figures["single p50 / raw OPA p50"] = figures[names[1]]["p50"] / figures[names[0]]["p50"]
    figures["through aiohttp p50 / raw OPA p50"] = (
        figures[names[2]]["p50"] / figures[names[0]]["p50"]
    )
    figures[f"{size} singles p50 / batch p50"] = figures[names[4]]["p50"] / figures[names[3]]["p50"]
    figures["load average (1 min)"] = os.getloadavg()[0]
    return figures


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end RPC latency by identity mode: a real sidecar, real OPA, real Unix socket.

    .venv/bin/python bench/identity_rpc_bench.py [--n 2000]

Times Heartbeat (authenticate + an in-memory task check, no OPA, no journal write) and
RequestGrant (standing read: OPA + journal + signing) from one synchronous client, in dev
mode and in jwt-svid mode (ES256 SVID, verified-token cache warm after the first call).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.tokens import generate_private_key, write_private_key
from tests.harness import OpaServer, SidecarProcess
from tests.identity_kit import TrustDomain


def timed(fn: object, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def run(root: Path, opa: OpaServer, mode: str, n: int) -> dict[str, tuple[float, float]]:
    domain = TrustDomain.create("jit.local")
    bundle = domain.write_bundle(root / f"{mode}.jwks")
    key = root / f"{mode}-key.pem"
    write_private_key(key, generate_private_key("EdDSA"))
    extra = ["--signing-key", str(key)]
    if mode == "jwt-svid":
        extra += ["--trust-bundle", f"jit.local={bundle}"]
    process = SidecarProcess(root / mode, opa.url, *extra, identity=mode)
    process.extra.append("--log-level=warning")
    process.start()
    token = domain.svid("agent/dev", ttl=3600) if mode == "jwt-svid" else None
    try:
        with process.client(identity_token=token) as c:
            task = c.begin_task("bench", max_duration=3600)
            beat = timed(lambda: c.heartbeat(task.task_id), n)
            grant = timed(
                lambda: c.request_grant(task.task_id, "docs.read", "docs://handbook/intro"),
                min(n, 500),
            )
    finally:
        process.stop()
    return {"Heartbeat": beat, "RequestGrant": grant}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "opa").mkdir()
        opa = OpaServer(root / "opa").start()
        try:
            results = {mode: run(root, opa, mode, n) for mode in ("dev", "jwt-svid")}
        finally:
            opa.stop()
    print(f"{'mode':10s} {'rpc':14s} {'p50 µs':>8s} {'p99 µs':>8s}")
    for mode, rows in results.items():
        for rpc, (p50, p99) in rows.items():
            print(f"{mode:10s} {rpc:14s} {p50:8.0f} {p99:8.0f}")


if __name__ == "__main__":
    main()

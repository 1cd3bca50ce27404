"""Shared Signals revocation latency: real OPA, a real sidecar process, a resource server's
`TokenVerifier` in receiver mode, all on loopback.

    .venv/bin/python bench/ssf_latency.py [--trials 300] [--mode push|poll|both]

Each trial begins a task, gets a grant, has the verifier accept its token (from memory: the
stream is healthy and the token newer than the subscription), completes the task, and from
the moment CompleteTask returns calls `verifier.verify` in a tight loop until it refuses the
token as `revoked`. The latency is that interval: SET signing and durable queueing in the
sidecar, delivery (a push to the resource server's WSGI endpoint, or the answer to its held
poll), SET verification, and one more token check. The verifier's introspection counter must
stay at 0: no request ever asks the sidecar. Prints the figures and writes JSON to
bench/results/. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.ssf.receiver import Subscription, wsgi_push_app  # noqa: E402
from sidecar.verify import TokenRejected, TokenVerifier  # noqa: E402
from tests.harness import OpaServer, SidecarProcess, free_port, wait_for  # noqa: E402

CREDENTIAL = "bench-credential-0123456789abcdef"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def trial_loop(sidecar: SidecarProcess, verifier: TokenVerifier, trials: int) -> list[float]:
    samples: list[float] = []
    with sidecar.client() as c:
        for i in range(trials):
            task = c.begin_task(f"bench {i}")
            grant = c.request_grant(task.task_id, "docs.read", f"docs://b/{i}", ttl_seconds=120)
            verifier.verify(grant.token, action="docs.read", resource=f"docs://b/{i}")
            c.complete_task(task.task_id, "succeeded")
            returned = time.perf_counter()
            while True:
                try:
                    verifier.verify(grant.token, action="docs.read", resource=f"docs://b/{i}")
                except TokenRejected as err:
                    if err.reason != "revoked":
                        raise
                    break
            samples.append(time.perf_counter() - returned)
    return samples


def run_mode(sidecar: SidecarProcess, mode: str, trials: int) -> dict[str, Any]:
    slot: dict[str, Any] = {}
    server = None
    push_url = None
    if mode == "push":
        port = free_port()
        server = make_server("127.0.0.1", port, lambda e, s: slot["app"](e, s), _Threading, _Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        push_url = f"http://127.0.0.1:{port}/ssf/events"
    verifier = TokenVerifier(
        sidecar.http + "/.well-known/jwks.json",
        issuer="https://jit-sidecar.local",
        audience="docs",
        introspection_url=sidecar.http + "/introspect",
        introspection_credential=CREDENTIAL,
        signals=Subscription(
            sidecar.http, credential=CREDENTIAL, push_url=push_url, receiver=f"urn:bench:{mode}"
        ),
    )
    assert verifier.signals is not None
    slot["app"] = wsgi_push_app(verifier.signals)
    verifier.signals.start()
    try:
        wait_for(verifier.signals.healthy, 15, what="a confirmed stream")
        time.sleep(max(0.0, verifier.signals.since - time.time()))
        trial_loop(sidecar, verifier, 10)  # warm-up: connections, JWKS, code paths
        samples = trial_loop(sidecar, verifier, trials)
    finally:
        verifier.signals.close()
        if server is not None:
            server.shutdown()
    ms = [s * 1000 for s in samples]
    return {
        "mode": mode,
        "trials": trials,
        "p50_ms": round(pct(ms, 0.50), 2),
        "p95_ms": round(pct(ms, 0.95), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "introspections": verifier.introspections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--mode", choices=("push", "poll", "both"), default="both")
    args = parser.parse_args()
    if args.trials < 200:
        parser.error("at least 200 trials (issue 20's acceptance)")
    modes = ("push", "poll") if args.mode == "both" else (args.mode,)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "http-token").write_text(CREDENTIAL)
        opa = OpaServer(work).start()
        sidecar = SidecarProcess(
            work / "sidecar", opa.url, "--http-token-file", str(work / "http-token")
        ).start()
        try:
            for mode in modes:
                result = run_mode(sidecar, mode, args.trials)
                results.append(result)
                print(
                    f"{mode}: {result['trials']} trials, CompleteTask returned -> token refused: "
                    f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
                    f"introspections {result['introspections']}"
                )
        finally:
            sidecar.stop()
            opa.stop()
    document = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_1m": round(os.getloadavg()[0], 2),
        },
        "results": results,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ssf_latency-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    if any(r["introspections"] for r in results):
        sys.exit("the request path introspected: receiver mode is broken")


if __name__ == "__main__":
    main()

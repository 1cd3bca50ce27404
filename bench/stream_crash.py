"""Crash detection through GrantStream close: from the agent process being killed to its
grants being inactive.

Each trial starts an agent process (`tests/stream_agent.py`: the SDK's `task()`, which
opens a GrantStream, three standing grants, no heartbeats, no CompleteTask), waits for its
grants, then sends it SIGKILL and polls ListGrants on the sidecar (one call after another,
~1 ms each) until none of the task's grants is active. The time from `kill()` to that
answer is one sample: it includes the kernel closing the socket, gRPC noticing, the task
being ended in memory, and the poll's own round trip (an upper bound).

`python -m bench.stream_crash --trials 50` runs it against its own OPA and sidecar;
`bench.run` calls `measure()` against the sidecar of its run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import OpaServer, SidecarProcess, clean_env  # noqa: E402


def measure(socket: Path, trials: int, grants: int = 3) -> list[float]:
    """Seconds from SIGKILL to no active grant, one per trial."""
    from sidecar.client import AccessClient

    samples: list[float] = []
    with AccessClient(socket) as client:
        for _ in range(trials):
            agent = subprocess.Popen(
                [sys.executable, "-m", "tests.stream_agent", str(socket), str(grants)],
                cwd=ROOT,
                env=clean_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert agent.stdout is not None
            held = json.loads(agent.stdout.readline())
            task_id = held["task_id"]
            if len(client.list_grants(task_id)) != grants:
                raise RuntimeError("the agent's grants are not active")
            started = time.perf_counter()
            os.kill(agent.pid, signal.SIGKILL)
            while client.list_grants(task_id):
                if time.perf_counter() - started > 30:
                    raise RuntimeError("the grants stayed active for 30 s")
            samples.append(time.perf_counter() - started)
            agent.wait(10)
            agent.stdout.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.stream_crash", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=50)
    args = p.parse_args(argv)
    from bench.run import SIDECAR_FLAGS, pct

    with tempfile.TemporaryDirectory(prefix="jit-crash-") as tmp:
        work = Path(tmp)
        (work / "opa").mkdir()
        opa = OpaServer(work / "opa", unix_socket=work / "opa.sock").start()
        sidecar = SidecarProcess(
            work / "sidecar", f"unix://{work / 'opa.sock'}", *SIDECAR_FLAGS
        ).start()
        try:
            samples = measure(sidecar.socket.resolve(), args.trials)
        finally:
            sidecar.stop(timeout=30)
            opa.stop()
    ms = [s * 1e3 for s in samples]
    print(
        f"kill -9 to grants inactive, {len(ms)} trials: p50 {pct(ms, 50):.1f} ms, "
        f"p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms; load average {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

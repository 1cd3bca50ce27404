"""`python -m bench.audit_verify`: what `audit verify` and the audit checkpointer cost.

Writes a log of `--records` grant-shaped records (no fsync, so the writing is quick) in a
temporary directory, then reports the median time of `audit.verify` over it (strict member
parsing, hashing, a checkpoint lookup) and of one `Checkpointer.write` (fsync of the log,
EdDSA signature, atomic replace of the checkpoint file) after each of `--checkpoints`
batches. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.audit import AuditFile, verify  # noqa: E402
from sidecar.checkpoints import Checkpointer  # noqa: E402
from sidecar.clock import SystemClock  # noqa: E402
from sidecar.tokens import SigningKey, generate_private_key  # noqa: E402


def record(i: int) -> dict[str, object]:
    return {
        "event": "grant_issued",
        "time": "2026-11-30T10:00:00.000000Z",
        "task_id": f"t-{i // 10}",
        "subject": "spiffe://jit.local/agent/bench",
        "grant_id": f"g{i:022d}",
        "intent": {"action": "docs.read", "resource": f"docs://page/{i}", "justification": ""},
        "tier": "standing",
        "scope": ["docs.read"],
        "audience": "docs",
        "ttl_seconds": 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        audit = AuditFile(path, fsync=False)
        for start in range(0, args.records, 500):
            audit.write([record(i) for i in range(start, min(start + 500, args.records))])
        key = SigningKey.from_private_key(generate_private_key("EdDSA"))
        writer = Checkpointer(audit, lambda: key, interval=60, issuer="bench", clock=SystemClock())
        costs = []
        for i in range(args.checkpoints):
            audit.write([record(i)])
            started = time.perf_counter()
            writer.write()
            costs.append(time.perf_counter() - started)
        audit.close()
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            result = verify([path], at={args.records // 2})
            runs.append(time.perf_counter() - started)
        assert result.ok, result.problem
    costs.sort()
    took = statistics.median(runs)
    print(
        f"audit verify: {result.count} records in {took:.2f} s (median of 3), "
        f"{result.count / took:,.0f} records/s"
    )
    print(
        f"checkpoint write: median {statistics.median(costs) * 1e3:.2f} ms, "
        f"p95 {costs[int(len(costs) * 0.95)] * 1e3:.2f} ms over {len(costs)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

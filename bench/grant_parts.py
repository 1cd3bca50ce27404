"""Per-piece CPU of a grant's own Python, in-process (docs/performance.md, "Cheaper per grant").

    .venv/bin/python bench/grant_parts.py [--src DIR] [--n 5000] [--repeat 9]

Prints µs per call (the lowest of `--repeat` timings of `--n` calls) of the pieces of a
RequestGrant that run on the event loop besides gRPC, OPA and the journal: time formatting,
the audit record and its seal, the token, the log line, input checks, the task lookup, the
answer's protobuf, the decision cache key and the approval intent hash. `--src` names another
tree's root (e.g. `git archive main sidecar | tar -x -C DIR`, plus `sidecar/_proto`) to time
its code instead: run both trees alternately several times and compare minima.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cases() -> dict[str, Callable[[], Any]]:
    from sidecar import audit, clock, logs, service, validation
    from sidecar.approvals import intent_hash
    from sidecar.cache import DecisionCache
    from sidecar.engine.outcome import GrantOutcome
    from sidecar.engine.tasks import TaskLookup
    from sidecar.events import GrantIssued
    from sidecar.model import Grant, Identity, Intent, Task, Tier
    from sidecar.tokens import SigningKey, access_token_claims, generate_private_key

    now = time.time()
    ident = Identity(subject="spiffe://jit.local/agent/dev", trust_domain="jit.local", method="dev")
    intent = Intent("tickets.update", "tickets://t-4711", "bench: close duplicate ticket 4711")
    grant = Grant(
        grant_id="0123456789abcdefghij",
        task_id="t-0123456789abcdefghij",
        subject=ident.subject,
        action=intent.action,
        resource=intent.resource,
        tier=Tier.JIT,
        audience="tickets",
        scope=("tickets.update",),
        issued_at=now,
        expires_at=float(int(now) + 300),
        kid="k1",
        decision_id="3f1c0e5e-8a4b-4c44-9f44-6a3b1d1a0c55",
    )
    event = GrantIssued(
        time=clock.rfc3339(now),
        task_id=grant.task_id,
        grant_id=grant.grant_id,
        subject=grant.subject,
        intent=intent.as_input(),
        decision_id=grant.decision_id,
        tier="jit",
        scope=["tickets.update"],
        audience="tickets",
        ttl_seconds=300,
        ttl_limited_by="policy",
        expires_at=clock.rfc3339(grant.expires_at),
        reasons=["jit"],
        kid="k1",
    )
    key = SigningKey.from_private_key(generate_private_key("EdDSA"))
    formatter = logs.JsonFormatter()
    line = logging.LogRecord(
        "jit_sidecar.engine",
        logging.INFO,
        __file__,
        1,
        "grant issued: %s %s for %d s",
        (intent.action, intent.resource, 300),
        None,
    )
    ids = {"task_id": grant.task_id, "grant_id": grant.grant_id, "tier": "jit", "kid": "k1"}
    line.__dict__.update(ids, decision_id=grant.decision_id)
    outcome = GrantOutcome(
        "granted", grant=grant, token="t" * 400, reasons=("jit",), decision_id=grant.decision_id
    )
    labels = {"team": "billing", "env": "prod"}

    class Live:
        """What TaskLookup reads of the live state: one live task."""

        def __init__(self) -> None:
            task = Task(
                task_id=grant.task_id,
                subject=ident.subject,
                goal="bench",
                labels={},
                started_at=now,
                deadline=now + 3600,
                heartbeat_interval=30,
                last_heartbeat=now,
            )
            self.tasks = {task.task_id: task}

    lookup = TaskLookup(Live(), None)  # type: ignore[arg-type]

    def own() -> None:
        step = lookup.own(ident, grant.task_id)  # finds a live task without awaiting
        with contextlib.suppress(StopIteration):
            step.send(None)

    return {
        "rfc3339 x2 (issue, expiry)": lambda: (clock.rfc3339(now), clock.rfc3339(now + 300)),
        "audit: record + seal": lambda: audit.seal(event.record(), 7, "0" * 64),
        "token: claims + sign": lambda: key.sign(access_token_claims(grant, "https://jit.local")),
        "log line: format": lambda: formatter.format(line),
        "log line: preview(resource)": lambda: validation.preview(intent.resource, 128),
        "check_intent": lambda: validation.check_intent(
            intent.action, intent.resource, intent.justification, {}
        ),
        "TaskLookup.own (live task)": own,
        "outcome_pb": lambda: service.outcome_pb(outcome, intent.justification),
        "cache key (2 labels)": lambda: DecisionCache.key(ident, intent, labels),
        "intent_hash": lambda: intent_hash(ident.subject, grant.task_id, intent),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.grant_parts", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, help="another tree's root to time (default: this one)")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args(argv)
    root = args.src or Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    for name, call in cases().items():
        best = min(timeit.repeat(call, number=args.n, repeat=args.repeat)) / args.n * 1e6
        print(f"{name}\t{best:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

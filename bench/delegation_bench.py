"""What delegation adds to a grant, in-process (docs/performance.md, "Delegation").

    .venv/bin/python -m bench.delegation_bench [--n 20000] [--opa-n 300]

Prints microseconds per call for: the journal's audit stamp (`TaskPrincipals.stamp`) on a
record of a task without a principal (every grant pays it) and with one; the claim set and
signature of a token without and with `act`; `sidecar.verify.actor_chain` on a depth-2
chain; and, against the real `opa` binary on rego/, one decision without and with a
principal (the intersection rules), over keep-alive HTTP.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.identity_bench import per_call_us
from sidecar.engine.delegation import TaskPrincipals, actor_claim
from sidecar.events import GrantIssued
from sidecar.model import Grant, Principal, Tier
from sidecar.tokens import SigningKey, access_token_claims, generate_private_key
from sidecar.verify import actor_chain
from tests.harness import OpaServer

AGENT = "spiffe://jit.local/agent/billing"
ALICE = Principal("alice", "https://idp.example", {"groups": ["support"]})


def _event(task_id: str) -> GrantIssued:
    return GrantIssued(
        time="2027-01-15T08:00:00.000000Z",
        task_id=task_id,
        grant_id="g",
        subject=AGENT,
        intent={"action": "tickets.update", "resource": "tickets://t-1"},
        tier="jit",
        scope=["tickets.update"],
        audience="tickets",
        expires_at="2027-01-15T08:02:00Z",
        kid="k",
    )


def _grant(**extra: Any) -> Grant:
    now = time.time()
    return Grant(
        grant_id="Zm9vYmFyYmF6cXV4cXV1eA",
        task_id="t-1@abcdefghijklmnop",
        subject=AGENT,
        action="tickets.update",
        resource="tickets://t-1001",
        tier=Tier.JIT,
        audience="tickets",
        scope=("tickets.update",),
        issued_at=now,
        expires_at=now + 120,
        kid="k",
        **extra,
    )


def _decision_input(principal: dict[str, Any] | None) -> bytes:
    document = {
        "identity": {
            "subject": AGENT,
            "trust_domain": "jit.local",
            "method": "jwt-svid",
            "issuer": "",
            "claims": {},
        },
        "intent": {
            "action": "tickets.update",
            "resource": "tickets://t-1001",
            "resource_parts": {"scheme": "tickets", "authority": "t-1001", "segments": []},
            "justification": "ticket 1001: customer asked to close it",
            "context": {},
        },
        "task": {
            "id": "t-1",
            "goal": "g",
            "labels": {},
            "age_seconds": 1,
            "remaining_seconds": 300,
            "grants": [],
        },
        "request": {"ttl_seconds": 60, "time": "2027-01-15T08:00:00Z"},
        "principal": principal,
    }
    return json.dumps({"input": document}).encode()


def _opa_us(port: int, body: bytes, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    samples = []
    for i in range(n + 50):
        started = time.perf_counter()
        conn.request("POST", "/v1/data/jit/decision", body, {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        if i >= 50:
            samples.append((time.perf_counter() - started) * 1e6)
    assert answer["result"]["allow"] is True, answer
    conn.close()
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--opa-n", type=int, default=300)
    args = parser.parse_args()
    principals = TaskPrincipals()
    principals.add("t-delegated", ALICE)
    plain_event, delegated_event = _event("t-plain"), _event("t-delegated")
    key = SigningKey.from_private_key(generate_private_key("EdDSA"))
    plain, delegated = _grant(), _grant(principal="alice", actor=actor_claim(AGENT))
    chain = {"act": actor_claim("spiffe://x/c", actor_claim("spiffe://x/b"))}
    rows = {
        "stamp, task without a principal": per_call_us(
            lambda: principals.stamp(plain_event), args.n
        ),
        "stamp, task with a principal": per_call_us(
            lambda: principals.stamp(delegated_event), args.n
        ),
        "claims + sign EdDSA, no act": per_call_us(
            lambda: key.sign(access_token_claims(plain, "https://jit")), args.n
        ),
        "claims + sign EdDSA, with act": per_call_us(
            lambda: key.sign(access_token_claims(delegated, "https://jit")), args.n
        ),
        "verify.actor_chain, depth 2": per_call_us(lambda: actor_chain(chain), args.n),
    }
    with tempfile.TemporaryDirectory() as work:
        opa = OpaServer(Path(work)).start()
        try:
            port = opa.port
            rows["OPA decision p50, no principal"] = _opa_us(
                port, _decision_input(None), args.opa_n
            )
            rows["OPA decision p50, with principal"] = _opa_us(
                port, _decision_input(ALICE.as_input()), args.opa_n
            )
        finally:
            opa.stop()
    for name, us in rows.items():
        print(f"{name:40s} {us:9.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

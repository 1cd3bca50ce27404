"""Soak: N simulated agents against a real sidecar and a real OPA, then invariant checks.

Each agent (a thread with its own SDK client) loops: begin a short task, request a few
grants with TTLs of a few seconds, heartbeat, then finish at random — complete (succeeded or
failed), crash (stop heartbeating, so the sweeper revokes its grants as agent_lost), revoke
a grant itself, or let an operator revoke its task through the admin socket. Thousands of
grants issue, expire and are revoked. Meanwhile a sampler introspects tokens whose `exp`
has passed (over HTTP /introspect) and records the sidecar's RSS.

At the end, after every TTL and heartbeat window has run out, it checks:
  1. the audit chain verifies;
  2. every grant a client received has a grant_issued record and a grant row, and exactly
     one ending record (grant_expired or grant_revoked): nothing is left active past its
     TTL, nothing ended twice;
  3. jit_grant_requests_total{decision="granted",tier} equals the grant_issued records by
     tier, and jit_revocations_total{reason} the ending records by reason;
  4. no sampled token was active in introspection after its `exp`;
  5. RSS did not grow without bound (mean of the last third vs the first third).
It prints the figures (and writes them to bench/results/soak-*.json) and exits 1 when an
invariant fails.

    python bench/soak.py --seconds 600 --agents 8      # make soak
    SOAK_SECONDS=60 make soak
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.audit import log_files, verify
from sidecar.client import AccessClient, AdminClient, SidecarRpcError
from tests.harness import OpaServer, SidecarProcess

HEARTBEAT = 1
MISSES = 2
MAX_TTL = 5


@dataclass
class Shared:
    """What the agents saw, guarded by one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    """grant_id -> (token, exp, tier)"""
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    introspected_after_exp: int = 0
    active_after_exp: list[str] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)


def agent(number: int, sidecar: SidecarProcess, stop: threading.Event, shared: Shared) -> None:
    rng = random.Random(number)
    with (
        AdminClient(sidecar.admin_socket) as admin,
        AccessClient(sidecar.socket, timeout=10) as client,
    ):
        while not stop.is_set():
            try:
                run_task(rng, client, admin, shared)
            except SidecarRpcError as err:
                with shared.lock:
                    shared.errors[f"{err.code.name}:{err.reason}"] += 1
            except Exception as err:  # counted and reported; a soak keeps going
                with shared.lock:
                    shared.errors[type(err).__name__] += 1


def run_task(rng: random.Random, client: AccessClient, admin: AdminClient, shared: Shared) -> None:
    task = client.begin_task("soak", max_duration=rng.randint(4, 12))
    grants = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.5:
            action, resource, justification = "docs.read", f"docs://r/{rng.randint(1, 50)}", ""
        else:
            action = "tickets.update"
            resource = f"tickets://{rng.randint(1, 500)}"
            justification = "soak: closing a stale ticket"
        answer = client.request_grant_raw(
            task.task_id,
            action,
            resource,
            justification=justification,
            ttl_seconds=rng.randint(1, MAX_TTL),
        )
        if answer.grant.grant_id:
            g = answer.grant
            tier = "standing" if g.tier == 1 else "jit"
            with shared.lock:
                shared.issued[g.grant_id] = (g.token, float(g.expires_at.seconds), tier)
            grants.append(g.grant_id)
        time.sleep(rng.uniform(0, 0.05))
        if rng.random() < 0.3:
            client.heartbeat(task.task_id)
    roll = rng.random()
    if roll < 0.45:
        client.complete_task(task.task_id, "succeeded")
        outcome = "completed"
    elif roll < 0.6:
        client.complete_task(task.task_id, "failed", "soak: simulated failure")
        outcome = "failed"
    elif roll < 0.72:
        outcome = "crashed"  # no more heartbeats: the sweeper must revoke as agent_lost
    elif roll < 0.84 and grants:
        client.revoke_grant(rng.choice(grants), "soak: done early")
        client.complete_task(task.task_id, "succeeded")
        outcome = "agent_revoked"
    elif roll < 0.92:
        admin.revoke(task_id=task.task_id, reason="soak: operator")
        outcome = "operator_revoked"
    else:
        time.sleep(rng.uniform(0, 2))  # let grants expire on their own, then finish
        client.complete_task(task.task_id, "succeeded")
        outcome = "expired_then_completed"
    with shared.lock:
        shared.outcomes[outcome] += 1


def sampler(sidecar: SidecarProcess, stop: threading.Event, shared: Shared) -> None:
    """Introspect tokens past their exp (must be inactive) and record RSS every 2 s."""
    rng = random.Random(7)
    session = requests.Session()
    last_rss = 0.0
    while not stop.is_set():
        now = time.time()
        if now - last_rss >= 2 and sidecar.proc is not None:
            last_rss = now
            status = Path(f"/proc/{sidecar.proc.pid}/status").read_text()
            rss = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            with shared.lock:
                shared.rss_kib.append((now, rss))
        with shared.lock:
            past = [(gid, v[0]) for gid, v in shared.issued.items() if v[1] <= now]
        for grant_id, token in rng.sample(past, min(len(past), 5)):
            r = session.post(
                sidecar.http + "/introspect",
                data={"token": token},
                headers=sidecar.http_auth,
                timeout=5,
            )
            r.raise_for_status()  # a 401 must not count as "inactive"
            with shared.lock:
                shared.introspected_after_exp += 1
                if r.json().get("active"):
                    shared.active_after_exp.append(grant_id)
        stop.wait(0.2)


def metric_samples(sidecar: SidecarProcess, name: str, label: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = requests.get(sidecar.http + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.value:
                key = s.labels.get(label, "")
                if name == "jit_grant_requests_total" and s.labels.get("decision") != "granted":
                    continue
                out[key] = out.get(key, 0.0) + float(s.value)
    return out


def run(seconds: float, agents: int, workdir: Path) -> dict[str, Any]:
    opa = OpaServer(workdir / "opa-work")
    opa.workdir.mkdir(parents=True)
    opa.start()
    sidecar = SidecarProcess(
        workdir / "sidecar",
        opa.url,
        "--heartbeat-interval",
        str(HEARTBEAT),
        "--heartbeat-misses",
        str(MISSES),
        "--sweep-interval",
        "0.2",
        "--log-level",
        "warning",
    )
    sidecar.args = _without_debug(sidecar.args)  # type: ignore[method-assign]
    sidecar.start()
    shared = Shared()
    stop = threading.Event()
    threads = [
        threading.Thread(target=agent, args=(n, sidecar, stop, shared), daemon=True)
        for n in range(agents)
    ]
    threads.append(threading.Thread(target=sampler, args=(sidecar, stop, shared), daemon=True))
    started = time.time()
    try:
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join(30)
        # Let every TTL, task deadline and heartbeat window run out, plus sweep slack.
        time.sleep(max(MAX_TTL, HEARTBEAT * (MISSES + 1)) + 2.5)
        report = check(sidecar, shared, time.time() - started)
    finally:
        sidecar.stop()
        opa.stop()
    return report


def _without_debug(original: Any) -> Any:
    def args() -> list[str]:
        out = original()
        # The harness asks for debug logs; a soak at thousands of grants wants warnings only.
        i = out.index("--log-level")
        return out[:i] + out[i + 2 :]

    return args


def check(sidecar: SidecarProcess, shared: Shared, elapsed: float) -> dict[str, Any]:
    # Every file of the log: at this rate the 64 MiB rotation happens within minutes.
    records = [
        json.loads(line)
        for path in log_files(sidecar.audit)
        for line in path.read_text().splitlines()
        if line
    ]
    chain = verify(log_files(sidecar.audit))
    issued_records = {r["grant_id"]: r for r in records if r["event"] == "grant_issued"}
    endings: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["event"] in ("grant_revoked", "grant_expired"):
            endings.setdefault(r["grant_id"], []).append(r)
    rows = {r["grant_id"]: r for r in sidecar.grant_rows()}
    now = time.time()
    received = set(shared.issued)
    missing_record = sorted(received - set(issued_records))
    missing_row = sorted(received - set(rows))
    # Issued and audited, but ended (task crashed, expired or revoked) while its commit was
    # in flight, so the caller got FAILED_PRECONDITION instead of the token: legitimate only
    # with an ending record, and not counted as granted in the metric.
    in_flight = set(issued_records) - received
    unknown = sorted(g for g in in_flight if g not in endings)
    never_ended = sorted(g for g in received if g not in endings and shared.issued[g][1] <= now - 1)
    ended_twice = sorted(g for g, e in endings.items() if len(e) > 1)
    by_tier = Counter(r["tier"] for g, r in issued_records.items() if g in received)
    by_reason = Counter(e[0]["reason"] for e in endings.values())
    granted_metric = metric_samples(sidecar, "jit_grant_requests_total", "tier")
    revoked_metric = metric_samples(sidecar, "jit_revocations_total", "reason")
    rss = shared.rss_kib
    third = max(1, len(rss) // 3)
    first = statistics.mean(v for _, v in rss[:third]) if rss else 0.0
    last = statistics.mean(v for _, v in rss[-third:]) if rss else 0.0
    report: dict[str, Any] = {
        "audit_files": len(log_files(sidecar.audit)),
        "seconds": round(elapsed, 1),
        "grants_issued": len(received),
        "grants_per_second": round(len(received) / elapsed, 1),
        "tasks_by_outcome": dict(shared.outcomes),
        "errors_seen_by_agents": dict(shared.errors),
        "audit_records": len(records),
        "audit_chain_ok": chain.ok,
        "grants_by_tier_audit": dict(by_tier),
        "grants_by_tier_metric": {k: int(v) for k, v in granted_metric.items()},
        "endings_by_reason_audit": dict(by_reason),
        "endings_by_reason_metric": {k: int(v) for k, v in revoked_metric.items()},
        "introspected_after_exp": shared.introspected_after_exp,
        "active_after_exp": len(shared.active_after_exp),
        "missing_audit_record": len(missing_record),
        "missing_grant_row": len(missing_row),
        "ended_before_returned": len(in_flight) - len(unknown),
        "issued_but_not_received": len(unknown),
        "never_ended": len(never_ended),
        "ended_twice": len(ended_twice),
        "rss_mib_first_third": round(first / 1024, 1),
        "rss_mib_last_third": round(last / 1024, 1),
        "rss_mib_max": round(max((v for _, v in rss), default=0) / 1024, 1),
        "rss_samples": len(rss),
    }
    failures = []
    if not chain.ok:
        failures.append(f"audit chain broken at {chain.bad_file}:{chain.bad_line}")
    for name in (
        "missing_audit_record",
        "missing_grant_row",
        "issued_but_not_received",
        "never_ended",
        "ended_twice",
        "active_after_exp",
    ):
        if report[name]:
            failures.append(f"{name}: {report[name]}")
    if dict(by_tier) != {k: int(v) for k, v in granted_metric.items()}:
        failures.append("jit_grant_requests_total{granted} differs from the audit log")
    if dict(by_reason) != {k: int(v) for k, v in revoked_metric.items()}:
        failures.append("jit_revocations_total differs from the audit log")
    # Bounded memory: the last third may not exceed the first by more than half (plus slack
    # for allocator warm-up on short runs).
    if rss and last > first * 1.5 + 16 * 1024:
        failures.append(f"RSS grew from {first / 1024:.0f} to {last / 1024:.0f} MiB")
    report["failures"] = failures
    report["ok"] = not failures
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jit-soak-") as tmp:
        report = run(args.seconds, args.agents, Path(tmp))
    report = {"agents": args.agents, **report}
    text = json.dumps(report, indent=2)
    print(text)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = args.json or results / f"soak-{int(time.time())}.json"
    out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""How fast a brokered PostgreSQL login goes away, and what a brokered grant costs.

    .venv/bin/python bench/broker_latency.py [--trials 100]

Starts a throwaway PostgreSQL cluster (tests/postgres.py: Debian's binaries, initdb in a
temporary directory), the real `opa` binary on rego/ and a real sidecar process
(tests/harness.py) whose postgres broker reads its admin DSN from the environment. Two
measurements, one trial after the other (never concurrent):

  session end   per trial: BeginTask, RequestGrant postgres.read on
                postgres://crm/public.tickets (a brokered login), connect with it and run
                `SELECT pg_sleep(20)`; once the query is running, CompleteTask. Timed from
                CompleteTask returning to the agent's session being terminated (the blocked
                query fails with the server's FATAL). Negative: gone before the agent even
                had CompleteTask's answer.
  grant cost    RequestGrant for postgres.read (a new role per grant) against docs.read on
                docs://handbook/intro (a plain grant), alternating, in the same kind of task.

Prints p50/p90/p99/max per case. Not part of `make test`; figures go in docs/performance.md
("Credential brokers").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from sidecar.client import AccessClient, grant_from_response  # noqa: E402
from tests.harness import OpaServer, SidecarProcess, wait_for  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

TABLE = "postgres://crm/public.tickets"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def line(name: str, samples: list[float]) -> str:
    return (
        f"{name:28s} n={len(samples):4d}  p50 {pct(samples, 0.5):7.2f} ms  "
        f"p90 {pct(samples, 0.9):7.2f} ms  p99 {pct(samples, 0.99):7.2f} ms  "
        f"max {max(samples):7.2f} ms"
    )


def session_end_trial(client: AccessClient, server: PostgresServer) -> float:
    task = client.begin_task("bench: session end")
    response = client.request_grant_raw(task.task_id, "postgres.read", TABLE, ttl_seconds=300)
    grant = grant_from_response(response)
    assert grant.credential is not None
    assert grant.lease is not None
    conn = psycopg.connect(grant.credential.dsn, autocommit=True)
    ended: list[float] = []

    def block() -> None:
        try:
            conn.execute("SELECT pg_sleep(20)")
        except psycopg.OperationalError:
            ended.append(time.perf_counter())

    waiter = threading.Thread(target=block, daemon=True)
    waiter.start()
    role = grant.lease.handle
    wait_for(
        lambda: server.query(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND state = 'active'", role
        ),
        10,
        what="the agent's query to run",
    )
    client.complete_task(task.task_id)
    returned = time.perf_counter()
    waiter.join(25)
    conn.close()
    if not ended:
        raise RuntimeError(f"the session of {role} outlived its task")
    return (ended[0] - returned) * 1000


def grant_cost(client: AccessClient, action: str, resource: str) -> float:
    task = client.begin_task("bench: grant cost")
    started = time.perf_counter()
    response = client.request_grant_raw(task.task_id, action, resource, ttl_seconds=300)
    elapsed = (time.perf_counter() - started) * 1000
    grant_from_response(response)  # raises unless granted
    client.complete_task(task.task_id)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jit-broker-bench-") as tmp:
        work = Path(tmp)
        server = PostgresServer(work / "pg").start()
        opa = OpaServer(work / "opa-work")
        opa.workdir.mkdir()
        opa.start()
        sidecar = SidecarProcess(
            work / "sidecar",
            opa.url,
            "--log-level",
            "info",
            env={"JIT_SIDECAR_BROKER_POSTGRES_DSN": server.admin_dsn},
        ).start()
        try:
            with sidecar.client() as client:
                for _ in range(5):  # warm-up: connections, caches, OPA
                    session_end_trial(client, server)
                    grant_cost(client, "docs.read", "docs://handbook/intro")
                ends = [session_end_trial(client, server) for _ in range(args.trials)]
                plain: list[float] = []
                brokered: list[float] = []
                for _ in range(args.trials):
                    plain.append(grant_cost(client, "docs.read", "docs://handbook/intro"))
                    brokered.append(grant_cost(client, "postgres.read", TABLE))
            time.sleep(1.0)  # the last CompleteTask's revocation runs after it returned
            left = server.query(
                "SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid') "
                "LIKE 'jit-sidecar grant=%%'"
            )[0][0]
        finally:
            sidecar.stop()
            opa.stop()
            server.destroy()
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load {os.getloadavg()}")
    print(line("CompleteTask -> session end", ends))
    print(line("RequestGrant plain", plain))
    print(line("RequestGrant brokered", brokered))
    print(
        f"brokered - plain: p50 {pct(brokered, 0.5) - pct(plain, 0.5):+.2f} ms, "
        f"p99 {pct(brokered, 0.99) - pct(plain, 0.99):+.2f} ms; brokered roles left: {left}"
    )


if __name__ == "__main__":
    main()

"""Concurrent client load for the fault and limit tests: threads with their own SDK clients
request grants in a loop and keep a ledger of what they received and every refusal."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar.audit import log_files, verify
from sidecar.client import (
    AccessClient,
    AccessDenied,
    SidecarClientError,
    SidecarRpcError,
    socket_target,
)
from sidecar.errors import Reason
from tests.harness import SidecarProcess

REASONS = {r.value for r in Reason}
TRANSPORT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def own_connection(client: AccessClient, path: Path) -> AccessClient:
    """Give `client` a connection of its own, as a separate agent process would have.

    gRPC Python shares one HTTP/2 connection between channels to the same target inside a
    process, so simulated agents would otherwise compete for one connection's stream limit
    instead of the sidecar's own admission."""
    client._channel.close()
    client._channel = grpc.insecure_channel(
        socket_target(path), options=[("grpc.use_local_subchannel_pool", 1)]
    )
    client._stub = pb_grpc.AccessServiceStub(client._channel)
    return client


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: dict[str, str] = field(default_factory=dict)
    """grant_id -> token, for every grant a client got."""
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(status code, reason) of every error."""
    transport: Counter[str] = field(default_factory=Counter)
    """Errors that never reached an answer (connection refused while the sidecar is down)."""
    latencies: list[float] = field(default_factory=list)

    @property
    def undefined_reasons(self) -> list[tuple[str, str]]:
        return [k for k in self.refusals if k[1] not in REASONS]


GRANTS_PER_TASK = 40
"""Each simulated agent opens a new task after this many grants (the shipped policy allows 50
active grants per task)."""


class Load:
    """`clients` threads doing BeginTask then RequestGrant in a loop until stopped."""

    def __init__(
        self,
        sidecar: SidecarProcess,
        clients: int = 4,
        *,
        action: str = "docs.read",
        identity_token: Any = None,
        pause: float = 0.0,
    ) -> None:
        self.sidecar = sidecar
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._action = action
        self._token = identity_token
        self._pause = pause
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Ledger:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.ledger

    def _run(self, number: int) -> None:
        client = own_connection(
            AccessClient(self.sidecar.socket, identity_token=self._token, timeout=5),
            self.sidecar.socket,
        )
        task_id = ""
        in_task = 0
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                started = time.perf_counter()
                try:
                    if not task_id:
                        task_id = client.begin_task(f"load {number}").task_id
                        in_task = 0
                    grant = client.request_grant(
                        task_id,
                        self._action,
                        f"{self._action.split('.')[0]}://load/{number}/{i}",
                        justification="load test: closing a stale ticket",
                        ttl_seconds=60,
                    )
                    with self.ledger.lock:
                        self.ledger.received[grant.grant_id] = grant.token
                        self.ledger.latencies.append(time.perf_counter() - started)
                    in_task += 1
                    if in_task >= GRANTS_PER_TASK:  # stay under the policy's per-task limit
                        task_id = ""  # (the task stays open: its grants must stay active)
                except SidecarRpcError as err:
                    if err.reason not in REASONS and err.code.name in TRANSPORT:
                        # No ErrorInfo: no answer from the sidecar (socket gone, restarting).
                        with self.ledger.lock:
                            self.ledger.transport[f"{err.code.name}:{err.reason}"] += 1
                        time.sleep(0.05)
                        continue
                    with self.ledger.lock:
                        self.ledger.refusals[(err.code.name, err.reason)] += 1
                    if err.reason in ("task_inactive", "task_not_found", "too_many_grants"):
                        task_id = ""
                except AccessDenied as denied:
                    with self.ledger.lock:
                        self.ledger.refusals[("OK", "denied")] += 1
                    if any(r.startswith("too_many_grants") for r in denied.reasons):
                        task_id = ""  # the policy's per-task limit: start a new task
                except SidecarClientError as err:
                    with self.ledger.lock:
                        self.ledger.transport[type(err).__name__] += 1
                    time.sleep(0.05)
                if self._pause:
                    time.sleep(self._pause)
        finally:
            client.close()


def assert_nothing_lost(sidecar: SidecarProcess, ledger: Ledger) -> None:
    """Every grant a client received is in the audit log (grant_issued) and the store; no
    grant ended twice; the audit chain verifies."""
    issued = {r["grant_id"] for r in sidecar.events("grant_issued")}
    rows = {r["grant_id"] for r in sidecar.grant_rows()}
    received = set(ledger.received)
    assert received <= issued, f"{len(received - issued)} grants received but not audited"
    assert received <= rows, f"{len(received - rows)} grants received but not stored"
    endings = [
        r["grant_id"]
        for r in sidecar.audit_records()
        if r["event"] in ("grant_revoked", "grant_expired")
    ]
    assert len(endings) == len(set(endings)), "a grant was ended twice"
    verdict = verify(log_files(sidecar.audit))
    assert verdict.ok, verdict

"""Fault injection only: things a real component cannot be made to do on demand.

`FakeOpa` is an HTTP/1.1 server speaking just enough of OPA's Data API to answer garbage,
errors, wrong shapes or to stall — the real sidecar talks to it over real TCP. `TcpProxy`
cuts one sidecar off a real Redis while the rest of the fleet keeps it.
`ScriptedAccessService` is a real gRPC server on a real Unix socket whose answers a test
scripts: server-side deadline expiries and a record of each call's metadata and deadline
(which the real sidecar does not expose), for the client SDK's own tests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc

VALID_JIT = {
    "allow": True,
    "tier": "jit",
    "approval_required": False,
    "ttl_seconds": 60,
    "audience": "fake",
    "scope": ["x.write"],
    "reasons": ["fake: allowed"],
    "cache_seconds": 0,
}


class FakeOpa:
    """Answers every decision with `body` (bytes or JSON-able) and `status`, after `delay`."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {"result": VALID_JIT}
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.healthy = True
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200 if fake.healthy else 500, b"{}")
                elif self.path == "/v1/policies":
                    self._send(200, b'{"result": []}')
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    fake.requests.append(json.loads(raw))
                except ValueError:
                    fake.requests.append({"raw": raw.decode(errors="replace")})
                if fake.delay:
                    time.sleep(fake.delay)
                body = fake.body
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self._send(fake.status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpa:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: Any, status: int = 200, delay: float = 0.0) -> None:
        self.body, self.status, self.delay = body, status, delay


def hold_applies(store: Any) -> tuple[threading.Event, threading.Event, Callable[[], None]]:
    """Make the journal's writer block in its next `store.apply` until `release` is set (a
    writer busy for as long as a test needs); `entered` is set once it blocks. Returns
    (entered, release, undo)."""
    entered, release = threading.Event(), threading.Event()
    apply = store.apply

    def held(*args: Any) -> Any:
        entered.set()
        release.wait(10)
        return apply(*args)

    def undo() -> None:
        store.apply = apply

    store.apply = held
    return entered, release, undo


class ManualClock:
    """A wall clock tests move by hand (forwards and backwards)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.value = now

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


class ScriptedPolicy:
    """PolicyEngine answering a fixed decision (or raising), recording every input."""

    def __init__(self, decision: Any = None) -> None:
        from sidecar.policy import parse_decision

        self._parse = parse_decision
        self.result: Any = VALID_JIT if decision is None else decision
        self.error: Exception | None = None
        self.inputs: list[dict[str, Any]] = []

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        self.inputs.append(policy_input)
        if self.error is not None:
            raise self.error
        body = json.dumps({"result": self.result}).encode()
        return self._parse(body, action=policy_input["intent"]["action"])

    async def may_act(self, policy_input: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
        self.inputs.append(policy_input)
        if self.error is not None:
            raise self.error
        return True, ()

    async def healthy(self) -> bool:
        return self.error is None

    async def revision(self) -> str:
        return "r1"

    async def aclose(self) -> None:
        pass


@dataclass
class Call:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    request: Any


def granted(action: str = "payments.refund", resource: str = "payments://orders/42") -> Any:
    now = int(time.time())
    grant = pb.Grant(
        grant_id="g-1",
        token="header.payload.signature",
        tier=pb.TIER_JIT,
        audience="payments",
        scope=[action],
        intent=pb.Intent(action=action, resource=resource),
        task_id="t-1",
    )
    grant.issued_at.FromSeconds(now)
    grant.expires_at.FromSeconds(now + 60)
    return pb.RequestGrantResponse(decision=pb.DECISION_GRANTED, grant=grant, decision_id="d-1")


def pending() -> Any:
    return pb.RequestGrantResponse(
        decision=pb.DECISION_PENDING_APPROVAL,
        approval_id="a-1",
        reasons=["approval_required: refunds need a human"],
        decision_id="d-1",
    )


def denied(*reasons: str) -> Any:
    return pb.RequestGrantResponse(
        decision=pb.DECISION_DENIED, reasons=list(reasons), decision_id="d-1"
    )


def _abort(context: grpc.ServicerContext, code: int, message: str, reason: str) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="jit-sidecar"))
    context.abort_with_status(
        rpc_status.to_status(status_pb2.Status(code=code, message=message, details=[detail]))
    )


@dataclass
class ScriptedAccessService(pb_grpc.AccessServiceServicer):  # type: ignore[misc]
    """Answers from scripts; every call is recorded in `calls`."""

    request_grant: list[Any] = field(default_factory=list)
    """Answers of RequestGrant, in order (the last one repeats)."""
    await_approval: list[tuple[str, Any]] = field(default_factory=list)
    """AwaitApproval steps: ("answer", RequestGrantResponse), ("hold", seconds or None) =
    wait that long (None: until the call's deadline) then answer PENDING_APPROVAL, as the
    sidecar does when its own wait ends first, ("deadline", None) = abort with
    DEADLINE_EXCEEDED as a server-side timeout would. The last step repeats."""
    heartbeat_fails: bool = False
    calls: list[Call] = field(default_factory=list)
    streams: list[Call] = field(default_factory=list)
    """GrantStream attempts (refused): kept apart from `calls`, the unary calls."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.calls.append(Call(method, metadata, context.time_remaining(), request))

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def BeginTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("BeginTask", request, context)
        task = pb.Task(task_id="t-1", goal=request.goal, subject="spiffe://fake/agent", state=1)
        task.heartbeat_interval_seconds = 1
        task.deadline.FromSeconds(int(time.time()) + 600)
        return pb.BeginTaskResponse(task=task)

    def RequestGrant(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("RequestGrant", request, context)
        with self.lock:
            answer = self.request_grant[0]
            if len(self.request_grant) > 1:
                self.request_grant.pop(0)
        return answer

    def AwaitApproval(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("AwaitApproval", request, context)
        with self.lock:
            kind, answer = self.await_approval[0]
            if len(self.await_approval) > 1:
                self.await_approval.pop(0)
        if kind == "deadline":
            _abort(context, code_pb2.DEADLINE_EXCEEDED, "server-side timeout", "")
        if kind == "hold":
            remaining = max(0.0, (context.time_remaining() or 1.0) - 0.05)
            time.sleep(remaining if answer is None else min(answer, remaining))
            return pb.AwaitApprovalResponse(result=pending())
        return pb.AwaitApprovalResponse(result=answer)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Heartbeat", request, context)
        if self.heartbeat_fails:
            _abort(context, code_pb2.FAILED_PRECONDITION, "task t-1 has ended", "task_inactive")
        return pb.HeartbeatResponse()

    def CompleteTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("CompleteTask", request, context)
        return pb.CompleteTaskResponse(revoked_grants=0)

    def GrantStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """As a sidecar from before GrantStream answers: UNIMPLEMENTED (the SDK then uses
        unary calls)."""
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.streams.append(Call("GrantStream", metadata, context.time_remaining(), None))
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def ListGrants(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListGrants", request, context)
        return pb.ListGrantsResponse()


@contextmanager
def serve(service: ScriptedAccessService, socket: Path) -> Iterator[Path]:
    """Serve `service` on `socket` (a real gRPC server) for the duration of the block."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_AccessServiceServicer_to_server(service, server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    try:
        yield socket
    finally:
        server.stop(grace=None)


class TcpProxy:
    """A loopback TCP forwarder that can cut its connections on demand: the network
    partition between one sidecar and Redis that a real Redis cannot produce by itself
    (every other sidecar keeps talking to the same, real Redis)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[Any] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore`."""
        self._cut.set()
        with self._lock:
            for sock in list(self._sockets):
                self._close(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()

    def _close(self, sock: Any) -> None:
        self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._close(source)
            self._close(sink)


class ViewGate:
    """The engine's FleetGate over a real, in-memory RevocationView, with issuing switched
    on and off by hand: Redis being down, which the engine's unit tests cannot reach.
    (The real gate, `sidecar.fleet.Fleet`, runs against real Redis in the integration
    tests.)"""

    def __init__(self, clock: ManualClock, keys: dict[str, Any] | None = None) -> None:
        from sidecar.revocations import RevocationView

        self.fleet_id = "here"
        self.issuable = True
        self.mono = 0.0
        self.view = RevocationView(2.0, monotonic=lambda: self.mono)
        self.view.mark_synced(0.0)
        self.keys = keys or {}
        """kid → public JWK of other sidecars."""

    def check_issuable(self) -> None:
        from sidecar.store.redis import SharedStateUnavailable

        if not self.issuable:
            raise SharedStateUnavailable("shared state unavailable (test)")

    def barred(self, claims: Any, now: float) -> str:
        return self.view.barred(claims, now)

    async def verify(self, token: str, *, issuer: str, now: float) -> dict[str, Any] | None:
        from sidecar.tokens import token_kid, verify_with

        jwk = self.keys.get(token_kid(token) or "")
        return verify_with(token, jwk, issuer=issuer) if jwk else None

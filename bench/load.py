"""Load generators: one client per process, each with its own gRPC channel or HTTP connection.

Worker processes are started once (spawn, so no gRPC state crosses a fork) and reused for
every run. A run: each participating worker builds its client, warms up, reports ready; the
parent then releases all of them at once and each calls in a closed loop (one call in flight
per process) until the run's deadline or call budget, timing every call with perf_counter.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing as mp
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

KINDS = ("health", "jit", "standing", "fill", "opa", "stream", "stream_jit", "stream_standing")
STREAM_KINDS = ("stream", "stream_jit", "stream_standing")
"""GrantStream runs: `stream` sends empty messages (B_stream), the others one intent per
message; each task has its stream, opened untimed, left open until the run ends."""

JIT_INTENT = ("tickets.update", "tickets://t-4711", "bench: close duplicate ticket 4711")
"""A write on the dev agent's own domain: JIT tier, never cached, asks OPA every time."""
STANDING_INTENT = ("docs.read", "docs://handbook", "")
"""A read on the dev agent's own domain: standing tier, cached for cache_seconds (30 s)."""
GRANT_TTL = 120


@dataclass(frozen=True, slots=True)
class Target:
    """What a run calls."""

    kind: str
    """health (grpc.health.v1 Check), jit / standing (RequestGrant), fill (standing, one
    resource per task: fills the sidecar for the memory figure), opa (raw POST to OPA),
    stream / stream_jit / stream_standing (GrantStream, see STREAM_KINDS)."""
    batch: int = 1
    """Intents per GrantStream message (stream_jit / stream_standing); a call is a message."""
    socket: str = ""
    opa_url: str = ""
    opa_path: str = ""
    opa_bodies: tuple[bytes, ...] = ()
    """Request bodies cycled through by `opa` runs (the inputs the sidecar would send)."""
    rotate_every: int = 20
    """RequestGrant runs begin a new task after this many grants (untimed)."""
    ttl: int = GRANT_TTL


@dataclass(slots=True)
class RunResult:
    latencies: list[float] = field(default_factory=list)
    """Seconds per call, every call of every worker."""
    calls: int = 0
    window: float = 0.0
    """Seconds from the common start to the last worker's last call."""

    @property
    def throughput(self) -> float:
        return self.calls / self.window if self.window > 0 else 0.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


class _Client:
    """One connection and a call; `before()` does untimed housekeeping."""

    def __init__(self, target: Target, worker: int) -> None:
        self.t = target
        self.worker = worker
        self.n = 0
        self._task = ""
        self._channel: Any = None
        if target.kind == "opa":
            parts = urlsplit(target.opa_url)
            if parts.scheme == "unix":
                self._http: http.client.HTTPConnection = _UnixHTTPConnection(parts.path)
            else:
                self._http = http.client.HTTPConnection(parts.hostname or "", parts.port)
            self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
            return
        import grpc

        from sidecar._proto.jit.v1 import access_pb2, access_pb2_grpc

        self._channel = grpc.insecure_channel(f"unix:{target.socket}")
        if target.kind == "health":
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            self._stub: Any = health_pb2_grpc.HealthStub(self._channel)
            self._req: Any = health_pb2.HealthCheckRequest()
            return
        self._pb = access_pb2
        self._stub = access_pb2_grpc.AccessServiceStub(self._channel)
        self._streams: list[_OpenStream] = []
        jit = target.kind in ("jit", "stream_jit")
        action, resource, justification = JIT_INTENT if jit else STANDING_INTENT
        self._intent = access_pb2.Intent(
            action=action, resource=resource, justification=justification
        )
        self._granted = access_pb2.DECISION_GRANTED

    def before(self) -> None:
        if self.t.kind != "opa" and self.t.kind != "health" and self.n % self.t.rotate_every == 0:
            if self.t.kind == "fill":
                self._intent.resource = f"docs://fill/{self.worker}/{self.n}"
            task = self._stub.BeginTask(
                self._pb.BeginTaskRequest(goal="bench", max_duration_seconds=3600), timeout=30
            ).task
            self._task = task.task_id
            self._req = self._pb.RequestGrantRequest(
                task_id=self._task, intent=self._intent, ttl_seconds=self.t.ttl
            )
            if self.t.kind in STREAM_KINDS:
                stream = _OpenStream(self._stub, self._pb, self._task)
                self._streams.append(stream)
                item = self._pb.GrantStreamIntent(intent=self._intent, ttl_seconds=self.t.ttl)
                intents = [] if self.t.kind == "stream" else [item] * self.t.batch
                self._message = self._pb.GrantStreamRequest(intents=intents)

    def call(self) -> None:
        self.n += 1
        kind = self.t.kind
        if kind == "opa":
            bodies = self.t.opa_bodies
            self._http.request(
                "POST", self.t.opa_path, body=bodies[self.n % len(bodies)], headers=self._headers
            )
            response = self._http.getresponse()
            data = response.read()
            if response.status != 200 or b'"allow":true' not in data:
                raise RuntimeError(f"OPA answered {response.status}: {data[:200]!r}")
            return
        if kind == "health":
            status = self._stub.Check(self._req, timeout=30).status
            if status != 1:  # SERVING
                raise RuntimeError(f"health says {status}")
            return
        if kind in STREAM_KINDS:
            reply = self._streams[-1].ask(self._message)
            for result in reply.results:
                if result.response.decision != self._granted:
                    raise RuntimeError(f"not granted: {result}")
            return
        answer = self._stub.RequestGrant(self._req, timeout=30)
        if answer.decision != self._granted:
            raise RuntimeError(f"not granted: {list(answer.reasons)}")

    def close(self) -> None:
        for stream in getattr(self, "_streams", ()):
            stream.close()
        if self._channel is not None:
            self._channel.close()
        if self.t.kind == "opa":
            self._http.close()


class _OpenStream:
    """One task's GrantStream: requests through a queue, answers read one for one."""

    def __init__(self, stub: Any, pb: Any, task_id: str) -> None:
        import queue

        self._outbox: Any = queue.SimpleQueue()
        self._answers = stub.GrantStream(iter(self._outbox.get, None))
        self.ask(pb.GrantStreamRequest(task_id=task_id))

    def ask(self, message: Any) -> Any:
        self._outbox.put(message)
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)


def _worker_main(index: int, conn: Connection) -> None:
    while True:
        job = conn.recv()
        if job is None:
            return
        target, warm_calls, duration, max_calls = job
        try:
            client = _Client(target, index)
            for _ in range(warm_calls):
                client.before()
                client.call()
            conn.send(("ready", None))
            start_at = conn.recv()
            while time.time() < start_at:
                time.sleep(0.0005)
            start = time.perf_counter()
            deadline = start + duration
            lat: list[float] = []
            now = start
            while now < deadline and len(lat) < max_calls:
                client.before()
                t0 = time.perf_counter()
                client.call()
                now = time.perf_counter()
                lat.append(now - t0)
            client.close()
            conn.send(("done", (lat, now - start)))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


class LoadPool:
    """`size` worker processes; `run()` uses the first `concurrency` of them."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(i, child), daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    def run(
        self,
        target: Target,
        concurrency: int,
        *,
        duration: float = 1e9,
        max_calls: int = 1 << 62,
        warm_calls: int = 50,
    ) -> RunResult:
        conns = self._conns[:concurrency]
        for c in conns:
            c.send((target, warm_calls, duration, max_calls))
        for c in conns:
            status, detail = c.recv()
            if status != "ready":
                raise RuntimeError(f"load worker failed during warm-up: {detail}")
        start_at = time.time() + 0.05
        for c in conns:
            c.send(start_at)
        result = RunResult()
        failures = []
        for c in conns:
            status, detail = c.recv()
            if status != "done":
                failures.append(detail)
                continue
            lat, elapsed = detail
            result.latencies.extend(lat)
            result.calls += len(lat)
            result.window = max(result.window, elapsed)
        if failures:
            raise RuntimeError(f"load worker failed: {failures[0]}")
        return result

    def close(self) -> None:
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.send(None)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()

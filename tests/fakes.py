"""Fault injection only: things a real component cannot be made to do on demand.

`FakeOpa` is an HTTP/1.1 server speaking just enough of OPA's Data API to answer garbage,
errors, wrong shapes or to stall — the real sidecar talks to it over real TCP. `TcpProxy`
cuts one sidecar off a real Redis while the rest of the fleet keeps it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

    async def healthy(self) -> bool:
        return self.error is None

    async def revision(self) -> str:
        return "r1"

    async def aclose(self) -> None:
        pass


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

"""Fault injection only: things a real component cannot be made to do on demand.

`FakeOpa` is an HTTP/1.1 server speaking just enough of OPA's Data API to answer garbage,
errors, wrong shapes or to stall — the real sidecar talks to it over real TCP.
"""

from __future__ import annotations

import json
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

"""The OPA client's transport: asyncio streams (before) against an asyncio.Protocol (now).

    .venv/bin/python -m bench.http1_client [--requests 5000] [--loop uvloop|asyncio] [--json FILE]

Starts a real `opa run --server` on rego/ (`tests.harness.OpaServer`, on a loopback port and
a Unix socket), then, in ONE process and one event loop (uvloop, what `serve` runs, unless
`--loop asyncio`), at c=1, sends the AuthZEN single
evaluation's OPA call (POST /v1/data/jit/authzen/decision with the input of
bench/authzen.py) through:

- streams: the `Http1Pool` transport of main before this change (StreamReader `readuntil`
  for the head, `readuntil`/`readexactly` for the body), copied below and used only here;
- protocol: `sidecar._http1.Http1Pool` (responses framed in `data_received`, one future per
  exchange).

Both build the request with the same `sidecar._http1._request_bytes` and parse the head with
the same `_parse_head`, so only the transport differs. The two are timed alternately, call
after call (the order flips every pair), so both see the same background load on a shared
machine. Per transport (TCP loopback, then the Unix socket) it prints the p50/p90/p99
latency and the CPU time per exchange (`time.process_time` around each call, summed over
the calls, divided by their number), and the 1-minute load average before and after.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.authzen import REQUEST
from sidecar._http1 import (
    _HEX,
    MAX_BODY_BYTES,
    Http1Pool,
    HttpError,
    Response,
    _parse_head,
    _request_bytes,
)
from tests.harness import OpaServer

PATH = "/v1/data/jit/authzen/decision"
WARMUP = 300


class _Stale(Exception):
    """A pooled connection the server had already closed."""


class StreamsPool:
    """main's `Http1Pool` transport before this change (asyncio streams), for this
    comparison only: same request bytes, same head parser, same framing rules."""

    def __init__(self, unix_path: str | None, host: str = "", port: int = 0) -> None:
        self._unix_path = unix_path
        self._host = host
        self._port = port
        self._host_header = "localhost" if unix_path else f"{host}:{port}"
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._max_idle = 64

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._unix_path is not None:
            return await asyncio.open_unix_connection(self._unix_path)
        return await asyncio.open_connection(self._host, self._port)

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        payload = _request_bytes(method, path, self._host_header, body, "application/json")
        while self._idle:
            conn = self._idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():
                conn[1].close()
                continue
            try:
                return await self._exchange(conn, payload)
            except _Stale:
                continue
        return await self._exchange(await self._connect(), payload, fresh=True)

    async def _exchange(
        self,
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        payload: bytes,
        *,
        fresh: bool = False,
    ) -> Response:
        reader, writer = conn
        keep = False
        try:
            writer.write(payload)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as err:
                if not fresh and not err.partial:
                    raise _Stale from err
                raise HttpError("connection closed before a response") from err
            parsed = _parse_head(head)
            body = await self._read_body(reader, parsed.headers)
            keep = parsed.reusable
            return Response(parsed.status, body)
        except (OSError, asyncio.LimitOverrunError) as err:
            if not fresh and isinstance(err, ConnectionResetError):
                raise _Stale from err
            raise HttpError(f"connection error: {err}") from err
        except asyncio.IncompleteReadError as err:
            raise HttpError("connection closed mid-response") from err
        finally:
            if keep and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                digits = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    raise HttpError("malformed chunk size")
                size = int(digits, 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise HttpError("response body too large")
                chunks.append(await reader.readexactly(size))
                if await reader.readexactly(2) != b"\r\n":
                    raise HttpError("malformed chunk terminator")
        length = headers.get("content-length")
        if length is None or not (length.isascii() and length.isdigit()):
            raise HttpError("response without Content-Length")
        n = int(length)
        if n > MAX_BODY_BYTES:
            raise HttpError("response body too large")
        return await reader.readexactly(n)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()


Call = Callable[[], Awaitable[Response]]


async def _alternating(calls: dict[str, Call], n: int) -> dict[str, dict[str, float]]:
    """Each call `n` times, in turn (a, b, then b, a, ...), after a warm-up of each: wall
    time per call and the process's CPU time per call."""
    for _ in range(WARMUP):
        for call in calls.values():
            await call()
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    order = list(calls.items())
    for i in range(n):
        for name, call in order if i % 2 == 0 else order[::-1]:
            c0 = time.process_time()
            t0 = time.perf_counter()
            response = await call()
            t1 = time.perf_counter()
            cpu[name] += time.process_time() - c0
            wall[name].append((t1 - t0) * 1e6)
            if response.status != 200:
                raise RuntimeError(f"{name}: HTTP {response.status}: {response.body[:200]!r}")
    figures: dict[str, dict[str, float]] = {}
    for name, times in wall.items():
        q = statistics.quantiles(times, n=100, method="inclusive")
        figures[name] = {
            "p50_us": q[49],
            "p90_us": q[89],
            "p99_us": q[98],
            "cpu_us_per_call": cpu[name] / n * 1e6,
        }
    return figures


async def _measure(opa: OpaServer, socket: Path, n: int) -> dict[str, Any]:
    body = json.dumps({"input": REQUEST}, separators=(",", ":")).encode()
    results: dict[str, Any] = {}
    for via, streams, protocol in (
        ("tcp", StreamsPool(None, "127.0.0.1", opa.port), Http1Pool(opa.url)),
        ("unix", StreamsPool(str(socket)), Http1Pool(f"unix://{socket}")),
    ):
        first = json.loads((await protocol.request("POST", PATH, body)).body)
        again = json.loads((await streams.request("POST", PATH, body)).body)
        assert first["result"] == again["result"], "both transports must see one decision"
        assert first["result"]["decision"] is True, first

        def call(pool: StreamsPool | Http1Pool) -> Call:
            return lambda: pool.request("POST", PATH, body)

        load_before = os.getloadavg()[0]
        figures = await _alternating({"streams": call(streams), "protocol": call(protocol)}, n)
        figures["protocol / streams p50"] = (
            figures["protocol"]["p50_us"] / figures["streams"]["p50_us"]
        )
        figures["protocol / streams CPU"] = (
            figures["protocol"]["cpu_us_per_call"] / figures["streams"]["cpu_us_per_call"]
        )
        figures["load average (1 min) before, after"] = [load_before, os.getloadavg()[0]]
        results[via] = figures
        await streams.aclose()
        await protocol.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="per transport (5000)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    factory = uvloop.new_event_loop if args.loop == "uvloop" else None
    with tempfile.TemporaryDirectory(prefix="bench-http1-") as tmp:
        socket = Path(tmp) / "opa.sock"
        opa = OpaServer(Path(tmp), unix_socket=socket).start()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                results = runner.run(_measure(opa, socket, args.requests))
        finally:
            opa.stop()
    for via, figures in results.items():
        print(f"OPA over {via}, {args.loop}, c=1, {args.requests} calls each, alternating:")
        for name, value in figures.items():
            if isinstance(value, dict):
                print(
                    f"  {name:<9} p50/p90/p99 {value['p50_us']:.1f} / {value['p90_us']:.1f} / "
                    f"{value['p99_us']:.1f} µs, CPU {value['cpu_us_per_call']:.1f} µs per call"
                )
            elif isinstance(value, list):
                print(f"  {name}: {value[0]:.2f}, {value[1]:.2f}")
            else:
                print(f"  {name}: {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a per-call JIT grant adds to an MCP tool call, against the same call with a static token.

    .venv/bin/python bench/mcp_overhead.py [--calls 200]

Starts the real `opa` binary on rego/ and a real sidecar process (tests/harness.py), and two
MCP servers from examples/mcp_server.py in this process (uvicorn threads, loopback, free
ports): one plain (the SDK's app, no check), one guarded by `sidecar.mcp.protect` (token
verified against the sidecar's JWKS, and introspected on every tool call). One MCP client
session per case, `--calls` sequential `send_email` calls after a warm-up, timed around
`call_tool` only:

  plain+static     plain server, a static Bearer header nobody checks: the MCP call itself
  guard+static     guarded server, one JIT token obtained once and sent with every call
  guard+jit        guarded server through `sidecar.mcp.client`: a new JIT grant per call
                   (RequestGrant with an OPA decision, the call, then RevokeGrant)
  guard+standing   guarded server, `search` through the wrapper: the standing grant is reused

Prints p50/p90/mean per case and the differences. Not part of `make test`; figures go in
docs/performance.md ("MCP tool calls").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

from sidecar.client import AsyncAccessClient  # noqa: E402
from sidecar.mcp.client import CALL_META_KEY, connect  # noqa: E402
from tests.harness import OpaServer, SidecarProcess, free_port, wait_for  # noqa: E402
from tests.mcp_kit import McpServerThread, example  # noqa: E402

JUSTIFICATION = "send the daily report to ops"
ARGS = {"to": "ops@example.com", "body": "report"}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def serve_plain(port: int) -> uvicorn.Server:
    app = example.build_server("plain", []).streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for(lambda: server.started, 20, what="the plain MCP server")
    return server


async def timed(calls: int, one: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(10):
        await one()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def static_case(url: str, token: str, calls: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await timed(calls, lambda: session.call_tool("send_email", ARGS))


async def run(
    sidecar: SidecarProcess, guarded: McpServerThread, plain_url: str, calls: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    async with AsyncAccessClient(sidecar.socket) as jit, jit.task(goal="bench") as task:
        # The static token: one JIT grant (120 s), sent with every call of the static cases.
        static = await task.grant(
            "mcp.desk.send_email",
            "mcp://desk/tools/send_email",
            justification=JUSTIFICATION,
            ttl=120,
        )
        results["plain+static"] = await static_case(plain_url, static.token, calls)
        async with connect(guarded.url, task, guarded.tool_map()) as session:

            async def with_static_token() -> None:
                # Same transport and guard; the call goes out with the static token.
                with session.grants.bind(static) as call_id:
                    meta = {CALL_META_KEY: call_id}
                    await session.session.call_tool("send_email", ARGS, meta=meta)

            results["guard+static"] = await timed(calls, with_static_token)
            results["guard+jit"] = await timed(
                calls, lambda: session.call_tool("send_email", ARGS, justification=JUSTIFICATION)
            )
            results["guard+standing"] = await timed(
                calls, lambda: session.call_tool("search", {"query": "q"}, justification="look up")
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # per-request INFO lines (SDK, guard) would be timed too
    with tempfile.TemporaryDirectory(prefix="jit-bench-mcp-") as tmp:
        work = Path(tmp)
        opa = OpaServer(work).start()
        sidecar = SidecarProcess(work / "sidecar", opa.url, "--heartbeat-interval", "3600").start()
        guarded = McpServerThread(
            "desk", sidecar.http, sidecar.http_token.read_text().strip()
        ).start()
        plain_port = free_port()
        plain = serve_plain(plain_port)
        opa.put_data("jit/mcp_servers", {"desk": {"audience": guarded.url}})
        try:
            results = asyncio.run(
                run(sidecar, guarded, f"http://127.0.0.1:{plain_port}/mcp", args.calls)
            )
        finally:
            plain.should_exit = True
            guarded.stop()
            sidecar.stop(timeout=15)
            opa.stop()
    print(
        f"MCP tool call latency, ms ({args.calls} sequential calls per case; "
        f"{platform.python_version()}, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f})"
    )
    print(f"{'case':<16} {'p50':>7} {'p90':>7} {'mean':>7}")
    p50 = {}
    for case, samples in results.items():
        p50[case] = pct(samples, 0.5)
        print(
            f"{case:<16} {p50[case]:7.2f} {pct(samples, 0.9):7.2f} {statistics.fmean(samples):7.2f}"
        )
    differences = [
        ("guard (verify + introspection) adds", "guard+static", "plain+static"),
        ("per-call JIT grant + revoke adds", "guard+jit", "guard+static"),
        ("JIT per call vs plain static token", "guard+jit", "plain+static"),
        ("standing reuse vs guard+static", "guard+standing", "guard+static"),
    ]
    print()
    for label, case, base in differences:
        print(f"{label:<38} {p50[case] - p50[base]:6.2f} ms p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real MCP server (the `mcp` SDK's MCPServer over streamable HTTP, served by uvicorn on a
free loopback port) with three tools of different risk, guarded by `sidecar.mcp.protect`.
Every tool appends to `calls`, the server's own record of what ran."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

from sidecar.mcp import ToolMap, ToolRule
from sidecar.mcp.server import McpGuard, protect
from sidecar.verify import TokenVerifier
from tests.harness import free_port, wait_for

ISSUER = "https://jit-sidecar.local"
BANK_RULES = {
    "transfer_funds": ToolRule(bound_arguments=("to_account",), context_arguments=("amount",))
}


@dataclass
class McpServerThread:
    """One guarded MCP server named `name` on 127.0.0.1:<port>/mcp."""

    name: str
    jwks_url: str
    introspection_url: str
    port: int = field(default_factory=free_port)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rules: dict[str, ToolRule] = field(default_factory=dict)
    guard: McpGuard | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def tool_map(self) -> ToolMap:
        return ToolMap(self.name, self.rules)

    def start(self) -> McpServerThread:
        mcp = MCPServer(self.name)

        @mcp.tool()
        def search(query: str) -> str:
            """Search customers (low risk)."""
            self.calls.append(("search", {"query": query}))
            return f"3 customers match {query!r}"

        @mcp.tool()
        def send_email(to: str, body: str) -> str:
            """Send an email (medium risk)."""
            self.calls.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @mcp.tool()
        def transfer_funds(to_account: str, amount: float) -> str:
            """Move money (high risk)."""
            self.calls.append(("transfer_funds", {"to_account": to_account, "amount": amount}))
            return f"moved {amount} to {to_account}"

        verifier = TokenVerifier(
            self.jwks_url,
            issuer=ISSUER,
            audience=self.url,
            introspection_url=self.introspection_url,
        )
        self.guard = protect(
            mcp.streamable_http_app(),
            verifier,
            self.tool_map(),
            resource_url=self.url,
            authorization_servers=[ISSUER],
        )
        config = uvicorn.Config(
            self.guard, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        server = self._server
        wait_for(lambda: server.started, 20, what="the MCP server to start")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

"""A real MCP server for the tests: examples/mcp_server.py (the `mcp` SDK's MCPServer over
streamable HTTP, guarded by `sidecar.mcp.protect`) served by uvicorn in a thread on a free
loopback port. Its tools append to `calls`, the server's own record of what ran."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from sidecar.mcp import ToolMap
from tests.harness import ROOT, free_port, wait_for

_spec = importlib.util.spec_from_file_location("mcp_server", ROOT / "examples" / "mcp_server.py")
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


@dataclass
class McpServerThread:
    """One guarded MCP server named `name` on 127.0.0.1:<port>/mcp."""

    name: str
    sidecar_http: str
    introspection_credential: str | None = None
    """The sidecar's HTTP credential (SidecarProcess.http_token's content)."""
    port: int = field(default_factory=free_port)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def tool_map(self) -> ToolMap:
        return ToolMap(self.name, example.RULES)

    def start(self) -> McpServerThread:
        app = example.guarded_app(
            self.name, self.port, self.sidecar_http, self.calls, self.introspection_credential
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
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

"""MCP (Model Context Protocol) integration: a JIT grant for every tool call.

- `sidecar.mcp.client`: `connect(url, task, ToolMap(server))` opens an MCP session whose
  `call_tool` asks the sidecar for a grant first and sends that grant's token with the call;
- `sidecar.mcp.server`: `protect(app, verifier, ToolMap(server), resource_url=..., ...)` makes
  an MCP server (the `mcp` SDK's streamable HTTP app) accept only calls a token covers, with
  RFC 9728 metadata and the MCP authorization spec's 401/403 challenges;
- `sidecar.mcp.mapping`: the call → intent mapping both sides share.

See docs/mcp.md.
"""

from __future__ import annotations

from .mapping import ToolIntent, ToolMap, ToolMappingError, ToolRule

__all__ = ["ToolIntent", "ToolMap", "ToolMappingError", "ToolRule"]

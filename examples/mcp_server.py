"""An MCP server (the `mcp` SDK's MCPServer, streamable HTTP) whose tools run only for calls a
jit-sidecar token covers: `sidecar.mcp.protect` around the SDK's app (docs/mcp.md).

Three tools of different risk, classified by the shipped policy (rego/jit/data.json):
`search` (standing), `send_email` (JIT), `transfer_funds` (human approval; its grant names
the destination account, and the amount goes to the policy as context).

    python examples/mcp_server.py --name crm --port 8931 --sidecar http://127.0.0.1:9464

The server's canonical URI, http://127.0.0.1:<port>/mcp, is the audience its tokens must
carry; the policy knows it from data.jit.mcp_servers.<name>.audience.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

from sidecar.mcp import ToolMap, ToolRule
from sidecar.mcp.server import McpGuard, protect
from sidecar.verify import TokenVerifier

ISSUER = "https://jit-sidecar.local"
RULES = {
    # The grant names the destination account; the amount is context for the policy.
    "transfer_funds": ToolRule(bound_arguments=("to_account",), context_arguments=("amount",)),
}


def build_server(name: str, calls: list[tuple[str, dict[str, Any]]]) -> MCPServer:
    """The MCP server with its three tools; each appends to `calls` (the server's record)."""
    mcp = MCPServer(name)

    @mcp.tool()
    def search(query: str) -> str:
        """Search customers (low risk)."""
        calls.append(("search", {"query": query}))
        return f"3 customers match {query!r}"

    @mcp.tool()
    def send_email(to: str, body: str) -> str:
        """Send an email (medium risk)."""
        calls.append(("send_email", {"to": to, "body": body}))
        return f"sent to {to}"

    @mcp.tool()
    def transfer_funds(to_account: str, amount: float) -> str:
        """Move money (high risk)."""
        calls.append(("transfer_funds", {"to_account": to_account, "amount": amount}))
        return f"moved {amount} to {to_account}"

    return mcp


def guarded_app(
    name: str,
    port: int,
    sidecar: str,
    calls: list[tuple[str, dict[str, Any]]],
    introspection_credential: str | None = None,
) -> McpGuard:
    """The server's ASGI app behind the jit-sidecar guard: the few lines a server adds."""
    url = f"http://127.0.0.1:{port}/mcp"
    verifier = TokenVerifier(
        f"{sidecar}/.well-known/jwks.json",
        issuer=ISSUER,
        audience=url,  # only tokens for this server (MCP authorization spec)
        introspection_url=f"{sidecar}/introspect",  # revocation
        # /introspect wants the sidecar's HTTP credential (RFC 7662 §2.1)
        introspection_credential=introspection_credential,
    )
    return protect(
        build_server(name, calls).streamable_http_app(),
        verifier,
        ToolMap(name, RULES),
        resource_url=url,
        authorization_servers=[ISSUER],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="crm", help="the server's name in the policy")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--sidecar", default="http://127.0.0.1:9464", help="its HTTP listener")
    parser.add_argument(
        "--introspection-credential-file",
        type=Path,
        default=Path("var/http-token"),
        help="the sidecar's HTTP credential for /introspect (make run writes var/http-token)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="mcp-server: %(message)s")
    calls: list[tuple[str, dict[str, Any]]] = []
    credential = args.introspection_credential_file.read_text().strip()
    app = guarded_app(args.name, args.port, args.sidecar, calls, credential)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

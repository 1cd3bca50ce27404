"""An agent calling MCP tools through jit-sidecar: every tool call gets its own grant first.

    python examples/mcp_agent.py --socket var/sidecar.sock --url http://127.0.0.1:8931/mcp

Prints the trace of each call: intent → decision → token → tool result → revocation. The
last call is denied by the policy and never reaches the server. Approval-gated calls wait
for a human (`jit-sidecar approvals approve <id>`, or the demo's approver).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from sidecar.client import AccessDenied, AsyncAccessClient
from sidecar.mcp import ToolMap, ToolRule
from sidecar.mcp.client import connect

RULES = {
    "transfer_funds": ToolRule(bound_arguments=("to_account",), context_arguments=("amount",)),
}
CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("search", {"query": "ACME"}, "find the customer of ticket 7"),
    (
        "send_email",
        {"to": "billing@acme.example", "body": "Invoice 42 paid."},
        "tell ACME ticket 7 is paid",
    ),
    (
        "transfer_funds",
        {"to_account": "ACME-7", "amount": 420.0},
        "pay invoice 42 of ACME as agreed in ticket 7",
    ),
    ("send_email", {"to": "everyone@acme.example", "body": "spam"}, "x"),
]


def show(stage: str, text: str) -> None:
    print(f"   {stage:<10} {text}", flush=True)


async def run(socket: str, url: str, server: str) -> int:
    denied = 0
    async with AsyncAccessClient(socket) as jit, jit.task(goal="settle ticket 7") as task:
        print(f"task {task.task_id} (subject {task.subject})", flush=True)
        async with connect(url, task, ToolMap(server, RULES), trace=show) as session:
            tools = await session.list_tools()
            print(f"tools on {server}: {', '.join(t.name for t in tools.tools)}", flush=True)
            for name, arguments, justification in CALLS:
                print(f"\n-> {name}({arguments})", flush=True)
                try:
                    result = await session.call_tool(name, arguments, justification=justification)
                except AccessDenied:
                    denied += 1
                    show("result", "not sent: the policy denied it")
                    continue
                show("output", result.content[0].text if result.content else "(empty)")
    show("revocation", f"task {task.task_id} completed: every grant it still held is revoked")
    return 0 if denied == 1 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="var/sidecar.sock")
    parser.add_argument("--url", default="http://127.0.0.1:8931/mcp")
    parser.add_argument("--server", default="crm", help="the server's name in the policy")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.socket, args.url, args.server)))


if __name__ == "__main__":
    main()

"""`make demo-mcp`: OPA, the sidecar, the example MCP server and the example MCP agent.

Starts OPA on rego/ and a dev-mode sidecar (as `make demo` does), tells OPA the MCP server's
canonical URI (data.jit.mcp_servers.crm.audience, since the port is chosen here), starts
examples/mcp_server.py, and runs examples/mcp_agent.py, whose trace is the output
(intent → decision → token → tool result → revocation). A stand-in human approves the one
approval-gated call through the admin API. Then the audit trail, and everything stops.

    python examples/demo_mcp.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from demo import (
    EXAMPLES,
    Processes,
    abort,
    finish,
    free_port,
    http_ok,
    show_audit,
    start_opa_and_sidecar,
    workspace,
)

from sidecar.client import AdminClient


def approve_when_asked(admin_socket: Path, stop: threading.Event) -> None:
    """The human in the loop: approves each pending request through AdminService."""
    with AdminClient(admin_socket) as admin:
        while not stop.is_set():
            for approval in admin.list_approvals():
                print(f"   approver   approving {approval.approval_id} (alice, via the admin API)")
                admin.decide_approval(approval.approval_id, approve=True, approver="alice")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary state")
    args = parser.parse_args(argv)
    opa_port, sidecar_port, mcp_port = free_port(), free_port(), free_port()
    sidecar_http = f"http://127.0.0.1:{sidecar_port}"
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_SIDECAR_")}

    with workspace(args.keep) as work:
        procs = Processes(work)
        stop = threading.Event()
        try:
            sock = start_opa_and_sidecar(procs, work, opa_port, sidecar_port, env)
            requests.put(
                f"http://127.0.0.1:{opa_port}/v1/data/jit/mcp_servers/crm",
                json={"audience": mcp_url},
                timeout=5,
            ).raise_for_status()
            procs.start(
                "mcp-server",
                [
                    sys.executable,
                    str(EXAMPLES / "mcp_server.py"),
                    "--name",
                    "crm",
                    "--port",
                    str(mcp_port),
                    "--sidecar",
                    sidecar_http,
                    "--introspection-credential-file",
                    str(work / "http-token"),
                ],
                env,
            )
            metadata = f"http://127.0.0.1:{mcp_port}/.well-known/oauth-protected-resource/mcp"
            procs.wait_until("mcp-server", lambda: http_ok(metadata))
            print("jit-sidecar MCP demo")
            print(f"   sidecar     unix:{sock}  (dev identity), HTTP {sidecar_http}")
            print(f"   MCP server  {mcp_url}  (crm; sidecar.mcp.protect; PRM at {metadata})")
            sys.stdout.flush()
            approver = threading.Thread(
                target=approve_when_asked, args=(work / "run" / "admin.sock", stop), daemon=True
            )
            approver.start()
            agent = subprocess.run(
                [
                    sys.executable,
                    str(EXAMPLES / "mcp_agent.py"),
                    "--socket",
                    str(sock),
                    "--url",
                    mcp_url,
                    "--server",
                    "crm",
                ],
                env=env,
                timeout=120,
                check=False,
            )
            stop.set()
            approver.join(5)
            audit_ok = show_audit(work / "audit.jsonl")
        except (RuntimeError, subprocess.TimeoutExpired, requests.RequestException) as err:
            stop.set()
            return abort("demo-mcp", procs, err)
        return finish("demo-mcp", procs, agent.returncode == 0 and audit_ok)


if __name__ == "__main__":
    sys.exit(main())

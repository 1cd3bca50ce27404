"""An agent that uses a "ticket API" through the sidecar's egress proxy without ever holding
the API's key (docs/brokers.md, "Secretless HTTP egress").

    python examples/egress_agent.py --socket var/sidecar.sock --proxy http://127.0.0.1:9480

The sidecar runs with `--egress-config` naming an upstream `ticket-api` whose key it reads
from a file; this process has no key, no key file and no environment variable holding one.
Steps: read a ticket (a standing grant), try a ticket the grant does not cover (403), add a
comment (a JIT grant with a justification), then finish the task and see the proxy refuse
the same token (401). Exits 1 when any step does not behave as the shipped policy says.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import requests

from sidecar.client import AccessClient, Grant

TICKET = "https-api://ticket-api/tickets/42"


class Steps:
    def __init__(self, proxy: str) -> None:
        self.proxy = proxy.rstrip("/")
        self.failures: list[str] = []

    def call(self, title: str, method: str, path: str, grant: Grant, **kw: Any) -> int:
        """One request through the proxy with the grant's token (never printed)."""
        response = requests.request(
            method,
            f"{self.proxy}{path}",
            headers={"Authorization": grant.authorization},
            timeout=10,
            **kw,
        )
        body = response.text if len(response.text) < 300 else response.text[:300] + "…"
        print(f"== {title}\n   {method} {path}  (grant {grant.grant_id})")
        print(f"   -> {response.status_code} {body}")
        return response.status_code

    def expect(self, got: int, want: int, what: str) -> None:
        if got != want:
            self.failures.append(f"{what}: HTTP {got}, expected {want}")
            print(f"   UNEXPECTED: {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="var/sidecar.sock")
    parser.add_argument("--proxy", default="http://127.0.0.1:9480")
    args = parser.parse_args()
    steps = Steps(args.proxy)
    with AccessClient(args.socket) as client:
        task = client.task("answer the customer on ticket 42")
        with task:
            read = task.grant("https-api.read", TICKET)
            steps.expect(
                steps.call("read the ticket", "GET", "/ticket-api/tickets/42", read), 200, "read"
            )
            steps.expect(
                steps.call(
                    "a ticket the grant does not cover", "GET", "/ticket-api/tickets/43", read
                ),
                403,
                "another ticket",
            )
            comment = task.grant(
                "https-api.comment",
                TICKET + "/comments",
                justification="reply to the customer's question",
            )
            steps.expect(
                steps.call(
                    "comment on it",
                    "POST",
                    "/ticket-api/tickets/42/comments",
                    comment,
                    json={"body": "We are on it."},
                ),
                201,
                "comment",
            )
        # Leaving the block completed the task: every grant of it is revoked.
        steps.expect(
            steps.call("the same token after the task", "GET", "/ticket-api/tickets/42", read),
            401,
            "after the task",
        )
    if steps.failures:
        print("\nFAILED: " + "; ".join(steps.failures))
        return 1
    print("\nOK: the agent used the ticket API and never held its key")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An example agent: one task, a read, a write, something out of scope, then revocation.

    python examples/agent.py --socket var/sidecar.sock --api http://127.0.0.1:8080

Each step prints its trace: intent -> decision -> token claims (decoded; the token itself is
never printed) -> API call -> result. Exits 1 if any step does not behave as the dev policy
(rego/jit) says it should, so `make demo` can fail loudly.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass
from typing import Any

import requests

from sidecar.client import AccessClient, AccessDenied, Grant, requires

TICKET = "T-1001"
DOC = "handbook/refunds"


@dataclass(frozen=True, slots=True)
class ApiResult:
    status: int
    body: dict[str, Any]

    def __str__(self) -> str:
        shown = {k: v for k, v in self.body.items() if k not in ("subject", "task")}
        return f"{self.status} {json.dumps(shown, separators=(', ', ': '))}"


class Trace:
    """Prints the steps and remembers whether each did what was expected."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def line(self, label: str, text: str) -> None:
        print(f"   {label:<9} {text}", flush=True)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            self.line("UNEXPECTED", what)

    def grant(self, grant: Grant) -> None:
        self.line(
            "decision",
            f"GRANTED  tier={grant.tier}  audience={grant.audience}  "
            f"expires in {grant.expires_in:.0f} s",
        )
        self.line("token", f"jti={grant.grant_id}  claims:")
        for key, value in claims_of(grant.token).items():
            print(f"{'':13}{key:<22} {json.dumps(value)}", flush=True)


def claims_of(token: str) -> dict[str, Any]:
    """The token's payload, decoded for display only (the API verifies it)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


class Api:
    """The example resource server, called with a grant's token."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()

    def call(self, method: str, path: str, grant: Grant) -> ApiResult:
        response = self.http.request(
            method, self.base + path, headers={"Authorization": grant.authorization}, timeout=5
        )
        return ApiResult(response.status_code, response.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="the sidecar's agent socket ($JIT_SIDECAR_SOCKET)")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the resource server")
    args = parser.parse_args(argv)
    api = Api(args.api)
    trace = Trace()
    spent: list[Grant] = []  # kept only so step 6 can show reuse is refused after the task

    # A "tool" as an agent framework would register it: it asks for its own grant first.
    @requires(
        "tickets.update",
        # Resource names have one spelling: the authority is lower case (docs/api.md).
        lambda ticket_id, **_: f"tickets://{ticket_id.lower()}",
        justification=lambda reason, **_: reason,
        ttl=120,
    )
    def close_ticket(ticket_id: str, reason: str, *, grant: Grant) -> ApiResult:
        trace.grant(grant)
        spent.append(grant)
        return api.call("POST", f"/tickets/{ticket_id}/close", grant)

    with AccessClient(args.socket) as jit:
        with jit.task(goal=f"resolve ticket {TICKET}", labels={"purpose": "support"}) as task:
            trace.step("0. task")
            trace.line(
                "task",
                f"{task.task_id} as {task.subject}, heartbeat every "
                f"{task.heartbeat_interval:.0f} s",
            )

            trace.step("1. read a document (standing grant)")
            trace.line("intent", f"docs.read  docs://{DOC}")
            read = task.grant("docs.read", f"docs://{DOC}")
            trace.grant(read)
            result = api.call("GET", f"/docs/{DOC}", read)
            trace.line("API", f"GET /docs/{DOC} -> {result}")
            trace.expect(read.tier == "standing", "the read should be a standing grant")
            trace.expect(result.status == 200, "the read token should be accepted")

            trace.step("2. close the ticket (JIT grant, through a @requires tool)")
            reason = "customer confirmed the refund arrived"
            trace.line("intent", f'tickets.update  tickets://{TICKET.lower()}  "{reason}"')
            result = close_ticket(TICKET, reason)
            trace.line("API", f"POST /tickets/{TICKET}/close -> {result}")
            trace.expect(spent[-1].tier == "jit", "the write should be a JIT grant")
            trace.expect(result.status == 200, "the write token should be accepted")

            trace.step("3. the ticket token is refused by the docs API (one audience, one action)")
            result = api.call("GET", f"/docs/{DOC}", spent[-1])
            trace.line("API", f"GET /docs/{DOC} with the ticket token -> {result}")
            trace.expect(result.status == 401, "a tickets token must not read docs")

            trace.step("4. try something out of scope (denied)")
            trace.line("intent", 'payments.refund  payments://orders/42  "duplicate charge"')
            try:
                task.grant(
                    "payments.refund", "payments://orders/42", justification="duplicate charge"
                )
            except AccessDenied as denied:
                trace.line("decision", "DENIED: " + "; ".join(denied.reasons))
            else:
                trace.expect(False, "payments.refund should have been denied")

        trace.step("5. finish the task (every grant revoked)")
        done = task.completion
        trace.line(
            "task",
            f"completed SUCCEEDED, {done.revoked_grants if done else '?'} grant(s) revoked",
        )
        trace.expect(done is not None and done.revoked_grants == 2, "both grants revoked")

    trace.step("6. reuse the write token after the task (rejected)")
    result = api.call("POST", f"/tickets/{TICKET}/close", spent[-1])
    trace.line("API", f"POST /tickets/{TICKET}/close -> {result}")
    trace.expect(
        result.status == 401 and result.body.get("reason") == "revoked",
        "the revoked token must be refused with reason revoked",
    )

    if trace.failures:
        print(f"\n{len(trace.failures)} step(s) misbehaved: " + "; ".join(trace.failures))
        return 1
    print("\nall steps behaved as the policy says.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AuthZEN 1.0 and ARAP on a real sidecar: real HTTP listener, real OPA (`opa run` on rego/),
real SQLite and audit log, the real `jit-sidecar approvals` CLI on the admin socket."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.audit import log_files, verify
from tests.faults import immutable
from tests.harness import OpaServer, SidecarProcess, running, wait_for
from tests.integration.test_approvals_and_cache import cli
from tests.integration.test_audit_and_keys import cli as audit_cli

CREDENTIAL = "authzen-test-credential-0123456789"
DEV = "spiffe://jit.local/agent/dev"
BILLING = "spiffe://jit.local/agent/billing"
REFUND_CONTEXT = {
    "justification": "refund the double charge on order 42",
    "intent": {"amount": 500},
}


def _start(workdir: Any, opa_url: str, *extra: str) -> SidecarProcess:
    token_file = workdir / "http-token"
    workdir.mkdir(parents=True, exist_ok=True)
    token_file.write_text(CREDENTIAL)
    return SidecarProcess(
        workdir / "sidecar", opa_url, "--http-token-file", str(token_file), *extra
    )


@pytest.fixture(scope="module")
def az(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar deciding AuthZEN requests with the shipped jit policy (the default path)."""
    with running(_start(tmp_path_factory.mktemp("authzen"), opa.url)) as sidecar:
        yield sidecar


def post(
    sidecar: SidecarProcess,
    path: str,
    body: Any = None,
    *,
    data: bytes | None = None,
    credential: str | None = CREDENTIAL,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    payload = data if data is not None else json.dumps(body).encode()
    return requests.post(sidecar.http + path, data=payload, headers=sent, timeout=15)


def get(sidecar: SidecarProcess, path: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {CREDENTIAL}"}
    return requests.get(sidecar.http + path, headers=headers, timeout=15)


def ask(
    subject: str, action: str, resource: str, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "subject": {"type": "agent", "id": subject},
        "action": {"name": action},
        "resource": {"type": "uri", "id": resource},
    }
    if context is not None:
        request["context"] = context
    return request


def evaluate(sidecar: SidecarProcess, request: dict[str, Any]) -> dict[str, Any]:
    response = post(sidecar, "/access/v1/evaluation", request)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(
    sidecar: SidecarProcess, request: dict[str, Any], denial: dict[str, Any], **kw: Any
) -> requests.Response:
    """An ARAP access request for a requestable denial, echoing its binding (ARAP 'Access
    Request Submission')."""
    hint = denial["context"]["access_request"]
    body = {
        **request,
        "context": {**request.get("context", {}), "business_justification": "customer ticket 991"},
        "denial": {
            "evaluation_id": denial["context"]["evaluation_id"],
            "expires_at": hint["expires_at"],
            "binding_token": hint["binding_token"],
            "reason": denial["context"]["reason"],
        },
        **kw,
    }
    return post(sidecar, "/access/v1/requests", body)


# ====================================================================== the jit policy
def test_gateway_gets_the_answer_an_agent_gets(az: SidecarProcess) -> None:
    """The shipped policy decides an AuthZEN request like the agent's RequestGrant: standing,
    JIT (with tier and TTL in context), and a denial with the same reason code."""
    with az.client() as c:
        task = c.begin_task("authzen parity", labels={"purpose": "support"})
        read = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        write = c.request_grant(
            task.task_id,
            "tickets.update",
            "tickets://t-1",
            justification="fix ticket t-1 now",
            ttl_seconds=600,
        )
    task_context = {"task": {"id": task.task_id, "labels": {"purpose": "support"}}}
    standing = evaluate(az, ask(DEV, "docs.read", "docs://handbook/intro", task_context))
    jit = evaluate(
        az,
        ask(
            DEV,
            "tickets.update",
            "tickets://t-1",
            {**task_context, "justification": "fix ticket t-1 now"},
        ),
    )
    denied = evaluate(az, ask(DEV, "payments.refund", "payments://orders/42", task_context))
    assert read.tier == pb.TIER_STANDING
    assert write.tier == pb.TIER_JIT
    assert standing["decision"] is True
    assert standing["context"]["tier"] == "standing"
    assert jit["decision"] is True
    assert jit["context"]["tier"] == "jit"
    assert jit["context"]["ttl_seconds"] == write.expires_at.seconds - write.issued_at.seconds
    assert denied == {
        "decision": False,
        "context": {
            "reason": "cross_domain",
            "reasons": ["cross_domain: payments is not among this agent's domains"],
        },
    }


def test_decisions_are_audited_and_counted_without_tokens(az: SidecarProcess) -> None:
    """Every AuthZEN decision leaves an `authzen_decision` record (request id, decision,
    reason) and a count by decision; nothing is issued."""
    before = len(az.events("authzen_decision"))
    permits = az.metric("jit_authzen_evaluations_total", decision="permit")
    issued = len(az.events("grant_issued"))
    response = post(
        az,
        "/access/v1/evaluation",
        ask(DEV, "docs.read", "docs://handbook/audit"),
        headers={"X-Request-ID": "req-audit-1"},
    )
    events = az.events("authzen_decision")[before:]
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-audit-1"
    assert len(events) == 1
    assert events[0]["request_id"] == "req-audit-1"
    assert events[0]["decision"] is True
    assert events[0]["subject"] == DEV
    assert events[0]["authzen"]["resource"] == "docs://handbook/audit"
    assert az.metric("jit_authzen_evaluations_total", decision="permit") == permits + 1
    assert len(az.events("grant_issued")) == issued


# ====================================================================== batches
BATCH = {
    "subject": {"type": "agent", "id": DEV},
    "resource": {"type": "uri", "id": "docs://handbook/batch"},
    "evaluations": [
        {"action": {"name": "docs.read"}},
        {"action": {"name": "docs.teleport"}},
        {"action": {"name": "docs.list"}},
    ],
}


@pytest.mark.parametrize(
    ("semantic", "expected"),
    [
        ("execute_all", [True, False, True]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
def test_batch_semantics(az: SidecarProcess, semantic: str, expected: list[bool]) -> None:
    """Defaults and overrides apply per item; the semantic decides which items are answered,
    audited and counted (AuthZEN §7.1.2.1)."""
    before = len(az.events("authzen_decision"))
    response = post(
        az, "/access/v1/evaluations", {**BATCH, "options": {"evaluations_semantic": semantic}}
    )
    answers = response.json()["evaluations"]
    audited = az.events("authzen_decision")[before:]
    assert response.status_code == 200
    assert [a["decision"] for a in answers] == expected
    assert [e["decision"] for e in audited] == expected
    assert [e["authzen"]["action"] for e in audited] == ["docs.read", "docs.teleport", "docs.list"][
        : len(expected)
    ]
    if semantic == "execute_all":
        assert answers[1]["context"]["reason"] == "unknown_action"


def test_item_overrides_subject_and_context(az: SidecarProcess) -> None:
    """An item's own subject and context replace the defaults, whole (§7.1.1)."""
    body = {
        "subject": {"type": "agent", "id": DEV},
        "action": {"name": "payments.refund"},
        "resource": {"type": "uri", "id": "payments://orders/42"},
        "context": {
            "justification": "refund the double charge on order 42",
            "intent": {"amount": 50},
        },
        "evaluations": [
            {},
            {"subject": {"type": "agent", "id": BILLING}},
            {"subject": {"type": "agent", "id": BILLING}, "context": REFUND_CONTEXT},
        ],
    }
    answers = post(az, "/access/v1/evaluations", body).json()["evaluations"]
    assert [a["decision"] for a in answers] == [False, True, False]
    assert answers[0]["context"]["reason"] == "cross_domain"
    assert answers[2]["context"]["reason"] == "approval_required"


# ====================================================================== bad input
GOOD = ask(DEV, "docs.read", "docs://handbook/intro")
BAD_BODIES: list[tuple[str, Any]] = [
    ("missing subject", {k: v for k, v in GOOD.items() if k != "subject"}),
    ("missing subject type", {**GOOD, "subject": {"id": DEV}}),
    ("missing subject id", {**GOOD, "subject": {"type": "agent"}}),
    ("missing resource id", {**GOOD, "resource": {"type": "uri"}}),
    ("missing action name", {**GOOD, "action": {}}),
    ("subject is a string", {**GOOD, "subject": DEV}),
    ("id is a number", {**GOOD, "resource": {"type": "uri", "id": 42}}),
    ("type is empty", {**GOOD, "subject": {"type": "", "id": DEV}}),
    ("context is an array", {**GOOD, "context": []}),
    (
        "properties is a string",
        {**GOOD, "subject": {"type": "agent", "id": DEV, "properties": "x"}},
    ),
    ("top level is an array", [GOOD]),
]
BATCH_ONLY: list[tuple[str, Any]] = [
    ("evaluations is an object", {**GOOD, "evaluations": {"a": GOOD}}),
    ("item is a string", {**GOOD, "evaluations": ["x"]}),
    (
        "unknown semantic",
        {**GOOD, "evaluations": [GOOD], "options": {"evaluations_semantic": "any"}},
    ),
    ("options is a list", {**GOOD, "evaluations": [GOOD], "options": []}),
    (
        "item lacks what defaults lack",
        {"subject": GOOD["subject"], "evaluations": [{"action": GOOD["action"]}]},
    ),
]
BAD_BYTES: list[tuple[str, bytes, dict[str, str]]] = [
    ("a 1 MB body", b'{"subject": "' + b"x" * (1024 * 1024) + b'"}', {}),
    ("non-UTF-8", b'{"subject": {"type": "agent", "id": "\xff\xfe"}}', {}),
    ("not JSON", b"subject=dev", {}),
    ("NaN", b'{"subject": NaN}', {}),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, {}),
    ("not application/json", json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}),
    ("request id too long", json.dumps(GOOD).encode(), {"X-Request-ID": "r" * 300}),
]


@pytest.mark.parametrize(
    ("path", "name", "body"),
    [("/access/v1/evaluation", *b) for b in BAD_BODIES]
    + [("/access/v1/evaluations", *b) for b in BAD_BODIES + BATCH_ONLY],
    ids=[f"single-{b[0]}" for b in BAD_BODIES] + [f"batch-{b[0]}" for b in BAD_BODIES + BATCH_ONLY],
)
def test_bad_json_is_400_with_a_reason(az: SidecarProcess, path: str, name: str, body: Any) -> None:
    """Malformed requests get 400 with an error body and reason code, never a 500, and no
    decision is audited."""
    before = len(az.events("authzen_decision"))
    response = post(az, path, body)
    error = response.json()
    assert response.status_code == 400, response.text
    assert error["error"] == "invalid_request"
    assert error["reason"] in ("invalid_request", "bad_json")
    assert error["error_description"]
    assert len(az.events("authzen_decision")) == before


@pytest.mark.parametrize(
    "path", ["/access/v1/evaluation", "/access/v1/evaluations", "/access/v1/requests"]
)
@pytest.mark.parametrize(("name", "data", "headers"), BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_bad_bytes_are_400_with_a_reason(
    az: SidecarProcess, path: str, name: str, data: bytes, headers: dict[str, str]
) -> None:
    """Oversized, non-UTF-8, non-JSON bodies and bad headers get 400 with a reason, not 500."""
    response = post(az, path, data=data, headers=headers)
    error = response.json()
    expected = {
        "a 1 MB body": "body_too_large",
        "non-UTF-8": "not_utf8",
        "not application/json": "content_type",
        "request id too long": "invalid_request_id",
    }.get(name, "bad_json")
    assert response.status_code == 400, response.text
    assert error["reason"] == expected
    assert "Traceback" not in az.log()


# ====================================================================== credential
@pytest.mark.parametrize("credential", [None, "wrong-credential-0123456789", ""])
@pytest.mark.parametrize(
    "path", ["/access/v1/evaluation", "/access/v1/evaluations", "/access/v1/requests"]
)
def test_missing_or_wrong_credential_is_401(
    az: SidecarProcess, credential: str | None, path: str
) -> None:
    """The AuthZEN endpoints take the credential /introspect takes; without it: 401."""
    response = post(az, path, GOOD, credential=credential)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_task_status_needs_the_credential_and_discovery_does_not(az: SidecarProcess) -> None:
    """Discovery is public metadata (like the JWKS); task status is not."""
    status = requests.get(az.http + "/access/v1/requests/a-x", timeout=10)
    discovery = requests.get(az.http + "/.well-known/authzen-configuration", timeout=10)
    assert status.status_code == 401
    assert discovery.status_code == 200


# ====================================================================== fail closed
@pytest.fixture
def broken(tmp_path: Any, own_opa: OpaServer) -> Iterator[tuple[SidecarProcess, OpaServer]]:
    with running(
        _start(tmp_path / "broken", own_opa.url, "--authzen-decision-path", "broken/decision")
    ) as sidecar:
        yield sidecar, own_opa


def test_undefined_malformed_and_missing_decisions_deny(
    broken: tuple[SidecarProcess, OpaServer],
) -> None:
    """No decision, a decision of the wrong shape, or no OPA at all: `{"decision": false}`
    with the cause in context, counted as errors and audited."""
    sidecar, opa = broken
    undefined = evaluate(sidecar, GOOD)
    opa.put_policy("broken", 'package broken\n\ndecision := {"decision": "yes"}\n')
    wrong_type = evaluate(sidecar, GOOD)
    opa.put_policy("broken", 'package broken\n\ndecision := {"decision": true, "context": "ok"}\n')
    wrong_context = evaluate(sidecar, GOOD)
    batch = post(sidecar, "/access/v1/evaluations", {**GOOD, "evaluations": [{}, {}]}).json()
    opa.stop()
    unreachable = evaluate(sidecar, GOOD)
    causes = [e.get("cause") for e in sidecar.events("authzen_decision")]
    assert undefined == {
        "decision": False,
        "context": {"reason": "policy_error", "cause": "undefined"},
    }
    assert wrong_type == {
        "decision": False,
        "context": {"reason": "policy_error", "cause": "shape"},
    }
    assert wrong_context == {
        "decision": False,
        "context": {"reason": "policy_error", "cause": "shape"},
    }
    assert [e["decision"] for e in batch["evaluations"]] == [False, False]
    assert unreachable["decision"] is False
    assert unreachable["context"]["cause"] == "unreachable"
    assert causes == ["undefined", "shape", "shape", "shape", "shape", "unreachable"]
    assert sidecar.metric("jit_authzen_evaluations_total", decision="error") == 6
    assert sidecar.metric("jit_authzen_evaluations_total", decision="permit") == 0


def test_one_failing_item_does_not_fail_the_batch(broken: tuple[SidecarProcess, OpaServer]) -> None:
    """When one item's evaluation makes OPA fail the batch query, each item is asked on its
    own: the good one is answered, the failing one denied with its cause."""
    sidecar, opa = broken
    opa.put_policy(
        "broken",
        "package broken\n\n"
        'decision := {"decision": true} if input.resource.id != "boom"\n\n'
        'decision := {"decision": true} if input.resource.id == "boom"\n\n'
        'decision := {"decision": false} if input.resource.id == "boom"\n',
    )
    items = [{"resource": {"type": "uri", "id": "ok"}}, {"resource": {"type": "uri", "id": "boom"}}]
    answers = post(sidecar, "/access/v1/evaluations", {**GOOD, "evaluations": items}).json()
    assert answers["evaluations"][0] == {"decision": True}
    assert answers["evaluations"][1] == {
        "decision": False,
        "context": {"reason": "policy_error", "cause": "http_5xx"},
    }


# ====================================================================== ARAP
def test_access_request_is_approved_in_the_desk_then_reevaluation_permits(
    az: SidecarProcess,
) -> None:
    """A requestable denial → access request → an approval in `approvals list` → approved
    with the CLI → re-evaluation with the approval reference answers true, and only for the
    same request."""
    request = ask(BILLING, "payments.refund", "payments://orders/42", REFUND_CONTEXT)
    denial = evaluate(az, request)
    submitted = submit(az, request, denial)
    task = submitted.json()["task"]
    listed = cli(az, "approvals", "list")
    reference = {"id": task["id"]}
    pending = evaluate(az, {**request, "context": {**REFUND_CONTEXT, "approval": reference}})
    approved = cli(az, "approvals", "approve", task["id"], "--reason", "ticket 991 checked")
    status = get(az, f"/access/v1/requests/{task['id']}").json()
    permitted = evaluate(
        az, {**request, "context": {**REFUND_CONTEXT, "approval": status["result"]["approval"]}}
    )
    other = ask(
        BILLING,
        "payments.refund",
        "payments://orders/43",
        {**REFUND_CONTEXT, "approval": reference},
    )
    out_of_scope = evaluate(az, other)
    without = evaluate(az, request)

    assert denial["decision"] is False
    assert denial["context"]["reason"] == "approval_required"
    assert denial["context"]["evaluation_id"].startswith("eval_")
    hint = denial["context"]["access_request"]
    assert hint["endpoint"] == az.http + "/access/v1/requests"
    assert hint["template"] == "jit_approval"
    assert hint["binding_token"] and hint["expires_at"]
    assert submitted.status_code == 202
    assert submitted.headers["Location"] == task["status_endpoint"]
    assert task["status"] == "pending"
    assert task["links"]["cancel"] == task["status_endpoint"] + "/cancel"
    assert listed.returncode == 0
    assert task["id"] in listed.stdout
    assert "payments.refund payments://orders/42" in listed.stdout
    assert "customer ticket 991" in listed.stdout
    assert pending["decision"] is False
    assert pending["context"]["reason"] == "approval_pending"
    assert pending["context"]["next_action"] == "retry"
    assert approved.returncode == 0, approved.stderr
    assert status["task"]["status"] == "approved"
    assert status["result"]["mode"] == "reevaluate"
    assert status["result"]["approval"]["id"] == task["id"]
    assert permitted == {"decision": True, "context": {"approval": status["result"]["approval"]}}
    assert out_of_scope["decision"] is False
    assert out_of_scope["context"]["reason"] == "out_of_scope"
    assert out_of_scope["context"]["next_action"] == "request"
    assert "access_request" in out_of_scope["context"]
    assert without["decision"] is False  # the approval is never a standing permission
    pending_events = [e for e in az.events("grant_pending") if e["approval_id"] == task["id"]]
    assert pending_events[0]["task_id"] == "authzen/requests"
    assert pending_events[0]["intent"]["context"]["via"] == "authzen"
    audited = [e for e in az.events("authzen_decision") if e.get("approval_id") == task["id"]]
    assert [e["decision"] for e in audited] == [True]
    assert not any(
        e["event"] == "grant_issued" and e.get("approval_id") == task["id"]
        for e in az.audit_records()
    )


def test_denied_and_cancelled_requests(az: SidecarProcess) -> None:
    """An approver's denial and the PEP's cancellation map to ARAP `denied` and `cancelled`;
    neither permits, and a settled task cannot be cancelled (409)."""
    request = ask(BILLING, "payments.refund", "payments://orders/77", REFUND_CONTEXT)
    denied_task = submit(az, request, evaluate(az, request)).json()["task"]
    refused = cli(az, "approvals", "deny", denied_task["id"], "--reason", "not this one")
    denied_status = get(az, f"/access/v1/requests/{denied_task['id']}").json()
    after_denial = evaluate(
        az, {**request, "context": {**REFUND_CONTEXT, "approval": {"id": denied_task["id"]}}}
    )

    cancelled_task = submit(az, request, evaluate(az, request)).json()["task"]
    cancelled = post(
        az, f"/access/v1/requests/{cancelled_task['id']}/cancel", {"reason": "user_abandoned"}
    )
    again = post(az, f"/access/v1/requests/{cancelled_task['id']}/cancel", {})
    listed = cli(az, "approvals", "list")
    assert refused.returncode == 0, refused.stderr
    assert denied_status["task"]["status"] == "denied"
    assert denied_status["result"] == {"reason": "not this one"}
    assert after_denial["decision"] is False
    assert after_denial["context"]["reason"] == "approval_denied"
    assert after_denial["context"]["next_action"] == "none"
    assert cancelled.status_code == 200
    assert cancelled.json()["task"]["status"] == "cancelled"
    assert again.status_code == 409
    assert again.headers["Content-Type"].startswith("application/problem+json")
    assert again.json()["type"] == "urn:openid:authzen:access-request:error:invalid_task_state"
    assert cancelled_task["id"] not in listed.stdout
    decided = [e for e in az.events("approval_decided") if e["approval_id"] == cancelled_task["id"]]
    assert decided[0]["approver"] == "authzen-pep"
    assert decided[0]["approved"] is False


def test_access_requests_must_bind_to_a_requestable_denial(az: SidecarProcess) -> None:
    """Tampered, missing or mismatched binding material, unknown tasks and non-requestable
    denials are refused with the ARAP problem types; repeating an Idempotency-Key returns
    the same task, reusing it for another body is a conflict."""
    request = ask(BILLING, "payments.refund", "payments://orders/90", REFUND_CONTEXT)
    denial = evaluate(az, request)
    hint = denial["context"]["access_request"]
    tampered = submit(
        az,
        request,
        {
            **denial,
            "context": {
                **denial["context"],
                "access_request": {**hint, "binding_token": hint["binding_token"][:-4] + "AAAA"},
            },
        },
    )
    other = ask(BILLING, "payments.refund", "payments://orders/91", REFUND_CONTEXT)
    mismatched = submit(az, other, denial)
    changed_context = submit(
        az, {**request, "context": {**REFUND_CONTEXT, "intent": {"amount": 5}}}, denial
    )
    no_binding = post(
        az, "/access/v1/requests", {**request, "denial": {"expires_at": hint["expires_at"]}}
    )
    unknown = get(az, "/access/v1/requests/a-unknown")
    keyed = {"Idempotency-Key": "k-1"}
    first = post(az, "/access/v1/requests", _submission(request, denial), headers=keyed)
    repeat = post(az, "/access/v1/requests", _submission(request, denial), headers=keyed)
    conflict = post(
        az,
        "/access/v1/requests",
        {**_submission(request, denial), "requested_access": {"emergency": True}},
        headers=keyed,
    )
    kinds = [
        r.json()["type"].rsplit(":", 1)[1]
        for r in (tampered, mismatched, changed_context, no_binding, unknown, conflict)
    ]
    assert [r.status_code for r in (tampered, mismatched, changed_context, no_binding)] == [400] * 4
    assert kinds == ["invalid_denial_binding"] * 4 + ["unknown_task", "duplicate_request"]
    assert unknown.status_code == 404
    assert conflict.status_code == 409
    assert first.status_code == 202
    assert repeat.json()["task"]["id"] == first.json()["task"]["id"]


def _submission(request: dict[str, Any], denial: dict[str, Any]) -> dict[str, Any]:
    hint = denial["context"]["access_request"]
    return {
        **request,
        "denial": {"binding_token": hint["binding_token"], "expires_at": hint["expires_at"]},
    }


def test_approvals_expire(tmp_path: Any, opa: OpaServer) -> None:
    """With a 3 s approval TTL: an undecided request becomes `expired`; an approved one
    permits until `approved_until`, then re-evaluation says approval_expired and asks for a
    new request."""
    with running(_start(tmp_path, opa.url, "--approval-ttl", "3")) as sidecar:
        request = ask(BILLING, "payments.refund", "payments://orders/5", REFUND_CONTEXT)
        lapsing = submit(sidecar, request, evaluate(sidecar, request)).json()["task"]
        approved = submit(sidecar, request, evaluate(sidecar, request)).json()["task"]
        cli(sidecar, "approvals", "approve", approved["id"], "--reason", "ok")
        reference = get(sidecar, f"/access/v1/requests/{approved['id']}").json()["result"][
            "approval"
        ]
        with_approval = {**request, "context": {**REFUND_CONTEXT, "approval": reference}}
        before = evaluate(sidecar, with_approval)
        wait_for(
            lambda: (
                get(sidecar, f"/access/v1/requests/{lapsing['id']}").json()["task"]["status"]
                == "expired"
            ),
            15,
            what="the undecided request to expire",
        )
        time.sleep(0.5)
        after = evaluate(sidecar, with_approval)
        final = get(sidecar, f"/access/v1/requests/{approved['id']}").json()
    assert before["decision"] is True
    assert after["decision"] is False
    assert after["context"]["reason"] == "approval_expired"
    assert after["context"]["next_action"] == "request"
    assert after["context"]["access_request"]["binding_token"]
    assert final["task"]["status"] == "approved"  # terminal; approved_until has passed
    assert any(e["approval_id"] == lapsing["id"] for e in sidecar.events("approval_expired"))


# ====================================================================== interop Todo
RICK = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
MORTY = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
SUMMER = "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
JERRY = "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
USERS = {
    RICK: "rick@the-citadel.com",
    MORTY: "morty@the-citadel.com",
    SUMMER: "summer@the-smiths.com",
    BETH: "beth@the-smiths.com",
    JERRY: "jerry@the-smiths.com",
}
# The scenario's published decisions (authzen-interop.net, Todo payload spec): who may do
# what, to their own todo and to Rick's.
_NAMES = ("can_read_user", "can_read_todos", "can_create_todo")
_NAMES += ("own_update", "other_update", "own_delete", "other_delete")
_ADMIN = dict.fromkeys(_NAMES, True)  # admin + evil_genius: everything, anyone's todo
_EDITOR = {**_ADMIN, "other_update": False, "other_delete": False}
_VIEWER = {**dict.fromkeys(_NAMES, False), "can_read_user": True, "can_read_todos": True}
TODO_DECISIONS = {RICK: _ADMIN, MORTY: _EDITOR, SUMMER: _EDITOR, BETH: _VIEWER, JERRY: _VIEWER}


@pytest.fixture(scope="module")
def todo(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("todo")
    with running(
        _start(workdir, opa.url, "--authzen-decision-path", "examples/todo/decision")
    ) as sidecar:
        yield sidecar


def _todo_request(user: str, decision: str) -> dict[str, Any]:
    action, _, whose = decision.partition("_")
    if decision.startswith("can_"):
        return {
            "subject": {"type": "user", "id": user},
            "action": {"name": decision},
            "resource": {"type": "todo", "id": "todo-1"},
            "context": {},
        }
    owner = USERS[user] if action == "own" else "rick@the-citadel.com"
    if user == RICK and action == "other":
        owner = "morty@the-citadel.com"
    return {
        "subject": {"type": "user", "id": user},
        "action": {"name": f"can_{whose}_todo"},
        "resource": {
            "type": "todo",
            "id": "7240d0db-8ff0-41ec-98b2-34a096273b9f",
            "properties": {"ownerID": owner},
        },
        "context": {},
    }


@pytest.mark.parametrize(
    "user", list(TODO_DECISIONS), ids=[USERS[u].split("@")[0] for u in TODO_DECISIONS]
)
def test_todo_interop_scenario(todo: SidecarProcess, user: str) -> None:
    """The interop Todo policy, through the endpoint, gives the scenario's decisions."""
    answers = {
        name: evaluate(todo, _todo_request(user, name))["decision"] for name in TODO_DECISIONS[user]
    }
    assert answers == TODO_DECISIONS[user]


def test_todo_interop_evaluations(todo: SidecarProcess) -> None:
    """The scenario's 1.1 boxcar (with an empty default resource): Morty cannot update
    Rick's todo but can update his own."""
    body = {
        "subject": {"type": "user", "id": MORTY},
        "action": {"name": "can_update_todo"},
        "resource": {},
        "context": {},
        "evaluations": [
            {
                "resource": {
                    "type": "todo",
                    "id": "7240d0db-8ff0-41ec-98b2-34a096273b9f",
                    "properties": {"ownerID": "rick@the-citadel.com"},
                }
            },
            {
                "resource": {
                    "type": "todo",
                    "id": "7240d0db-8ff0-41ec-98b2-34a096273b9e",
                    "properties": {"ownerID": "morty@the-citadel.com"},
                }
            },
        ],
    }
    response = post(todo, "/access/v1/evaluations", body)
    assert response.json() == {"evaluations": [{"decision": False}, {"decision": True}]}


def test_the_decision_is_in_the_audit_log_when_the_answer_arrives(
    tmp_path: Any, opa: OpaServer
) -> None:
    """The decision's record is in the audit file, in the chain, when its answer arrives
    (its fsync follows), so a kill -9 right after the answer loses nothing: the restarted
    sidecar replays it and the chain verifies."""
    sidecar = _start(tmp_path, opa.url)
    with running(sidecar):
        response = post(
            sidecar,
            "/access/v1/evaluation",
            ask(DEV, "docs.read", "docs://handbook/crash"),
            headers={"X-Request-ID": "req-crash-1"},
        )
        at_answer = [e.get("request_id") for e in sidecar.events("authzen_decision")]
        sidecar.kill()
        sidecar.start()
        again = evaluate(sidecar, ask(DEV, "docs.read", "docs://handbook/crash"))
        after_restart = [e.get("request_id") for e in sidecar.events("authzen_decision")]
    assert response.status_code == 200
    assert response.json()["decision"] is True
    assert at_answer == ["req-crash-1"]
    assert again["decision"] is True
    assert after_restart == ["req-crash-1", None]
    assert verify(log_files(sidecar.audit)).ok


def test_a_kill_among_checkpointed_decisions_leaves_a_log_that_verifies(
    tmp_path: Any, opa: OpaServer
) -> None:
    """Decisions answered while checkpoints are signed every 20 ms, then kill -9 (records
    in their SYNC_WINDOW, a checkpoint maybe just signed): `jit-sidecar audit verify` with
    the signing key and the store passes (no checkpoint past the log's end, the store not
    ahead of it), and the sidecar starts again."""
    sidecar = _start(tmp_path, opa.url, "--audit-checkpoint-interval", "0.02")
    with running(sidecar):
        for i in range(60):
            evaluate(sidecar, ask(DEV, "docs.read", f"docs://handbook/k{i}"))
        sidecar.kill()
        result = audit_cli(
            "audit", "verify", str(sidecar.audit), "--key", str(sidecar.key),
            "--state", f"sqlite:{sidecar.state}", "--json",
        )  # fmt: skip
        sidecar.start()
        again = evaluate(sidecar, ask(DEV, "docs.read", "docs://handbook/after"))
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert [c["status"] for c in report["checkpoints"]] == ["covered"]
    assert report["last_seq"] >= 60
    assert again["decision"] is True


def test_a_decision_the_audit_log_cannot_take_is_a_deny(tmp_path: Any, opa: OpaServer) -> None:
    """While the audit log cannot be written (chattr +i: every write fails), every item of
    single and batch evaluations is denied with reason `audit_unavailable` (a 200, so a
    fail-open gateway still refuses), no permit is counted; once it can be written again,
    answers resume."""
    sidecar = _start(tmp_path, opa.url)
    request = ask(DEV, "docs.read", "docs://handbook/disk")
    batch = {**request, "evaluations": [{}, {"action": {"name": "docs.list"}}]}
    with running(sidecar):
        evaluate(sidecar, request)  # the log exists and has a record
        permits = sidecar.metric("jit_authzen_evaluations_total", decision="permit")
        with immutable(sidecar.audit):
            single = post(sidecar, "/access/v1/evaluation", request, headers={"X-Request-ID": "d"})
            batched = post(sidecar, "/access/v1/evaluations", batch)
        permits_during = sidecar.metric("jit_authzen_evaluations_total", decision="permit")
        errors = sidecar.metric("jit_authzen_evaluations_total", decision="error")
        recovered = evaluate(sidecar, request)
        audited = len(sidecar.events("authzen_decision"))
    assert single.status_code == 200, single.text
    assert single.json() == {"decision": False, "context": {"reason": "audit_unavailable"}}
    assert batched.status_code == 200, batched.text
    assert (
        batched.json()["evaluations"]
        == [{"decision": False, "context": {"reason": "audit_unavailable"}}] * 2
    )
    assert single.headers["X-Request-ID"] == "d"
    assert permits_during == permits
    assert errors == 3
    assert recovered["decision"] is True
    assert audited == 2
    assert verify(log_files(sidecar.audit)).ok

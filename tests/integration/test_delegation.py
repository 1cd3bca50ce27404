"""Delegation (docs/delegation.md) against a real sidecar process over its Unix socket, the
real OPA on rego/ (data.jit.delegation of data.json), agents with JWT-SVIDs the test mints,
and a real OIDC issuer for people on loopback (discovery + JWKS over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import requests
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar._proto.jit.v1 import access_pb2 as access_pb
from sidecar._proto.jit.v1 import admin_pb2 as admin_pb
from sidecar._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from sidecar.client import (
    AccessDenied,
    ApprovalPending,
    IdentityRejected,
    SidecarRpcError,
    socket_target,
)
from sidecar.console.auth import User
from sidecar.console.views import approval_card, live_page
from sidecar.verify import TokenRejected, TokenVerifier
from tests.grant_streams import RawStream
from tests.harness import OpaServer, SidecarProcess, clean_env
from tests.identity_kit import AUDIENCE, Key, TrustDomain
from tests.oidc_issuer import OidcIssuer

pytestmark = pytest.mark.integration
PEOPLE_AUDIENCE = "jit-sidecar-people"
ISSUER = "https://jit-sidecar.local"
BILLING = "spiffe://jit.local/agent/billing"
DEV = "spiffe://jit.local/agent/dev"
SUPPORT = "spiffe://jit.local/agent/support"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
UPDATE = ("tickets.update", "tickets://t-1001")
JUSTIFICATION = "ticket 1001: customer asked to close it"


class World:
    """The agents' trust domain, the people's identity provider, one sidecar."""

    def __init__(self, root: Path, opa_url: str) -> None:
        self.agents = TrustDomain.create("jit.local")
        bundle = self.agents.write_bundle(root / "jit.local.jwks")
        self.people = OidcIssuer().start()
        self.sidecar = SidecarProcess(
            root / "sidecar",
            opa_url,
            "--trust-bundle",
            f"jit.local={bundle}",
            "--audience",
            AUDIENCE,
            "--issuer",
            ISSUER,
            "--principal-issuer",
            self.people.url,
            "--principal-audience",
            PEOPLE_AUDIENCE,
            "--principal-claims",
            "email,groups",
            identity="jwt-svid",
        ).start()

    def svid(self, agent: str) -> str:
        return self.agents.svid(agent.removeprefix("spiffe://jit.local/"))

    def person(
        self, sub: str, groups: list[str], *, key: Key | None = None, **overrides: Any
    ) -> str:
        """A person's ID token from the people's issuer (or signed by `key`: forged)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.people.url,
            "sub": sub,
            "aud": PEOPLE_AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "email": f"{sub}@example.com",
            "groups": groups,
            "phone_number": "+1 555 0100",  # not in --principal-claims: never recorded
        }
        claims.update(overrides)
        return (key or self.people.keys[0]).sign(claims)

    def client(self, agent: str) -> Any:
        return self.sidecar.client(identity_token=lambda: self.svid(agent))

    def delegated_grant(self, agent: str, person_token: str) -> tuple[Any, Any]:
        """(task, grant) of a tickets.update by `agent` for the person."""
        with self.client(agent) as c:
            task = c.begin_task("help a customer", subject_token=person_token)
            grant = c.request_grant(task.task_id, *UPDATE, justification=JUSTIFICATION)
        return task, grant

    def exchange(self, **form: str) -> requests.Response:
        return requests.post(
            self.sidecar.http + "/token",
            data={"grant_type": EXCHANGE, "subject_token_type": ACCESS_TOKEN, **form},
            headers=self.sidecar.http_auth,
            timeout=10,
        )

    def verifier(self, **kwargs: Any) -> TokenVerifier:
        return TokenVerifier(
            self.sidecar.http + "/.well-known/jwks.json",
            issuer=ISSUER,
            audience="tickets",
            introspection_url=self.sidecar.http + "/introspect",
            introspection_credential=self.sidecar.http_auth["Authorization"].split()[1],
            **kwargs,
        )

    def jwks_key(self, token: str) -> Any:
        """The public key for `token`, through PyJWT's own JWKS client (a second library)."""
        return jwt.PyJWKClient(
            self.sidecar.http + "/.well-known/jwks.json"
        ).get_signing_key_from_jwt(token)

    def stop(self) -> None:
        self.sidecar.stop()
        self.people.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("delegation"), opa.url)
    yield w
    w.stop()


def _task_records(world: World, task_id: str) -> list[dict[str, Any]]:
    return [r for r in world.sidecar.audit_records() if r.get("task_id") == task_id]


def _pyjwt_claims(world: World, token: str, audience: str = "tickets") -> dict[str, Any]:
    """The claims as PyJWT verifies them (signature, iss, aud, exp), not sidecar.jws."""
    key = world.jwks_key(token)
    return jwt.decode(  # type: ignore[no-any-return]
        token, key.key, algorithms=["EdDSA", "ES256"], audience=audience, issuer=ISSUER
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`jit-sidecar ARGS` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---------------------------------------------------------------------------- the task


def test_a_delegated_task_records_the_person_and_its_token_carries_act(world: World) -> None:
    """sub = the person, act.sub = the agent, client_id = the agent; the task records the
    allow-listed claims only; both sidecar.verify and PyJWT read act."""
    task, grant = world.delegated_grant(BILLING, world.person("alice", ["support"]))
    assert task.principal.subject == "alice"
    assert task.principal.issuer == world.people.url
    claims = dict(task.principal.claims)
    assert claims == {"email": "alice@example.com", "groups": ["support"]}
    assert grant.actor == BILLING

    verified = world.verifier().verify(grant.token, action=UPDATE[0], resource=UPDATE[1])
    assert (verified.subject, verified.actor, verified.client_id) == ("alice", BILLING, BILLING)
    assert verified.actors == (BILLING,)
    decoded = _pyjwt_claims(world, grant.token)
    assert decoded["sub"] == "alice"
    assert decoded["act"] == {"sub": BILLING}
    assert decoded["client_id"] == BILLING
    assert (
        world.verifier(actor="required")
        .verify(grant.token, action=UPDATE[0], resource=UPDATE[1])
        .actor
        == BILLING
    )
    with pytest.raises(TokenRejected) as refused:
        world.verifier(actor="forbidden").verify(grant.token, action=UPDATE[0], resource=UPDATE[1])
    assert (refused.value.reason, refused.value.status) == ("actor_forbidden", 403)


def test_a_task_without_a_principal_keeps_plain_tokens(world: World) -> None:
    """No subject token: sub = client_id = the agent, no act; an actor-requiring server
    refuses it, an actor-forbidding one accepts it."""
    with world.client(BILLING) as c:
        task = c.begin_task("on its own")
        grant = c.request_grant(task.task_id, *UPDATE, justification=JUSTIFICATION)
    assert not task.HasField("principal")
    assert grant.actor == ""
    decoded = _pyjwt_claims(world, grant.token)
    assert decoded["sub"] == decoded["client_id"] == BILLING
    assert "act" not in decoded
    ok = world.verifier(actor="forbidden").verify(grant.token, action=UPDATE[0], resource=UPDATE[1])
    assert (ok.subject, ok.actor) == (BILLING, "")
    with pytest.raises(TokenRejected) as refused:
        world.verifier(actor="required").verify(grant.token, action=UPDATE[0], resource=UPDATE[1])
    assert refused.value.reason == "actor_required"


def test_audit_names_the_person_and_the_agent_in_every_record_of_the_task(world: World) -> None:
    """task_begun (with claims), grant_issued (with act), grant_denied, grant_revoked and
    task_completed all carry principal and subject."""
    with world.client(BILLING) as c:
        task = c.begin_task("audit", subject_token=world.person("erin", ["support"]))
        c.request_grant(task.task_id, *UPDATE, justification=JUSTIFICATION)
        with pytest.raises(AccessDenied):
            _refund(c, task.task_id, "payments://orders/7")
        c.complete_task(task.task_id)
    records = _task_records(world, task.task_id)
    kinds = [r["event"] for r in records]
    for kind in ("task_begun", "grant_issued", "grant_denied", "grant_revoked", "task_completed"):
        assert kind in kinds
    for record in records:
        assert record["principal"]["subject"] == "erin", record["event"]
        assert record["principal"]["issuer"] == world.people.url
        assert record["subject"] == BILLING
    begun = next(r for r in records if r["event"] == "task_begun")
    assert begun["principal"]["claims"] == {"email": "erin@example.com", "groups": ["support"]}
    issued = next(r for r in records if r["event"] == "grant_issued")
    assert issued["actor"] == {"sub": BILLING}
    assert "phone_number" not in json.dumps(records)


def test_the_cli_begins_a_task_for_a_person(world: World, tmp_path: Path) -> None:
    """`jit-sidecar task begin --subject-token-file`: the task acts for the person."""
    token_file = tmp_path / "person.jwt"
    token_file.write_text(world.person("quinn", ["support"]) + "\n")
    svid_file = tmp_path / "svid.jwt"
    svid_file.write_text(world.svid(BILLING))
    done = _cli(
        "task",
        "begin",
        "--goal",
        "cli",
        "--subject-token-file",
        str(token_file),
        "--socket",
        str(world.sidecar.socket),
        "--identity-token-file",
        str(svid_file),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    task_id = json.loads(done.stdout)["task_id"]
    begun = next(r for r in world.sidecar.events("task_begun") if r["task_id"] == task_id)
    assert begun["principal"]["subject"] == "quinn"
    assert begun["subject"] == BILLING


def test_the_sdk_task_block_takes_a_subject_token(world: World) -> None:
    """`client.task(..., subject_token=…)`: the block's grants act for the person."""
    with (
        world.client(BILLING) as c,
        c.task("sdk", subject_token=world.person("pia", ["support"])) as t,
    ):
        grant = t.grant(*UPDATE, justification=JUSTIFICATION)
    claims = _pyjwt_claims(world, grant.token)
    assert (claims["sub"], claims["act"]) == ("pia", {"sub": BILLING})


# ---------------------------------------------------------------------------- intersection


def _refund(client: Any, task_id: str, resource: str = "payments://orders/42") -> Any:
    """A refund of 5 (JIT for the billing agent on its own) in the task."""
    return client.request_grant(
        task_id, "payments.refund", resource, justification=JUSTIFICATION, context={"amount": 5}
    )


def test_person_allowed_agent_not_is_denied(world: World) -> None:
    """A finance person may refund; the dev agent's domains have no payments: cross_domain."""
    with world.client(DEV) as c:
        task = c.begin_task(
            "refund", subject_token=world.person("carol", ["finance", "engineering"])
        )
        with pytest.raises(AccessDenied) as denied:
            _refund(c, task.task_id, "payments://orders/42")
    assert denied.value.reasons[0].startswith("cross_domain:")


def test_agent_allowed_person_not_is_denied(world: World) -> None:
    """The billing agent may refund; a support person may not: principal_not_entitled."""
    with world.client(BILLING) as c:
        task = c.begin_task("refund", subject_token=world.person("alice", ["support"]))
        with pytest.raises(AccessDenied) as denied:
            _refund(c, task.task_id, "payments://orders/42")
        without = c.begin_task("refund alone")
        alone = _refund(c, without.task_id, "payments://orders/42")
    assert denied.value.reasons == [
        "principal_not_entitled: payments is not among the principal's domains"
    ]
    assert alone.token  # the same agent on its own may


def test_both_allowed_is_granted(world: World) -> None:
    """A finance person and the billing agent: the refund is granted, sub = the person."""
    with world.client(BILLING) as c:
        task = c.begin_task("refund", subject_token=world.person("frank", ["finance"]))
        grant = _refund(c, task.task_id, "payments://orders/42")
    assert _pyjwt_claims(world, grant.token, grant.audience)["sub"] == "frank"


def test_a_grantstream_batch_decides_and_signs_for_the_person(world: World) -> None:
    """A batch decided in one evaluation sees the person: of the same message, the ticket
    update is granted with sub = the person and act = the agent, the refund a support person
    is not entitled to is denied principal_not_entitled."""
    refund = access_pb.Intent(
        action="payments.refund", resource="payments://orders/42", justification=JUSTIFICATION
    )
    refund.context.update({"amount": 5})
    update = access_pb.Intent(action=UPDATE[0], resource=UPDATE[1], justification=JUSTIFICATION)
    with world.client(BILLING) as c:
        task = c.begin_task("batch", subject_token=world.person("gina", ["support"]))
        stream = RawStream(world.sidecar, [("authorization", f"Bearer {world.svid(BILLING)}")])
        try:
            stream.send(
                task_id=task.task_id,
                intents=[
                    access_pb.GrantStreamIntent(intent=update),
                    access_pb.GrantStreamIntent(intent=refund),
                ],
            )
            granted, denied = (r.response for r in stream.read().results)
        finally:
            c.complete_task(task.task_id)
            stream.close()
    assert granted.decision == access_pb.DECISION_GRANTED
    assert granted.grant.actor == BILLING
    claims = _pyjwt_claims(world, granted.grant.token)
    assert (claims["sub"], claims["act"], claims["client_id"]) == (
        "gina",
        {"sub": BILLING},
        BILLING,
    )
    assert denied.decision == access_pb.DECISION_DENIED
    assert list(denied.reasons) == [
        "principal_not_entitled: payments is not among the principal's domains"
    ]
    issued = [r for r in _task_records(world, task.task_id) if r["event"] == "grant_issued"]
    assert [(r["principal"]["subject"], r["actor"]) for r in issued] == [("gina", {"sub": BILLING})]


def test_the_console_shows_the_person_of_a_delegated_approval_and_task(world: World) -> None:
    """Issue 23: the admin Approval and TaskView carry the person (sub and issuer), and the
    console's approval card and live view show them; a plain task shows no person."""
    with world.client(BILLING) as c:
        task = c.begin_task("big refund", subject_token=world.person("grace", ["finance"]))
        with pytest.raises(ApprovalPending) as pending:
            c.request_grant(
                task.task_id,
                "payments.refund",
                "payments://orders/43",
                justification=JUSTIFICATION,
                context={"amount": 500},
            )
        alone = c.begin_task("no person")
    with grpc.insecure_channel(socket_target(world.sidecar.admin_socket)) as channel:
        stub = admin_pb_grpc.AdminServiceStub(channel)
        approvals = stub.ListApprovals(admin_pb.ListApprovalsRequest(), timeout=10).approvals
        views = stub.ListTasks(admin_pb.ListTasksRequest(subject=BILLING), timeout=10).tasks
    [approval] = [a for a in approvals if a.approval_id == pending.value.approval_id]
    by_id = {v.task.task_id: v for v in views}
    viewer = User("viewer@example.com", frozenset({"viewer"}), "dev")
    card = approval_card("local", approval, viewer, "csrf", time.time(), many=False)
    live = live_page(
        [("local", by_id[task.task_id]), ("local", by_id[alone.task_id])],
        [],
        [],
        viewer,
        many=False,
    )
    assert (approval.principal.subject, approval.principal.issuer) == ("grace", world.people.url)
    assert by_id[task.task_id].task.principal.subject == "grace"
    assert not by_id[alone.task_id].task.HasField("principal")
    assert "Person (delegated)" in card
    assert "<code>grace</code>" in card
    assert world.people.url in card
    assert live.count("Person (delegated)") == 1
    assert "<code>grace</code>" in live


def test_a_delegated_task_gathers_flow_labels_and_meets_the_trifecta(world: World) -> None:
    """Flows hold for a task acting for a person (issue 22): the support agent, for a
    customer-care person, reads a ticket and a customer record; its grants carry their flow
    labels, the task holds both, and email.send is PENDING_APPROVAL with the flow reason;
    the flow_flagged record names the person as every record of the task does."""
    with world.client(SUPPORT) as c:
        task = c.begin_task(
            "answer ticket t-1001", subject_token=world.person("carol", ["customer_care"])
        )
        ticket = c.request_grant(task.task_id, "tickets.read", "tickets://t-1001")
        customer = c.request_grant(task.task_id, "customers.read", "customers://c-42")
        held = c.heartbeat(task.task_id).task
        with pytest.raises(ApprovalPending) as pending:
            c.request_grant(
                task.task_id,
                "email.send",
                "email://customer/c-42",
                justification="reply to the customer about ticket t-1001",
            )
    assert task.principal.subject == "carol"
    assert (ticket.actor, list(ticket.flow_labels)) == (SUPPORT, ["untrusted_input"])
    assert (customer.actor, list(customer.flow_labels)) == (SUPPORT, ["private_data"])
    assert list(held.flow_labels) == ["private_data", "untrusted_input"]
    assert any(r.startswith("flow_trifecta: ") for r in pending.value.reasons)
    [flagged] = [r for r in _task_records(world, task.task_id) if r["event"] == "flow_flagged"]
    assert flagged["rules"] == ["flow_trifecta"]
    assert flagged["task_flow_labels"] == ["private_data", "untrusted_input"]
    assert flagged["principal"]["subject"] == "carol"


# ---------------------------------------------------------------------------- bad input


def _reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (google.rpc.Status details)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


@pytest.mark.parametrize(
    "case",
    ["expired", "forged", "wrong_audience", "unknown_issuer", "garbage", "bad_type"],
)
def test_a_bad_subject_token_is_principal_invalid_and_records_only_the_refusal(
    world: World, case: str
) -> None:
    """UNAUTHENTICATED principal_invalid; no task_begun, one request_rejected."""
    kwargs: dict[str, Any] = {}
    token = {
        "expired": lambda: world.person("gina", ["support"], exp=int(time.time()) - 600),
        "forged": lambda: world.person(
            "gina", ["support"], key=Key.generate("RS256", kid=world.people.keys[0].kid)
        ),
        "wrong_audience": lambda: world.person("gina", ["support"], aud="someone-else"),
        "unknown_issuer": lambda: world.person("gina", ["support"], iss="https://idp.evil.example"),
        "garbage": lambda: "not.a.jwt",
        "bad_type": lambda: world.person("gina", ["support"]),
    }[case]()
    if case == "bad_type":
        kwargs["subject_token_type"] = "urn:example:saml"
    before = len(world.sidecar.events("task_begun"))
    rejected_before = len(world.sidecar.events("request_rejected"))
    with grpc.insecure_channel(f"unix://{world.sidecar.socket}") as channel:
        from sidecar._proto.jit.v1 import access_pb2 as pb
        from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc

        stub = pb_grpc.AccessServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.BeginTask(
                pb.BeginTaskRequest(goal="x", subject_token=token, **kwargs),
                metadata=[("authorization", "Bearer " + world.svid(BILLING))],
                timeout=10,
            )
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _reason(err.value) == "principal_invalid"
    assert len(world.sidecar.events("task_begun")) == before
    rejected = world.sidecar.events("request_rejected")[rejected_before:]
    assert [r["reason"] for r in rejected] == ["principal_invalid"]
    assert "gina" not in json.dumps(rejected)  # nothing of the refused token is recorded


def test_principal_invalid_reason_reaches_the_sdk(world: World) -> None:
    """The SDK raises IdentityRejected with reason principal_invalid."""
    expired = world.person("hal", ["support"], exp=int(time.time()) - 600)
    with world.client(BILLING) as c, pytest.raises(IdentityRejected) as err:
        c.begin_task("x", subject_token=expired)
    assert err.value.reason == "principal_invalid"
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_person_the_agent_may_not_act_for_is_permission_denied(world: World) -> None:
    """The dev agent acts for support and engineering only: a finance person is may_act."""
    before = len(world.sidecar.events("task_begun"))
    with world.client(DEV) as c, pytest.raises(SidecarRpcError) as err:
        c.begin_task("x", subject_token=world.person("ivan", ["finance"]))
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "may_act")
    assert len(world.sidecar.events("task_begun")) == before


# ---------------------------------------------------------------------------- exchange


def test_exchange_chain_of_depth_two_narrows_and_nests_act(world: World) -> None:
    """agent → sub-agent → sub-sub-agent: each exchange keeps sub, nests act, never widens
    the scope or lengthens the lifetime; every token dies with the task."""
    with world.client(BILLING) as c:
        task = c.begin_task("chain", subject_token=world.person("judy", ["support"]))
        root = c.request_grant(task.task_id, *UPDATE, justification=JUSTIFICATION)
    first = world.exchange(
        subject_token=root.token, actor_token=world.svid(DEV), actor_token_type=JWT_TYPE
    )
    assert first.status_code == 200, first.text
    one = first.json()
    assert one["issued_token_type"] == ACCESS_TOKEN
    assert one["scope"] == "tickets.update"
    second = world.exchange(
        subject_token=one["access_token"],
        actor_token=world.svid(BILLING),
        actor_token_type=JWT_TYPE,
        expires_in="30",
    )
    assert second.status_code == 200, second.text
    two = second.json()
    assert two["expires_in"] <= 30

    root_claims = _pyjwt_claims(world, root.token)
    one_claims = _pyjwt_claims(world, one["access_token"])
    two_claims = _pyjwt_claims(world, two["access_token"])
    assert one_claims["sub"] == two_claims["sub"] == "judy"
    assert one_claims["act"] == {"sub": DEV, "act": {"sub": BILLING}}
    assert two_claims["act"] == {"sub": BILLING, "act": {"sub": DEV, "act": {"sub": BILLING}}}
    assert one_claims["exp"] <= root_claims["exp"]
    assert two_claims["exp"] <= one_claims["exp"]
    assert one_claims["txn"] == two_claims["txn"] == task.task_id
    verified = world.verifier().verify(two["access_token"], action=UPDATE[0], resource=UPDATE[1])
    assert verified.actors == (BILLING, DEV, BILLING)
    assert verified.subject == "judy"

    introspected = requests.post(
        world.sidecar.http + "/introspect",
        data={"token": two["access_token"]},
        headers=world.sidecar.http_auth,
        timeout=10,
    ).json()
    assert introspected["active"] is True
    assert introspected["act"] == two_claims["act"]
    issued = [r for r in _task_records(world, task.task_id) if r["event"] == "grant_issued"]
    assert [r.get("exchanged_from") for r in issued] == [None, root.grant_id, one_claims["jti"]]

    with world.client(BILLING) as c:
        c.complete_task(task.task_id)
    for token in (root.token, one["access_token"], two["access_token"]):
        with pytest.raises(TokenRejected) as refused:
            world.verifier().verify(token, action=UPDATE[0], resource=UPDATE[1], fresh=True)
        assert refused.value.reason == "revoked"


def test_exchange_refuses_wider_scope_longer_ttl_and_bad_requests(world: World) -> None:
    """invalid_target for a wider scope or another audience, invalid_request for a longer
    lifetime or an inactive subject token, 401 without the HTTP credential; nothing issued."""
    with world.client(BILLING) as c:
        task = c.begin_task("refusals", subject_token=world.person("kim", ["support"]))
        root = c.request_grant(task.task_id, *UPDATE, justification=JUSTIFICATION)
    issued_before = len(world.sidecar.events("grant_issued"))
    cases = {
        "scope_wider": (
            world.exchange(subject_token=root.token, scope="tickets.update tickets.delete"),
            "invalid_target",
        ),
        "audience": (
            world.exchange(subject_token=root.token, audience="payments"),
            "invalid_target",
        ),
        "ttl_longer": (
            world.exchange(subject_token=root.token, expires_in="100000"),
            "invalid_request",
        ),
        "inactive": (world.exchange(subject_token=root.token + "x"), "invalid_request"),
        "grant_type": (
            world.exchange(subject_token=root.token, grant_type="password"),
            "unsupported_grant_type",
        ),
        "actor": (
            world.exchange(
                subject_token=root.token, actor_token="garbage", actor_token_type=JWT_TYPE
            ),
            "invalid_request",
        ),
    }
    for name, (response, error) in cases.items():
        assert response.status_code == 400, name
        assert response.json()["error"] == error, name
    anonymous = requests.post(
        world.sidecar.http + "/token",
        data={
            "grant_type": EXCHANGE,
            "subject_token": root.token,
            "subject_token_type": ACCESS_TOKEN,
        },
        timeout=10,
    )
    assert anonymous.status_code == 401
    assert len(world.sidecar.events("grant_issued")) == issued_before


def test_a_token_exchanged_earlier_names_the_principal_of_a_new_task(world: World) -> None:
    """A sub-agent begins its own task with a delegated token of ours as subject token: the
    new task acts for the same person; a token without a principal is refused."""
    person = world.person("liam", ["support", "engineering"])
    _, grant = world.delegated_grant(BILLING, person)
    with world.client(DEV) as c:
        task = c.begin_task("sub-task", subject_token=grant.token)
        plain = c.request_grant(c.begin_task("alone").task_id, "docs.read", "docs://handbook/intro")
        with pytest.raises(IdentityRejected) as err:
            c.begin_task("x", subject_token=plain.token)
    assert (task.principal.subject, task.principal.issuer) == ("liam", world.people.url)
    assert err.value.reason == "principal_invalid"


# ---------------------------------------------------------------------------- kill switch


def test_kill_switch_by_person_ends_every_task_for_them_by_any_agent(world: World) -> None:
    """`jit-sidecar revoke --principal` ends the person's tasks of two agents, and leaves
    another person's task alone."""
    _, by_billing = world.delegated_grant(BILLING, world.person("mona", ["support"]))
    _, by_dev = world.delegated_grant(DEV, world.person("mona", ["support"]))
    _, other = world.delegated_grant(BILLING, world.person("nora", ["support"]))
    done = _cli(
        "revoke",
        "--principal",
        "mona",
        "--reason",
        "account compromised",
        "--admin-socket",
        str(world.sidecar.admin_socket),
    )
    assert done.returncode == 0, done.stderr
    assert "2 grant(s) revoked" in done.stdout

    def active(token: str) -> bool:
        return bool(
            requests.post(
                world.sidecar.http + "/introspect",
                data={"token": token},
                headers=world.sidecar.http_auth,
                timeout=10,
            ).json()["active"]
        )

    assert (active(by_billing.token), active(by_dev.token), active(other.token)) == (
        False,
        False,
        True,
    )
    ended = [
        r
        for r in world.sidecar.events("task_completed")
        if r.get("principal", {}).get("subject") == "mona"
    ]
    assert {r["subject"] for r in ended} == {BILLING, DEV}
    assert {r["reason"] for r in ended} == {"kill_switch"}


# ---------------------------------------------------------------------------- restart


def test_the_principal_and_act_survive_a_restart(world: World) -> None:
    """After a restart (state from SQLite), the task still acts for the person: ListGrants
    shows the actor, introspection the principal, and the kill switch by person finds it."""
    task, grant = world.delegated_grant(BILLING, world.person("olga", ["support"]))
    world.sidecar.stop()
    world.sidecar.start()
    with world.client(BILLING) as c:
        listed = c.list_grants(task.task_id)
        introspected = c.introspect(grant.token)
    assert [g.actor for g in listed] == [BILLING]
    assert introspected.active
    assert (introspected.principal.subject, introspected.principal.issuer) == (
        "olga",
        world.people.url,
    )
    assert introspected.actor == BILLING
    with world.sidecar.admin() as admin:
        assert admin.revoke(principal="olga", reason="left the company") == 1

"""MCP end to end: a real MCP server (the `mcp` SDK's MCPServer over streamable HTTP on a free
loopback port, guarded by `sidecar.mcp.protect`), a real MCP client session through
`sidecar.mcp.client.connect`, a real sidecar process and the real `opa` binary on rego/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.exceptions import MCPError

from sidecar.client import AccessDenied, AsyncAccessClient, AsyncTaskHandle
from sidecar.mcp.client import JitMcpSession, connect
from sidecar.mcp.server import metadata_url
from tests.harness import OpaServer, SidecarProcess, wait_for
from tests.identity_kit import Key, dpop_proof
from tests.mcp_kit import McpServerThread

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """OPA (with the two test servers' URIs in data.jit.mcp_servers), a sidecar, and two
    guarded MCP servers: `desk` (three tools) and `other`."""
    work = tmp_path_factory.mktemp("mcp")
    opa = OpaServer(work).start()
    sidecar = SidecarProcess(work / "sidecar", opa.url).start()
    desk = McpServerThread("desk", sidecar.http, sidecar.http_token.read_text().strip()).start()
    other = McpServerThread("other", sidecar.http, sidecar.http_token.read_text().strip()).start()
    opa.put_data(
        "jit/mcp_servers", {"desk": {"audience": desk.url}, "other": {"audience": other.url}}
    )
    yield {"opa": opa, "sidecar": sidecar, "desk": desk, "other": other}
    desk.stop()
    other.stop()
    sidecar.stop(timeout=15)
    opa.stop()


@contextlib.asynccontextmanager
async def _session(
    stack: dict[str, Any], goal: str, **kwargs: Any
) -> AsyncIterator[tuple[AsyncTaskHandle, JitMcpSession]]:
    """A task on the sidecar and an MCP session to `desk` through the wrapper."""
    desk = stack["desk"]
    async with (
        AsyncAccessClient(stack["sidecar"].socket) as jit,
        jit.task(goal=goal) as task,
        connect(desk.url, task, desk.tool_map(), **kwargs) as session,
    ):
        yield task, session


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def _rpc(name: str, arguments: dict[str, Any]) -> bytes:
    params = {"name": name, "arguments": arguments}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    ).encode()


def _post(server: McpServerThread, body: bytes, token: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(server.url, data=body, headers=headers, timeout=10)


def _calls_of(server: McpServerThread, tool: str) -> list[dict[str, Any]]:
    return [args for name, args in server.calls if name == tool]


def test_allowed_tool_runs_under_its_own_grant(stack: dict[str, Any]) -> None:
    """A standing tool call gets a token whose audience is the server's URI, and runs."""
    desk = stack["desk"]
    trace: list[tuple[str, str]] = []

    async def main() -> tuple[Any, list[Any]]:
        async with _session(stack, "find ACME", trace=lambda *t: trace.append(t)) as (task, s):
            result = await s.call_tool("search", {"query": "ACME"}, justification="find ACME")
            return result, await task.grants()

    result, grants = _run(main())
    assert not result.is_error
    assert "3 customers match 'ACME'" in result.content[0].text
    assert {"query": "ACME"} in _calls_of(desk, "search")
    search = [g for g in grants if g.action == "mcp.desk.search"]
    assert [g.audience for g in search] == [desk.url]
    assert [g.resource for g in search] == ["mcp://desk/tools/search"]
    start = next(i for i, (_, text) in enumerate(trace) if "mcp.desk.search" in text)
    assert [stage for stage, _ in trace[start : start + 3]] == ["intent", "token", "result"]


def test_denied_tool_never_reaches_the_server(stack: dict[str, Any]) -> None:
    """A policy denial raises AccessDenied and the server's own record shows no call."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    before = len(_calls_of(desk, "send_email"))

    async def main() -> AccessDenied:
        async with _session(stack, "mail") as (_, session):
            with pytest.raises(AccessDenied) as denied:
                await session.call_tool(
                    "send_email", {"to": "a@example.com", "body": "hi"}, justification="x"
                )
            return denied.value

    denied = _run(main())
    assert any(r.startswith("justification_required") for r in denied.reasons)
    assert len(_calls_of(desk, "send_email")) == before
    assert sidecar.events("grant_denied")


def test_jit_tool_gets_a_grant_per_call_revoked_after_it(stack: dict[str, Any]) -> None:
    """Two calls of a JIT tool use two grants, each revoked once its call returns."""
    desk, sidecar = stack["desk"], stack["sidecar"]

    async def main() -> list[Any]:
        async with _session(stack, "mail") as (task, session):
            for n in range(2):
                result = await session.call_tool(
                    "send_email",
                    {"to": "ops@example.com", "body": f"report {n}"},
                    justification="send the daily report to ops",
                )
                assert not result.is_error
            return await task.grants(include_inactive=True)

    grants = [g for g in _run(main()) if g.action == "mcp.desk.send_email"]
    assert len({g.grant_id for g in grants}) == 2
    assert {g.tier for g in grants} == {"jit"}
    mails = _calls_of(desk, "send_email")
    assert {"to": "ops@example.com", "body": "report 1"} in mails
    revoked = {e["grant_id"] for e in sidecar.events("grant_revoked")}
    assert {g.grant_id for g in grants} <= revoked


def test_approval_gated_tool_runs_once_approved_through_the_admin_api(
    stack: dict[str, Any],
) -> None:
    """transfer_funds waits for a human; approved through AdminService, it runs."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    approved: list[str] = []

    def approver() -> None:
        with sidecar.admin() as admin:
            pending = wait_for(lambda: admin.list_approvals(), 20, what="the approval request")
            approved.append(pending[0].approval_id)
            admin.decide_approval(pending[0].approval_id, approve=True, approver="alice")

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()

    async def main() -> Any:
        async with _session(stack, "pay", approval_timeout=30) as (_, session):
            return await session.call_tool(
                "transfer_funds",
                {"to_account": "ACME-7", "amount": 420.0},
                justification="pay invoice 42 of ACME as agreed in ticket 7",
            )

    result = _run(main())
    thread.join(10)
    assert not result.is_error
    assert approved
    assert {"to_account": "ACME-7", "amount": 420.0} in _calls_of(desk, "transfer_funds")


def test_token_replayed_for_another_tool_is_refused(stack: dict[str, Any]) -> None:
    """A token for search is refused (403 insufficient_scope) for send_email; nothing runs."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    before = list(desk.calls)
    with sidecar.client() as jit, jit.task(goal="replay") as task:
        grant = task.grant("mcp.desk.search", "mcp://desk/tools/search")
        response = _post(
            desk, _rpc("send_email", {"to": "x@example.com", "body": "b"}), grant.token
        )
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"')
    assert 'scope="mcp.desk.send_email"' in challenge
    assert f'resource_metadata="{metadata_url(desk.url)}"' in challenge
    assert response.json() == {"error": "insufficient_scope", "reason": "wrong_action"}
    assert desk.calls == before


def test_token_for_bound_arguments_is_refused_for_other_values(stack: dict[str, Any]) -> None:
    """A transfer grant names its account: the same token for another account is refused."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    before = list(desk.calls)
    with sidecar.client() as jit, jit.task(goal="pay") as task:
        pending = threading.Thread(target=lambda: _approve_next(sidecar), daemon=True)
        pending.start()
        grant = task.grant(
            "mcp.desk.transfer_funds",
            "mcp://desk/tools/transfer_funds/to_account/ACME-7",
            justification="pay invoice 42 of ACME as agreed in ticket 7",
            context={"amount": 10},
            wait_for_approval=30,
        )
        pending.join(10)
        body = _rpc("transfer_funds", {"to_account": "EVIL-1", "amount": 10})
        response = _post(desk, body, grant.token)
    assert response.status_code == 403
    assert response.json()["reason"] == "wrong_resource"
    assert desk.calls == before


def _approve_next(sidecar: SidecarProcess) -> None:
    with sidecar.admin() as admin:
        pending = wait_for(lambda: admin.list_approvals(), 20, what="the approval request")
        admin.decide_approval(pending[0].approval_id, approve=True, approver="alice")


def test_token_for_another_servers_audience_is_refused(stack: dict[str, Any]) -> None:
    """A token issued for server `other` is refused by `desk` (401 wrong_audience)."""
    desk, other, sidecar = stack["desk"], stack["other"], stack["sidecar"]
    before = list(desk.calls)
    with sidecar.client() as jit, jit.task(goal="audience") as task:
        grant = task.grant("mcp.other.search", "mcp://other/tools/search")
        assert grant.audience == other.url
        response = _post(desk, _rpc("search", {"query": "q"}), grant.token)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "reason": "wrong_audience"}
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert desk.calls == before


def test_token_of_a_completed_task_is_refused(stack: dict[str, Any]) -> None:
    """Accepted while the task runs; after CompleteTask the same token gets 401 revoked."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    body = _rpc("search", {"query": "q"})
    with sidecar.client() as jit, jit.task(goal="short") as task:
        grant = task.grant("mcp.desk.search", "mcp://desk/tools/search")
        during = _post(desk, body, grant.token)
    before = list(desk.calls)
    after = _post(desk, body, grant.token)
    # During the task the guard let the request through to the SDK (which wants a session).
    assert during.status_code not in (401, 403)
    assert "WWW-Authenticate" not in during.headers
    assert after.status_code == 401
    assert after.json() == {"error": "invalid_token", "reason": "revoked"}
    assert desk.calls == before


def test_no_token_gets_401_with_resource_metadata(stack: dict[str, Any]) -> None:
    """Without a token: 401 and `WWW-Authenticate: Bearer resource_metadata=…` (RFC 9728 §5.1)."""
    desk = stack["desk"]
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    response = _post(desk, json.dumps(initialize).encode(), None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(desk.url)}"'
    )
    assert response.json()["reason"] == "missing_token"


def test_protected_resource_metadata_has_rfc9728_fields(stack: dict[str, Any]) -> None:
    """The PRM document is where the challenge points, and has RFC 9728 §2's fields."""
    desk = stack["desk"]
    url = metadata_url(desk.url)
    assert url == f"http://127.0.0.1:{desk.port}/.well-known/oauth-protected-resource/mcp"
    response = requests.get(url, timeout=10)
    document = response.json()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    # §2: `resource` REQUIRED; §3.3: identical to the resource the metadata was fetched for.
    assert document["resource"] == desk.url
    assert document["authorization_servers"] == ["https://jit-sidecar.local"]
    assert set(document["bearer_methods_supported"]) <= {"header", "body", "query"}
    assert document["authorization_details_types_supported"] == ["jit_intent"]
    assert all(isinstance(alg, str) for alg in document["dpop_signing_alg_values_supported"])
    ProtectedResourceMetadata.model_validate(document)
    bare = requests.get(
        f"http://127.0.0.1:{desk.port}/.well-known/oauth-protected-resource", timeout=10
    )
    assert bare.json() == document


def test_audit_never_holds_a_token(stack: dict[str, Any], tmp_path: Path) -> None:
    """The tokens the MCP flow used appear in no audit record (only grant ids)."""
    sidecar = stack["sidecar"]
    audit = sidecar.audit.read_text()
    with sidecar.client() as jit, jit.task(goal="audit") as task:
        token = task.grant("mcp.desk.search", "mcp://desk/tools/search").token
    assert token.split(".")[2] not in sidecar.audit.read_text()
    assert len(sidecar.audit.read_text()) > len(audit)


def test_dpop_bound_task_calls_tools_with_proofs(stack: dict[str, Any]) -> None:
    """A task bound to a key: each call carries `DPoP` + proof and runs; the bare token
    without a proof is refused (401 dpop_required)."""
    desk, sidecar = stack["desk"], stack["sidecar"]
    key = Key.generate("ES256")
    tokens: list[str] = []

    def prover(method: str, url: str, token: str) -> str:
        tokens.append(token)
        return dpop_proof(key, method, url, token)

    async def main() -> Any:
        async with (
            AsyncAccessClient(sidecar.socket) as jit,
            jit.task(goal="bound", pop_jwk=key.private_jwk()) as task,  # the SDK sends a proof
            connect(desk.url, task, desk.tool_map(), dpop=prover) as session,
        ):
            result = await session.call_tool("search", {"query": "DPoP"}, justification="find")
            grant = await task.grant("mcp.desk.search", "mcp://desk/tools/search")
            bare = await asyncio.to_thread(_post, desk, _rpc("search", {"query": "x"}), grant.token)
            return result, bare

    result, bare = _run(main())
    assert not result.is_error
    assert {"query": "DPoP"} in _calls_of(desk, "search")
    assert tokens  # every request of the session went out with a proof
    assert bare.status_code == 401
    assert bare.json()["reason"] == "dpop_required"
    assert {"query": "x"} not in _calls_of(desk, "search")


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"[" + _rpc("search", {"query": "q"}) + b"]", {}, 400),
        (_rpc("search", {"query": "q"}), {"Mcp-Name": "transfer_funds"}, 400),
        (_rpc("transfer_funds", {"amount": 1}), {}, 400),
        (_rpc("transfer_funds", {"to_account": "../x", "amount": 1}), {}, 400),
        (b"{" + b" " * (1024 * 1024) + b"}", {}, 413),
        (b'{"method": "tools/call", "params": {"name": "send_email"', {}, 400),
        (b'"tools/call"', {}, 400),
    ],
    ids=[
        "batch",
        "mcp-name-mismatch",
        "bound-argument-missing",
        "dot-segment",
        "too-large",
        "not-json",
        "not-an-object",
    ],
)
def test_requests_the_guard_cannot_map_are_refused(
    stack: dict[str, Any], body: bytes, headers: dict[str, str], status: int
) -> None:
    """Batches, header/body disagreement, unbound or non-canonical arguments and oversized
    bodies get a JSON 4xx with a reason, never reach a tool, and never a traceback."""
    desk = stack["desk"]
    before = list(desk.calls)
    response = requests.post(
        desk.url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer x", **headers},
        timeout=10,
    )
    assert response.status_code == status
    assert response.json()["error"] == "invalid_request"
    assert "Traceback" not in response.text
    assert desk.calls == before


def test_tool_call_bypassing_the_wrapper_carries_no_token(
    stack: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A tools/call made on the SDK session directly has no grant: it goes out without a
    token (never the session's), the server refuses it, and the session still works."""
    desk = stack["desk"]
    before = list(desk.calls)

    async def main() -> tuple[Exception, Any]:
        async with _session(stack, "bypass") as (_, session):
            with pytest.raises(MCPError) as raised:
                await session.session.call_tool("search", {"query": "bypass"})
            after = await session.call_tool("search", {"query": "after"}, justification="find")
            return raised.value, after

    error, after = _run(main())
    assert isinstance(error, MCPError)
    assert "sent without a token" in caplog.text
    assert not after.is_error
    assert ("search", {"query": "bypass"}) not in desk.calls
    assert desk.calls[len(before) :] == [("search", {"query": "after"})]

"""An MCP client session in which every tool call first asks jit-sidecar for a grant.

    from sidecar.client import AsyncAccessClient
    from sidecar.mcp import ToolMap, connect

    async with AsyncAccessClient() as jit, jit.task(goal="answer ticket 7") as task:
        async with connect("https://crm.example.com/mcp", task, ToolMap("crm")) as crm:
            result = await crm.call_tool("search", {"query": "ACME"},
                                         justification="look up the customer of ticket 7")

Each `call_tool(name, arguments, justification=...)`:
1. maps the call to an intent (`sidecar.mcp.mapping`: `mcp.<server>.<tool>` on
   `mcp://<server>/tools/<tool>` unless a `ToolRule` says otherwise);
2. asks the task for a grant. A denial raises the SDK's `AccessDenied` and nothing is sent to
   the MCP server; `PENDING_APPROVAL` waits (up to `approval_timeout`) through the sidecar's
   approval flow, then raises `ApprovalPending` if nobody decided;
3. sends the `tools/call` with that grant's token as the Bearer (or `DPoP` with a proof from
   `dpop`, RFC 9449 §7.1) of that one HTTP request;
4. afterwards revokes a JIT grant: JIT grants are per call. Standing grants are reused for
   the same intent while they have `reuse_margin` seconds left.

Requests that are not tool calls (initialize, tools/list, ping, the GET stream, DELETE) carry
the discovery grant (`mcp.<server>.list` on `mcp://<server>/tools`), standing by default.

The token for a request is found through a correlation id in the request's `_meta`
(`CALL_META_KEY`), read by the transport's `httpx2.Auth` from the body it is about to send, so
concurrent calls on one session each carry their own token. Tokens are never logged; only
grant ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

import httpx2
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from ..client import AccessDenied, ApprovalPending, AsyncTaskHandle, Grant, SidecarClientError
from .mapping import ToolIntent, ToolMap

log = logging.getLogger("jit_sidecar.mcp.client")

CALL_META_KEY = "dev.jit-sidecar/call"
"""`_meta` key (MCP "_meta" naming: reverse-DNS prefix) carrying a call's correlation id."""

DpopProver = Callable[[str, str, str], str]
"""(HTTP method, URL, access token) -> a DPoP proof JWT signed with the task's key."""
Trace = Callable[[str, str], None]
"""(stage, text): intent, decision, token, result, revocation; for demos and debugging."""

__all__ = [
    "CALL_META_KEY",
    "AccessDenied",
    "ApprovalPending",
    "JitMcpSession",
    "McpGrantError",
    "McpGrants",
    "connect",
]


class McpGrantError(SidecarClientError):
    """The MCP transport was used synchronously (it is asynchronous only)."""


class McpGrants:
    """The grants of one task for one MCP server, and the `httpx2.Auth` that sends them."""

    def __init__(
        self,
        task: AsyncTaskHandle,
        tools: ToolMap,
        *,
        approval_timeout: float = 300.0,
        ttl: int | None = None,
        reuse_margin: float = 10.0,
        session_justification: str = "MCP session: initialize and list tools",
        dpop: DpopProver | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.task = task
        self.tools = tools
        self.approval_timeout = approval_timeout
        self.ttl = ttl
        self.reuse_margin = reuse_margin
        self.session_justification = session_justification
        self.dpop = dpop
        self._trace = trace
        self._standing: dict[tuple[str, str, str], Grant] = {}
        self._calls: dict[str, Grant] = {}
        self._discovery_lock = asyncio.Lock()
        self.auth = _GrantAuth(self)

    def trace(self, stage: str, text: str) -> None:
        if self._trace is not None:
            self._trace(stage, text)

    async def grant(self, intent: ToolIntent, justification: str) -> Grant:
        """A grant covering `intent`: a reusable standing one, else a new one from the
        sidecar (waiting for an approval if the policy asks for one)."""
        key = (intent.action, intent.resource, json.dumps(intent.context, sort_keys=True))
        cached = self._standing.get(key)
        if cached is not None and cached.expires_in > self.reuse_margin:
            if intent.tool is not None:  # the session's own requests would drown the trace
                self.trace("token", f"reusing standing grant {cached.grant_id}")
            return cached
        self.trace("intent", f"{intent.action} on {intent.resource} ({justification!r})")
        try:
            grant = await self.task.grant(
                intent.action,
                intent.resource,
                justification=justification,
                ttl=self.ttl,
                context=intent.context,
            )
        except ApprovalPending as pending:
            self.trace("decision", f"pending approval {pending.approval_id}: {pending.reasons}")
            grant = await self.task.await_approval(pending.approval_id, self.approval_timeout)
            self.trace("decision", f"approval {pending.approval_id} granted")
        except AccessDenied as denied:
            self.trace("decision", f"denied: {'; '.join(denied.reasons)}")
            raise
        self.trace(
            "token",
            f"grant {grant.grant_id}: {grant.tier}, aud {grant.audience}, "
            f"expires in {grant.expires_in:.0f} s",
        )
        if grant.tier == "standing":
            self._standing[key] = grant
        return grant

    async def discovery(self) -> Grant:
        async with self._discovery_lock:
            return await self.grant(self.tools.discovery(), self.session_justification)

    async def release(self, grant: Grant) -> None:
        """End a per-call (JIT) grant once its call is done; standing grants stay for reuse."""
        if grant.tier == "standing":
            return
        try:
            await self.task.revoke(grant, "MCP tool call finished")
        except SidecarClientError as err:
            # The token expires soon anyway, and the task's end revokes it for certain.
            log.warning("could not revoke grant %s after its call: %s", grant.grant_id, err)
            return
        self.trace("revocation", f"grant {grant.grant_id} revoked after its call")

    @contextlib.contextmanager
    def bind(self, grant: Grant) -> Any:
        """Register `grant` under a fresh correlation id for one call; yields the id."""
        call_id = secrets.token_urlsafe(16)
        self._calls[call_id] = grant
        try:
            yield call_id
        finally:
            self._calls.pop(call_id, None)

    async def for_request(self, request: httpx2.Request) -> Grant | None:
        """The grant whose token this HTTP request must carry; None for a tools/call that
        did not come through `JitMcpSession.call_tool` (it has no grant)."""
        call_id = _call_id(request)
        if call_id is None:
            return await self.discovery()
        grant = self._calls.get(call_id)
        if grant is None:
            # Fail closed without killing the session: no token at all (never the discovery
            # grant's), so the server answers 401 and the tool does not run.
            log.warning("a tools/call bypassed JitMcpSession.call_tool: sent without a token")
        return grant


class _GrantAuth(httpx2.Auth):
    requires_request_body = True

    def __init__(self, grants: McpGrants) -> None:
        self._grants = grants

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        grant = await self._grants.for_request(request)
        prover = self._grants.dpop
        if grant is None:
            request.headers.pop("Authorization", None)
        elif prover is None:
            request.headers["Authorization"] = f"Bearer {grant.token}"
        else:
            request.headers["Authorization"] = f"DPoP {grant.token}"
            request.headers["DPoP"] = prover(request.method, str(request.url), grant.token)
        yield request

    def sync_auth_flow(self, request: httpx2.Request) -> Any:
        raise McpGrantError("the MCP transport is asynchronous; use an async client")


def _call_id(request: httpx2.Request) -> str | None:
    if request.method != "POST" or not request.content:
        return None
    try:
        message = json.loads(request.content)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    meta = (message.get("params") or {}).get("_meta") or {}
    value = meta.get(CALL_META_KEY) if isinstance(meta, dict) else None
    # A tools/call without our id still needs a tool grant: "" is never registered.
    return value if isinstance(value, str) else ""


class JitMcpSession:
    """An initialized MCP `ClientSession` whose tool calls each carry their own grant."""

    def __init__(self, session: ClientSession, grants: McpGrants) -> None:
        self.session = session
        """The SDK session, for everything but tool calls (list_tools, ...)."""
        self.grants = grants

    async def list_tools(self) -> types.ListToolsResult:
        """tools/list (under the discovery grant)."""
        return await self.session.list_tools()

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        justification: str,
        read_timeout_seconds: float | None = None,
    ) -> types.CallToolResult:
        """Ask for a grant for this call, then make it with that grant's token (see the module
        docstring). Raises AccessDenied or ApprovalPending before anything is sent, and
        ToolMappingError for a call that cannot be named canonically."""
        intent = self.grants.tools.intent(name, arguments)
        grant = await self.grants.grant(intent, justification)
        try:
            with self.grants.bind(grant) as call_id:
                meta = cast(types.RequestParamsMeta, {CALL_META_KEY: call_id})
                result: types.CallToolResult = await self.session.call_tool(
                    name, arguments, read_timeout_seconds, meta=meta
                )
            self.grants.trace("result", f"{name}: {'error' if result.is_error else 'ok'}")
        finally:
            await self.grants.release(grant)
        return result


@contextlib.asynccontextmanager
async def connect(
    url: str,
    task: AsyncTaskHandle,
    tools: ToolMap,
    *,
    approval_timeout: float = 300.0,
    ttl: int | None = None,
    dpop: DpopProver | None = None,
    trace: Trace | None = None,
    client_info: types.Implementation | None = None,
) -> AsyncIterator[JitMcpSession]:
    """Open an MCP session (streamable HTTP) to `url` within `task`; see the module docstring.
    `url` is the server's canonical URI, which the policy names as the audience of its
    tokens (docs/mcp.md)."""
    grants = McpGrants(
        task, tools, approval_timeout=approval_timeout, ttl=ttl, dpop=dpop, trace=trace
    )
    async with (
        create_mcp_http_client(auth=grants.auth) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, client_info=client_info) as session,
    ):
        await session.initialize()
        yield JitMcpSession(session, grants)

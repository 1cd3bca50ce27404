"""Protecting an MCP server: every HTTP request must carry a jit-sidecar token for this server,
and every `tools/call` a token whose `authorization_details` name that tool (and the
arguments its `ToolRule` binds).

    from mcp.server.mcpserver import MCPServer
    from sidecar.mcp import ToolMap, protect
    from sidecar.verify import TokenVerifier

    mcp = MCPServer("crm")
    ...                                             # @mcp.tool() as usual
    url = "https://crm.example.com/mcp"             # the canonical URI: the tokens' audience
    app = protect(
        mcp.streamable_http_app(),
        TokenVerifier(jwks_url, issuer=issuer, audience=url, introspection_url=introspect),
        ToolMap("crm"),
        resource_url=url,
        authorization_servers=[issuer],
    )

What the MCP authorization spec (revision 2026-07-28, "Authorization") asks of a resource
server, and where it happens here:
- RFC 9728 protected resource metadata at `/.well-known/oauth-protected-resource/<path>`
  (§3.1, path inserted after the host) and at the bare well-known path;
- 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728 §5.1) when the token
  is missing or invalid (RFC 6750 §3.1 `invalid_token`);
- 403 `insufficient_scope` (RFC 6750 §3.1) with the `scope` the call needs, when the token is
  valid but does not cover this tool: the client's cue to ask for a grant (step-up);
- only tokens whose audience is this server (RFC 8707, RFC 9068 §4), checked by
  `sidecar.verify.TokenVerifier` with `audience=resource_url`, along with the issuer,
  expiry, signature, DPoP binding (RFC 9449) and, with introspection, revocation (RFC 7662).

The guard is plain ASGI around the SDK's streamable HTTP app, not the SDK's own
`token_verifier=` hook: that hook sees only the token, while a per-tool check needs the
JSON-RPC body, and a DPoP check the method, URL and proof (docs/mcp.md, "Not covered yet").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from mcp.shared.auth import ProtectedResourceMetadata

from ..verify import ALGORITHMS, INTENT_TYPE, TokenRejected, TokenVerifier, VerifiedToken
from .mapping import ToolIntent, ToolMap, ToolMappingError

log = logging.getLogger("jit_sidecar.mcp.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WELL_KNOWN = "/.well-known/oauth-protected-resource"
MAX_BODY_BYTES = 1024 * 1024
GRANT_STATE_KEY = "jit_grant"
"""`scope["state"][GRANT_STATE_KEY]`: the `VerifiedToken` of the request (for the app)."""


def metadata_url(resource_url: str) -> str:
    """Where RFC 9728 §3.1 puts the metadata of `resource_url`: the well-known path inserted
    between the host and the resource's path."""
    parts = urlsplit(resource_url)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{path}"


def _quoted(value: str) -> str:
    # RFC 9110 §5.6.4 quoted-string: our values are ASCII without quotes; escape anyway.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class McpGuard:
    """ASGI middleware: serves the RFC 9728 document and admits only requests whose token
    covers them (see the module docstring); `protect` is its other name."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        tools: ToolMap,
        *,
        resource_url: str,
        authorization_servers: Sequence[str],
        resource_name: str | None = None,
        dpop_required: bool = False,
    ) -> None:
        if verifier.audience != resource_url:
            # MCP authorization spec, "Token Audience Binding": the audience is this server.
            raise ValueError("the verifier's audience must be the server's canonical URI")
        self.app = app
        self.verifier = verifier
        self.tools = tools
        self.resource_url = resource_url
        self.metadata_url = metadata_url(resource_url)
        self._mcp_path = urlsplit(resource_url).path or "/"
        self._origin = "{0.scheme}://{0.netloc}".format(urlsplit(resource_url))
        document = ProtectedResourceMetadata.model_validate(
            {
                "resource": resource_url,
                "authorization_servers": list(authorization_servers),
                "bearer_methods_supported": ["header"],
                "resource_name": resource_name or f"MCP server {tools.server}",
                "authorization_details_types_supported": [INTENT_TYPE],
                "dpop_signing_alg_values_supported": list(ALGORITHMS),
                "dpop_bound_access_tokens_required": dpop_required,
            }
        )
        self._metadata = document.model_dump_json(exclude_none=True).encode()
        self._dpop_required = dpop_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in (WELL_KNOWN, urlsplit(self.metadata_url).path):
            await self._send(send, 200, self._metadata, [])
            return
        if path.rstrip("/") != self._mcp_path.rstrip("/"):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        if body is None:
            await self._error(send, 413, "invalid_request", "request body over 1 MiB")
            return
        try:
            intent = self._intent(scope, body)
        except ToolMappingError as err:
            await self._error(send, 400, "invalid_request", str(err))
            return
        if sum(1 for k, _ in scope["headers"] if k.lower() == b"authorization") > 1:
            # RFC 6750 §2: one way of sending the token; two headers are ambiguous.
            await self._error(send, 400, "invalid_request", "more than one Authorization header")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            token = await anyio.to_thread.run_sync(self._verify, headers, scope, intent)
        except TokenRejected as err:
            await self._rejected(send, err, intent)
            return
        log.info(
            "MCP %s allowed by grant %s (%s)",
            intent.tool or "session request",
            token.jti,
            token.subject,
        )
        scope.setdefault("state", {})[GRANT_STATE_KEY] = token
        await self.app(scope, _replay(messages, receive), send)

    def _intent(self, scope: Scope, body: bytes) -> ToolIntent:
        """The intent this request needs: the tool's for `tools/call`, discovery otherwise."""
        if scope["method"] != "POST" or not body.strip():
            return self.tools.discovery()
        try:
            message = json.loads(body)
        except (ValueError, RecursionError) as err:
            # Fail closed: a body this guard cannot read must not reach a parser that might
            # read it as a tool call.
            raise ToolMappingError("the body is not JSON") from err
        if isinstance(message, list):
            # JSON-RPC batches were removed from MCP (2025-06-18); one message, one grant.
            raise ToolMappingError("JSON-RPC batches are not accepted")
        if not isinstance(message, dict):
            raise ToolMappingError("a JSON-RPC message is a JSON object")
        header_method = _header(scope, b"mcp-method")
        if message.get("method") != "tools/call" and header_method != "tools/call":
            return self.tools.discovery()
        params = message.get("params")
        if not isinstance(params, dict):
            raise ToolMappingError("tools/call without params")
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, dict | None):
            raise ToolMappingError("tools/call needs a string name and object arguments")
        header_name = _header(scope, b"mcp-name")
        if header_name is not None and header_name != name:
            raise ToolMappingError("the Mcp-Name header and the body name different tools")
        return self.tools.intent(name, arguments)

    def _verify(self, headers: dict[str, str], scope: Scope, intent: ToolIntent) -> VerifiedToken:
        scheme = headers.get("authorization", "").partition(" ")[0].lower()
        if self._dpop_required and scheme == "bearer":
            raise TokenRejected("dpop_required", "this server accepts only DPoP-bound tokens")
        query = scope.get("query_string", b"").decode("latin-1")
        url = self._origin + scope["path"] + (f"?{query}" if query else "")
        return self.verifier.verify_request(
            headers,
            scope["method"],
            url,
            action=intent.action,
            resource=intent.resource,
            # A tool call may write: ask the sidecar every time, so a revocation holds at once.
            fresh=intent.tool is not None,
        )

    async def _rejected(self, send: Send, err: TokenRejected, intent: ToolIntent) -> None:
        log.info("MCP %s refused: %s", intent.tool or "session request", err.reason)
        params = [f"resource_metadata={_quoted(self.metadata_url)}"]
        if err.reason != "missing_token":
            # RFC 6750 §3: no error code when the request carried no token at all.
            params.insert(0, f"error={_quoted(err.error)}")
            params.insert(1, f"error_description={_quoted(err.reason)}")
        if err.status == 403:
            # MCP authorization spec, "Scope Challenge Handling": name what the call needs.
            params.insert(1, f"scope={_quoted(intent.action)}")
        body = json.dumps({"error": err.error, "reason": err.reason}).encode()
        challenge = "Bearer " + ", ".join(params)
        await self._send(send, err.status, body, [(b"www-authenticate", challenge.encode())])

    async def _error(self, send: Send, status: int, error: str, description: str) -> None:
        body = json.dumps({"error": error, "error_description": description}).encode()
        await self._send(send, status, body, [])

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole request body (None when over MAX_BODY_BYTES) and the messages read."""
    messages: list[Message] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return body, messages
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None, messages
        if not message.get("more_body", False):
            return body, messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


protect = McpGuard
"""`protect(app, verifier, tools, resource_url=..., authorization_servers=[...])`: wrap an
MCP server's ASGI app (e.g. `MCPServer.streamable_http_app()`) so that only calls covered by a
jit-sidecar token reach it. `verifier.audience` must be `resource_url`, the server's
canonical URI (MCP authorization spec)."""

"""sidecar.mcp.server.McpGuard as a plain ASGI app (no network): what it answers before a
token is verified, and the URLs it serves. The token checks themselves run against a real
sidecar in tests/integration/test_mcp.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sidecar.mcp import ToolMap
from sidecar.mcp.server import McpGuard, metadata_url, protect
from sidecar.verify import TokenVerifier

URL = "https://crm.example.com/mcp"


class App:
    """The wrapped MCP app: records whether a request reached it."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def guard(app: App, **kwargs: Any) -> McpGuard:
    # The JWKS URL is never fetched by these tests: they stop before verification.
    verifier = TokenVerifier("http://127.0.0.1:9/jwks", issuer="https://iss", audience=URL)
    return protect(
        app,
        verifier,
        ToolMap("crm"),
        resource_url=URL,
        authorization_servers=["https://iss"],
        **kwargs,
    )


def call(
    app: McpGuard, method: str, path: str, body: bytes = b"", **headers: str
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = messages[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return {"status": start["status"], "headers": response_headers, "body": messages[1]["body"]}


def test_metadata_url_inserts_the_well_known_path() -> None:
    """RFC 9728 §3.1: /.well-known/oauth-protected-resource between host and path."""
    assert metadata_url(URL) == "https://crm.example.com/.well-known/oauth-protected-resource/mcp"
    assert (
        metadata_url("https://a.example/")
        == "https://a.example/.well-known/oauth-protected-resource"
    )


def test_metadata_is_served_without_a_token() -> None:
    """The PRM document needs no token and names this resource exactly."""
    app = App()
    response = call(guard(app), "GET", "/.well-known/oauth-protected-resource/mcp")
    assert response["status"] == 200
    assert json.loads(response["body"])["resource"] == URL
    assert app.reached == []


def test_dpop_required_refuses_bearer_tokens() -> None:
    """With dpop_required a plain Bearer token is refused (401 dpop_required) and says so
    in the metadata."""
    app = App()
    protected = guard(app, dpop_required=True)
    response = call(protected, "POST", "/mcp", b"{}", Authorization="Bearer abc")
    metadata = call(protected, "GET", "/.well-known/oauth-protected-resource/mcp")
    assert response["status"] == 401
    assert json.loads(response["body"]) == {"error": "invalid_token", "reason": "dpop_required"}
    assert (
        'resource_metadata="https://crm.example.com/.well-known/'
        in response["headers"]["www-authenticate"]
    )
    assert json.loads(metadata["body"])["dpop_bound_access_tokens_required"] is True
    assert app.reached == []


def test_other_paths_pass_through_untouched() -> None:
    """Only the MCP endpoint is guarded; the app's other routes are its own business."""
    app = App()
    response = call(guard(app), "GET", "/healthz")
    assert response["status"] == 204
    assert app.reached == ["/healthz"]


def test_verifier_for_another_audience_is_a_configuration_error() -> None:
    """The verifier's audience must be the server's canonical URI."""
    verifier = TokenVerifier("http://127.0.0.1:9/jwks", issuer="https://iss", audience="crm")
    with pytest.raises(ValueError, match="canonical URI") as raised:
        McpGuard(App(), verifier, ToolMap("crm"), resource_url=URL, authorization_servers=[])
    assert raised.type is ValueError


def test_two_authorization_headers_are_refused() -> None:
    """RFC 6750 §2: a request with two Authorization headers is 400, never guessed at."""
    app = App()
    protected = guard(app)
    messages: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(protected(scope, receive, send))
    assert messages[0]["status"] == 400
    assert json.loads(messages[1]["body"])["error"] == "invalid_request"
    assert app.reached == []

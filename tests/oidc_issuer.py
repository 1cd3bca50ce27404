"""A real HTTP OIDC issuer for tests (discovery document + JWKS on a loopback port), standing
in for a Kubernetes API server's service-account issuer. It can rotate keys, count fetches,
and go down and come back, which a real API server cannot do on demand.

It is also an OpenID Provider for people (the console's login): an authorization endpoint
with a sign-in form (a person picks one of `users`), and a token endpoint that checks the
PKCE verifier (RFC 7636 §4.6), the client and the redirect URI, and answers an ID token."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from tests.harness import free_port
from tests.identity_kit import AUDIENCE, Key


class OidcIssuer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys: list[Key] = [Key.generate("RS256")]
        self.jwks_fetches = 0
        self.users: dict[str, dict[str, Any]] = {}
        """Sign-in name → claims of the person's ID token (sub, email, groups...)."""
        self.clients: dict[str, str] = {}
        """client_id → its one registered redirect URI."""
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk(use="sig", alg=k.alg) for k in self.keys]}

    def start(self) -> OidcIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/.well-known/openid-configuration":
                    body: Any = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/openid/v1/jwks",
                        "authorization_endpoint": issuer.url + "/authorize",
                        "token_endpoint": issuer.url + "/token",
                        "code_challenge_methods_supported": ["S256"],
                    }
                elif path == "/openid/v1/jwks":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                elif path == "/authorize":
                    self._reply(*issuer.sign_in_form(_form(query)))
                    return
                else:
                    self.send_error(404)
                    return
                self._reply(200, "application/json", json.dumps(body).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = _form(self.rfile.read(length).decode())
                if self.path == "/authorize":
                    location = issuer.signed_in(form)
                    if location is None:
                        self._reply(400, "text/plain", b"unknown user or request")
                        return
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/token":
                    status, body = issuer.exchange(form)
                    self._reply(status, "application/json", json.dumps(body).encode())
                else:
                    self.send_error(404)

            def _reply(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    # ------------------------------------------------------------------ people
    def sign_in_form(self, q: dict[str, str]) -> tuple[int, str, bytes]:
        if (
            q.get("response_type") != "code"
            or self.clients.get(q.get("client_id", "")) != q.get("redirect_uri")
            or q.get("code_challenge_method") != "S256"
            or not q.get("code_challenge")
        ):
            return 400, "text/plain", b"bad authorization request"
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in q.items()
        )
        page = (
            '<!doctype html><html lang="en"><head><title>Test issuer sign-in</title></head>'
            f'<body><main><h1>Sign in</h1><form method="post" action="/authorize">{hidden}'
            '<label for="username">User name</label><input id="username" name="username">'
            '<button type="submit">Sign in</button></form></main></body></html>'
        )
        return 200, "text/html; charset=utf-8", page.encode()

    def signed_in(self, form: dict[str, str]) -> str | None:
        user = form.get("username", "")
        if user not in self.users or self.clients.get(form.get("client_id", "")) != form.get(
            "redirect_uri"
        ):
            return None
        code = secrets.token_urlsafe(16)
        self.codes[code] = {**form, "issued": time.time()}
        query = urlencode({"code": code, "state": form.get("state", "")})
        return f"{form['redirect_uri']}?{query}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        grant = self.codes.pop(form.get("code", ""), None)  # a code is used once
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        if (
            form.get("client_id") != grant["client_id"]
            or form.get("redirect_uri") != grant["redirect_uri"]
        ):
            return 400, {"error": "invalid_grant"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": grant["client_id"],
            "iat": now,
            "exp": now + 300,
            "nonce": grant.get("nonce", ""),
            **self.users[grant["username"]],
        }
        id_token = self.keys[0].sign(claims, typ=None)
        return 200, {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "id_token": id_token,
            "expires_in": 300,
        }

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def token(self, *args: Any, key: Key | None = None, **kwargs: Any) -> str:
        """A Kubernetes projected service-account token (same claim shape)."""
        return (key or self.keys[0]).sign(self.claims(*args, **kwargs), typ=None)

    def claims(
        self,
        namespace: str = "agents",
        account: str = "billing",
        *,
        iss: str | None = None,
        ttl: int = 600,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": iss or self.url,
            "sub": f"system:serviceaccount:{namespace}:{account}",
            "aud": [AUDIENCE],
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": "0d4f0c6e-1111-2222-3333-444455556666"},
                "pod": {"name": f"{account}-7d9f", "uid": "9a8b7c6d-1111-2222-3333-444455556666"},
            },
        }
        claims.update(extra)
        return claims


def _form(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

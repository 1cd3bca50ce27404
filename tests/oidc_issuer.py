"""A real HTTP OIDC issuer for tests (discovery document + JWKS on a loopback port), standing
in for a Kubernetes API server's service-account issuer. It can rotate keys, count fetches,
and go down and come back, which a real API server cannot do on demand."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness import free_port
from tests.identity_kit import AUDIENCE, Key


class OidcIssuer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys: list[Key] = [Key.generate("RS256")]
        self.jwks_fetches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk(use="sig", alg=k.alg) for k in self.keys]}

    def start(self) -> OidcIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: Any = {"issuer": issuer.url, "jwks_uri": issuer.url + "/openid/v1/jwks"}
                elif self.path == "/openid/v1/jwks":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

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

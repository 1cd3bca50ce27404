"""An example resource server: two endpoints protected by `sidecar.verify` (standard library).

    GET  /docs/{id}            needs docs.read      on docs://{id}      (audience "docs")
    POST /tickets/{id}/close   needs tickets.update on tickets://{id}   (audience "tickets")

Resource names have one spelling (docs/api.md): the ticket id is lower-cased in them.

Every request is verified offline against the sidecar's JWKS and, because this server acts on
revocation, checked with the sidecar's RFC 7662 introspection endpoint: reads accept an
answer up to 2 s old, writes always ask afresh.

    python examples/resource_server.py --port 8080 --sidecar http://127.0.0.1:9464 \
        --introspection-credential-file var/http-token
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sidecar.verify import TokenRejected, TokenVerifier, VerifiedToken

log = logging.getLogger("resource-server")

DOCS = {
    "handbook/refunds": {
        "title": "Refund policy",
        "body": "Refunds above 100 EUR need a ticket and a second pair of eyes.",
    },
}
TICKETS: dict[str, dict[str, str]] = {"T-1001": {"status": "open", "title": "Refund request"}}
_TICKETS_LOCK = threading.Lock()

DOC_PATH = re.compile(r"^/docs/(?P<id>[A-Za-z0-9._/-]{1,200})$")
CLOSE_PATH = re.compile(r"^/tickets/(?P<id>[A-Za-z0-9._-]{1,64})/close$")


class Api:
    """The two protected endpoints; one verifier per audience."""

    def __init__(self, docs: TokenVerifier, tickets: TokenVerifier) -> None:
        self.docs = docs
        self.tickets = tickets

    def handle(
        self, method: str, path: str, headers: dict[str, str], url: str
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Route, verify, act: (status, extra headers, JSON body)."""
        if method == "GET" and path == "/healthz":
            return 200, {}, {"status": "ok"}
        if method == "GET" and (m := DOC_PATH.match(path)):
            doc_id = m["id"]
            token = self.docs.verify_request(
                headers, method, url, action="docs.read", resource=f"docs://{doc_id}"
            )
            doc = DOCS.get(doc_id)
            if doc is None:
                return 404, {}, {"error": "not_found"}
            return 200, {}, {"doc": doc, **_who(token)}
        if method == "POST" and (m := CLOSE_PATH.match(path)):
            ticket_id = m["id"]
            # A write: ask the sidecar afresh (no cached introspection answer), so a
            # revocation takes effect at once.
            token = self.tickets.verify_request(
                headers,
                method,
                url,
                action="tickets.update",
                resource=f"tickets://{ticket_id.lower()}",  # one spelling (docs/api.md)
                fresh=True,
            )
            with _TICKETS_LOCK:
                ticket = TICKETS.get(ticket_id)
                if ticket is None:
                    return 404, {}, {"error": "not_found"}
                ticket["status"] = "closed"
                return 200, {}, {"ticket": ticket_id, "status": "closed", **_who(token)}
        return 404, {}, {"error": "not_found"}


def _who(token: VerifiedToken) -> dict[str, str]:
    # What a real API would log: who acted, through which grant (the jti), in which task.
    return {"subject": token.subject, "jti": token.jti, "task": token.task_id}


def make_handler(api: Api, base_url: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "example-resource-server/1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 64 * 1024))
            headers = {k: v for k, v in self.headers.items()}
            path = self.path.split("?", 1)[0]
            extra: dict[str, str] = {}
            try:
                status, extra, body = api.handle(self.command, path, headers, base_url + path)
            except TokenRejected as err:
                status, body = err.status, {"error": err.error, "reason": err.reason}
                extra = {"WWW-Authenticate": err.www_authenticate}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            # Never the token: the method, path, status and (when verified) the jti.
            log.info("%s %s -> %d %s", self.command, path, status, body.get("jti", ""))

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # replaced by the line above

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--sidecar", default="http://127.0.0.1:9464", help="the sidecar's HTTP listener"
    )
    parser.add_argument("--issuer", default="https://jit-sidecar.local")
    parser.add_argument(
        "--introspection-credential-file",
        type=Path,
        help="bearer credential for /introspect (the sidecar's --http-token-file)",
    )
    parser.add_argument(
        "--no-introspection", action="store_true", help="verify offline only (no revocation)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="resource-server: %(message)s")

    credential = (
        args.introspection_credential_file.read_text().strip()
        if args.introspection_credential_file
        else None
    )
    common: dict[str, Any] = {
        "issuer": args.issuer,
        "introspection_url": None if args.no_introspection else args.sidecar + "/introspect",
        "introspection_credential": credential,
    }
    jwks = args.sidecar + "/.well-known/jwks.json"
    api = Api(
        docs=TokenVerifier(jwks, audience="docs", **common),
        tickets=TokenVerifier(jwks, audience="tickets", **common),
    )
    base_url = f"http://{args.host}:{args.port}"
    server = ThreadingHTTPServer((args.host, args.port), make_handler(api, base_url))
    server.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s", base_url)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

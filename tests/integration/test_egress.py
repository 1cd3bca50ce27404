"""Secretless HTTP egress end to end (issue 17): a real sidecar process (`--egress-config`)
with the real OPA deciding grants and egress routes, a real HTTPS upstream on loopback with a
test CA made here (tests/upstream.py) that records every request it receives, and a real
OAuth 2.0 token endpoint. Agents talk to the proxy over real TCP with real HTTP clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from sidecar.brokers import BrokerUnavailable
from sidecar.brokers.oauth2 import ClientCredentials, OAuth2Broker
from sidecar.brokers.sources import SecretFile
from sidecar.clock import SystemClock
from sidecar.egress import ActiveGrant, EgressProxy, OpaRoutes
from sidecar.egress.settings import build_broker, parse_egress_settings
from sidecar.metrics import Metrics
from tests.harness import ROOT, OpaServer, SidecarProcess, free_port, tls_files, wait_for
from tests.identity_kit import Key, dpop_proof
from tests.upstream import Received, TicketApi, TokenEndpoint

pytestmark = pytest.mark.integration
TICKET = "https-api://ticket-api/tickets/42"
FIRST_SECRET = "tk_live_first_9f8e7d6c5b4a39281706"
ROTATED_SECRET = "tk_live_rotated_0a1b2c3d4e5f60718293"
CLIENT_SECRET = "cs_client_secret_5e4d3c2b1a09f8e7"
UNTRUSTED_SECRET = "untrusted_key_77aa88bb99cc00dd"


class Egress:
    """The sidecar, its upstreams and the files they share."""

    def __init__(self, root: Path, opa: OpaServer) -> None:
        ca, cert, key = tls_files(root / "tls")
        other_ca, _, _ = tls_files(root / "other-tls")  # a CA the upstream's cert is not from
        self.secret_file = root / "ticket-api.key"
        self.secret_file.write_text(FIRST_SECRET + "\n")
        client_secret_file = root / "crm-client.secret"
        client_secret_file.write_text(CLIENT_SECRET)
        self.api = TicketApi(cert, key).start()
        self.idp = TokenEndpoint(cert, key, "jit-sidecar", client_secret_file).start()
        self.api.accept = self._valid_credential
        self.port = free_port()
        config = root / "egress.toml"
        config.write_text(
            f"""
listen = "127.0.0.1:{self.port}"
secret_poll_interval = 0.1
[upstreams.ticket-api]
url = "{self.api.url}"
ca_file = "{ca}"
inject = "header"
header = "X-Api-Key"
format = "{{secret}}"
secret_file = "{self.secret_file}"
[upstreams.crm]
url = "{self.api.url}"
ca_file = "{ca}"
inject = "oauth2"
token_url = "{self.idp.url}"
client_id = "jit-sidecar"
client_secret_file = "{client_secret_file}"
[upstreams.untrusted]
url = "{self.api.url}"
ca_file = "{other_ca}"
inject = "header"
secret_env = "UNTRUSTED_KEY"
"""
        )
        self.sidecar = SidecarProcess(
            root / "sc",
            opa.url,
            "--egress-config",
            str(config),
            # The tests send no heartbeats: tasks must not crash (agent_lost) while a slow,
            # loaded machine runs the module.
            "--heartbeat-interval",
            "300",
            env={"UNTRUSTED_KEY": UNTRUSTED_SECRET},
        )
        self.responses: list[str] = []
        """Every response body and header block the agents saw (for the leak check)."""

    def _valid_credential(self, got: Received) -> bool:
        if got.header("X-Api-Key"):
            return got.header("X-Api-Key") == [self.secret_file.read_text().strip()]
        auth = got.header("Authorization")
        return len(auth) == 1 and auth[0].removeprefix("Bearer ") in self.idp.issued

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def grant(self, resource: str = TICKET, action: str = "https-api.read", **task: Any) -> Any:
        """A new task and one grant in it: (task_id, grant)."""
        with self.sidecar.client() as c:
            begun = c.begin_task("egress test", **task)
            grant = c.request_grant(
                begun.task_id, action, resource, justification="needed for the egress test"
            )
        return begun.task_id, grant

    def call(self, method: str, path: str, token: str | None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        response = requests.request(method, self.base + path, headers=headers, timeout=10, **kw)
        self.responses.append(json.dumps(dict(response.headers)) + response.text)
        return response

    def complete(self, task_id: str) -> None:
        with self.sidecar.client() as c:
            c.complete_task(task_id)

    def stop(self) -> None:
        self.sidecar.stop()
        self.api.stop()
        self.idp.stop()


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[Egress]:
    world = Egress(tmp_path_factory.mktemp("egress"), opa)
    world.sidecar.start()
    wait_for(lambda: _listening(world.port), what="the egress listener")
    yield world
    world.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _new_requests(api: TicketApi, before: int) -> list[Received]:
    return api.received[before:]


def test_granted_path_is_forwarded_with_the_secret_and_without_the_agent_token(
    egress: Egress,
) -> None:
    """A read grant on tickets/42 reaches the upstream with the injected key; the agent's
    token and Authorization never arrive, and the answer streams back unchanged."""
    _, grant = egress.grant()
    before = len(egress.api.received)
    response = egress.call("GET", "/ticket-api/tickets/42?fields=title", grant.token)
    below = egress.call("GET", "/ticket-api/tickets/42/comments", grant.token)
    assert response.status_code == 200
    assert response.json() == {"method": "GET", "path": "/api/tickets/42", "length": 0}
    assert below.status_code == 200  # `read` covers the path and what lies under it
    sent = _new_requests(egress.api, before)
    assert [(r.method, r.path, r.query) for r in sent] == [
        ("GET", "/api/tickets/42", "fields=title"),
        ("GET", "/api/tickets/42/comments", ""),
    ]
    for got in sent:
        assert got.header("X-Api-Key") == [FIRST_SECRET]
        assert got.header("Authorization") == []
        assert grant.token not in json.dumps(got.headers)


def test_a_request_body_is_forwarded_with_its_length(egress: Egress) -> None:
    """A POST body reaches the upstream byte for byte, framed by the agent's Content-Length
    (not re-chunked), and its size is counted for the grant."""
    _, grant = egress.grant(TICKET + "/comments", "https-api.comment")
    body = json.dumps({"body": "We are on it."}).encode()
    before = len(egress.api.received)
    response = egress.call(
        "POST",
        "/ticket-api/tickets/42/comments",
        grant.token,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201
    (got,) = _new_requests(egress.api, before)
    assert got.body == body
    assert got.header("Content-Length") == [str(len(body))]
    assert got.header("Transfer-Encoding") == []
    assert got.header("Content-Type") == ["application/json"]


def test_paths_methods_and_audiences_outside_the_grant_are_refused(egress: Egress) -> None:
    """403 naming the grant for another path, another method or another upstream's grant;
    404 for an unknown upstream; 401 without a token or with a forged one; nothing reaches
    the upstream."""
    _, grant = egress.grant()
    _, docs = egress.grant("docs://handbook/intro", "docs.read")
    before = len(egress.api.received)
    other_ticket = egress.call("GET", "/ticket-api/tickets/43", grant.token)
    prefix_trick = egress.call("GET", "/ticket-api/tickets/420", grant.token)
    write = egress.call("DELETE", "/ticket-api/tickets/42", grant.token)
    wrong_audience = egress.call("GET", "/ticket-api/tickets/42", docs.token)
    unknown = egress.call("GET", "/nowhere/tickets/42", grant.token)
    no_token = egress.call("GET", "/ticket-api/tickets/42", None)
    forged = egress.call("GET", "/ticket-api/tickets/42", grant.token[:-4] + "AAAA")
    assert [r.status_code for r in (other_ticket, prefix_trick, write)] == [403, 403, 403]
    assert other_ticket.json()["error"] == "outside_grant"
    assert other_ticket.json()["grant_id"] == grant.grant_id
    assert grant.grant_id in other_ticket.json()["error_description"]
    assert wrong_audience.status_code == 403
    assert wrong_audience.json()["error"] == "audience_mismatch"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_upstream"
    assert (no_token.status_code, no_token.json()["error"]) == (401, "token_missing")
    assert (forged.status_code, forged.json()["error"]) == (401, "token_invalid")
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert _new_requests(egress.api, before) == []


@pytest.mark.parametrize(
    "path",
    [
        "/ticket-api/tickets/42/../43",
        "/ticket-api/tickets/./42",
        "/ticket-api/tickets//42",
        "/ticket-api/tickets/%34%32",
        "/ticket-api/tickets/42%2F..%2F43",
        "/Ticket-api/tickets/42",
    ],
)
def test_non_canonical_paths_are_refused_not_normalised(egress: Egress, path: str) -> None:
    """Dot segments, empty segments and second spellings of a path get 400 and never reach
    the upstream (which might normalise them into a path the grant does not cover)."""
    _, grant = egress.grant()
    before = len(egress.api.received)
    status, body = _raw(egress.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n" + _auth(grant) + "\r\n")
    egress.responses.append(body.decode(errors="replace"))
    assert status == 400
    assert b"bad_request" in body
    assert _new_requests(egress.api, before) == []


def _auth(grant: Any) -> str:
    return f"Authorization: Bearer {grant.token}\r\n"


def _raw(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as given (no client library tidying them up); (status, response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.settimeout(0.5)
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0
    return status, data


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 4\r\nContent-Length: 5\r\n",
        "X-Folded: a\r\n b\r\nContent-Length: 4\r\n",
    ],
    ids=["te-and-cl", "duplicate-cl", "obs-fold"],
)
def test_ambiguous_framing_is_refused(egress: Egress, framing: str) -> None:
    """Request smuggling's raw material (TE with CL, two CLs, obs-fold) gets 400 and
    nothing is forwarded."""
    _, grant = egress.grant("https-api://ticket-api/tickets", "https-api.create")
    before = len(egress.api.received)
    head = f"POST /ticket-api/tickets HTTP/1.1\r\nHost: x\r\n{_auth(grant)}{framing}\r\n"
    status, answer = _raw(egress.port, head, b"0\r\n\r\nGET /ticket-api/tickets/1 HTTP/1.1\r\n\r\n")
    egress.responses.append(answer.decode(errors="replace"))
    assert status == 400
    assert _new_requests(egress.api, before) == []


def test_hop_by_hop_headers_do_not_cross_the_proxy(egress: Egress) -> None:
    """Connection and the fields it names, Keep-Alive, TE, Upgrade and the agent's DPoP and
    Proxy-Authorization headers stop at the proxy both ways; end-to-end fields pass."""
    _, grant = egress.grant("https-api://ticket-api/hop")
    before = len(egress.api.received)
    response = egress.call(
        "GET",
        "/ticket-api/hop",
        grant.token,
        headers={
            "Connection": "keep-alive, X-Agent-Hop",
            "X-Agent-Hop": "secret-ish",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "yes",
        },
    )
    assert response.status_code == 200
    (got,) = _new_requests(egress.api, before)
    names = {k.lower() for k, _ in got.headers}
    assert names.isdisjoint({"x-agent-hop", "keep-alive", "te", "proxy-authorization", "dpop"})
    assert got.header("X-End-To-End") == ["yes"]
    assert "X-Upstream-Hop" not in response.headers
    assert response.headers["X-Kept"] == "1"


def test_an_echoed_secret_is_masked_in_the_response(egress: Egress) -> None:
    """An upstream that echoes the request's headers back does not hand the agent the
    injected key: its bytes are masked, lengths unchanged."""
    _, grant = egress.grant("https-api://ticket-api/echo")
    response = egress.call("GET", "/ticket-api/echo", grant.token)
    assert response.status_code == 200
    echoed = response.json()["headers"]
    assert echoed["X-Api-Key"] == "*" * len(FIRST_SECRET)
    assert FIRST_SECRET not in response.text


def test_revocation_cuts_the_stream_and_refuses_the_next_request(egress: Egress) -> None:
    """CompleteTask cuts a response still streaming, and the grant's next request gets 401
    naming the reason; the grant's counters reach the audit log once, at its end."""
    task_id, grant = egress.grant("https-api://ticket-api/stream")
    stream = requests.get(
        egress.base + "/ticket-api/stream",
        headers={"Authorization": f"Bearer {grant.token}"},
        stream=True,
        timeout=10,
    )
    lines = stream.iter_lines()
    assert next(lines) == b"chunk 0"
    egress.complete(task_id)
    received, error = [], None
    started = time.monotonic()
    try:
        received.extend(lines)
    except requests.RequestException as err:
        error = err
    cut_after = time.monotonic() - started
    after = egress.call("GET", "/ticket-api/stream", grant.token)
    assert error is not None  # an incomplete chunked body, never a clean end
    assert b"chunk 199" not in received
    assert cut_after < 2.0
    assert after.status_code == 401
    assert after.json()["error"] == "grant_inactive"
    assert "completed" in after.json()["error_description"]
    records = wait_for(
        lambda: [
            r for r in egress.sidecar.events("egress_usage") if r["grant_id"] == grant.grant_id
        ],
        what="the egress_usage record",
    )
    (record,) = records
    assert record["task_id"] == task_id
    assert record["upstream"] == "ticket-api"
    assert record["requests"] == 1
    assert record["streams_cut"] == 1
    assert record["reason"] == "completed"
    assert len(b"chunk 0\n") <= record["bytes_received"] < len(b"chunk 100\n") * 200


def test_an_upstream_dying_mid_answer_breaks_the_agents_stream(egress: Egress) -> None:
    """When the upstream's connection breaks after the head was forwarded, the agent's
    response breaks too (never a clean, truncated end), and it counts as upstream_error."""
    _, grant = egress.grant("https-api://ticket-api/broken")
    errors = egress.sidecar.metric(
        "jit_egress_requests_total", upstream="ticket-api", outcome="upstream_error"
    )
    stream = requests.get(
        egress.base + "/ticket-api/broken",
        headers={"Authorization": f"Bearer {grant.token}"},
        stream=True,
        timeout=10,
    )
    assert stream.status_code == 200
    with pytest.raises(requests.RequestException):
        b"".join(stream.iter_content(None))
    assert (
        egress.sidecar.metric(
            "jit_egress_requests_total", upstream="ticket-api", outcome="upstream_error"
        )
        == errors + 1
    )


def test_a_rotated_secret_is_used_without_restart(egress: Egress) -> None:
    """Replacing the secret file switches the injected key for the next requests."""
    _, grant = egress.grant()
    before = len(egress.api.received)
    assert egress.call("GET", "/ticket-api/tickets/42", grant.token).status_code == 200
    staged = egress.secret_file.with_suffix(".new")
    staged.write_text(ROTATED_SECRET + "\n")
    os.replace(staged, egress.secret_file)  # how secret managers deliver a rotation

    def rotated() -> bool:
        egress.call("GET", "/ticket-api/tickets/42", grant.token)
        return egress.api.received[-1].header("X-Api-Key") == [ROTATED_SECRET]

    wait_for(rotated, timeout=5, interval=0.05, what="the rotated key upstream")
    keys = [r.header("X-Api-Key")[0] for r in _new_requests(egress.api, before)]
    assert keys[0] == FIRST_SECRET
    assert keys[-1] == ROTATED_SECRET
    assert egress.call("GET", "/ticket-api/tickets/42", grant.token).status_code == 200


def test_client_credentials_token_is_cached_and_refreshed(egress: Egress) -> None:
    """The crm upstream gets an OAuth2 access token fetched with the client secret: one
    fetch serves many requests, and a new one is fetched before the first expires."""
    _, grant = egress.grant("https-api://crm/tickets")
    fetched = len(egress.idp.issued)
    before = len(egress.api.received)
    burst = [egress.call("GET", "/crm/tickets", grant.token) for _ in range(5)]
    assert [r.status_code for r in burst] == [200] * 5
    assert len(egress.idp.issued) == fetched + 1
    time.sleep(1.2)  # lifetime 2 s: refreshed once at most half of it remains
    later = egress.call("GET", "/crm/tickets", grant.token)
    assert later.status_code == 200
    assert len(egress.idp.issued) == fetched + 2
    bearers = [r.header("Authorization") for r in _new_requests(egress.api, before)]
    assert bearers[0] == [f"Bearer {egress.idp.issued[fetched]}"]
    assert bearers[-1] == [f"Bearer {egress.idp.issued[fetched + 1]}"]
    assert egress.idp.refusals == 0


def test_a_refused_or_unreachable_token_endpoint_fails_closed(tmp_path: Path) -> None:
    """The oauth2 broker against the real token endpoint: a wrong client secret, then the
    endpoint gone, each raise BrokerUnavailable (no token) whose message names neither
    secret; once the secret is right, a token is issued."""
    ca, cert, key = tls_files(tmp_path / "tls")
    endpoint_secret = tmp_path / "endpoint.secret"
    endpoint_secret.write_text("right-client-secret-123")
    ours = tmp_path / "ours.secret"
    ours.write_text("wrong-client-secret-456")
    idp = TokenEndpoint(cert, key, "jit-sidecar", endpoint_secret).start()
    context = ssl.create_default_context(cafile=str(ca))
    broker = OAuth2Broker(
        "crm",
        ClientCredentials(
            idp.url, "jit-sidecar", SecretFile(ours, broker="oauth2", poll_interval=0), ssl=context
        ),
    )

    async def scenario() -> tuple[list[BrokerUnavailable], str]:
        refused: list[BrokerUnavailable] = []
        try:
            try:
                await broker.token()
            except BrokerUnavailable as err:
                refused.append(err)
            ours.write_text("right-client-secret-123")
            token = await broker.token()
            broker.invalidate(token)
            await broker.aclose()  # its keep-alive connection goes first, then the endpoint
            idp.stop()
            try:
                await broker.token()
            except BrokerUnavailable as err:
                refused.append(err)
            return refused, token
        finally:
            await broker.aclose()

    refused, token = asyncio.run(scenario())
    assert [e.cause for e in refused] == ["refused", "unavailable"]
    assert token == idp.issued[0]
    for err in refused:
        assert "client-secret" not in str(err)
        assert token not in str(err)


def test_upstream_tls_failure_is_a_502(egress: Egress) -> None:
    """An upstream whose certificate the configured CA does not vouch for gets nothing: the
    agent sees 502 upstream_tls and the key is never sent."""
    _, grant = egress.grant("https-api://untrusted/tickets")
    before = len(egress.api.received)
    response = egress.call("GET", "/untrusted/tickets", grant.token)
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_tls"
    assert _new_requests(egress.api, before) == []


def test_dpop_bound_token_needs_a_fresh_proof(egress: Egress) -> None:
    """A token bound to a key passes only with the DPoP scheme and a proof for this request
    signed by that key; a replayed proof or a bearer presentation gets 401."""
    key = Key.generate("ES256")
    _, grant = egress.grant(pop_jwk=key.private_jwk())
    url = egress.base + "/ticket-api/tickets/42"
    proof = dpop_proof(key, "GET", url, grant.token)
    as_bearer = egress.call("GET", "/ticket-api/tickets/42", grant.token)
    bound = egress.call(
        "GET",
        "/ticket-api/tickets/42",
        None,
        headers={"Authorization": f"DPoP {grant.token}", "DPoP": proof},
    )
    replayed = egress.call(
        "GET",
        "/ticket-api/tickets/42",
        None,
        headers={"Authorization": f"DPoP {grant.token}", "DPoP": proof},
    )
    assert (as_bearer.status_code, as_bearer.json()["error"]) == (401, "dpop_invalid")
    assert bound.status_code == 200
    assert (replayed.status_code, replayed.json()["error"]) == (401, "dpop_invalid")
    assert "jti_replayed" in replayed.json()["error_description"]


def test_32_concurrent_agents(egress: Egress) -> None:
    """32 agents with a task and grant each, 10 requests apiece at once: every request is
    forwarded with the key and counted; none carries an agent's token upstream."""
    grants = [egress.grant(f"https-api://ticket-api/tickets/c{i}")[1] for i in range(32)]
    forwarded = egress.sidecar.metric(
        "jit_egress_requests_total", upstream="ticket-api", outcome="forwarded"
    )
    before = len(egress.api.received)
    statuses: list[int] = []
    lock = threading.Lock()

    failures: list[str] = []

    def agent(i: int) -> None:
        with requests.Session() as session:
            for _ in range(10):
                try:
                    r = session.get(
                        f"{egress.base}/ticket-api/tickets/c{i}",
                        headers={"Authorization": f"Bearer {grants[i].token}"},
                        timeout=60,  # 2 shared cores: generous, this is not a timing test
                    )
                except requests.RequestException as err:
                    with lock:
                        failures.append(repr(err))
                    continue
                with lock:
                    statuses.append(r.status_code)
                    egress.responses.append(json.dumps(dict(r.headers)) + r.text)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert Counter(statuses) == {200: 320}
    sent = _new_requests(egress.api, before)
    assert len(sent) == 320
    tokens = {g.token for g in grants}
    assert all(r.header("Authorization") == [] for r in sent)
    assert not any(t in json.dumps(r.headers) for r in sent for t in tokens)
    assert (
        egress.sidecar.metric(
            "jit_egress_requests_total", upstream="ticket-api", outcome="forwarded"
        )
        == forwarded + 320
    )
    assert (
        egress.sidecar.metric("jit_egress_request_duration_seconds_count", upstream="ticket-api")
        > 0
    )


def test_example_agent_uses_the_ticket_api_without_its_key(egress: Egress) -> None:
    """examples/egress_agent.py runs its steps against this sidecar and succeeds; the key
    is nowhere in its environment or output."""
    env = {k: v for k, v in os.environ.items() if "KEY" not in k.upper()}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/egress_agent.py"),
            "--socket",
            str(egress.sidecar.socket),
            "--proxy",
            egress.base,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    egress.responses.append(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: the agent used the ticket API" in done.stdout
    assert "-> 403" in done.stdout
    assert "-> 401" in done.stdout


def test_zz_no_secret_in_responses_logs_audit_or_metrics(egress: Egress) -> None:
    """After every scenario above: no injected secret (either static key, the OAuth client
    secret or any access token it produced) appears in what agents saw, the sidecar's log,
    the audit log or /metrics."""
    metrics = requests.get(egress.sidecar.http + "/metrics", timeout=5).text
    places = {
        "responses": "\n".join(egress.responses),
        "log": egress.sidecar.log(),
        "audit": egress.sidecar.audit.read_text(),
        "metrics": metrics,
    }
    secrets = [FIRST_SECRET, ROTATED_SECRET, CLIENT_SECRET, UNTRUSTED_SECRET, *egress.idp.issued]
    assert len(egress.responses) > 300
    assert "egress_usage" in places["audit"]
    leaks = [(where, s) for where, text in places.items() for s in secrets if s in text]
    assert leaks == []


class _BrokenGrants:
    """A GrantLookup with a bug (a fault no real engine produces on demand)."""

    def active(self, token: str, now: float) -> ActiveGrant | None:
        raise RuntimeError("a bug in the grant lookup")

    def why_inactive(self, token: str, now: float) -> str:
        return ""

    def on_end(self, callback: Any) -> None:
        pass


class _NoAudit:
    async def commit(self, events: list[dict[str, Any]]) -> None:
        pass


def test_a_bug_is_a_clear_500_without_a_traceback(tmp_path: Path) -> None:
    """An exception inside the proxy answers 500 `internal` as JSON, counted, with no
    traceback or exception text in the response."""
    settings = parse_egress_settings(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {
                "ticket-api": {
                    "url": "https://127.0.0.1:1/api",
                    "inject": "header",
                    "secret_env": "K",
                }
            },
        },
        "test",
    )
    metrics = Metrics()

    async def scenario() -> tuple[int, str]:
        proxy = EgressProxy(
            settings,
            grants=_BrokenGrants(),
            routes=OpaRoutes("http://127.0.0.1:1", "/v1/data/jit/egress_route", 0.1),
            brokers={"ticket-api": build_broker(settings.upstreams["ticket-api"], {"K": "k"}, 1)},
            metrics=metrics,
            audit=_NoAudit(),
            clock=SystemClock(),
        )
        await proxy.start()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"http://127.0.0.1:{proxy.port}/ticket-api/tickets/1",
                    headers={"Authorization": "Bearer x.y.z"},
                ) as response,
            ):
                return response.status, await response.text()
        finally:
            await proxy.stop()

    status, text = asyncio.run(scenario())
    assert status == 500
    assert json.loads(text) == {"error": "internal", "error_description": "internal error"}
    assert "Traceback" not in text
    assert "a bug" not in text
    sample = metrics.registry.get_sample_value(
        "jit_egress_requests_total", {"upstream": "ticket-api", "outcome": "internal"}
    )
    assert sample == 1

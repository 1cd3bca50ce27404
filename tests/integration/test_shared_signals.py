"""Shared Signals end to end with real parts: a real sidecar process (real OPA, its HTTP
listener), a resource server using `sidecar.verify` in receiver mode over real HTTP, and an
independent receiver written here that validates every SET with PyJWT (not the sidecar's JOSE
core) against the sidecar's JWKS and checks the event schema (RFC 8417, SSF 1.0, CAEP 1.0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidecar.ssf.events import SESSION_REVOKED, TOKEN_REVOKED, VERIFICATION
from sidecar.ssf.receiver import (
    Subscription,
    aiohttp_push_handler,
    asgi_push_app,
    wsgi_push_app,
)
from sidecar.verify import TokenRejected, TokenVerifier
from tests.faults import immutable
from tests.harness import OpaServer, RedisServer, SidecarProcess, free_port, running, wait_for

ISSUER = "https://jit-sidecar.local"
CREDENTIAL = "ssf-test-credential-0123456789"
PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
FAST = ("--heartbeat-interval", "1", "--sweep-interval", "0.2")


def auth(credential: str = CREDENTIAL) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="module")
def transmitter(
    tmp_path_factory: pytest.TempPathFactory, opa: OpaServer
) -> Iterator[SidecarProcess]:
    """One sidecar for the module, its HTTP listener guarded by a credential, with fast
    heartbeats so a silent agent crashes within ~3 s."""
    workdir = tmp_path_factory.mktemp("ssf")
    secret = workdir / "http-token"
    secret.write_text(CREDENTIAL)
    process = SidecarProcess(workdir, opa.url, "--http-token-file", str(secret), *FAST).start()
    yield process
    process.stop(timeout=15)


class IndependentReceiver:
    """An RFC 8935 push endpoint that trusts nothing of `sidecar`: PyJWT checks each SET's
    signature against the JWKS, `typ`, `iss` and `aud`; the schema is checked by the tests."""

    def __init__(self, sidecar: SidecarProcess, aud: str) -> None:
        self.sidecar = sidecar
        self.aud = aud
        self.port = free_port()
        self.secret = "Bearer receiver-secret-" + aud[-8:]
        self.sets: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.stream_id = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def validate(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "secevent+jwt"  # RFC 8417 §2.3
        jwks = requests.get(self.sidecar.http + "/.well-known/jwks.json", timeout=5).json()
        key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA", "ES256"],
            audience=self.aud,
            issuer=ISSUER,
            options={"require": ["iss", "aud", "iat", "jti"]},
        )
        return claims

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = (
                    self.headers.get("Authorization") == receiver.secret
                    and self.headers.get("Content-Type") == "application/secevent+jwt"
                )
                try:
                    claims = receiver.validate(body.decode()) if ok else None
                except jwt.PyJWTError as err:
                    receiver.refused.append(type(err).__name__)
                    claims = None
                if claims is None:
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"err":"invalid_request"}')
                    return
                receiver.sets.append(claims)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def subscribe(self) -> dict[str, Any]:
        config = {
            "aud": self.aud,
            "delivery": {
                "method": PUSH,
                "endpoint_url": self.url,
                "authorization_header": self.secret,
            },
        }
        r = requests.post(self.sidecar.http + "/ssf/stream", json=config, headers=auth(), timeout=5)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        self.stream_id = body["stream_id"]
        return body

    def unsubscribe(self) -> None:
        requests.delete(
            self.sidecar.http + "/ssf/stream",
            params={"stream_id": self.stream_id},
            headers=auth(),
            timeout=5,
        )

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [s for s in self.sets if event_type in s["events"]]


@pytest.fixture
def receiver(
    transmitter: SidecarProcess, request: pytest.FixtureRequest
) -> Iterator[IndependentReceiver]:
    """An independent push receiver with its own stream (one per test)."""
    r = IndependentReceiver(transmitter, f"https://rs.example/{request.node.name}")
    r.up()
    r.subscribe()
    yield r
    r.unsubscribe()
    r.down()


def check_access_set(claims: dict[str, Any], event_type: str, task_id: str, agent: str) -> Any:
    """The schema every end-of-access SET follows; returns its one event."""
    assert set(claims["events"]) == {event_type}  # exactly one event (SSF 1.0 §4.1.3)
    assert claims["txn"] == task_id
    assert claims["sub_id"] == {
        "format": "complex",
        "session": {"format": "opaque", "id": task_id},
        "user": {"format": "uri", "uri": agent},
    }
    assert isinstance(claims["iat"], int) and abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    event = claims["events"][event_type]
    assert isinstance(event["event_timestamp"], int)
    assert event["initiating_entity"] in ("admin", "user", "policy", "system")
    return event


def test_configuration_document(transmitter: SidecarProcess) -> None:
    """/.well-known/ssf-configuration names the issuer, the JWKS, both delivery methods and the
    management endpoints (SSF 1.0 §7.1), without a credential."""
    doc = requests.get(transmitter.http + "/.well-known/ssf-configuration", timeout=5).json()
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == transmitter.http + "/.well-known/jwks.json"
    assert doc["delivery_methods_supported"] == [PUSH, POLL]
    assert doc["configuration_endpoint"] == transmitter.http + "/ssf/stream"
    assert doc["status_endpoint"] == transmitter.http + "/ssf/status"
    assert doc["verification_endpoint"] == transmitter.http + "/ssf/verify"
    assert requests.get(doc["jwks_uri"], timeout=5).json()["keys"]


def test_stream_lifecycle(transmitter: SidecarProcess) -> None:
    """Create (201), one stream per receiver (409), read, update, status, delete (204), each
    stream change audited; the push secret is never echoed."""
    url = transmitter.http + "/ssf/stream"
    config = {
        "aud": "https://lifecycle.example",
        "delivery": {
            "method": PUSH,
            "endpoint_url": "http://127.0.0.1:9/unused",
            "authorization_header": "Bearer never-echoed",
        },
        "events_requested": [SESSION_REVOKED],
    }
    created = requests.post(url, json=config, headers=auth(), timeout=5)
    again = requests.post(url, json=config, headers=auth(), timeout=5)
    stream_id = created.json()["stream_id"]
    read = requests.get(url, params={"stream_id": stream_id}, headers=auth(), timeout=5)
    patched = requests.patch(
        url, json={"stream_id": stream_id, "description": "lifecycle"}, headers=auth(), timeout=5
    )
    paused = requests.post(
        transmitter.http + "/ssf/status",
        json={"stream_id": stream_id, "status": "paused", "reason": "maintenance"},
        headers=auth(),
        timeout=5,
    )
    status = requests.get(
        transmitter.http + "/ssf/status", params={"stream_id": stream_id}, headers=auth(), timeout=5
    )
    deleted = requests.delete(url, params={"stream_id": stream_id}, headers=auth(), timeout=5)
    gone = requests.get(url, params={"stream_id": stream_id}, headers=auth(), timeout=5)
    assert created.status_code == 201
    body = created.json()
    assert body["iss"] == ISSUER
    assert body["aud"] == "https://lifecycle.example"
    assert body["delivery"] == {"method": PUSH, "endpoint_url": "http://127.0.0.1:9/unused"}
    assert body["events_supported"] == [SESSION_REVOKED, TOKEN_REVOKED]
    assert body["events_delivered"] == [SESSION_REVOKED]
    assert "never-echoed" not in created.text + read.text + patched.text
    assert again.status_code == 409
    assert read.json() == body
    assert patched.json()["description"] == "lifecycle"
    assert paused.json() == {"stream_id": stream_id, "status": "paused", "reason": "maintenance"}
    assert status.json() == paused.json()
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert gone.json()["error"] == "not_found"
    changes = [
        r["change"] for r in transmitter.events("ssf_stream_changed") if r["stream_id"] == stream_id
    ]
    assert changes == ["created", "updated", "status_changed", "deleted"]
    assert "never-echoed" not in transmitter.audit.read_text() + transmitter.log()


def test_wrong_credential_is_refused_stream_management(transmitter: SidecarProcess) -> None:
    """Every management and poll endpoint refuses a wrong or missing credential with 401,
    and nothing is created."""
    before = requests.get(transmitter.http + "/ssf/stream", headers=auth(), timeout=5).json()
    calls: list[Callable[[dict[str, str]], requests.Response]] = [
        lambda h: requests.post(
            transmitter.http + "/ssf/stream",
            json={"aud": "https://intruder.example", "delivery": {"method": POLL}},
            headers=h,
            timeout=5,
        ),
        lambda h: requests.get(transmitter.http + "/ssf/stream", headers=h, timeout=5),
        lambda h: requests.delete(
            transmitter.http + "/ssf/stream", params={"stream_id": "x"}, headers=h, timeout=5
        ),
        lambda h: requests.post(
            transmitter.http + "/ssf/verify", json={"stream_id": "x"}, headers=h, timeout=5
        ),
        lambda h: requests.post(transmitter.http + "/ssf/poll/x", json={}, headers=h, timeout=5),
    ]
    answers = [call(h).status_code for call in calls for h in (auth("wrong-credential"), {})]
    after = requests.get(transmitter.http + "/ssf/stream", headers=auth(), timeout=5).json()
    assert answers == [401] * len(answers)
    assert after == before


def test_bad_stream_requests_get_reasons(transmitter: SidecarProcess) -> None:
    """Malformed management requests get 4xx with an error code, never a traceback."""
    url = transmitter.http + "/ssf/stream"
    not_json = requests.post(
        url, data=b"{", headers={**auth(), "Content-Type": "application/json"}, timeout=5
    )
    bad_method = requests.post(
        url, json={"delivery": {"method": "smoke"}}, headers=auth(), timeout=5
    )
    plain_http = requests.post(
        url,
        json={"delivery": {"method": PUSH, "endpoint_url": "http://rs.example/e"}},
        headers=auth(),
        timeout=5,
    )
    assert [not_json.status_code, bad_method.status_code, plain_http.status_code] == [400] * 3
    assert {not_json.json()["error"], bad_method.json()["error"]} == {"invalid_request"}
    assert "Traceback" not in transmitter.log()


def test_verification_event(transmitter: SidecarProcess, receiver: IndependentReceiver) -> None:
    """POST /ssf/verify (204) delivers a verification SET carrying the state, whose subject
    is the stream (SSF 1.0 §8.1.4)."""
    r = requests.post(
        transmitter.http + "/ssf/verify",
        json={"stream_id": receiver.stream_id, "state": "hello-123"},
        headers=auth(),
        timeout=5,
    )
    (claims,) = wait_for(lambda: receiver.events_of(VERIFICATION), what="the verification SET")
    assert r.status_code == 204
    assert claims["events"] == {VERIFICATION: {"state": "hello-123"}}
    assert claims["sub_id"] == {"format": "opaque", "id": receiver.stream_id}
    assert claims["aud"] == receiver.aud


def test_each_end_of_access_produces_its_event(
    transmitter: SidecarProcess, receiver: IndependentReceiver
) -> None:
    """Complete, crash (missed heartbeats), expire, RevokeGrant and the kill switch each
    produce the right SET, validated by an independent JOSE library."""
    with transmitter.client() as c:
        done = c.begin_task("completes")
        c.request_grant(done.task_id, "docs.read", "docs://a", ttl_seconds=120)
        crash = c.begin_task("goes silent")  # no heartbeats: crashed after 3 s
        expire = c.begin_task("runs out", max_duration=2)
        single = c.begin_task("keeps going")
        grant = c.request_grant(single.task_id, "docs.read", "docs://b", ttl_seconds=120)
        killed = c.begin_task("killed")
        c.complete_task(done.task_id, "succeeded")
        c.revoke_grant(grant.grant_id, "no longer needed")
        agent = jwt.decode(grant.token, options={"verify_signature": False})["sub"]
        with transmitter.admin() as admin:
            admin.revoke(task_id=killed.task_id, reason="operator")
        for _ in range(20):  # keep `single` alive while `crash` goes silent
            c.heartbeat(single.task_id)
            if len(receiver.events_of(SESSION_REVOKED)) >= 4:
                break
            time.sleep(0.5)
        wait_for(lambda: len(receiver.events_of(SESSION_REVOKED)) >= 4, 10, what="4 task ends")
        time.sleep(0.5)  # room for a wrong session-revoked for `single` to arrive
        sessions = {s["txn"]: s for s in receiver.events_of(SESSION_REVOKED)}
        c.complete_task(single.task_id, "succeeded")  # leaves no task to crash later
    reasons = {
        task: check_access_set(sessions[task], SESSION_REVOKED, task, agent)["reason_admin"]["en"]
        for task in (done.task_id, crash.task_id, expire.task_id, killed.task_id)
    }
    (token_set,) = receiver.events_of(TOKEN_REVOKED)
    token_event = check_access_set(token_set, TOKEN_REVOKED, single.task_id, agent)
    assert reasons == {
        done.task_id: "completed",
        crash.task_id: "agent_lost",
        expire.task_id: "task_expired",
        killed.task_id: "revoked_by_operator",
    }
    assert sessions[done.task_id]["events"][SESSION_REVOKED]["task_state"] == "succeeded"
    assert sessions[killed.task_id]["events"][SESSION_REVOKED]["initiating_entity"] == "admin"
    assert token_event["jti"] == grant.grant_id
    assert token_event["reason_admin"] == {"en": "revoked_by_agent"}
    assert single.task_id not in sessions  # a single revoked grant does not end its task
    assert receiver.refused == []
    assert grant.token not in transmitter.log()


def test_kill_switch_produces_session_revoked(
    transmitter: SidecarProcess, receiver: IndependentReceiver
) -> None:
    """The kill switch (revoke by subject) ends every task of the agent, each with a
    session-revoked SET saying kill_switch, initiated by an admin."""
    with transmitter.client() as c:
        tasks = [c.begin_task(f"kill {i}") for i in range(2)]
        grant = c.request_grant(tasks[0].task_id, "docs.read", "docs://k", ttl_seconds=60)
        agent = jwt.decode(grant.token, options={"verify_signature": False})["sub"]
        with transmitter.admin() as admin:
            admin.revoke(subject=agent, reason="incident")
    wait_for(lambda: len(receiver.events_of(SESSION_REVOKED)) >= 2, 10, what="kill switch SETs")
    events = {
        s["txn"]: check_access_set(s, SESSION_REVOKED, s["txn"], agent)
        for s in receiver.events_of(SESSION_REVOKED)
    }
    for task in tasks:
        assert events[task.task_id]["reason_admin"] == {"en": "kill_switch"}
        assert events[task.task_id]["initiating_entity"] == "admin"


def test_receiver_down_for_30_s_gets_everything_in_order(
    transmitter: SidecarProcess, receiver: IndependentReceiver
) -> None:
    """A receiver down for 30 s gets every SET queued meanwhile when it returns, in order,
    while the queue depth and lag metrics show the backlog."""
    receiver.down()
    with transmitter.client() as c:
        order = []
        for i in range(5):
            task = c.begin_task(f"while down {i}")
            c.request_grant(task.task_id, "docs.read", f"docs://down/{i}", ttl_seconds=300)
            c.complete_task(task.task_id, "succeeded")
            order.append(task.task_id)
    time.sleep(30)
    depth = transmitter.metric("jit_ssf_queue_depth", stream=receiver.stream_id)
    lag = transmitter.metric("jit_ssf_lag_seconds", stream=receiver.stream_id)
    retried = transmitter.metric(
        "jit_ssf_events_total", stream=receiver.stream_id, result="retried"
    )
    receiver.up()
    wait_for(lambda: len(receiver.sets) >= 5, 40, what="the backlog")
    time.sleep(0.5)
    assert [s["txn"] for s in receiver.sets if s.get("txn") in order] == order
    assert depth == 5
    assert 29 <= lag <= 60
    assert retried >= 3  # it kept trying, backing off
    assert transmitter.metric("jit_ssf_queue_depth", stream=receiver.stream_id) == 0


def test_events_survive_a_restart(tmp_path: Path, opa: OpaServer) -> None:
    """SETs queued for a receiver that is down are on disk: after a sidecar restart they are
    delivered when the receiver comes up."""
    secret = tmp_path / "http-token"
    secret.write_text(CREDENTIAL)
    sidecar = SidecarProcess(tmp_path / "s", opa.url, "--http-token-file", str(secret)).start()
    receiver = IndependentReceiver(sidecar, "https://restart.example")
    try:
        receiver.subscribe()  # receiver not up yet
        with sidecar.client() as c:
            task = c.begin_task("before restart")
            c.complete_task(task.task_id, "failed")
        sidecar.stop()
        sidecar.start()
        receiver.up()
        (claims,) = wait_for(lambda: receiver.events_of(SESSION_REVOKED), 20, what="the SET")
    finally:
        receiver.down()
        sidecar.stop()
    assert claims["txn"] == task.task_id
    assert claims["events"][SESSION_REVOKED]["reason_admin"] == {"en": "failed"}


# ---------------------------------------------------------------------- verifier as receiver
class PushServer:
    """The resource server's push endpoint: sidecar.ssf.receiver's WSGI app on wsgiref."""

    def __init__(self, app: Any) -> None:
        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, WSGIServer, Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AiohttpPushServer:
    """The resource server's push endpoint: sidecar.ssf.receiver's aiohttp handler on a real
    aiohttp server (its own event loop, in a thread)."""

    def __init__(self, handler: Callable[[web.Request], Any]) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/ssf/events", handler)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def resource_verifier(
    sidecar: SidecarProcess, push_url: str | None, **kwargs: Any
) -> TokenVerifier:
    return TokenVerifier(
        sidecar.http + "/.well-known/jwks.json",
        issuer=ISSUER,
        audience="docs",
        introspection_url=sidecar.http + "/introspect",
        introspection_credential=CREDENTIAL,
        signals=Subscription(
            sidecar.http, credential=CREDENTIAL, push_url=push_url, max_silence=6.0, **kwargs
        ),
    )


@pytest.mark.parametrize("mode", ["wsgi", "aiohttp", "poll"])
def test_resource_server_rejects_revoked_tokens_from_memory(
    transmitter: SidecarProcess, mode: str
) -> None:
    """With a live stream (push to a WSGI or aiohttp endpoint, or poll), the verifier refuses
    a token soon after its task ends, and never introspects on the request path."""
    slot: dict[str, Any] = {}
    push: PushServer | AiohttpPushServer | None = None
    url = None
    if mode == "wsgi":
        push = PushServer(lambda e, s: slot["app"](e, s))
        url = f"http://127.0.0.1:{push.port}/"
    elif mode == "aiohttp":

        async def relay(request: web.Request) -> Any:
            return await slot["app"](request)

        push = AiohttpPushServer(relay)
        url = f"http://127.0.0.1:{push.port}/ssf/events"
    verifier = resource_verifier(transmitter, url, receiver=f"urn:rs:{mode}")
    assert verifier.signals is not None
    slot["app"] = (
        aiohttp_push_handler(verifier.signals)
        if mode == "aiohttp"
        else wsgi_push_app(verifier.signals)
    )
    verifier.signals.start()
    try:
        wait_for(verifier.signals.healthy, 10, what="a confirmed stream")
        time.sleep(max(0.0, verifier.signals.since - time.time()))  # tokens issued after it
        with transmitter.client() as c:
            task = c.begin_task("rs")
            grant = c.request_grant(task.task_id, "docs.read", "docs://rs", ttl_seconds=120)
            accepted = verifier.verify(grant.token, action="docs.read", resource="docs://rs")
            c.complete_task(task.task_id, "succeeded")
            ended = time.monotonic()

        def refused() -> TokenRejected | None:
            try:
                verifier.verify(grant.token, action="docs.read", resource="docs://rs")
            except TokenRejected as err:
                return err
            return None

        err = wait_for(refused, 5, interval=0.001, what="the revocation")
        took = time.monotonic() - ended
    finally:
        verifier.signals.close()
        if push:
            push.close()
    assert accepted.jti == grant.grant_id
    assert err.reason == "revoked"
    assert verifier.introspections == 0
    assert took < 2.0  # measured properly in bench/ssf_latency.py


def test_forged_and_replayed_sets(transmitter: SidecarProcess) -> None:
    """A SET signed by a stranger's key is refused (400 invalid_key) and changes nothing; a
    genuine SET pushed again is acknowledged (202) and ignored."""
    verifier = resource_verifier(transmitter, None, receiver="urn:rs:forgery")
    signals = verifier.signals
    assert signals is not None
    signals.start()
    try:
        stranger = ed25519.Ed25519PrivateKey.generate()
        kid = requests.get(transmitter.http + "/.well-known/jwks.json", timeout=5).json()["keys"][
            0
        ]["kid"]
        claims = {
            "iss": ISSUER,
            "aud": signals.aud,
            "jti": "forged-0000000000000001",
            "iat": int(time.time()),
            "txn": "victim-task",
            "sub_id": {"format": "complex", "session": {"format": "opaque", "id": "victim-task"}},
            "events": {SESSION_REVOKED: {"event_timestamp": int(time.time())}},
        }
        forged = jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"typ": "secevent+jwt", "kid": kid}
        )
        forged_answer = signals.handle_push(
            forged.encode(), "application/secevent+jwt", signals.push_authorization
        )
        no_credential = signals.handle_push(forged.encode(), "application/secevent+jwt", "")
        # A genuine SET for this receiver, captured from its poll stream, then replayed.
        with transmitter.client() as c:
            task = c.begin_task("replayed")
            c.complete_task(task.task_id, "succeeded")
        wait_for(lambda: signals.revoked("", task.task_id), 10, what="the genuine SET")
        genuine = _sign_like_transmitter(transmitter, signals.aud, task.task_id)
        first = signals.handle_push(
            genuine.encode(), "application/secevent+jwt", signals.push_authorization
        )
        again = signals.handle_push(
            genuine.encode(), "application/secevent+jwt", signals.push_authorization
        )
    finally:
        signals.close()
    assert forged_answer == (400, {"err": "invalid_key", "description": "bad_signature"})
    assert no_credential[0] == 401
    assert not signals.revoked("", "victim-task")
    assert first == (202, None)
    assert again == (202, None)
    assert signals.replays == 1


def _sign_like_transmitter(sidecar: SidecarProcess, aud: str, task_id: str) -> str:
    """A SET signed with the sidecar's own key file (what its transmitter would send)."""
    from sidecar.ssf.events import access_subject, set_claims
    from sidecar.tokens import SigningKey, load_private_key

    key = SigningKey.from_private_key(load_private_key(sidecar.key))
    claims = set_claims(
        issuer=ISSUER,
        audience=aud,
        event_type=SESSION_REVOKED,
        event={"event_timestamp": int(time.time())},
        subject=access_subject(task_id, "spiffe://jit.local/agent/dev"),
        iat=int(time.time()),
        txn=task_id,
    )
    return key.sign_typed(claims, "secevent+jwt")


def test_unhealthy_stream_falls_back_then_fails_closed(tmp_path: Path, opa: OpaServer) -> None:
    """When the stream goes silent (sidecar gone) for longer than max_silence, the verifier
    introspects; as introspection is down too, it refuses (fail closed, 503)."""
    secret = tmp_path / "http-token"
    secret.write_text(CREDENTIAL)
    sidecar = SidecarProcess(tmp_path / "s", opa.url, "--http-token-file", str(secret)).start()
    verifier = resource_verifier(sidecar, None, receiver="urn:rs:unhealthy")
    assert verifier.signals is not None
    verifier.signals.start()
    try:
        wait_for(verifier.signals.healthy, 10, what="a confirmed stream")
        time.sleep(max(0.0, verifier.signals.since - time.time()))
        with sidecar.client() as c:
            task = c.begin_task("fallback")
            grant = c.request_grant(task.task_id, "docs.read", "docs://f", ttl_seconds=120)
        verifier.verify(grant.token, action="docs.read", resource="docs://f")
        before = verifier.introspections
        sidecar.kill()
        wait_for(lambda: not verifier.signals.healthy(), 15, what="the stream to go silent")
        with pytest.raises(TokenRejected) as err:
            verifier.verify(grant.token, action="docs.read", resource="docs://f")
    finally:
        verifier.signals.close()
        if sidecar.proc is not None:
            sidecar.kill()
    assert before == 0
    assert verifier.introspections == 1
    assert err.value.reason == "introspection_unavailable"
    assert err.value.status == 503


# ---------------------------------------------------------------------- fleets
def test_fleet_delivers_each_end_once_per_receiver(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """On a Redis fleet, a receiver with a stream on each sidecar hears of each end of access
    once: only the sidecar holding the task or grant emits, even when the kill switch or the
    operator's revoke was given to another sidecar."""
    secret = tmp_path / "http-token"
    secret.write_text(CREDENTIAL)
    prefix = "ssf" + secrets.token_hex(4)
    members = [
        SidecarProcess(
            tmp_path / name,
            opa.url,
            "--http-token-file",
            str(secret),
            "--redis-prefix",
            prefix,
            "--fleet-id",
            name,
            "--sweep-interval",
            "0.2",
            shared=redis_server.url,
        )
        for name in ("a", "b")
    ]
    receiver = IndependentReceiver(members[0], "https://fleet-rs.example")
    with contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(running(m)) for m in members)
        receiver.up()
        stack.callback(receiver.down)
        for member in (a, b):  # one stream per sidecar, all for the same receiver
            receiver.sidecar = member
            receiver.subscribe()
        receiver.sidecar = a  # its JWKS holds the whole fleet's keys
        with a.client() as ca, b.client() as cb:
            on_a = ca.begin_task("on a")
            on_b = cb.begin_task("on b")
            kept = cb.begin_task("kept on b")
            grant = cb.request_grant(kept.task_id, "docs.read", "docs://fleet", ttl_seconds=120)
            agent = jwt.decode(grant.token, options={"verify_signature": False})["sub"]
            with a.admin() as admin:
                admin.revoke(grant_id=grant.grant_id, reason="from a")  # held by b
            wait_for(lambda: receiver.events_of(TOKEN_REVOKED), 10, what="the token SET")
            cb.heartbeat(kept.task_id)
            with a.admin() as admin:
                admin.revoke(subject=agent, reason="incident")  # a kill switch given to a
            wait_for(lambda: len(receiver.events_of(SESSION_REVOKED)) >= 3, 10, what="3 ends")
            time.sleep(1.5)  # room for any duplicate to arrive
    sessions = [s["txn"] for s in receiver.events_of(SESSION_REVOKED)]
    tokens = [s["events"][TOKEN_REVOKED]["jti"] for s in receiver.events_of(TOKEN_REVOKED)]
    assert sorted(sessions) == sorted([on_a.task_id, on_b.task_id, kept.task_id])
    assert tokens == [grant.grant_id]
    assert receiver.refused == []


def test_asgi_push_endpoint(transmitter: SidecarProcess) -> None:
    """The ASGI helper answers a genuine SET 202 and applies it, and a SET for another
    receiver 400 invalid_audience with an RFC 8935 error body."""
    verifier = resource_verifier(transmitter, None, receiver="urn:rs:asgi")
    signals = verifier.signals
    assert signals is not None
    app = asgi_push_app(signals)

    async def push(token: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        chunks = [token[:10].encode(), token[10:].encode()]

        async def receive() -> dict[str, Any]:
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/ssf/events",
            "headers": [
                (b"content-type", b"application/secevent+jwt"),
                (b"authorization", signals.push_authorization.encode()),
            ],
        }
        await app(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    genuine = _sign_like_transmitter(transmitter, signals.aud, "asgi-task")
    elsewhere = _sign_like_transmitter(transmitter, "urn:rs:someone-else", "other-task")
    accepted = asyncio.run(push(genuine))
    refused = asyncio.run(push(elsewhere))
    assert accepted == (202, b"")
    assert signals.revoked("", "asgi-task")
    assert refused[0] == 400
    assert json.loads(refused[1]) == {
        "err": "invalid_audience",
        "description": "not for this receiver",
    }
    assert not signals.revoked("", "other-task")


def test_stream_change_is_refused_when_it_cannot_be_audited(tmp_path: Path, opa: OpaServer) -> None:
    """With the audit log unwritable, creating a stream answers 503 temporarily_unavailable
    (no traceback) and no stream exists afterwards (fail closed)."""
    secret = tmp_path / "http-token"
    secret.write_text(CREDENTIAL)
    sidecar = SidecarProcess(tmp_path / "s", opa.url, "--http-token-file", str(secret)).start()
    try:
        with sidecar.client() as c:  # something in the audit log, so the file exists
            c.begin_task("audited")
        with immutable(sidecar.audit):
            refused = requests.post(
                sidecar.http + "/ssf/stream",
                json={"aud": "urn:rs:unaudited"},
                headers=auth(),
                timeout=15,
            )
        streams = requests.get(sidecar.http + "/ssf/stream", headers=auth(), timeout=5).json()
    finally:
        sidecar.stop()
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    assert streams == []
    assert "Traceback" not in sidecar.log()


def test_slow_stream_body_gets_408(tmp_path: Path, opa: OpaServer) -> None:
    """A /ssf/stream body that stops arriving gets 408 body_timeout after http_body_timeout,
    as /introspect does, and no stream is created."""
    secret = tmp_path / "http-token"
    secret.write_text(CREDENTIAL)
    process = SidecarProcess(
        tmp_path / "s", opa.url, "--http-token-file", str(secret), "--http-body-timeout", "1"
    )
    with running(process) as sidecar:
        assert sidecar.http_port is not None
        sock = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5)
        sock.sendall(
            b"POST /ssf/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {CREDENTIAL}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"aud": "urn:rs:slow"'
        )
        started = time.monotonic()
        select.select([sock], [], [], 10)
        waited = time.monotonic() - started
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        streams = requests.get(sidecar.http + "/ssf/stream", headers=auth(), timeout=5).json()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body) == {"error": "invalid_request", "error_description": "body_timeout"}
    assert 0.9 <= waited <= 8, waited
    assert streams == []

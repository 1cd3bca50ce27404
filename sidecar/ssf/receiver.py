"""The resource server's side of Shared Signals: a stream whose events `sidecar.verify` keeps
in memory, so a revoked token is refused without asking the sidecar on each request.

    verifier = TokenVerifier(jwks_url, issuer, audience,
                             introspection_url=...,               # the fallback
                             signals=Subscription("http://127.0.0.1:9464", credential=...,
                                                  push_url="https://rs.example/ssf/events"))
    verifier.signals.start()        # creates (or re-attaches to) this receiver's stream
    app.router.add_post("/ssf/events", aiohttp_push_handler(verifier.signals))

Health: with polling (no `push_url`), every answered poll confirms the stream; with push, the
receiver asks for a verification event (SSF 1.0 §8.1.4) every `max_silence / 3` seconds, and
its arrival confirms every SET queued before it. A stream not confirmed for `max_silence`
seconds is unhealthy: the verifier then introspects each token (RFC 7662), and without
introspection refuses it (fail closed). Tokens issued before the receiver attached are
introspected once, since a revocation acknowledged by an earlier process is not in memory.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from .events import SESSION_REVOKED, TOKEN_REVOKED, VERIFICATION

log = logging.getLogger("jit_sidecar.ssf.receiver")

SET_CONTENT_TYPE = "application/secevent+jwt"
MAX_SET_BYTES = 16 * 1024
_SEEN_MAX = 100_000
_REVOKED_MAX = 1_000_000


class SetRejected(Exception):
    """A SET that will not be accepted; `err` is an RFC 8935 §2.3 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(f"{err}: {description}")
        self.err = err
        self.description = description


@dataclass(frozen=True, slots=True)
class Subscription:
    """How a verifier subscribes to a sidecar's revocations."""

    transmitter_url: str
    """The sidecar's HTTP listener, e.g. `http://127.0.0.1:9464`."""
    credential: str | Callable[[], str]
    """The sidecar's HTTP credential (`http_token_file`)."""
    push_url: str | None = None
    """Where the sidecar can reach this server's push endpoint; None: poll instead."""
    receiver: str = ""
    """This receiver's name (the stream's `aud`): one stream per receiver. Default: the push
    URL, or a name derived from the verifier's audience."""
    max_silence: float = 10.0
    """Seconds without a confirmation after which the stream counts as unhealthy. When
    polling, more than the transmitter's longest poll hold (5 s)."""


class SignalReceiver:
    """One receiver's stream: the revocations it heard of, and whether it can be trusted."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        audience: str,
        verify_set: Callable[[str, str], Mapping[str, Any]],
        http_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.subscription = subscription
        self.aud = subscription.receiver or subscription.push_url or f"urn:jit-receiver:{audience}"
        self._verify_set = verify_set
        self._timeout = http_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._http = requests.Session()
        self._revoked_jtis: OrderedDict[str, float] = OrderedDict()
        self._revoked_txns: OrderedDict[str, float] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._confirmed_at = float("-inf")
        self._verifications: OrderedDict[str, float] = OrderedDict()
        """state → when asked, of the verification events awaited (the last few)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.push_authorization = f"Bearer {secrets.token_urlsafe(32)}"
        """What the sidecar must send with each push (stream `authorization_header`)."""
        self.stream_id = ""
        self.since = float("inf")
        """The first whole second, on the transmitter's clock, after this receiver attached:
        a token whose `iat` is earlier may have been revoked before, unknown here."""
        self.replays = 0
        """SETs received again and ignored (RFC 8935 §2: acknowledged, not re-applied)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create this receiver's stream (or take over the one it already has) and start
        confirming it in the background."""
        self.stream_id = self._attach()
        self._thread = threading.Thread(target=self._run, name=f"ssf-{self.stream_id}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 10)
        self._http.close()

    def _headers(self) -> dict[str, str]:
        credential = self.subscription.credential
        value = credential() if callable(credential) else credential
        return {"Authorization": f"Bearer {value}", "Accept": "application/json"}

    def _url(self, path: str) -> str:
        return self.subscription.transmitter_url.rstrip("/") + path

    def _attach(self) -> str:
        if self.subscription.push_url:
            delivery = {
                "method": "urn:ietf:rfc:8935",
                "endpoint_url": self.subscription.push_url,
                "authorization_header": self.push_authorization,
            }
        else:
            delivery = {"method": "urn:ietf:rfc:8936"}
        config: dict[str, Any] = {"aud": self.aud, "delivery": delivery}
        response = self._http.post(
            self._url("/ssf/stream"), json=config, headers=self._headers(), timeout=self._timeout
        )
        if response.status_code == 409:  # SSF 1.0 §8.1.1.1: we have one already: take it over
            listing = self._http.get(
                self._url("/ssf/stream"), headers=self._headers(), timeout=self._timeout
            )
            listing.raise_for_status()
            existing = [s for s in listing.json() if s.get("aud") == self.aud]
            if not existing:
                response.raise_for_status()
            config["stream_id"] = existing[0]["stream_id"]
            response = self._http.put(
                self._url("/ssf/stream"),
                json=config,
                headers=self._headers(),
                timeout=self._timeout,
            )
        response.raise_for_status()
        # The transmitter's clock (RFC 9110 §6.6.1 Date, whole seconds) is the one that
        # stamps `iat`; ours may differ.
        try:
            attached = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            attached = self._clock()
        self.since = int(attached) + 1
        return str(response.json()["stream_id"])

    def _run(self) -> None:
        interval = self.subscription.max_silence / 3
        while not self._stop.is_set():
            try:
                if self.subscription.push_url:
                    self._ask_verification()
                    self._stop.wait(interval)
                else:
                    self._poll_once()
            except Exception as err:
                # Until the next confirmation the stream turns unhealthy: the verifier falls
                # back to introspection, so failing here is safe.
                log.warning("stream %s: %s", self.stream_id, type(err).__name__)
                self._stop.wait(min(1.0, interval))

    def _ask_verification(self) -> None:
        state = secrets.token_urlsafe(12)
        asked = self._clock()
        with self._lock:
            self._verifications[state] = asked
            while len(self._verifications) > 8:
                self._verifications.popitem(last=False)
        response = self._http.post(
            self._url("/ssf/verify"),
            json={"stream_id": self.stream_id, "state": state},
            headers=self._headers(),
            timeout=self._timeout,
        )
        response.raise_for_status()

    # ------------------------------------------------------------------ poll (RFC 8936)
    def _poll_once(self) -> None:
        acks: list[str] = []
        errors: dict[str, dict[str, str]] = {}
        more = True
        while more and not self._stop.is_set():
            asked = self._clock()
            response = self._http.post(
                self._url(f"/ssf/poll/{self.stream_id}"),
                json={"ack": acks, "setErrs": errors, "returnImmediately": False},
                headers=self._headers(),
                timeout=self._timeout + 25,
            )
            response.raise_for_status()
            body = response.json()
            acks, errors = [], {}
            for jti, token in body.get("sets", {}).items():
                try:
                    self.accept(token)
                    acks.append(jti)
                except SetRejected as err:
                    errors[jti] = {"err": err.err, "description": err.description}
            more = bool(body.get("moreAvailable")) or bool(acks) or bool(errors)
            with self._lock:
                # An answered poll hands out everything queued before it was asked.
                self._confirmed_at = max(self._confirmed_at, asked)

    # ------------------------------------------------------------------ push (RFC 8935)
    def handle_push(
        self, body: bytes, content_type: str, authorization: str
    ) -> tuple[int, dict[str, str] | None]:
        """(HTTP status, JSON body) for one pushed SET: 202, or 400/401 with an RFC 8935
        §2.3 error."""
        if not hmac.compare_digest(authorization.encode(), self.push_authorization.encode()):
            return 401, {"err": "authentication_failed", "description": "bad credential"}
        if content_type.split(";")[0].strip().lower() != SET_CONTENT_TYPE:
            return 400, {"err": "invalid_request", "description": f"send {SET_CONTENT_TYPE}"}
        if len(body) > MAX_SET_BYTES:
            return 400, {"err": "invalid_request", "description": "SET too large"}
        try:
            self.accept(body.decode("ascii"))
        except UnicodeDecodeError:
            return 400, {"err": "invalid_request", "description": "not a compact JWS"}
        except SetRejected as err:
            return 400, {"err": err.err, "description": err.description}
        return 202, None

    # ------------------------------------------------------------------ events
    def accept(self, token: str) -> None:
        """Verify one SET and apply it (once: a replay is acknowledged and ignored)."""
        claims = self._verify_set(token, self.aud)
        jti = claims["jti"]
        events = claims["events"]
        with self._lock:
            if jti in self._seen:
                self.replays += 1
                return
            self._seen[jti] = None
            while len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
            for event_type, event in events.items():
                self._apply(event_type, event, claims)

    def _apply(self, event_type: str, event: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
        if event_type == VERIFICATION:
            # Only a state we asked for counts: it proves the SETs queued before it arrived.
            asked = self._verifications.pop(str(event.get("state")), None)
            if asked is not None:
                self._confirmed_at = max(self._confirmed_at, asked)
            return
        # Remembered until the tokens concerned can no longer pass any check (bounded).
        if event_type == TOKEN_REVOKED and isinstance(event.get("jti"), str):
            _remember(self._revoked_jtis, event["jti"], self._clock())
        elif event_type == SESSION_REVOKED:
            session = claims.get("sub_id", {}).get("session", {})
            task_id = session.get("id") if isinstance(session, dict) else None
            if isinstance(task_id, str):
                _remember(self._revoked_txns, task_id, self._clock())

    # ------------------------------------------------------------------ verifier's view
    def healthy(self) -> bool:
        """Confirmed within `max_silence`: every revocation older than that is known here."""
        with self._lock:
            return self._clock() - self._confirmed_at <= self.subscription.max_silence

    def revoked(self, jti: str, txn: str) -> bool:
        with self._lock:
            return jti in self._revoked_jtis or (bool(txn) and txn in self._revoked_txns)


def _remember(table: OrderedDict[str, float], key: str, now: float) -> None:
    table[key] = now
    while len(table) > _REVOKED_MAX:
        table.popitem(last=False)


# ---------------------------------------------------------------------- push endpoints
def aiohttp_push_handler(receiver: SignalReceiver) -> Callable[[Any], Awaitable[Any]]:
    """An aiohttp handler for the push endpoint: `app.router.add_post(path, handler)`."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_SET_BYTES + 1)
        status, answer = receiver.handle_push(
            body, request.headers.get("Content-Type", ""), request.headers.get("Authorization", "")
        )
        return web.json_response(answer, status=status) if answer else web.Response(status=status)

    return handler


def _answer(
    status: int, answer: Mapping[str, str] | None
) -> tuple[str, list[tuple[str, str]], bytes]:
    reasons = {202: "202 Accepted", 400: "400 Bad Request", 401: "401 Unauthorized"}
    if answer is None:
        return reasons[status], [("Content-Length", "0")], b""
    data = json.dumps(answer).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    return reasons[status], headers, data


def wsgi_push_app(receiver: SignalReceiver) -> Callable[..., Iterable[bytes]]:
    """A WSGI application (PEP 3333) serving the push endpoint; mount it at the push path."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_SET_BYTES + 1)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        status, answer = receiver.handle_push(
            body, environ.get("CONTENT_TYPE", ""), environ.get("HTTP_AUTHORIZATION", "")
        )
        line, headers, data = _answer(status, answer)
        start_response(line, headers)
        return [data]

    return app


def asgi_push_app(receiver: SignalReceiver) -> Callable[..., Awaitable[None]]:
    """An ASGI 3 application serving the push endpoint; mount it at the push path."""

    async def app(
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_SET_BYTES or not message.get("more_body"):
                break
        status, answer = receiver.handle_push(
            body, headers.get("content-type", ""), headers.get("authorization", "")
        )
        _, header_list, data = _answer(status, answer)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in header_list],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app

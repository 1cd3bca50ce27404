"""The SSF transmitter: streams, SETs for every end of access, push and poll delivery.

The engine tells `Transmitter.access_ended` of every end of access before committing it; the
transmitter signs one SET per interested stream and queues them durably (`EventQueue`) in the
same call, so a SET is on disk before the RPC that ended the access returns. Push streams
(RFC 8935) each have one worker that posts their SETs one at a time, in order, backing off
while the receiver is down; poll streams (RFC 8936) hand them out on request. Either way a SET
stays queued until acknowledged, or until the tokens it speaks of have expired anyway (plus
`DELIVERY_GRACE`, which covers the verifiers' clock leeway).

On a fleet each sidecar is its own transmitter and emits only the ends of access it made
itself (each task and grant lives on exactly one sidecar, which also applies the fleet's
revocations to it), so a receiver with a stream on every sidecar hears of each end once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..clock import Clock, rfc3339
from ..config import _loopback_url
from ..events import Event, SsfStreamChanged
from ..metrics import Metrics
from ..model import AccessEnded
from ..tokens import KeyRing
from .events import (
    ACCESS_EVENTS,
    SET_TYPE,
    VERIFICATION,
    access_event,
    access_subject,
    set_claims,
    stream_subject,
)
from .queue import EventQueue, StoredStream

log = logging.getLogger("jit_sidecar.ssf")

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
DELIVERY_METHODS = (PUSH, POLL)
STATUSES = ("enabled", "paused", "disabled")
DELIVERY_GRACE = 60.0
"""Seconds a SET outlives the tokens it speaks of: verifiers accept tokens `leeway` (30 s by
default) past `exp`."""
PUSH_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 30.0
POLL_WAIT_MAX = 5.0
"""Longest a poll with `returnImmediately: false` is held open (RFC 8936 §2.1); receivers
that poll must allow more than this between answers before calling the stream unhealthy."""
MAX_POLL_EVENTS = 256
MAX_STREAMS = 64
_AUD_MAX = 512
_DESCRIPTION_MAX = 256
_STATE_MAX = 256
# RFC 8935 §2.3 error codes that say this SET will never be accepted: retrying is pointless.
_FINAL_PUSH_ERRORS = frozenset(
    {"invalid_request", "invalid_audience", "invalid_issuer", "access_denied"}
)


class StreamError(Exception):
    """A stream management or poll request that cannot be served (HTTP status, SSF error)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(slots=True, eq=False)  # hashed by identity
class _Stream:
    stored: StoredStream
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    depth: int = 0
    oldest: float | None = None

    @property
    def stream_id(self) -> str:
        return self.stored.stream_id

    @property
    def method(self) -> str:
        return str(self.stored.config["delivery"]["method"])

    def delivers(self, event_type: str) -> bool:
        return event_type in self.stored.config.get("events_delivered", ())


class Transmitter:
    """One sidecar's SSF transmitter (SSF 1.0 §7, §8)."""

    def __init__(
        self,
        *,
        issuer: str,
        keys: KeyRing,
        queue: EventQueue,
        metrics: Metrics,
        clock: Clock,
        record: Callable[[Sequence[Event]], Awaitable[None]],
    ) -> None:
        self.issuer = issuer
        self._keys = keys
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._record = record
        """Audits stream changes (the journal's commit): no audit record, no change."""
        self._streams: dict[str, _Stream] = {}
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        for stored in queue.streams():
            self._streams[stored.stream_id] = _Stream(stored)
            self._refresh(self._streams[stored.stream_id])

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT),
            headers={"Accept": "application/json"},
        )
        self._running = True
        for stream in self._streams.values():
            self._start_worker(stream)

    async def stop(self) -> None:
        self._running = False
        workers = [s.worker for s in self._streams.values() if s.worker is not None]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._queue.close()

    def _start_worker(self, stream: _Stream) -> None:
        if self._running and stream.method == PUSH and stream.worker is None:
            stream.worker = asyncio.get_running_loop().create_task(
                self._push_loop(stream), name=f"ssf-push-{stream.stream_id}"
            )

    # ------------------------------------------------------------------ events in
    def access_ended(self, ended: Sequence[AccessEnded]) -> None:
        """The engine's `on_access_ended`: one SET per end and stream, queued durably now."""
        now = self._clock.now()
        rows: list[tuple[str, str, str, float, float]] = []
        touched: list[_Stream] = []
        for stream in self._streams.values():
            if stream.stored.status == "disabled":
                continue  # SSF 1.0 §8.1.2: a disabled stream's events are not kept
            for end in ended:
                event_type, event = access_event(end)
                if not stream.delivers(event_type):
                    continue
                claims = set_claims(
                    issuer=self.issuer,
                    audience=stream.stored.aud,
                    event_type=event_type,
                    event=event,
                    subject=access_subject(end.task_id, end.subject),
                    iat=int(now),
                    txn=end.task_id,
                )
                token = self._keys.current.sign_typed(claims, SET_TYPE)
                rows.append(
                    (
                        stream.stream_id,
                        claims["jti"],
                        token,
                        now,
                        max(end.expires_at, now) + DELIVERY_GRACE,
                    )
                )
                touched.append(stream)
        if not rows:
            return
        try:
            self._queue.append(rows)
        except Exception:
            # The revocation itself holds; receivers fall back to introspection once their
            # stream looks unhealthy (no verification event arrives).
            log.exception("could not queue %d security event tokens", len(rows))
            for row in rows:
                self._metrics.ssf_events.labels(stream=row[0], result="lost").inc()
            return
        for row in rows:
            log.debug("security event queued", extra={"stream_id": row[0], "set_jti": row[1]})
        for stream in dict.fromkeys(touched):
            self._metrics.ssf_events.labels(stream=stream.stream_id, result="queued").inc(
                sum(1 for r in rows if r[0] == stream.stream_id)
            )
            self._refresh(stream)
            stream.wake.set()

    def _queue_control(self, stream: _Stream, event_type: str, event: Mapping[str, Any]) -> None:
        now = self._clock.now()
        claims = set_claims(
            issuer=self.issuer,
            audience=stream.stored.aud,
            event_type=event_type,
            event=event,
            subject=stream_subject(stream.stream_id),
            iat=int(now),
        )
        token = self._keys.current.sign_typed(claims, SET_TYPE)
        self._queue.append([(stream.stream_id, claims["jti"], token, now, now + DELIVERY_GRACE)])
        self._metrics.ssf_events.labels(stream=stream.stream_id, result="queued").inc()
        self._refresh(stream)
        stream.wake.set()

    def _refresh(self, stream: _Stream) -> None:
        stream.depth, stream.oldest = self._queue.depth(stream.stream_id)
        labels = {"stream": stream.stream_id}
        self._metrics.ssf_queue_depth.labels(**labels).set(stream.depth)
        # Read at scrape time: the oldest SET keeps ageing while its receiver is down.
        self._metrics.ssf_lag.labels(**labels).set_function(
            lambda: 0.0 if stream.oldest is None else max(0.0, self._clock.now() - stream.oldest)
        )

    # ------------------------------------------------------------------ push (RFC 8935)
    async def _push_loop(self, stream: _Stream) -> None:
        delay = BACKOFF_FIRST
        while True:
            stream.wake.clear()
            batch = (
                self._queue.pending(stream.stream_id, self._clock.now(), 32)
                if stream.stored.status == "enabled"
                else []
            )
            if not batch:
                self._refresh(stream)
                await stream.wake.wait()
                continue
            for item in batch:
                outcome = await self._post(stream, item.token)
                if outcome == "retry":
                    self._metrics.ssf_events.labels(stream=stream.stream_id, result="retried").inc()
                    self._refresh(stream)
                    # Full jitter (AWS architecture blog, "Exponential Backoff and Jitter").
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, BACKOFF_MAX)
                    break
                delay = BACKOFF_FIRST
                self._queue.ack(stream.stream_id, [item.jti])
                self._metrics.ssf_events.labels(stream=stream.stream_id, result=outcome).inc()
                self._refresh(stream)

    async def _post(self, stream: _Stream, token: str) -> str:
        """delivered, refused (the receiver will never take it) or retry."""
        assert self._session is not None
        headers = {"Content-Type": "application/secevent+jwt"}  # RFC 8935 §2
        if stream.stored.secret:
            headers["Authorization"] = stream.stored.secret
        url = str(stream.stored.config["delivery"]["endpoint_url"])
        try:
            async with self._session.post(url, data=token, headers=headers) as response:
                if response.status == 202:  # RFC 8935 §2.2
                    return "delivered"
                body: Any = None
                if response.status == 400:
                    with contextlib.suppress(ValueError, aiohttp.ClientError):
                        body = await response.json(content_type=None)
                err = body.get("err") if isinstance(body, dict) else None
                log.warning(
                    "push to stream %s answered %d %s",
                    stream.stream_id,
                    response.status,
                    err or "",
                    extra={"stream_id": stream.stream_id},
                )
                # RFC 8935 §2.3: a 400 with a final error code will not get better.
                return "refused" if err in _FINAL_PUSH_ERRORS else "retry"
        except (aiohttp.ClientError, TimeoutError) as error:
            log.debug("push to stream %s failed: %s", stream.stream_id, type(error).__name__)
            return "retry"

    # ------------------------------------------------------------------ poll (RFC 8936)
    async def poll(self, stream_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Acknowledge what the receiver says it has, then hand out the next SETs."""
        stream = self._get(stream_id)
        if stream.method != POLL:
            raise StreamError(400, "invalid_request", "this stream is delivered by push")
        ack = body.get("ack", [])
        errs = body.get("setErrs", {})
        max_events = body.get("maxEvents", MAX_POLL_EVENTS)
        immediately = body.get("returnImmediately", False)
        if (
            not _strings(ack)
            or not isinstance(errs, dict)
            or not isinstance(max_events, int)
            or isinstance(max_events, bool)
            or max_events < 0
            or not isinstance(immediately, bool)
        ):
            raise StreamError(400, "invalid_request", "not an RFC 8936 poll request")
        acked = self._queue.ack(stream_id, list(ack))
        refused = self._queue.ack(stream_id, [str(jti) for jti in errs])
        labels = self._metrics.ssf_events.labels
        if acked:
            labels(stream=stream_id, result="delivered").inc(acked)
        if refused:
            labels(stream=stream_id, result="refused").inc(refused)
        limit = min(max_events, MAX_POLL_EVENTS)
        pending = await self._pending_for_poll(stream, limit, immediately)
        self._refresh(stream)
        return {
            "sets": {p.jti: p.token for p in pending[:limit]},
            "moreAvailable": len(pending) > limit,
        }

    async def _pending_for_poll(self, stream: _Stream, limit: int, immediately: bool) -> list[Any]:
        if limit == 0 or stream.stored.status != "enabled":
            return []
        loop = asyncio.get_running_loop()
        until = loop.time() + POLL_WAIT_MAX
        while True:
            stream.wake.clear()
            pending = self._queue.pending(stream.stream_id, self._clock.now(), limit + 1)
            if pending or immediately or loop.time() >= until:
                return pending
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.wake.wait(), until - loop.time())

    # ------------------------------------------------------------------ management (§8.1)
    def configuration(self, base_url: str) -> dict[str, Any]:
        """Transmitter configuration metadata (SSF 1.0 §7.1)."""
        return {
            "spec_version": "1_0",
            "issuer": self.issuer,
            "jwks_uri": f"{base_url}/.well-known/jwks.json",
            "delivery_methods_supported": list(DELIVERY_METHODS),
            "configuration_endpoint": f"{base_url}/ssf/stream",
            "status_endpoint": f"{base_url}/ssf/status",
            "verification_endpoint": f"{base_url}/ssf/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
        }

    def streams(self) -> list[dict[str, Any]]:
        return [self._public(s) for s in self._streams.values()]

    def stream(self, stream_id: str) -> dict[str, Any]:
        return self._public(self._get(stream_id))

    async def create(self, body: Mapping[str, Any], base_url: str) -> dict[str, Any]:
        """SSF 1.0 §8.1.1.1: one stream per receiver (known by its `aud`)."""
        if len(self._streams) >= MAX_STREAMS:
            raise StreamError(429, "too_many_streams", f"at most {MAX_STREAMS} streams")
        stream_id = secrets.token_urlsafe(12)
        delivery, secret = _delivery(body.get("delivery"), stream_id, base_url)
        aud = body.get("aud")
        if aud is None:
            aud = delivery.get("endpoint_url") if delivery["method"] == PUSH else None
            aud = aud or f"urn:jit-sidecar:receiver:{stream_id}"
        if not isinstance(aud, str) or not 0 < len(aud) <= _AUD_MAX:
            raise StreamError(400, "invalid_request", "`aud` must be a string")
        if any(s.stored.aud == aud for s in self._streams.values()):
            raise StreamError(409, "stream_exists", "this receiver already has a stream")
        now = self._clock.now()
        stored = StoredStream(
            stream_id=stream_id,
            aud=aud,
            config=_config(body, stream_id, self.issuer, aud, delivery),
            secret=secret,
            status="enabled",
            reason="",
            created_at=now,
        )
        await self._audit("created", stored)
        self._queue.put_stream(stored, now)
        stream = self._streams[stream_id] = _Stream(stored)
        self._refresh(stream)
        self._start_worker(stream)
        return self._public(stream)

    async def update(
        self, body: Mapping[str, Any], base_url: str, *, replace_all: bool
    ) -> dict[str, Any]:
        """SSF 1.0 §8.1.1.3 (PATCH, `replace_all` False) and §8.1.1.4 (PUT)."""
        stream = self._get(_stream_id(body))
        old = stream.stored
        merged = dict(body) if replace_all else {**old.config, **body}
        if "delivery" in body:
            delivery, secret = _delivery(body["delivery"], old.stream_id, base_url)
        elif replace_all:
            raise StreamError(400, "invalid_request", "`delivery` is required")
        else:
            delivery, secret = dict(old.config["delivery"]), old.secret
        if merged.get("aud", old.aud) != old.aud:
            raise StreamError(400, "invalid_request", "`aud` cannot change")
        new = replace(
            old,
            config=_config(merged, old.stream_id, self.issuer, old.aud, delivery),
            secret=secret,
        )
        await self._audit("updated", new)
        self._queue.put_stream(new, self._clock.now())
        was_push = stream.method == PUSH
        stream.stored = new
        if was_push and stream.method != PUSH and stream.worker is not None:
            stream.worker.cancel()
            stream.worker = None
        self._start_worker(stream)
        stream.wake.set()
        return self._public(stream)

    async def delete(self, stream_id: str) -> None:
        """SSF 1.0 §8.1.1.5: the stream and its undelivered SETs are gone."""
        stream = self._get(stream_id)
        await self._audit("deleted", stream.stored)
        self._queue.delete_stream(stream_id)
        del self._streams[stream_id]
        if stream.worker is not None:
            stream.worker.cancel()
        for metric in (self._metrics.ssf_queue_depth, self._metrics.ssf_lag):
            with contextlib.suppress(KeyError):
                metric.remove(stream_id)
        for result in _RESULTS:
            with contextlib.suppress(KeyError):
                self._metrics.ssf_events.remove(stream_id, result)

    def status(self, stream_id: str) -> dict[str, Any]:
        """SSF 1.0 §8.1.2.1."""
        stored = self._get(stream_id).stored
        out = {"stream_id": stored.stream_id, "status": stored.status}
        if stored.reason:
            out["reason"] = stored.reason
        return out

    async def set_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """SSF 1.0 §8.1.2.2: enabled, paused (SETs are kept) or disabled (they are not)."""
        stream = self._get(_stream_id(body))
        status, reason = body.get("status"), body.get("reason", "")
        if status not in STATUSES:
            raise StreamError(400, "invalid_request", f"`status` must be one of {STATUSES}")
        if not isinstance(reason, str) or len(reason) > _DESCRIPTION_MAX:
            raise StreamError(400, "invalid_request", "`reason` must be a short string")
        new = replace(stream.stored, status=status, reason=reason)
        await self._audit("status_changed", new)
        self._queue.put_stream(new, self._clock.now())
        stream.stored = new
        if status == "disabled":
            self._queue.clear(stream.stream_id)
        self._refresh(stream)
        stream.wake.set()
        return self.status(stream.stream_id)

    def verify(self, body: Mapping[str, Any]) -> None:
        """SSF 1.0 §8.1.4.2: queue a verification event, behind every SET queued before it
        (so its arrival tells the receiver it has all of them)."""
        stream = self._get(_stream_id(body))
        state = body.get("state")
        if state is not None and (not isinstance(state, str) or len(state) > _STATE_MAX):
            raise StreamError(400, "invalid_request", "`state` must be a short string")
        if stream.stored.status == "disabled":
            raise StreamError(400, "invalid_request", "the stream is disabled")
        self._queue_control(stream, VERIFICATION, {"state": state} if state else {})

    # ------------------------------------------------------------------ helpers
    def _get(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id) if isinstance(stream_id, str) else None
        if stream is None:
            raise StreamError(404, "not_found", "no such stream")
        return stream

    def _public(self, stream: _Stream) -> dict[str, Any]:
        return dict(stream.stored.config)

    async def _audit(self, change: str, stored: StoredStream) -> None:
        delivery = stored.config["delivery"]
        await self._record(
            [
                SsfStreamChanged(
                    time=rfc3339(self._clock.now()),
                    stream_id=stored.stream_id,
                    change=change,
                    aud=stored.aud,
                    delivery_method=delivery["method"],
                    endpoint_url=delivery.get("endpoint_url"),
                    status=stored.status,
                    events_delivered=list(stored.config.get("events_delivered", ())),
                )
            ]
        )
        log.info(
            "stream %s %s",
            stored.stream_id,
            change.replace("_", " "),
            extra={"stream_id": stored.stream_id},
        )


_RESULTS = ("queued", "delivered", "retried", "refused", "lost")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _stream_id(body: Mapping[str, Any]) -> str:
    stream_id = body.get("stream_id")
    if not isinstance(stream_id, str) or not stream_id:
        raise StreamError(400, "invalid_request", "`stream_id` is required")
    return stream_id


def _delivery(raw: Any, stream_id: str, base_url: str) -> tuple[dict[str, Any], str]:
    """(receiver-visible delivery, push secret) from a request's `delivery` (SSF 1.0 §8.1.1)."""
    if raw is None:
        raw = {"method": POLL}
    if not isinstance(raw, dict) or raw.get("method") not in DELIVERY_METHODS:
        raise StreamError(
            400, "invalid_request", f"delivery.method must be one of {DELIVERY_METHODS}"
        )
    if raw["method"] == POLL:
        # The transmitter names the poll endpoint (SSF 1.0 §8.1.1, RFC 8936 §2).
        return {"method": POLL, "endpoint_url": f"{base_url}/ssf/poll/{stream_id}"}, ""
    url = raw.get("endpoint_url")
    if not isinstance(url, str) or len(url) > 2048:
        raise StreamError(400, "invalid_request", "push delivery needs `endpoint_url`")
    parts = urlsplit(url)
    if not parts.hostname or (parts.scheme != "https" and not _loopback_url(url)):
        # RFC 8935 §5.1: SETs travel over TLS; plain HTTP only on loopback.
        raise StreamError(400, "invalid_request", "endpoint_url must be https:// (or loopback)")
    secret = raw.get("authorization_header", "")
    if not isinstance(secret, str) or len(secret) > 4096 or "\n" in secret or "\r" in secret:
        raise StreamError(400, "invalid_request", "`authorization_header` must be one line")
    return {"method": PUSH, "endpoint_url": url}, secret


def _config(
    body: Mapping[str, Any],
    stream_id: str,
    issuer: str,
    aud: str,
    delivery: Mapping[str, Any],
) -> dict[str, Any]:
    """The stream configuration a receiver sees (SSF 1.0 §8.1.1); never the push secret."""
    requested = body.get("events_requested", list(ACCESS_EVENTS))
    if not _strings(requested) or len(requested) > 32:
        raise StreamError(400, "invalid_request", "`events_requested` must be a list of URIs")
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > _DESCRIPTION_MAX
    ):
        raise StreamError(400, "invalid_request", "`description` must be a short string")
    config: dict[str, Any] = {
        "stream_id": stream_id,
        "iss": issuer,
        "aud": aud,
        "events_supported": list(ACCESS_EVENTS),
        "events_requested": list(requested),
        "events_delivered": [e for e in ACCESS_EVENTS if e in requested],
        "delivery": dict(delivery),
    }
    if description is not None:
        config["description"] = description
    return config

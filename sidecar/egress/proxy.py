"""The egress proxy: an HTTP listener on loopback or a Unix socket that forwards an agent's
request to a named upstream only when the agent's grant covers it, with the upstream's
credential added on the way out (docs/brokers.md, "Secretless HTTP egress").

For `METHOD /<upstream>/<path>` with `Authorization: Bearer|DPoP <JIT token>`, in order:
1. the target is in canonical form (routes.py) and the framing unambiguous (hygiene.py): 400;
2. the upstream is configured: 404;
3. the token is one this sidecar signed and its grant is active now, from memory: 401;
   a token bound to a key (`cnf.jkt`) also needs a valid DPoP proof (RFC 9449 §7): 401;
4. the grant's audience is the upstream: 403;
5. the policy's route for the grant covers the method and path: 403 naming the grant;
6. the broker gives the upstream credential: 502 when it cannot;
7. forward over TLS without the agent's credential; stream the answer back (502 on a TLS or
   connection failure, 504 when the upstream stays silent).

Each request counts towards its grant (requests, bytes, denials); the counts go to the audit
log once, when the grant ends (`egress_usage`), not per request. When a grant ends, its
streams still in flight are cut at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from ..brokers import Broker, BrokerUnavailable, CredentialSpec, LeaseRequest
from ..brokers.oauth2 import OAuth2Broker
from ..clock import Clock, rfc3339
from ..dpop import DpopError, ReplayCache, verify_dpop_proof
from ..errors import PolicyError
from ..events import EgressUsage, Event
from ..metrics import Metrics
from .grants import ActiveGrant, GrantLookup
from .hygiene import Redactor, agent_response_headers, smuggling_problem, upstream_request_headers
from .routes import PathRefused, Route, RouteSource, parse_target
from .settings import EgressSettings, UpstreamSettings, ssl_context

log = logging.getLogger("jit_sidecar.egress")


class _NoDetail(logging.Filter):
    """aiohttp's server logs a refused request with a traceback quoting the offending header
    line, which may be the agent's Authorization: keep the exception's type, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            record.msg = f"{record.getMessage()} ({record.exc_info[0].__name__})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_server_log = logging.getLogger("jit_sidecar.egress.http")
_server_log.addFilter(_NoDetail())
OUTCOMES = (
    "forwarded",
    "bad_request",
    "unknown_upstream",
    "unauthenticated",
    "forbidden",
    "unavailable",
    "upstream_error",
    "cut",
    "internal",
)
"""The `outcome` label of jit_egress_requests_total."""
ENDED_REMEMBERED = 4096
CHUNK = 64 * 1024
MAX_TOKEN = 16 * 1024


class AuditSink(Protocol):
    """Where the per-grant counters go when a grant ends (the journal)."""

    async def commit(self, events: Sequence[Event]) -> None: ...


class _Refusal(Exception):
    """A request the proxy answers itself."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        outcome: str,
        grant: ActiveGrant | None = None,
        challenge: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.outcome = outcome
        self.grant = grant
        self.challenge = challenge


@dataclass(slots=True)
class _Usage:
    task_id: str
    subject: str
    upstream: str
    requests: int = 0
    denials: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    streams_cut: int = 0


class _InFlight:
    """One forwarded request of a grant, so that the grant's end can cut it."""

    __slots__ = ("cut_reason", "request", "task")

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.task = asyncio.current_task()
        self.cut_reason = ""

    def cut(self, reason: str) -> None:
        self.cut_reason = reason
        transport = self.request.transport
        if transport is not None:
            transport.close()  # the agent sees the stream end early, never a clean end
        if self.task is not None:
            self.task.cancel()


@dataclass(slots=True)
class _Upstream:
    settings: UpstreamSettings
    broker: Broker
    base: str
    """The base URL without a trailing slash."""
    spec: CredentialSpec
    session: aiohttp.ClientSession | None = None
    _secret: str = ""
    _inject: tuple[str, str] = ("", "")

    def inject(self, secret: str) -> tuple[str, str]:
        """The header carrying `secret`, made once per secret value (it rotates rarely)."""
        if secret != self._secret:
            s = self.settings
            self._inject = (s.header, s.format.replace("{secret}", secret))
            self._secret = secret
        return self._inject


class EgressProxy:
    def __init__(
        self,
        settings: EgressSettings,
        *,
        grants: GrantLookup,
        routes: RouteSource,
        brokers: Mapping[str, Broker],
        metrics: Metrics,
        audit: AuditSink,
        clock: Clock,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self.settings = settings
        self._grants = grants
        self._routes = routes
        self._metrics = metrics
        self._audit = audit
        self._clock = clock
        self._replay = replay_cache if replay_cache is not None else ReplayCache()
        self._upstreams = {
            name: _Upstream(s, brokers[name], s.url.rstrip("/"), CredentialSpec(brokers[name].name))
            for name, s in settings.upstreams.items()
        }
        self._route_cache: dict[str, Route | None] = {}
        self._usage: dict[str, _Usage] = {}
        self._inflight: dict[str, set[_InFlight]] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        """Recently ended grants (bounded): a route looked up while its grant ended is not
        cached."""
        self._records: set[asyncio.Task[None]] = set()
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None
        self._counted = {
            (u, o): metrics.egress_requests.labels(upstream=u, outcome=o)
            for u in (*self._upstreams, "")
            for o in OUTCOMES
        }
        self._latency = {u: metrics.egress_duration.labels(upstream=u) for u in self._upstreams}
        grants.on_end(self._grant_ended)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for upstream in self._upstreams.values():
            s = upstream.settings
            context: ssl.SSLContext | bool = ssl_context(s) if s.url.startswith("https:") else False
            upstream.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=256),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=s.connect_timeout, sock_read=s.timeout
                ),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # agents' cookies are theirs, not shared
            )
        # aiohttp's low-level server: every request goes to one handler, so an Application's
        # router, middlewares and request factory would be per-request cost for nothing.
        self._runner = web.ServerRunner(
            web.Server(self._handle, access_log=None, logger=_server_log),
            handle_signals=False,
        )
        await self._runner.setup()
        path = self.settings.unix_path
        site: web.BaseSite
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            site = web.UnixSite(self._runner, str(path))
            await site.start()
            os.chmod(path, 0o660)
        else:
            host, port = self.settings.host_port
            site = web.TCPSite(self._runner, host, port, reuse_address=True)
            await site.start()
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        log.info("egress proxy listening on %s", self.settings.listen)

    async def stop(self) -> None:
        # Streams would hold the listener's shutdown for its whole timeout: cut them now
        # (their grants stay active; the agents see the stream end early).
        for flights in list(self._inflight.values()):
            for flight in list(flights):
                flight.cut("sidecar_stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Grants still active keep their counts: record what they did so far.
        for grant_id in list(self._usage):
            self._record_usage(grant_id, "sidecar_stopped")
        if self._records:
            await asyncio.gather(*self._records, return_exceptions=True)
        for upstream in self._upstreams.values():
            if upstream.session is not None:
                await upstream.session.close()
            await upstream.broker.aclose()
        await self._routes.aclose()
        if self.settings.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.settings.unix_path.unlink()

    # ------------------------------------------------------------------ grant ends
    def _grant_ended(self, grant_id: str, reason: str) -> None:
        self._ended[grant_id] = reason
        if len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        self._route_cache.pop(grant_id, None)
        for flight in self._inflight.pop(grant_id, ()):
            usage = self._usage.get(grant_id)
            if usage is not None:
                usage.streams_cut += 1
            flight.cut(reason)
        if grant_id in self._usage:
            self._record_usage(grant_id, reason)

    def _record_usage(self, grant_id: str, reason: str) -> None:
        usage = self._usage.pop(grant_id)
        event = EgressUsage(
            time=rfc3339(self._clock.now()),
            task_id=usage.task_id,
            grant_id=grant_id,
            subject=usage.subject,
            upstream=usage.upstream,
            requests=usage.requests,
            denials=usage.denials,
            bytes_sent=usage.bytes_sent,
            bytes_received=usage.bytes_received,
            streams_cut=usage.streams_cut,
            reason=reason,
        )
        task = asyncio.ensure_future(self._commit(event))
        self._records.add(task)
        task.add_done_callback(self._records.discard)

    async def _commit(self, event: EgressUsage) -> None:
        try:
            await self._audit.commit([event])
        except Exception as err:  # the counts are lost, the access is not affected
            log.error(
                "could not record egress usage (%s)",
                type(err).__name__,
                extra={"grant_id": event.grant_id},
            )

    # ------------------------------------------------------------------ requests
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        upstream_name = ""
        grant: ActiveGrant | None = None
        try:
            target = parse_target(request.raw_path)
            upstream_name = target.upstream if target.upstream in self._upstreams else ""
            problem = smuggling_problem(request.headers, request.raw_headers)
            if problem:
                raise _Refusal(400, "bad_request", problem, outcome="bad_request")
            upstream = self._upstreams.get(target.upstream)
            if upstream is None:
                raise _Refusal(
                    404,
                    "unknown_upstream",
                    f"no upstream named {target.upstream}",
                    outcome="unknown_upstream",
                )
            grant = self._authenticate(request)
            if grant.audience != target.upstream:
                raise _Refusal(
                    403,
                    "audience_mismatch",
                    f"grant {grant.grant_id} is for {grant.audience}, not {target.upstream}",
                    outcome="forbidden",
                    grant=grant,
                )
            route = await self._route(grant)
            if route is None or not route.covers(request.method, target.segments):
                allowed = route.describe() if route is not None else "nothing on this proxy"
                raise _Refusal(
                    403,
                    "outside_grant",
                    f"grant {grant.grant_id} ({grant.action} on {grant.resource}) covers "
                    f"{allowed}, not {request.method} /{'/'.join(target.segments)}",
                    outcome="forbidden",
                    grant=grant,
                )
            return await self._forward(request, upstream, target.segments, target.query, grant)
        except PathRefused as err:
            return self._refuse(
                request, _Refusal(400, "bad_request", str(err), outcome="bad_request"), ""
            )
        except _Refusal as refusal:
            return self._refuse(request, refusal, upstream_name)
        except Exception:  # a bug: a clear 500, never a traceback to the agent
            log.exception("egress proxy failed", extra={"upstream": upstream_name})
            failure = _Refusal(500, "internal", "internal error", outcome="internal", grant=grant)
            return self._refuse(request, failure, upstream_name)
        finally:
            if upstream_name:
                self._latency[upstream_name].observe(time.perf_counter() - started)

    def _authenticate(self, request: web.BaseRequest) -> ActiveGrant:
        values = request.headers.getall("Authorization", ())
        if len(values) != 1:
            raise _Refusal(
                401,
                "token_missing",
                "send the JIT token: Authorization: Bearer <token> (or DPoP <token>)",
                outcome="unauthenticated",
                challenge='Bearer realm="jit-egress"',
            )
        scheme, _, token = values[0].partition(" ")
        scheme = scheme.lower()
        token = token.strip()
        if scheme not in ("bearer", "dpop") or not token or len(token) > MAX_TOKEN:
            raise _Refusal(
                401,
                "token_missing",
                "the Authorization header must be Bearer <token> or DPoP <token>",
                outcome="unauthenticated",
                challenge='Bearer realm="jit-egress", error="invalid_request"',
            )
        now = self._clock.now()
        grant = self._grants.active(token, now)
        if grant is None:
            why = self._grants.why_inactive(token, now)
            # RFC 6750 §3.1: invalid_token for an expired or revoked token.
            raise _Refusal(
                401,
                "grant_inactive" if why else "token_invalid",
                f"the grant ended ({why})" if why else "not an active token of this sidecar",
                outcome="unauthenticated",
                challenge='Bearer realm="jit-egress", error="invalid_token"',
            )
        if grant.cnf_jkt:
            # RFC 9449 §7.1: a bound token is presented with the DPoP scheme and a proof.
            try:
                if scheme != "dpop":
                    raise DpopError("dpop_required", "this token is bound: use DPoP <token>")
                verify_dpop_proof(
                    token,
                    request.headers.get("DPoP"),
                    request.method,
                    str(request.url),
                    token_claims=grant.claims,
                    replay_cache=self._replay,
                    now=now,
                )
            except DpopError as err:
                raise _Refusal(
                    401,
                    "dpop_invalid",
                    f"{err.reason}: {err.message}",
                    outcome="unauthenticated",
                    grant=grant,
                    challenge='DPoP realm="jit-egress", error="invalid_dpop_proof"',
                ) from err
        return grant

    async def _route(self, grant: ActiveGrant) -> Route | None:
        if grant.grant_id in self._route_cache:
            return self._route_cache[grant.grant_id]
        try:
            route = await self._routes.route(grant.action, grant.resource)
        except PolicyError as err:
            raise _Refusal(
                503,
                err.reason.value,
                f"the policy gave no egress route ({err.cause})",
                outcome="unavailable",
                grant=grant,
            ) from err
        if grant.grant_id not in self._ended:
            self._route_cache[grant.grant_id] = route
        return route

    async def _forward(
        self,
        request: web.BaseRequest,
        upstream: _Upstream,
        segments: tuple[str, ...],
        query: str,
        grant: ActiveGrant,
    ) -> web.StreamResponse:
        name = upstream.settings.name
        usage = self._usage_of(grant, name)
        usage.requests += 1
        try:
            credential = await upstream.broker.issue(
                LeaseRequest(
                    grant_id=grant.grant_id,
                    task_id=grant.task_id,
                    subject=grant.subject,
                    action=grant.action,
                    resource=grant.resource,
                    expires_at=grant.expires_at,
                ),
                upstream.spec,
            )
        except BrokerUnavailable as err:
            log.warning("egress credential unavailable: %s", err.message, extra={"upstream": name})
            raise _Refusal(
                502,
                "credential_unavailable",
                f"the credential for {name} is unavailable ({err.cause})",
                outcome="upstream_error",
                grant=grant,
            ) from err
        secret = credential.secret["value"]
        headers = upstream_request_headers(request.headers, upstream.inject(secret))
        url = URL(
            upstream.base + "/" + "/".join(segments) + ("?" + query if query else ""),
            encoded=True,
        )
        flight = _InFlight(request)
        self._inflight.setdefault(grant.grant_id, set()).add(flight)
        assert upstream.session is not None
        streaming: web.StreamResponse | None = None
        try:
            async with upstream.session.request(
                request.method,
                url,
                headers=headers,
                data=self._body(request, usage) if request.body_exists else None,
                allow_redirects=False,
            ) as answer:
                if answer.status == 401 and isinstance(upstream.broker, OAuth2Broker):
                    upstream.broker.invalidate(secret)
                headers = agent_response_headers(answer.headers, secret)
                redactor = Redactor(secret)
                length = answer.content_length
                if (
                    length is not None
                    and length <= CHUNK
                    and request.method != "HEAD"
                    and "Content-Encoding" not in answer.headers
                ):
                    # A small body whole: one write to the agent instead of head, chunk and
                    # end (the socket writes were half the proxy's CPU per request).
                    body = await answer.read()
                    usage.bytes_received += len(body)
                    body = redactor.feed(body) + redactor.flush()
                    self._note_echo(redactor, name, grant)
                    self._counted[name, "forwarded"].inc()
                    return web.Response(
                        status=answer.status, reason=answer.reason, headers=headers, body=body
                    )
                streaming = web.StreamResponse(
                    status=answer.status, reason=answer.reason, headers=headers
                )
                await streaming.prepare(request)
                async for chunk in answer.content.iter_chunked(CHUNK):
                    usage.bytes_received += len(chunk)
                    out = redactor.feed(chunk)
                    if out:
                        await streaming.write(out)
                tail = redactor.flush()
                if tail:
                    await streaming.write(tail)
                await streaming.write_eof()
                self._note_echo(redactor, name, grant)
                self._counted[name, "forwarded"].inc()
                return streaming
        except asyncio.CancelledError:
            if flight.cut_reason:
                self._counted[name, "cut"].inc()
                log.info(
                    "egress stream cut: grant ended (%s)",
                    flight.cut_reason,
                    extra={"upstream": name, "grant_id": grant.grant_id},
                )
            raise
        except (ssl.SSLError, aiohttp.ClientSSLError) as err:
            failure = self._upstream_failed(grant, name, "upstream_tls", err)
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            failure = self._upstream_failed(grant, name, "upstream_timeout", err, 504)
        except (aiohttp.ClientError, ConnectionError) as err:
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError from err  # the agent went away mid-stream
            failure = self._upstream_failed(grant, name, "upstream_unreachable", err)
        finally:
            flights = self._inflight.get(grant.grant_id)
            if flights is not None:
                flights.discard(flight)
                if not flights:
                    del self._inflight[grant.grant_id]
        if streaming is not None:
            # The head is sent: no error answer can follow. The agent must see the stream
            # break, never a clean end of a body that was cut short.
            self._counted[name, "upstream_error"].inc()
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        raise failure

    @staticmethod
    def _note_echo(redactor: Redactor, upstream: str, grant: ActiveGrant) -> None:
        if redactor.hits:
            log.warning(
                "upstream echoed the injected credential; masked",
                extra={"upstream": upstream, "grant_id": grant.grant_id},
            )

    async def _body(self, request: web.BaseRequest, usage: _Usage) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            usage.bytes_sent += len(chunk)
            yield chunk

    def _upstream_failed(
        self, grant: ActiveGrant, name: str, reason: str, err: BaseException, status: int = 502
    ) -> _Refusal:
        # The exception's text may name URLs or certificate details, never the credential;
        # only its type is logged all the same.
        log.warning(
            "egress upstream failed: %s (%s)",
            reason,
            type(err).__name__,
            extra={"upstream": name, "grant_id": grant.grant_id},
        )
        wording = {
            "upstream_tls": "TLS with the upstream failed (certificate not trusted or invalid)",
            "upstream_timeout": "the upstream did not answer in time",
            "upstream_unreachable": "the upstream could not be reached",
        }[reason]
        return _Refusal(status, reason, f"{name}: {wording}", outcome="upstream_error", grant=grant)

    def _usage_of(self, grant: ActiveGrant, upstream: str) -> _Usage:
        usage = self._usage.get(grant.grant_id)
        if usage is None:
            usage = self._usage[grant.grant_id] = _Usage(grant.task_id, grant.subject, upstream)
        return usage

    def _refuse(self, request: web.BaseRequest, refusal: _Refusal, upstream: str) -> web.Response:
        self._counted[upstream, refusal.outcome].inc()
        body: dict[str, Any] = {"error": refusal.reason, "error_description": refusal.message}
        grant = refusal.grant
        if grant is not None:
            body["grant_id"] = grant.grant_id
            if refusal.outcome not in ("upstream_error", "internal"):
                self._usage_of(grant, upstream or grant.audience).denials += 1
        headers = {"Cache-Control": "no-store"}
        if refusal.challenge:
            headers["WWW-Authenticate"] = refusal.challenge
        return web.Response(
            status=refusal.status,
            body=json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/json",
            headers=headers,
        )

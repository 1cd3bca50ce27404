"""The console's web server (aiohttp): pages, actions, login and live updates.

Every request passes, in order: the Host check (against DNS rebinding), the session, and
for anything that changes state the Origin check and the session's CSRF token. Roles are
enforced here, whatever the page showed. Every response carries a strict
Content-Security-Policy (no inline script or style). The sidecars enforce their own rules
again (four-eyes, one decision per approval, reason text).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..validation import APPROVAL_ID_RE
from . import views
from .auth import LoginError, OidcLogin, Session, Sessions, User
from .backend import BackendError, SidecarLink, open_links
from .settings import ConsoleSettings

log = logging.getLogger("jit_sidecar.console")
STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "jitc_session"
LOGIN_COOKIE = "jitc_login"
MAX_TEXT = 1000
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
REVOKE_KINDS = ("grant", "task", "subject")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_KEY = "jit_console_session"


class Refused(Exception):
    """A request the console itself refuses, with an HTTP status and a reason code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class Updates:
    """Looks at every sidecar each `interval` and tells subscribers (server-sent events)
    what changed: the pending approvals, and the live tasks and grants."""

    def __init__(self, links: Mapping[str, SidecarLink], interval: float) -> None:
        self._links = links
        self._interval = interval
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.state: dict[str, Any] = {"pending": 0, "approvals": [], "live": ""}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=16)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    async def look(self) -> None:
        pending: list[dict[str, str]] = []
        live = hashlib.sha256()
        for name, link in self._links.items():
            try:
                for a in await link.approvals():
                    pending.append(
                        {
                            "id": a.approval_id,
                            "subject": a.subject,
                            "action": a.intent.action,
                            "resource": a.intent.resource,
                        }
                    )
                for view in await link.tasks():
                    live.update(f"{name}/{view.task.task_id}".encode())
                    for g in view.grants:
                        live.update(g.grant_id.encode())
            except BackendError as err:
                live.update(f"{name}!{err.reason}".encode())
        known = {a["id"] for a in self.state["approvals"]}
        state = {"pending": len(pending), "approvals": pending, "live": live.hexdigest()[:16]}
        if state != self.state:
            new = [a for a in pending if a["id"] not in known]
            self.state = state
            self._publish({**state, "new": new})

    def _publish(self, message: dict[str, Any] | None) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    async def run(self) -> None:
        while True:
            if self._subscribers:  # nobody watching: the sidecars are left alone
                try:
                    await self.look()
                except Exception:
                    log.exception("looking at the sidecars failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="console-updates")

    async def stop(self) -> None:
        self._publish(None)  # every open stream ends
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Console:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.links = open_links(settings.sidecars)
        self.sessions = Sessions(settings.session_ttl)
        self.oidc = OidcLogin(settings) if settings.oidc_issuer else None
        self.updates = Updates(self.links, settings.poll_interval)
        self._host = urlsplit(settings.origin).netloc

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.on_response_prepare.append(self._headers)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/login", self.login)
        r.add_get("/login/oidc", self.login_oidc)
        r.add_get("/login/callback", self.login_callback)
        r.add_post("/login/token", self.login_token)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.approvals)
        r.add_post("/approvals/decide", self.decide)
        r.add_get("/live", self.live)
        r.add_get("/revoke", self.confirm_revoke)
        r.add_post("/revoke", self.revoke)
        r.add_get("/audit", self.audit)
        r.add_get("/audit/task", self.story)
        r.add_get("/events", self.events)
        r.add_static("/static", STATIC, append_version=False)
        return app

    async def _startup(self, app: web.Application) -> None:
        self.updates.start()

    async def _shutdown(self, app: web.Application) -> None:
        await self.updates.stop()
        for link in self.links.values():
            await link.close()
        if self.oidc is not None:
            await self.oidc.aclose()

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "same-origin"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            h["Cache-Control"] = "no-store"
        if self.settings.tls:
            h["Strict-Transport-Security"] = "max-age=31536000"

    # ------------------------------------------------------------------ guard
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        session: Session | None = None
        try:
            if request.host != self._host:  # DNS rebinding: another name for this address
                raise Refused(421, "wrong_host", f"this console answers as {self._host}")
            sid = request.cookies.get(SESSION_COOKIE, "")
            session = self.sessions.get(sid) if sid else None
            public = request.path in ("/healthz", "/login", "/login/oidc", "/login/callback")
            public = public or request.path.startswith("/static/")
            if request.method not in ("GET", "HEAD"):
                self._check_origin(request)
                if request.path != "/login/token":
                    if session is None:
                        raise Refused(401, "not_signed_in", "sign in first")
                    form = await request.post()
                    token = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
                    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
                        raise Refused(403, "csrf_token", "the form's CSRF token is not valid")
            elif not public and session is None:
                if request.path == "/events":
                    raise Refused(401, "not_signed_in", "sign in first")
                raise web.HTTPSeeOther("/login")
            if session is not None:
                request[SESSION_KEY] = session
            return await handler(request)
        except web.HTTPException:
            raise
        except Refused as err:
            return self._error(request, session, err.status, err.reason, err.message)
        except BackendError as err:
            return self._error(
                request, session, err.http_status, err.reason, f"{err.sidecar}: {err.message}"
            )
        except LoginError as err:
            log.warning("console sign-in failed: %s", err.message, extra={"reason": err.reason})
            page = views.login_page(
                oidc=self.oidc is not None,
                dev=bool(self.settings.dev_token),
                message=f"{err.message} ({err.reason})",
            )
            return web.Response(text=page, status=401, content_type="text/html")
        except Exception:
            log.exception("console request failed", extra={"reason": "internal"})
            return self._error(request, session, 500, "internal", "internal error")

    def _check_origin(self, request: web.Request) -> None:
        """A state-changing request must come from our own pages: its Origin (RFC 6454 §7,
        sent by browsers on every POST), else its Referer, must be this console's origin."""
        origin = request.headers.get("Origin")
        if origin is not None:
            if origin != self.settings.origin:
                raise Refused(403, "csrf_origin", "the request comes from another origin")
            return
        referer = request.headers.get("Referer", "")
        if not referer.startswith(self.settings.origin + "/"):
            raise Refused(403, "csrf_origin", "the request does not say where it comes from")

    def _error(
        self, request: web.Request, session: Session | None, status: int, reason: str, msg: str
    ) -> web.Response:
        if request.path == "/events" or request.headers.get("Accept") == "application/json":
            return web.json_response({"error": reason, "message": msg}, status=status)
        user = session.user if session else None
        page = views.error_page(user, session.csrf if session else "", status, reason, msg)
        return web.Response(text=page, status=status, content_type="text/html")

    def _page(
        self,
        request: web.Request,
        title: str,
        body: str,
        *,
        active: str = "",
        refresh: str = "",
    ) -> web.Response:
        if request.headers.get("X-Partial") == "main":
            return web.Response(text=body, content_type="text/html", headers={"Vary": "X-Partial"})
        session = _session(request)
        page = views.layout(
            title,
            body,
            user=session.user,
            csrf=session.csrf,
            active=active,
            refresh=refresh,
            pending=self.updates.state["pending"],
            live=self.updates.state["live"],
        )
        return web.Response(text=page, content_type="text/html", headers={"Vary": "X-Partial"})

    @staticmethod
    def _need(request: web.Request, role: str) -> Session:
        session = _session(request)
        if not session.user.can(role):
            raise Refused(403, "role_missing", f"this needs the {role} role")
        return session

    def _link(self, name: str) -> SidecarLink:
        link = self.links.get(name)
        if link is None:
            raise Refused(400, "unknown_sidecar", "no such sidecar")
        return link

    def _cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=self.settings.session_ttl,
            path="/",
            httponly=True,
            secure=self.settings.tls,
            samesite="Strict",
        )

    def _flash(self, request: web.Request) -> str:
        session = _session(request)
        message, session.flash = session.flash, ""
        return message

    # ------------------------------------------------------------------ login
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def login(self, request: web.Request) -> web.Response:
        if SESSION_KEY in request:
            raise web.HTTPSeeOther("/")
        page = views.login_page(oidc=self.oidc is not None, dev=bool(self.settings.dev_token))
        return web.Response(text=page, content_type="text/html")

    async def login_oidc(self, request: web.Request) -> web.Response:
        if self.oidc is None:
            raise Refused(404, "oidc_off", "no OIDC issuer is configured")
        pending = self.sessions.start_login()
        response = web.HTTPFound(await self.oidc.authorize_url(pending))
        # Lax, not Strict: it must come back on the issuer's (cross-site) redirect.
        response.set_cookie(
            LOGIN_COOKIE,
            pending.browser,
            max_age=600,
            path="/login/callback",
            httponly=True,
            secure=self.settings.tls,
            samesite="Lax",
        )
        raise response

    async def login_callback(self, request: web.Request) -> web.Response:
        if self.oidc is None:
            raise Refused(404, "oidc_off", "no OIDC issuer is configured")
        q = request.query
        if "error" in q:
            raise LoginError("issuer_refused", f"the issuer refused the sign-in ({q['error']})")
        browser = request.cookies.get(LOGIN_COOKIE, "")
        pending = self.sessions.finish_login(q.get("state", ""), browser)
        user = await self.oidc.exchange(q.get("code", ""), pending)
        response = web.Response(text=views.continue_page("/"), content_type="text/html")
        response.del_cookie(LOGIN_COOKIE, path="/login/callback")
        self._signed_in(user, response)
        return response

    async def login_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        dev = self.settings.dev_token
        if not dev or not hmac.compare_digest(token.encode(), dev.encode()):
            raise LoginError("token_invalid", "that credential is not valid")
        user = User(self.settings.dev_user, frozenset(self.settings.dev_roles), "dev")
        response = web.HTTPSeeOther("/")
        self._signed_in(user, response)
        raise response

    def _signed_in(self, user: User, response: web.StreamResponse) -> None:
        sid, _ = self.sessions.create(user)
        log.info(
            "console sign-in",
            extra={"user": user.name, "method": user.method, "roles": ",".join(sorted(user.roles))},
        )
        self._cookie(response, sid)

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # ------------------------------------------------------------------ approvals
    async def approvals(self, request: web.Request) -> web.Response:
        session = _session(request)
        items: list[tuple[str, Any]] = []
        errors = []
        for name, link in self.links.items():
            try:
                items.extend((name, a) for a in await link.approvals())
            except BackendError as err:
                errors.append(f"{name}: {err.message} ({err.reason})")
        items.sort(key=lambda item: item[1].created_at.ToNanoseconds())
        body = views.approvals_page(
            items,
            errors,
            session.user,
            session.csrf,
            many=len(self.links) > 1,
            flash=self._flash(request),
        )
        return self._page(request, "Approvals", body, active="approvals", refresh="approvals")

    async def decide(self, request: web.Request) -> web.Response:
        session = self._need(request, "approver")
        form = await request.post()
        link = self._link(str(form.get("sidecar", "")))
        approval_id = str(form.get("approval_id", ""))
        verdict = str(form.get("verdict", ""))
        reason = str(form.get("reason", "")).strip()
        if not APPROVAL_ID_RE.fullmatch(approval_id):
            raise Refused(400, "invalid_argument", "approval_id is malformed")
        if verdict not in ("approve", "deny"):
            raise Refused(400, "invalid_argument", "choose approve or deny")
        if len(reason) > MAX_TEXT:
            raise Refused(400, "invalid_argument", f"the comment is over {MAX_TEXT} characters")
        approve = verdict == "approve"
        await link.decide(approval_id, approve=approve, approver=session.user.name, reason=reason)
        log.info(
            "console decision",
            extra={"approval_id": approval_id, "user": session.user.name, "approved": approve},
        )
        session.flash = f"{'Approved' if approve else 'Denied'} {approval_id}."
        raise web.HTTPSeeOther("/")

    # ------------------------------------------------------------------ live
    async def live(self, request: web.Request) -> web.Response:
        session = _session(request)
        views_: list[tuple[str, Any]] = []
        recent: list[tuple[str, dict[str, Any]]] = []
        errors = []
        for name, link in self.links.items():
            try:
                views_.extend((name, v) for v in await link.tasks())
                records, _, _ = await link.audit(events=views.RECENT_EVENTS, limit=20)
                recent.extend((name, r) for r in records)
            except BackendError as err:
                errors.append(f"{name}: {err.message} ({err.reason})")
        recent.sort(key=lambda item: str(item[1].get("time", "")), reverse=True)
        body = views.live_page(
            views_,
            recent[:20],
            errors,
            session.user,
            many=len(self.links) > 1,
            flash=self._flash(request),
        )
        return self._page(request, "Live", body, active="live", refresh="live")

    def _revoke_args(self, data: Mapping[str, Any]) -> tuple[SidecarLink, str, str]:
        link = self._link(str(data.get("sidecar", "")))
        what = str(data.get("what", ""))
        target = str(data.get("target", ""))
        if what not in REVOKE_KINDS or not target or len(target) > 512:
            raise Refused(400, "invalid_argument", "choose a grant, a task or an agent")
        return link, what, target

    async def confirm_revoke(self, request: web.Request) -> web.Response:
        session = self._need(request, "operator")
        link, what, target = self._revoke_args(request.query)
        body = views.confirm_page(link.name, what, target, session.csrf)
        return self._page(request, "Confirm", body, active="live")

    async def revoke(self, request: web.Request) -> web.Response:
        session = self._need(request, "operator")
        form = await request.post()
        link, what, target = self._revoke_args(form)
        reason = str(form.get("reason", "")).strip()
        if not reason or len(reason) > MAX_TEXT:
            raise Refused(400, "invalid_argument", "give a reason (at most 1000 characters)")
        count = await link.revoke(what, target, f"{reason} (by {session.user.name})")
        log.info(
            "console revocation",
            extra={"scope": what, "user": session.user.name, "count": count},
        )
        session.flash = f"Revoked {count} grant(s) of {what} {target}."
        raise web.HTTPSeeOther("/live")

    # ------------------------------------------------------------------ audit
    async def audit(self, request: web.Request) -> web.Response:
        q = request.query
        names = list(self.links)
        chosen = q.get("sidecar", names[0])
        link = self._link(chosen)
        form = {k: q.get(k, "") for k in ("task", "agent", "grant", "since", "until")}
        form["sidecar"] = chosen
        errors: list[str] = []
        since = _parse_time(form["since"], errors, "From")
        until = _parse_time(form["until"], errors, "To")
        records: list[tuple[str, dict[str, Any]]] = []
        chains: dict[str, Any] = {}
        truncated = False
        if not errors:
            found, truncated, chain = await link.audit(
                task_id=form["task"],
                subject=form["agent"],
                grant_id=form["grant"],
                since=since,
                until=until,
                limit=200,
                verify=True,
            )
            records = [(chosen, r) for r in found]
            chains[chosen] = chain
        body = views.audit_page(names, form, records, chains, errors, truncated=truncated)
        return self._page(request, "Audit", body, active="audit")

    async def story(self, request: web.Request) -> web.Response:
        q = request.query
        link = self._link(q.get("sidecar", next(iter(self.links))))
        task_id = q.get("task", "")
        if not task_id or len(task_id) > 256:
            raise Refused(400, "invalid_argument", "name a task")
        records, _, chain = await link.audit(task_id=task_id, limit=1000, verify=True)
        body = views.story_page(link.name, task_id, records, chain)
        return self._page(request, f"Task {task_id}", body, active="audit")

    # ------------------------------------------------------------------ live updates
    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events (HTML Living Standard §9.2): one `update` per change."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue = self.updates.subscribe()
        try:
            await response.write(_sse({**self.updates.state, "new": []}))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if message is None:
                    break
                await response.write(_sse(message))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.updates.unsubscribe(queue)
        return response


def _session(request: web.Request) -> Session:
    session = request.get(SESSION_KEY)
    if not isinstance(session, Session):
        raise Refused(401, "not_signed_in", "sign in first")
    return session


def _sse(message: dict[str, Any]) -> bytes:
    return f"event: update\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _parse_time(value: str, errors: list[str], label: str) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors.append(f"{label}: not a date and time (e.g. 2026-11-30T10:00:00)")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


async def serve(settings: ConsoleSettings) -> None:
    """Run the console until SIGTERM or SIGINT."""
    console = Console(settings)
    runner = web.AppRunner(console.app(), access_log=None, handle_signals=False)
    await runner.setup()
    context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    await site.start()
    log.info(
        "jit-sidecar console on %s (sidecars: %s)",
        settings.origin,
        ", ".join(settings.sidecars),
        extra={"started": time.time()},
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await runner.cleanup()

"""The transmitter's HTTP endpoints on the sidecar's listener (SSF 1.0 §7, §8; RFC 8936).

    GET  /.well-known/ssf-configuration    transmitter metadata (public, SSF 1.0 §7.2)
    POST|GET|PATCH|PUT|DELETE /ssf/stream  stream management (SSF 1.0 §8.1.1)
    GET|POST /ssf/status                   stream status (SSF 1.0 §8.1.2)
    POST /ssf/verify                       verification event (SSF 1.0 §8.1.4)
    POST /ssf/poll/{stream_id}             poll delivery (RFC 8936)

Everything but the metadata needs the HTTP credential (`Authorization: Bearer …`, like
/introspect). Errors are JSON `{"error": code, "error_description": why}`. A body must
arrive within the listener's `http_body_timeout` (408 `body_timeout`, as on /introspect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import SidecarError
from .transmitter import StreamError, Transmitter

log = logging.getLogger("jit_sidecar.ssf")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(
    app: web.Application,
    transmitter: Transmitter,
    guarded: Callable[[Handler], Handler],
    *,
    body_timeout: float = 10.0,
) -> None:
    """Serve `transmitter` on `app`; `guarded` wraps a handler with the credential check;
    a request body gets `body_timeout` seconds to arrive."""

    def answers(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except StreamError as err:
                return web.json_response(
                    {"error": err.error, "error_description": err.description},
                    status=err.status,
                    # A body that never arrived leaves the connection unusable (as /introspect).
                    headers={"Connection": "close"} if err.status == 408 else None,
                )
            except SidecarError as err:
                # The audit log (or the queue) cannot record the change: nothing changed.
                return web.json_response(
                    {"error": "temporarily_unavailable", "error_description": err.reason.value},
                    status=503,
                    headers={"Retry-After": "1"},
                )
            except sqlite3.Error as err:
                log.error("the Shared Signals queue failed: %s", type(err).__name__)
                return web.json_response(
                    {"error": "temporarily_unavailable", "error_description": "store_unavailable"},
                    status=503,
                    headers={"Retry-After": "1"},
                )

        return guarded(wrapper)

    def base(request: web.Request) -> str:
        return str(request.url.origin())

    async def read_body(request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(body_timeout):
                return await request.read()
        except TimeoutError as err:
            raise StreamError(408, "invalid_request", "body_timeout") from err

    async def body(request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise StreamError(415, "invalid_request", "send application/json")
        raw = await read_body(request)
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise StreamError(400, "invalid_request", "the body is not JSON") from err
        if not isinstance(value, dict):
            raise StreamError(400, "invalid_request", "the body must be a JSON object")
        return value

    async def configuration(request: web.Request) -> web.Response:
        return web.json_response(transmitter.configuration(base(request)))

    async def create(request: web.Request) -> web.Response:
        # SSF 1.0 §8.1.1.1: 201 with the stream's configuration.
        return web.json_response(
            await transmitter.create(await body(request), base(request)), status=201
        )

    async def read(request: web.Request) -> web.Response:
        stream_id = request.query.get("stream_id")
        if stream_id is None:  # SSF 1.0 §8.1.1.2: every stream of the receiver
            return web.json_response(transmitter.streams())
        return web.json_response(transmitter.stream(stream_id))

    async def update(request: web.Request) -> web.Response:
        result = await transmitter.update(
            await body(request), base(request), replace_all=request.method == "PUT"
        )
        return web.json_response(result)

    async def delete(request: web.Request) -> web.Response:
        await transmitter.delete(request.query.get("stream_id", ""))
        return web.Response(status=204)

    async def read_status(request: web.Request) -> web.Response:
        return web.json_response(transmitter.status(request.query.get("stream_id", "")))

    async def update_status(request: web.Request) -> web.Response:
        return web.json_response(await transmitter.set_status(await body(request)))

    async def verify(request: web.Request) -> web.Response:
        transmitter.verify(await body(request))
        return web.Response(status=204)  # SSF 1.0 §8.1.4.2

    async def poll(request: web.Request) -> web.Response:
        raw = await read_body(request)
        request_body = await body(request) if raw else {}
        result = await transmitter.poll(request.match_info["stream_id"], request_body)
        return web.json_response(result)

    app.router.add_get("/.well-known/ssf-configuration", configuration)
    app.router.add_post("/ssf/stream", answers(create))
    app.router.add_get("/ssf/stream", answers(read))
    app.router.add_patch("/ssf/stream", answers(update))
    app.router.add_put("/ssf/stream", answers(update))
    app.router.add_delete("/ssf/stream", answers(delete))
    app.router.add_get("/ssf/status", answers(read_status))
    app.router.add_post("/ssf/status", answers(update_status))
    app.router.add_post("/ssf/verify", answers(verify))
    app.router.add_post("/ssf/poll/{stream_id}", answers(poll))

"""The AuthZEN and ARAP endpoints on the HTTP listener: routes, and handlers that only parse,
ask and format. Errors become 400 (AuthZEN §10.1.2) or RFC 9457 problem documents (ARAP
"Error Responses"), never a 500; X-Request-ID is echoed on every answer (§10.1.3)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..http_front import Answer, Front, Route
from ..metrics import Metrics
from .access_requests import AccessRequests
from .decider import OpaDecider
from .desk import AuthzenDesk
from .documents import (
    MAX_BODY_BYTES,
    canonical,
    compact,
    decode_json,
    parse_evaluation,
    parse_evaluations,
    read_json,
    request_id,
    valid_request_id,
)
from .errors import PROBLEM, BodyTimeout, Problem, Refused
from .evaluation import Evaluator

ACCESS_REQUEST_CAPABILITY = "urn:openid:authzen:capability:access-request"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Evaluation = Callable[[dict[str, Any], str | None, str], Awaitable[Any]]
"""(request document, X-Request-ID, base URL) → the answer document."""


class AuthzenService:
    """The AuthZEN and ARAP endpoints of one sidecar."""

    def __init__(
        self,
        desk: AuthzenDesk,
        opa: OpaDecider,
        metrics: Metrics,
        *,
        binding_key: bytes | None = None,
        body_timeout: float = 10.0,
    ):
        """`binding_key` MACs binding tokens: per process unless given, so a token from
        before a restart no longer binds (the PEP evaluates again). A request body gets
        `body_timeout` seconds (the listener's `http_body_timeout`), then 408."""
        self._opa = opa
        self._requests = AccessRequests(desk, binding_key)
        self._evaluator = Evaluator(desk, opa, self._requests, metrics)
        self._body_timeout = body_timeout

    # ------------------------------------------------------------------ routes
    def add_routes(self, app: web.Application, guarded: Callable[[Handler], Handler]) -> None:
        """Discovery is public metadata, like the JWKS; everything else needs the listener's
        credential (the one /introspect takes)."""
        app.router.add_get("/.well-known/authzen-configuration", self.configuration)
        app.router.add_post("/access/v1/evaluation", guarded(self._json(self.evaluation)))
        app.router.add_post("/access/v1/evaluations", guarded(self._json(self.evaluations)))
        app.router.add_post("/access/v1/requests", guarded(self._json(self.submit)))
        app.router.add_get("/access/v1/requests/{task_id}", guarded(self._json(self.status)))
        app.router.add_post(
            "/access/v1/requests/{task_id}/cancel", guarded(self._json(self.cancel))
        )

        async def close(_: web.Application) -> None:
            await self._opa.aclose()

        app.on_cleanup.append(close)

    def front(self, authorized: Callable[[str], bool]) -> Front:
        """The evaluation endpoints on the listener's lean path (sidecar/http_front.py): the
        same answers as through `add_routes`, for requests the front takes."""
        return Front(
            routes={
                b"/access/v1/evaluation": self._fast(self._evaluation),
                b"/access/v1/evaluations": self._fast(self._evaluations),
            },
            authorized=authorized,
            request_id_ok=valid_request_id,
            max_body=MAX_BODY_BYTES,
            body_timeout=self._body_timeout,
            body_timed_out=Answer(408, _refusal(BodyTimeout())),
        )

    @staticmethod
    def _fast(evaluate: Evaluation) -> Route:
        async def route(body: bytes, rid: str | None, base: str) -> Answer:
            try:
                answer = await evaluate(decode_json(body), rid, base)
            except Refused as err:
                return Answer(err.status, _refusal(err))
            return Answer(200, compact(answer).encode())

        return route

    def _json(
        self, handler: Callable[[web.Request, str | None], Awaitable[tuple[int, Any, str]]]
    ) -> Handler:
        """Errors become 400 (AuthZEN §10.1.2) or problem documents (ARAP "Error Responses"),
        never a 500 with a traceback; X-Request-ID is echoed on every answer (§10.1.3)."""

        async def wrapper(request: web.Request) -> web.StreamResponse:
            headers: dict[str, str] = {}
            try:
                rid = request_id(request)
                if rid is not None:
                    headers["X-Request-ID"] = rid
                status, body, location = await handler(request, rid)
            except Refused as err:
                if isinstance(err, BodyTimeout):
                    headers["Connection"] = "close"  # what is left of the body is not read
                return web.Response(
                    body=_refusal(err),
                    status=err.status,
                    content_type="application/json",
                    headers=headers,
                )
            except Problem as err:
                problem = {"type": PROBLEM + err.kind, "status": err.status, "detail": err.detail}
                return web.Response(
                    body=canonical(problem),
                    status=err.status,
                    content_type="application/problem+json",
                    headers=headers,
                )
            if location:
                headers["Location"] = location
            # The body as bytes: json_response would encode a str again, with a charset.
            return web.Response(
                body=compact(body).encode(),
                status=status,
                content_type="application/json",
                headers=headers,
            )

        return wrapper

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def configuration(self, request: web.Request) -> web.Response:
        """PDP metadata (AuthZEN §9.1, ARAP "Discovery"); `policy_decision_point` is the URL the PEP
        used, as §9.2.3 requires it to be identical."""
        base = self._base(request)
        return web.json_response(
            {
                "policy_decision_point": base,
                "access_evaluation_endpoint": base + "/access/v1/evaluation",
                "access_evaluations_endpoint": base + "/access/v1/evaluations",
                "access_request_endpoint": base + "/access/v1/requests",
                "capabilities": [ACCESS_REQUEST_CAPABILITY],
            }
        )

    # ------------------------------------------------------------------ evaluation
    async def evaluation(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        return 200, await self._evaluation(await self._read(request), rid, self._base(request)), ""

    async def evaluations(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        return 200, await self._evaluations(await self._read(request), rid, self._base(request)), ""

    async def _read(self, request: web.Request) -> dict[str, Any]:
        return await read_json(request, self._body_timeout)

    async def _evaluation(self, document: dict[str, Any], rid: str | None, base: str) -> Any:
        """AuthZEN §6: one Access Evaluation."""
        item = parse_evaluation(document)
        (decision,) = await self._evaluator.evaluate([item], "execute_all", rid, base)
        return decision

    async def _evaluations(self, document: dict[str, Any], rid: str | None, base: str) -> Any:
        """AuthZEN §7: Access Evaluations, or one evaluation when there are no items."""
        items, semantic = parse_evaluations(document)
        evaluate = self._evaluator.evaluate
        if items is None:  # §7.1: no items, so the request is a single evaluation
            (decision,) = await evaluate([parse_evaluation(document)], semantic, rid, base)
            return decision
        return {"evaluations": await evaluate(items, semantic, rid, base)}

    # ------------------------------------------------------------------ ARAP
    async def submit(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Access Request Endpoint": open an approval for a requestable denial."""
        document = await self._read(request)
        key = request.headers.get("Idempotency-Key")
        return await self._requests.submit(document, key, self._base(request))

    async def status(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Task Status Endpoint": the task's status."""
        record = self._requests.find(request.match_info["task_id"])
        return self._requests.task(record, self._base(request), 200)

    async def cancel(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Cancellation": cancel a pending request; recorded as a denial by `authzen-pep`."""
        record = self._requests.find(request.match_info["task_id"])
        given = (await self._read(request)).get("reason") if request.can_read_body else None
        await self._requests.cancel(record, given)
        return self._requests.task(record, self._base(request), 200)


def _refusal(err: Refused) -> bytes:
    """A refused evaluation's body: the error, its reason code and what went wrong."""
    body = {"error": err.error, "reason": err.reason, "error_description": err.description}
    return compact(body).encode()

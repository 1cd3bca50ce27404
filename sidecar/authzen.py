"""The OpenID AuthZEN Authorization API 1.0 on the HTTP listener, with the Access Request and
Approval Profile (ARAP, draft 1). See docs/authzen.md.

- `GET /.well-known/authzen-configuration`: PDP metadata (AuthZEN §9).
- `POST /access/v1/evaluation` and `/access/v1/evaluations` (§6, §7): each request's
  `subject`, `action`, `resource` and `context` go to OPA verbatim as the input at
  `--authzen-decision-path`; the policy answers `{"decision": bool, "context": {...}}`.
  Anything else is `{"decision": false}` with a reason in `context` (fail closed).
- `POST /access/v1/requests`, `GET /access/v1/requests/{id}`, `POST …/{id}/cancel` (ARAP
  "Access Request Endpoint", "Task Status Endpoint"): a requestable denial becomes an
  approval in the engine's approval desk; once an operator approves it, re-evaluating
  with `context.approval` answers true until `approved_until`.

Every decision is audited (`authzen_decision`, never a token) and counted
(`jit_authzen_evaluations_total{decision}`). Handlers only parse, ask and format: the
approval desk, the journal and the metrics come in through `AuthzenDesk`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ._http1 import Http1Pool, HttpError
from .approvals import Approval, ApprovalState
from .clock import Clock, rfc3339
from .engine import EngineSettings
from .errors import SidecarError
from .events import AuthzenDecided, Event
from .journal import CommitError
from .metrics import Metrics
from .model import Intent, PolicyDecision, Tier

log = logging.getLogger("jit_sidecar.authzen")

MAX_BODY_BYTES = 256 * 1024
MAX_EVALUATIONS = 256
MAX_STRING = 2048
MAX_REQUEST_ID = 256
#: Requestable denials and access requests remembered in memory (oldest dropped first).
MAX_REMEMBERED = 10_000
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
ACCESS_REQUEST_CAPABILITY = "urn:openid:authzen:capability:access-request"
PROBLEM = "urn:openid:authzen:access-request:error:"
#: The pseudo task of every AuthZEN approval in `jit-sidecar approvals list`: "/" is not
#: allowed in task ids, so no agent task can share it (and end, or contradict, its approvals).
AUTHZEN_TASK = "authzen/requests"
#: Access requests open (pending or approved) at once; more are refused with 429.
MAX_OPEN_REQUESTS = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Journal(Protocol):
    async def commit(self, events: Sequence[Event]) -> None: ...


class AuthzenDesk(Protocol):
    """What the endpoints need from the sidecar; the engine provides all of it."""

    @property
    def clock(self) -> Clock: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def settings(self) -> EngineSettings:
        """Of these, only `approval_ttl` (how long an access request waits for a decision)."""
        ...

    async def open_approval(
        self,
        subject: str,
        task_id: str,
        intent: Intent,
        digest: str,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> Approval: ...

    async def decide_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str
    ) -> Approval: ...


class BadRequest(Exception):
    """A request the sidecar will not evaluate: HTTP 400 with a reason code."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class Problem(Exception):
    """An ARAP error (ARAP "Error Responses"): an RFC 9457 problem document."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


# ====================================================================== request parsing
def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # RFC 8259 §6: NaN and Infinity are not numbers


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (AuthZEN §10.1: `application/json`, an object at the top)."""
    if request.content_type != "application/json":
        raise BadRequest("content_type", "the body must be application/json")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest("body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as err:
        raise BadRequest("not_utf8", "the body is not UTF-8 (RFC 8259 §8.1)") from err
    except (ValueError, RecursionError) as err:
        raise BadRequest("bad_json", "the body is not valid JSON") from err
    if not isinstance(document, dict):
        raise BadRequest("bad_json", "the body must be a JSON object")
    return document


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("invalid_request", f"`{where}` must be a non-empty string")
    if len(value) > MAX_STRING:
        raise BadRequest("invalid_request", f"`{where}` is longer than {MAX_STRING} characters")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("invalid_request", f"`{where}` must be an object")
    return value


def _entity(value: Any, where: str, keys: Sequence[str]) -> dict[str, Any]:
    """A Subject, Resource (`type`, `id`) or Action (`name`), §5.1-§5.3."""
    entity = _object(value, where)
    for key in keys:
        if key not in entity:
            raise BadRequest("invalid_request", f"`{where}.{key}` is required")
        _string(entity[key], f"{where}.{key}")
    if "properties" in entity:
        _object(entity["properties"], f"{where}.properties")
    return entity


ENTITIES = (("subject", ("type", "id")), ("action", ("name",)), ("resource", ("type", "id")))


def parse_evaluation(document: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """One Access Evaluation request (§6.1), checked; unknown members are left out (§10.1.1)."""
    request: dict[str, Any] = {}
    for name, keys in ENTITIES:
        if name not in document:
            raise BadRequest("invalid_request", f"`{where}{name}` is required")
        request[name] = _entity(document[name], where + name, keys)
    if "context" in document:
        request["context"] = _object(document["context"], where + "context")
    return request


def parse_evaluations(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """The items of an Access Evaluations request (§7.1), defaults applied (§7.1.1), and the
    semantic (§7.1.2.1). Items are None when `evaluations` is absent or empty: the request is
    then a single evaluation."""
    items = document.get("evaluations")
    options = _object(document.get("options", {}), "options")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in SEMANTICS:
        raise BadRequest(
            "invalid_request",
            "`options.evaluations_semantic` must be one of " + ", ".join(SEMANTICS),
        )
    if items is None or items == []:
        return None, semantic
    if not isinstance(items, list):
        raise BadRequest("invalid_request", "`evaluations` must be an array")
    if len(items) > MAX_EVALUATIONS:
        raise BadRequest("too_many_evaluations", f"at most {MAX_EVALUATIONS} evaluations")
    defaults = {
        k: document[k] for k in ("subject", "action", "resource", "context") if k in document
    }
    for name in defaults:
        _object(defaults[name], name)  # a default may be partial: items complete it
    parsed = []
    for i, item in enumerate(items):
        merged = {**defaults, **_object(item, f"evaluations[{i}]")}
        parsed.append(parse_evaluation(merged, f"evaluations[{i}]."))
    return parsed, semantic


def request_id(request: web.Request) -> str | None:
    """AuthZEN §10.1.3: the PEP's `X-Request-ID`, echoed on the response."""
    value = request.headers.get("X-Request-ID")
    if value is not None and (len(value) > MAX_REQUEST_ID or not value.isprintable()):
        raise BadRequest(
            "invalid_request_id",
            f"X-Request-ID must be at most {MAX_REQUEST_ID} printable characters",
        )
    return value


# ====================================================================== OPA
class OpaDecider:
    """Asks OPA for AuthZEN decisions: one Data API call per evaluation, and one ad-hoc query
    for a whole batch (`with input as` per item), so a batch costs one round trip. Answers
    are raw JSON values, checked by `check_decision`; None means no usable answer."""

    def __init__(self, url: str, path: str, timeout: float) -> None:
        self._pool = Http1Pool(url)
        self._path = "/v1/data/" + path
        self._ref = "data." + path.replace("/", ".")
        self._timeout = timeout

    async def _post(self, path: str, document: Any) -> tuple[int, Any]:
        body = json.dumps(document, separators=(",", ":")).encode()
        async with asyncio.timeout(self._timeout):
            response = await self._pool.request("POST", path, body)
        try:
            return response.status, json.loads(response.body)
        except (ValueError, RecursionError):
            return response.status, None

    async def decide(self, policy_input: dict[str, Any]) -> tuple[Any, str]:
        """(result, cause): result None when there is none, cause says why."""
        try:
            status, answer = await self._post(self._path, {"input": policy_input})
        except TimeoutError:
            return None, "timeout"
        except HttpError:
            return None, "unreachable"
        if status != 200:
            return None, "http_5xx" if status >= 500 else "http_4xx"
        if not isinstance(answer, dict):
            return None, "bad_json"
        if "result" not in answer:
            return None, "undefined"
        return answer["result"], ""

    async def decide_many(self, inputs: list[dict[str, Any]]) -> list[tuple[Any, str]]:
        query = (
            f"x := {{i: r | some i, item in input.evaluations; r := {self._ref} "
            "with input as item}"
        )
        try:
            status, answer = await self._post(
                "/v1/query", {"query": query, "input": {"evaluations": inputs}}
            )
        except TimeoutError:
            return [(None, "timeout")] * len(inputs)
        except HttpError:
            return [(None, "unreachable")] * len(inputs)
        if status != 200:
            # Ad-hoc queries refused (an OPA authorization policy), or one item's evaluation
            # failed the whole query: one call per item, so each gets its own answer.
            return list(await asyncio.gather(*(self.decide(i) for i in inputs)))
        try:
            results = answer["result"][0]["x"]
        except (TypeError, KeyError, IndexError):
            results = None
        if not isinstance(results, dict):
            return [(None, "bad_json")] * len(inputs)
        return [
            (results[str(i)], "") if str(i) in results else (None, "undefined")
            for i in range(len(inputs))
        ]

    async def aclose(self) -> None:
        await self._pool.aclose()


def check_decision(result: Any, cause: str) -> tuple[dict[str, Any], str]:
    """The policy's answer as an AuthZEN Decision (§5.5), or a fail-closed denial whose
    context says why; the second value is the error cause ('' when the answer was usable)."""
    if result is None:
        return _failed(cause or "undefined"), cause or "undefined"
    if not isinstance(result, dict) or not isinstance(result.get("decision"), bool):
        return _failed("shape"), "shape"
    decision: dict[str, Any] = {"decision": result["decision"]}
    if "context" in result:
        if not isinstance(result["context"], dict):
            return _failed("shape"), "shape"
        decision["context"] = result["context"]
    return decision, ""


def _failed(cause: str) -> dict[str, Any]:
    return {
        "decision": False,
        "context": {"reason": "policy_error", "cause": cause},
    }


# ====================================================================== ARAP state
def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bound_digest(request: Mapping[str, Any], context_names: Sequence[str]) -> str:
    """What a requestable denial and its approval are bound to (ARAP "Requestable Denial
    Context"; the exact-match baseline of "Completion Semantics"): subject, resource and
    action whole, and the members of the denied evaluation's context (`approval`
    excluded), so a submission may add members such as a justification but not change the
    ones policy saw."""
    context = request.get("context", {})
    material = {
        "subject": request["subject"],
        "resource": request["resource"],
        "action": request["action"],
        "context": {n: context.get(n) for n in context_names},
    }
    return hashlib.sha256(_canonical(material)).hexdigest()


def context_names(request: Mapping[str, Any]) -> list[str]:
    return sorted(n for n in request.get("context", {}) if n != "approval")


@dataclass(slots=True)
class Requestable:
    """A requestable denial this sidecar answered (ARAP "Evaluation Identifier")."""

    evaluation_id: str
    digest: str
    context_names: list[str]
    expires_at: float
    reason: str
    template: str


@dataclass(slots=True)
class AccessRequest:
    """An ARAP task: one approval in the engine's desk, bound to the denied request."""

    approval: Approval
    digest: str
    context_names: list[str]
    evaluation_id: str
    body_digest: str
    cancelled: bool = False


def task_status(record: AccessRequest, now: float) -> str:
    """The ARAP task status ("Task Status Values") of an approval, mapped from the desk's
    states as "Mapping Backend States" asks."""
    approval = record.approval
    if record.cancelled:
        return "cancelled"
    state = approval.state
    if state is ApprovalState.PENDING:
        return "expired" if approval.expires_at <= now else "pending"
    if state in (ApprovalState.APPROVED, ApprovalState.USED):
        return "approved"
    if state is ApprovalState.DENIED:
        return "denied"
    # EXPIRED: an approval decided `approved` stays approved (approved_until has passed);
    # one that lapsed before its expiry time was cancelled by the system (its task ended).
    if approval.decided_by:
        return "approved"
    return "cancelled" if approval.expires_at > now + 1 else "expired"


@dataclass(slots=True)
class _Memory:
    requestables: OrderedDict[str, Requestable] = field(default_factory=OrderedDict)
    requests: OrderedDict[str, AccessRequest] = field(default_factory=OrderedDict)
    idempotency: OrderedDict[str, str] = field(default_factory=OrderedDict)

    @staticmethod
    def keep(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > MAX_REMEMBERED:
            table.popitem(last=False)


# ====================================================================== the service
class AuthzenService:
    """The AuthZEN and ARAP endpoints of one sidecar."""

    def __init__(
        self,
        desk: AuthzenDesk,
        opa: OpaDecider,
        metrics: Metrics,
        *,
        binding_key: bytes | None = None,
    ):
        self._desk = desk
        self._opa = opa
        self._key = binding_key or secrets.token_bytes(32)
        """MACs binding tokens: per process unless given, so a token from before a restart
        no longer binds (the PEP evaluates again)."""
        self._memory = _Memory()
        counter = metrics.authzen_evaluations
        self._counted = {d: counter.labels(decision=d) for d in ("permit", "deny", "error")}

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

    def _json(
        self, handler: Callable[[web.Request, str | None], Awaitable[tuple[int, Any, str]]]
    ) -> Handler:
        """Errors become 400 (AuthZEN §10.1.2) or problem documents (ARAP "Error
        Responses"), never a 500 with a traceback; X-Request-ID is echoed on every answer
        (§10.1.3)."""

        async def wrapper(request: web.Request) -> web.StreamResponse:
            headers: dict[str, str] = {}
            try:
                rid = request_id(request)
                if rid is not None:
                    headers["X-Request-ID"] = rid
                status, body, location = await handler(request, rid)
            except BadRequest as err:
                return web.json_response(
                    {
                        "error": "invalid_request",
                        "reason": err.reason,
                        "error_description": err.description,
                    },
                    status=400,
                    headers=headers,
                )
            except Problem as err:
                problem = {"type": PROBLEM + err.kind, "status": err.status, "detail": err.detail}
                return web.Response(
                    body=_canonical(problem),
                    status=err.status,
                    content_type="application/problem+json",
                    headers=headers,
                )
            if location:
                headers["Location"] = location
            return web.json_response(body, status=status, headers=headers)

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
        item = parse_evaluation(await read_json(request))
        (decision,) = await self._evaluate([item], "execute_all", rid, self._base(request))
        return 200, decision, ""

    async def evaluations(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        document = await read_json(request)
        items, semantic = parse_evaluations(document)
        base = self._base(request)
        if items is None:  # §7.1: no items, so the request is a single evaluation
            (decision,) = await self._evaluate([parse_evaluation(document)], semantic, rid, base)
            return 200, decision, ""
        return 200, {"evaluations": await self._evaluate(items, semantic, rid, base)}, ""

    async def _evaluate(
        self, items: list[dict[str, Any]], semantic: str, rid: str | None, base: str
    ) -> list[dict[str, Any]]:
        """Decide, apply the semantic (§7.1.2.1), ARAP, then audit and count what is answered.
        OPA evaluates a whole batch in one round trip (it has no side effects); only the
        items up to a short-circuit are answered, audited and counted."""
        if len(items) == 1:
            answers = [await self._opa.decide(items[0])]
        else:
            answers = await self._opa.decide_many(items)
        now = self._desk.clock.now()
        decisions: list[dict[str, Any]] = []
        causes: list[str] = []
        for item, (result, cause) in zip(items, answers, strict=True):
            decision, failed = check_decision(result, cause)
            if not failed:
                decision = self._arap(item, decision, now, base)
            decisions.append(decision)
            causes.append(failed)
            stop = (semantic == "deny_on_first_deny" and not decision["decision"]) or (
                semantic == "permit_on_first_permit" and decision["decision"]
            )
            if stop:
                break
        if semantic == "deny_on_first_deny" and len(decisions) < len(items):
            # Say why the answer is short, as §7.1.2.1's example does (unless policy said why).
            last = decisions[-1].setdefault("context", {})
            if "reason" not in last:
                last.update(code="200", reason="deny_on_first_deny")
        try:
            await self._audit(items, decisions, causes, rid, now)
        except (CommitError, SidecarError):
            log.error("AuthZEN decisions could not be audited: all denied")
            decisions = [
                {"decision": False, "context": {"reason": "audit_unavailable"}} for _ in decisions
            ]
            causes = ["audit_unavailable"] * len(decisions)
        for decision, failed in zip(decisions, causes, strict=True):
            label = "error" if failed else ("permit" if decision["decision"] else "deny")
            self._counted[label].inc()
        return decisions

    async def _audit(
        self,
        items: list[dict[str, Any]],
        decisions: list[dict[str, Any]],
        causes: list[str],
        rid: str | None,
        now: float,
    ) -> None:
        events: list[Event] = []
        for item, decision, cause in zip(items, decisions, causes, strict=False):
            context = decision.get("context", {})
            approval = context.get("approval")
            reason = context.get("reason")
            approval_id = approval.get("id") if isinstance(approval, dict) else None
            events.append(
                AuthzenDecided(
                    time=rfc3339(now),
                    subject=_clip(item["subject"]["id"]),
                    authzen={
                        "subject_type": _clip(item["subject"]["type"]),
                        "action": _clip(item["action"]["name"]),
                        "resource_type": _clip(item["resource"]["type"]),
                        "resource": _clip(item["resource"]["id"]),
                    },
                    decision=decision["decision"],
                    request_id=_clip(rid) if rid else None,
                    reason=_clip(reason) if isinstance(reason, str) else None,
                    cause=cause or None,
                    evaluation_id=context.get("evaluation_id"),
                    approval_id=approval_id,
                )
            )
        await self._desk.journal.commit(events)

    # ------------------------------------------------------------------ ARAP
    def _arap(
        self, item: dict[str, Any], decision: dict[str, Any], now: float, base: str
    ) -> dict[str, Any]:
        """A denial the policy marks requestable (`context.access_request`) gets the binding
        material (ARAP "Requestable Denial Context"): an `evaluation_id`, an expiry and a
        binding token. With an approval reference (`context.approval`, ARAP "Completion
        Semantics") that applies, it becomes a permit."""
        context = decision.get("context", {})
        requestable = not decision["decision"] and isinstance(context.get("access_request"), dict)
        presented = item.get("context", {}).get("approval")
        if presented is None:
            return self._requestable(item, decision, now, base) if requestable else decision
        if decision["decision"]:
            return decision
        if not requestable:
            # An approval never overrides the rest of policy (ARAP "PDP Processing Rules").
            return _reevaluation_denial(decision, "policy_denied", "none")
        record = None
        if isinstance(presented, dict) and isinstance(presented.get("id"), str):
            record = self._memory.requests.get(presented["id"])
        if record is None:
            return _reevaluation_denial(decision, "approval_unverifiable", "none")
        if record.digest != bound_digest(item, record.context_names):
            fresh = self._requestable(item, decision, now, base)
            return _reevaluation_denial(fresh, "out_of_scope", "request")
        status = task_status(record, now)
        approval = record.approval
        if status == "approved" and approval.expires_at > now:
            return {
                "decision": True,
                "context": {
                    "approval": {
                        "id": approval.approval_id,
                        "approved_until": rfc3339(approval.expires_at),
                    }
                },
            }
        if status == "pending":
            denial = _reevaluation_denial(decision, "approval_pending", "retry")
            denial["context"]["retry_after"] = 5
            return denial
        if status == "denied":
            return _reevaluation_denial(decision, "approval_denied", "none")
        fresh = self._requestable(item, decision, now, base)
        return _reevaluation_denial(fresh, "approval_expired", "request")

    def _requestable(
        self, item: dict[str, Any], decision: dict[str, Any], now: float, base: str
    ) -> dict[str, Any]:
        context = dict(decision["context"])
        hint = dict(context["access_request"])
        evaluation_id = "eval_" + secrets.token_urlsafe(16)
        names = context_names(item)
        expires_at = now + self._desk.settings.approval_ttl
        digest = bound_digest(item, names)
        reason = context.get("reason")
        reason = reason if isinstance(reason, str) and reason else "approval_required"
        template = hint.get("template")
        template = template if isinstance(template, str) else ""
        hint.update(
            endpoint=base + "/access/v1/requests",
            expires_at=rfc3339(expires_at),
            binding_token=self._binding_token(evaluation_id, int(expires_at), names, digest),
        )
        context.update(
            reason=reason,
            evaluation_id=evaluation_id,
            evaluated_at=rfc3339(now),
            access_request=hint,
        )
        self._memory.keep(
            self._memory.requestables,
            evaluation_id,
            Requestable(evaluation_id, digest, names, expires_at, reason, template),
        )
        return {"decision": False, "context": context}

    def _binding_token(self, evaluation_id: str, exp: int, names: list[str], digest: str) -> str:
        """`payload.mac`: the payload names the evaluation, its expiry and the context members
        bound; the HMAC-SHA256 covers it and the bound request (ARAP "Binding Token
        Integrity": integrity protected, opaque to the PEP)."""
        payload = _b64(_canonical({"eid": evaluation_id, "exp": exp, "ctx": names}))
        mac = hmac.new(self._key, f"{payload}.{digest}".encode(), hashlib.sha256).digest()
        return f"{payload}.{_b64(mac)}"

    def _verify_binding(self, submission: dict[str, Any], denial: dict[str, Any]) -> Requestable:
        """The requestable denial a submission is bound to (ARAP "Access Request
        Submission"), or a Problem."""
        token = denial.get("binding_token")
        if isinstance(token, str):
            try:
                payload_b64, _, mac_b64 = token.partition(".")
                payload = json.loads(_unb64(payload_b64))
                eid, exp, names = payload["eid"], payload["exp"], payload["ctx"]
                mac = _unb64(mac_b64)
                if not (isinstance(eid, str) and isinstance(exp, int) and isinstance(names, list)):
                    raise ValueError("bad payload")
                names = [str(n) for n in names]
            except (ValueError, KeyError, TypeError) as err:
                raise Problem(400, "invalid_denial_binding", "malformed binding_token") from err
            digest = bound_digest(submission, names)
            expected = hmac.new(
                self._key, f"{payload_b64}.{digest}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(mac, expected):
                raise Problem(
                    400, "invalid_denial_binding", "the binding_token does not bind this request"
                )
            known = self._memory.requestables.get(eid)
            return known or Requestable(eid, digest, names, float(exp), "", "")
        eid = denial.get("evaluation_id")
        known = self._memory.requestables.get(eid) if isinstance(eid, str) else None
        if known is None:
            raise Problem(
                400, "invalid_denial_binding", "need a binding_token or a known evaluation_id"
            )
        if bound_digest(submission, known.context_names) != known.digest:
            raise Problem(
                400, "invalid_denial_binding", "the request differs from the denied evaluation"
            )
        return known

    async def submit(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Access Request Endpoint": open an approval for a requestable denial."""
        document = await read_json(request)
        if "items" in document:
            raise BadRequest("unsupported", "bundled access requests (`items`) are not supported")
        submission = parse_evaluation(document)
        denial = _object(document.get("denial"), "denial")
        body_digest = hashlib.sha256(_canonical(document)).hexdigest()
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            seen = self._memory.idempotency.get(key)
            if seen is not None:
                record = self._memory.requests.get(seen)
                if record is not None and record.body_digest != body_digest:
                    raise Problem(409, "duplicate_request", "Idempotency-Key reused")
                if record is not None:
                    return self._task(request, record, 200)
        bound = self._verify_binding(submission, denial)
        now = self._desk.clock.now()
        if now > bound.expires_at:
            raise Problem(410, "expired_denial", "the requestable denial has expired")
        if sum(r.approval.open for r in self._memory.requests.values()) >= MAX_OPEN_REQUESTS:
            raise Problem(429, "too_many_requests", f"{MAX_OPEN_REQUESTS} requests are open")
        context = submission.get("context", {})
        justification = context.get("business_justification", context.get("justification", ""))
        action = submission["action"]["name"]
        intent = Intent(
            action=action,
            resource=submission["resource"]["id"],
            justification=_clip(justification, 1024) if isinstance(justification, str) else "",
            context={
                "via": "authzen",
                "evaluation_id": bound.evaluation_id,
                "subject_type": _clip(submission["subject"]["type"]),
                "resource_type": _clip(submission["resource"]["type"]),
            },
        )
        config = self._desk.settings
        decision = PolicyDecision(
            allow=True,
            tier=Tier.JIT,
            approval_required=True,
            ttl_seconds=config.approval_ttl,
            audience="authzen",
            scope=(action,),
            reasons=(f"{bound.reason or 'approval_required'}: requested through AuthZEN",),
            cache_seconds=0,
            decision_id=bound.evaluation_id,
        )
        try:
            approval = await self._desk.open_approval(
                submission["subject"]["id"],
                AUTHZEN_TASK,
                intent,
                "authzen:" + bound.digest,
                config.approval_ttl,
                decision,
            )
        except (CommitError, SidecarError) as err:
            raise Problem(503, "unavailable", "the approval could not be recorded") from err
        record = AccessRequest(
            approval, bound.digest, bound.context_names, bound.evaluation_id, body_digest
        )
        self._memory.keep(self._memory.requests, approval.approval_id, record)
        if key is not None:
            self._memory.keep(self._memory.idempotency, key, approval.approval_id)
        return self._task(request, record, 202)

    def _task(
        self, request: web.Request, record: AccessRequest, status: int
    ) -> tuple[int, Any, str]:
        """The Task Handle (ARAP "Access Request Response"), with its result once approved
        ("Completed Task Response")."""
        approval = record.approval
        endpoint = f"{self._base(request)}/access/v1/requests/{approval.approval_id}"
        now = self._desk.clock.now()
        state = task_status(record, now)
        task: dict[str, Any] = {
            "id": approval.approval_id,
            "status": state,
            "status_endpoint": endpoint,
            "expires_at": rfc3339(approval.expires_at),
        }
        if state == "pending":
            task["links"] = {"cancel": endpoint + "/cancel"}
        body: dict[str, Any] = {"task": task}
        if state == "approved":
            body["result"] = {
                "mode": "reevaluate",
                "approval": {
                    "id": approval.approval_id,
                    "approved_until": rfc3339(approval.expires_at),
                },
            }
        elif state == "denied" and approval.decision_reason:
            body["result"] = {"reason": _clip(approval.decision_reason)}
        return status, body, endpoint if status in (201, 202) else ""

    def _record(self, request: web.Request) -> AccessRequest:
        record = self._memory.requests.get(request.match_info["task_id"])
        if record is None:
            raise Problem(404, "unknown_task", "no such access request")
        return record

    async def status(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Task Status Endpoint": the task's status."""
        return self._task(request, self._record(request), 200)

    async def cancel(self, request: web.Request, rid: str | None) -> tuple[int, Any, str]:
        """ARAP "Cancellation": cancel a pending request; recorded as a denial by `authzen-pep`."""
        record = self._record(request)
        reason = "cancelled by the PEP"
        if request.can_read_body:
            document = await read_json(request)
            given = document.get("reason")
            if isinstance(given, str) and given:
                reason = f"cancelled by the PEP: {_clip(given, 256)}"
        if task_status(record, self._desk.clock.now()) != "pending":
            raise Problem(409, "invalid_task_state", "the request is no longer pending")
        try:
            await self._desk.decide_approval(
                record.approval.approval_id, approve=False, approver="authzen-pep", reason=reason
            )
        except SidecarError as err:
            raise Problem(409, "invalid_task_state", err.message) from err
        except CommitError as err:
            raise Problem(503, "unavailable", "the cancellation could not be recorded") from err
        record.cancelled = True
        return self._task(request, record, 200)


def _reevaluation_denial(decision: dict[str, Any], reason: str, next_action: str) -> dict[str, Any]:
    """ARAP "Completion Semantics": a denied re-evaluation says what the PEP should do next."""
    context = dict(decision.get("context", {}))
    if next_action != "request":
        context.pop("access_request", None)
    context.update(reason=reason, next_action=next_action)
    return {"decision": False, "context": context}


def _clip(value: str, limit: int = 256) -> str:
    return value if len(value) <= limit else value[:limit] + "…"

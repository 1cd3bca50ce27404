"""Asks an Open Policy Agent server for decisions, and trusts nothing it answers unchecked.

The contract (docs/api.md, "Policy input"): POST `{"input": …}` to the decision path; the
`result` must be an object whose fields have exactly the documented types. Anything else —
no answer, a timeout, an HTTP error, invalid JSON, an undefined result, a wrong type — raises a
`PolicyError`, and the engine issues no token.

The client reaches OPA through a `Transport` (httpx's idea): `Http1Pool` in production, over
TCP, TLS or OPA's Unix socket; tests pass a transport that injects faults a real OPA cannot
produce on demand (tests/opa_transport.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ._http1 import Http1Pool, HttpError, Response
from .errors import PolicyResultInvalid, PolicyUnavailable, Reason
from .model import (
    MAX_LABEL_LEN,
    MAX_LABELS,
    MAX_PLAN_STEPS,
    FlowReport,
    Grant,
    Identity,
    Intent,
    PolicyDecision,
    Task,
    Tier,
    intent_input,
)

MAX_REASONS = 32
MAX_REASON_LEN = 512
MAX_SCOPE = 32
MAX_CREDENTIAL_MEMBERS = 16
_BROKER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_OWNERS = 32
_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""Built once (`json.dumps` with arguments builds an encoder per call): the OPA input."""
CAUSES: dict[Reason, tuple[str, ...]] = {
    Reason.POLICY_UNAVAILABLE: ("unreachable", "timeout", "http_5xx"),
    Reason.POLICY_RESULT_INVALID: ("http_4xx", "bad_json", "undefined", "shape"),
}
"""Every `cause` a PolicyError of each reason carries (the labels of jit_policy_errors_total)."""


class Transport(Protocol):
    """One HTTP exchange with OPA. Raises `HttpError` when there is no usable response; the
    caller bounds each call with its own timeout."""

    async def request(self, method: str, path: str, body: bytes = b"") -> Response: ...

    async def aclose(self) -> None: ...


class PolicyEngine(Protocol):
    async def decide(self, policy_input: dict[str, Any]) -> PolicyDecision: ...

    async def may_act(self, policy_input: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
        """May `input.identity` act for `input.principal`? (allowed, reasons)"""
        ...

    async def evaluate_plan(self, policy_input: dict[str, Any]) -> list[PolicyDecision]:
        """The decision of each step of `input.task.plan`, in one query."""
        ...

    async def healthy(self) -> bool: ...

    async def revision(self) -> str: ...

    async def aclose(self) -> None: ...


def build_input(
    identity: Identity,
    intent: Intent,
    task: Task,
    grants: Sequence[Grant],
    ttl_seconds: int,
    now: float,
) -> dict[str, Any]:
    """The `input` of one RequestGrant (docs/policy-authoring.md, "The input document")."""
    from .clock import rfc3339

    return {
        "identity": identity.as_input(),
        "intent": intent_input(intent),
        "task": {
            "id": task.task_id,
            "goal": task.goal,
            "labels": dict(task.labels),
            "age_seconds": int(now - task.started_at),
            "remaining_seconds": max(0, int(task.deadline - now)),
            "grants": [
                {"action": g.action, "resource": g.resource, "tier": g.tier.value} for g in grants
            ],
            # history, history_dropped, flow_labels, denials, plan (model.TaskFlow)
            **task.flow.as_input(),
        },
        "request": {"ttl_seconds": ttl_seconds, "time": rfc3339(now)},
        # The person the task acts for, or null: the agent acts on its own (docs/delegation.md).
        "principal": task.principal.as_input() if task.principal is not None else None,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any, field: str, *, limit: int, max_len: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise PolicyResultInvalid(f"`{field}` must be a list of at most {limit} strings", "shape")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > max_len:
            raise PolicyResultInvalid(f"`{field}` must hold non-empty strings", "shape")
    return tuple(value)


def _document(body: bytes, rule: str) -> tuple[Any, str]:
    """OPA's `result` and `decision_id`."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: nesting deeper than the parser's stack is garbage too, not a crash.
        raise PolicyResultInvalid("OPA answered something that is not JSON", "bad_json") from err
    if not isinstance(document, dict):
        raise PolicyResultInvalid("OPA's answer is not a JSON object", "shape")
    if "result" not in document:
        raise PolicyResultInvalid(
            f"the {rule} is undefined: is `package jit` with a `{rule}` rule loaded?",
            "undefined",
        )
    decision_id = document.get("decision_id", "")
    return document["result"], decision_id if isinstance(decision_id, str) else ""


def parse_flow(result: dict[str, Any]) -> FlowReport | None:
    """The decision's `flow` (model.FlowReport), type-checked; None when the policy sent none
    (a policy written before flows, or an input without history)."""
    if "flow" not in result:
        return None
    flow = result["flow"]
    if not isinstance(flow, dict):
        raise PolicyResultInvalid("`flow` must be an object", "shape")
    cls = flow.get("class", "")
    if not isinstance(cls, str) or len(cls) > MAX_LABEL_LEN:
        raise PolicyResultInvalid("`flow.class` must be a short string", "shape")
    deviation = flow.get("plan_deviation", False)
    if not isinstance(deviation, bool):
        raise PolicyResultInvalid("`flow.plan_deviation` must be a boolean", "shape")

    def labels(name: str) -> tuple[str, ...]:
        return _strings(flow.get(name, []), f"flow.{name}", limit=MAX_LABELS, max_len=MAX_LABEL_LEN)

    return FlowReport(
        cls=cls,
        labels=labels("labels"),
        task_labels=labels("task_labels"),
        rules=labels("rules"),
        plan_deviation=deviation,
    )


def parse_decision(body: bytes, *, action: str) -> PolicyDecision:
    """Type-check OPA's answer. `action` is the default scope when the policy names none."""
    result, decision_id = _document(body, "decision")
    return decision_from_result(result, action=action, decision_id=decision_id)


def parse_plan(body: bytes, *, actions: list[str]) -> list[PolicyDecision]:
    """Type-check OPA's `plan_evaluation`: one decision per step of the plan, in order."""
    result, decision_id = _document(body, "plan_evaluation")
    steps = result.get("steps") if isinstance(result, dict) else None
    if not isinstance(steps, list) or len(steps) != len(actions):
        raise PolicyResultInvalid("`steps` must hold one decision per step of the plan", "shape")
    return [
        decision_from_result(step, action=action, decision_id=decision_id)
        for step, action in zip(steps, actions, strict=True)
    ]


def decision_from_result(result: Any, *, action: str, decision_id: str = "") -> PolicyDecision:
    """Type-check one decision object (docs/policy-authoring.md, "The decision contract")."""
    if not isinstance(result, dict):
        raise PolicyResultInvalid("the decision is not an object", "shape")
    allow = result.get("allow")
    if not isinstance(allow, bool):
        raise PolicyResultInvalid("`allow` must be a boolean", "shape")
    reasons = _strings(
        result.get("reasons", []), "reasons", limit=MAX_REASONS, max_len=MAX_REASON_LEN
    )
    approval_required = result.get("approval_required", False)
    if not isinstance(approval_required, bool):
        raise PolicyResultInvalid("`approval_required` must be a boolean", "shape")
    if not allow:
        return PolicyDecision(
            allow=False,
            tier=None,
            approval_required=False,
            ttl_seconds=0,
            audience="",
            scope=(),
            reasons=reasons,
            cache_seconds=0,
            decision_id=decision_id,
            flow=parse_flow(result),
        )
    try:
        tier = Tier(str(result.get("tier")))
    except ValueError as err:
        raise PolicyResultInvalid(
            "an allowed decision needs `tier` standing or jit", "shape"
        ) from err
    ttl = result.get("ttl_seconds")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise PolicyResultInvalid("an allowed decision needs integer `ttl_seconds` >= 1", "shape")
    audience = result.get("audience")
    if not isinstance(audience, str) or not audience or len(audience) > 256:
        raise PolicyResultInvalid("an allowed decision needs a non-empty `audience`", "shape")
    scope = (
        _strings(result["scope"], "scope", limit=MAX_SCOPE, max_len=256)
        if "scope" in result
        else (action,)
    )
    if not scope:
        raise PolicyResultInvalid("`scope` must not be empty", "shape")
    if any(" " in s for s in scope):
        raise PolicyResultInvalid("scope values must not contain spaces", "shape")
    cache_seconds = result.get("cache_seconds", 0)
    if not _is_int(cache_seconds) or cache_seconds < 0:
        raise PolicyResultInvalid("`cache_seconds` must be an integer >= 0", "shape")
    credential = _credential(result["credential"]) if "credential" in result else None
    four_eyes = result.get("four_eyes", False)
    if not isinstance(four_eyes, bool):
        raise PolicyResultInvalid("`four_eyes` must be a boolean", "shape")
    owners = _strings(result.get("owners", []), "owners", limit=MAX_OWNERS, max_len=256)
    return PolicyDecision(
        allow=True,
        tier=tier,
        approval_required=approval_required,
        ttl_seconds=ttl,
        audience=audience,
        scope=scope,
        reasons=reasons,
        cache_seconds=cache_seconds if tier is Tier.STANDING else 0,
        decision_id=decision_id,
        credential=credential,
        four_eyes=four_eyes,
        owners=owners,
        flow=parse_flow(result),
    )


def _credential(value: Any) -> dict[str, Any]:
    """The generic shape of a decision's `credential` object (docs/brokers.md): a small
    object naming its broker, whose members are strings, integers or lists of strings. The
    named broker's `parse` then checks its contents exactly (sidecar.engine.credentials)."""
    if not isinstance(value, dict) or not value or len(value) > MAX_CREDENTIAL_MEMBERS:
        raise PolicyResultInvalid(
            f"`credential` must be an object of 1..{MAX_CREDENTIAL_MEMBERS} members", "shape"
        )
    broker = value.get("broker")
    if not isinstance(broker, str) or not _BROKER_NAME.fullmatch(broker):
        raise PolicyResultInvalid("`credential.broker` must name a broker", "shape")
    for key, member in value.items():
        if len(key) > 64:
            raise PolicyResultInvalid("`credential` member names are at most 64 chars", "shape")
        if isinstance(member, list):
            _strings(member, f"credential.{key}", limit=MAX_SCOPE, max_len=256)
        elif not (isinstance(member, str) and len(member) <= 256) and not _is_int(member):
            raise PolicyResultInvalid(
                f"`credential.{key}` must be a string, an integer or a list of strings", "shape"
            )
    return value


def parse_may_act(body: bytes) -> tuple[bool, tuple[str, ...]]:
    """Type-check OPA's `may_act` answer; anything else is a PolicyResultInvalid."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise PolicyResultInvalid("OPA answered something that is not JSON", "bad_json") from err
    result = document.get("result") if isinstance(document, dict) else None
    if result is None:
        raise PolicyResultInvalid(
            "may_act is undefined: is rego/jit/delegation.rego loaded?", "undefined"
        )
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
        raise PolicyResultInvalid("may_act must be an object with a boolean `allow`", "shape")
    reasons = _strings(
        result.get("reasons", []), "reasons", limit=MAX_REASONS, max_len=MAX_REASON_LEN
    )
    return result["allow"], reasons


class OpaClient:
    """PolicyEngine backed by an OPA server's Data API."""

    def __init__(
        self,
        url: str,
        decision_path: str,
        timeout: float,
        *,
        transport: Transport | None = None,
        batch_path: str = "",
    ) -> None:
        """`batch_path`: the Data API path deciding a list of inputs at once (rego/jit/
        batch.rego); empty when the policy offers none."""
        self._transport: Transport = transport if transport is not None else Http1Pool(url)
        self._path = decision_path
        self._batch_path = batch_path
        self._timeout = timeout
        self.last_latency = 0.0

    async def decide(self, policy_input: dict[str, Any]) -> PolicyDecision:
        response = await self._post(self._path, policy_input)
        return parse_decision(response.body, action=policy_input["intent"]["action"])

    async def evaluate_plan(self, policy_input: dict[str, Any]) -> list[PolicyDecision]:
        """`plan_evaluation`, next to the decision in its package (plans.rego)."""
        plan = policy_input["task"]["plan"]
        if len(plan) > MAX_PLAN_STEPS:
            raise PolicyResultInvalid("the plan has too many steps", "shape")
        response = await self._post(self._path.rsplit("/", 1)[0] + "/plan_evaluation", policy_input)
        return parse_plan(response.body, actions=[step["action"] for step in plan])

    async def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[PolicyDecision] | None:
        """One evaluation deciding every input, in order; None when the policy offers no
        batch entrypoint (no `batch_path`, or its document is undefined), so the caller asks
        once per input. Any other bad answer is a PolicyError for the whole batch."""
        if not self._batch_path:
            return None
        response = await self._post(self._batch_path, {"batch": list(inputs)})
        try:
            document = json.loads(response.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise PolicyResultInvalid(
                "OPA answered something that is not JSON", "bad_json"
            ) from err
        if not isinstance(document, dict):
            raise PolicyResultInvalid("OPA's answer is not a JSON object", "shape")
        if "result" not in document:
            self._batch_path = ""  # this policy has no batch entrypoint: stop asking
            return None
        results = document["result"]
        if not isinstance(results, list) or len(results) != len(inputs):
            raise PolicyResultInvalid("the batch decision is not one object per input", "shape")
        decision_id = document.get("decision_id", "")
        if not isinstance(decision_id, str):
            decision_id = ""
        return [
            decision_from_result(r, action=i["intent"]["action"], decision_id=decision_id)
            for r, i in zip(results, inputs, strict=True)
        ]

    async def explain(
        self, policy_input: dict[str, Any], *, trace: bool = False
    ) -> tuple[PolicyDecision, dict[str, Any]]:
        """The decision exactly as `decide` takes it, and OPA's whole answer: evaluation
        metrics and, with `trace`, the full evaluation trace (`jit-sidecar policy explain`)."""
        query = "?metrics=true" + ("&explain=full&pretty=true" if trace else "")
        response = await self._post(self._path + query, policy_input)
        decision = parse_decision(response.body, action=policy_input["intent"]["action"])
        return decision, json.loads(response.body)  # parse_decision checked it is an object

    async def may_act(self, policy_input: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
        """May this agent act for this person? `may_act` next to the decision rule (e.g.
        /v1/data/jit/may_act): an object with boolean `allow` and optional `reasons`."""
        path = self._path.rsplit("/", 1)[0] + "/may_act"
        return parse_may_act((await self._post(path, policy_input)).body)

    async def _post(self, path: str, policy_input: dict[str, Any]) -> Response:
        body = _COMPACT.encode({"input": policy_input}).encode()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._transport.request("POST", path, body)
        except TimeoutError as err:
            raise PolicyUnavailable(
                f"OPA did not answer within {self._timeout * 1000:.0f} ms", "timeout"
            ) from err
        except HttpError as err:
            raise PolicyUnavailable(f"OPA unreachable: {err}", "unreachable") from err
        finally:
            self.last_latency = time.perf_counter() - started
        if response.status >= 500:
            raise PolicyUnavailable(f"OPA answered HTTP {response.status}", "http_5xx")
        if response.status != 200:
            raise PolicyResultInvalid(f"OPA answered HTTP {response.status}", "http_4xx")
        return response

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                response = await self._transport.request("GET", "/health")
        except (TimeoutError, HttpError):
            return False
        return response.status == 200

    async def revision(self) -> str:
        """A fingerprint of what decides: the loaded policy modules and the documents of the
        decision's package (its data, e.g. an action catalog). '' when OPA cannot say."""
        digest = hashlib.sha256()
        package = self._path.rsplit("/", 1)[0]
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                for path in ("/v1/policies", package):
                    response = await self._transport.request("GET", path)
                    if response.status != 200:
                        return ""
                    document = json.loads(response.body).get("result")
                    if path == "/v1/policies" and isinstance(document, list):
                        # OPA lists modules in map order, which changes from call to call.
                        # A module's source decides its AST: hashing the AST as well (most
                        # of the ~0.7 MB answer) was CPU on the event loop every few
                        # seconds, taken from requests (docs/performance.md).
                        document = sorted((str(m.get("id")), str(m.get("raw"))) for m in document)
                    digest.update(json.dumps(document, sort_keys=True).encode())
        except (TimeoutError, HttpError, ValueError, AttributeError):
            return ""
        return digest.hexdigest()

    async def aclose(self) -> None:
        await self._transport.aclose()

"""OpaClient through its transport: every fault a transport can produce becomes a
PolicyError with a known cause, never a decision (fault-injecting MockTransport; the real
OPA is exercised in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sidecar._http1 import HttpError, Response
from sidecar.errors import PolicyError, PolicyResultInvalid, PolicyUnavailable
from sidecar.policy import CAUSES, OpaClient
from tests.opa_transport import MockTransport, answering

INPUT: dict[str, Any] = {"intent": {"action": "docs.read"}}
ALLOW = {"allow": True, "tier": "jit", "ttl_seconds": 60, "audience": "docs", "reasons": ["ok"]}


def decide(transport: MockTransport, timeout: float = 1.0) -> Any:
    async def main() -> Any:
        client = OpaClient(
            "http://unused.invalid", "/v1/data/jit/decision", timeout, transport=transport
        )
        try:
            return await client.decide(INPUT)
        finally:
            await client.aclose()

    return asyncio.run(main())


def failure(transport: MockTransport, timeout: float = 1.0) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        decide(transport, timeout)
    return caught.value


def test_decision_goes_through_the_transport() -> None:
    """The decision path gets `{"input": ...}` and OPA's decision_id comes back."""
    transport = answering(200, json.dumps({"result": ALLOW, "decision_id": "d-7"}).encode())
    decision = decide(transport)
    ((method, path, body),) = transport.requests
    assert (method, path) == ("POST", "/v1/data/jit/decision")
    assert json.loads(body) == {"input": INPUT}
    assert decision.allow is True
    assert decision.decision_id == "d-7"
    assert transport.closed is True


async def _broken(method: str, path: str, body: bytes) -> Response:
    raise HttpError("connection reset mid-response")


async def _silent(method: str, path: str, body: bytes) -> Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("transport", "kind", "cause"),
    [
        (MockTransport(_broken), PolicyUnavailable, "unreachable"),
        (MockTransport(_silent), PolicyUnavailable, "timeout"),
        (answering(503, b"{}"), PolicyUnavailable, "http_5xx"),
        (answering(404, b"{}"), PolicyResultInvalid, "http_4xx"),
        (answering(200, b"<html>"), PolicyResultInvalid, "bad_json"),
        (answering(200, b"{}"), PolicyResultInvalid, "undefined"),
        (answering(200, b'{"result": {"allow": "yes"}}'), PolicyResultInvalid, "shape"),
    ],
)
def test_transport_faults_are_policy_errors_with_a_known_cause(
    transport: MockTransport, kind: type[PolicyError], cause: str
) -> None:
    """No answer, a wrong status or a wrong body is a PolicyError whose cause is one of the
    labels jit_policy_errors_total is created with."""
    err = failure(transport, timeout=0.05)
    assert isinstance(err, kind)
    assert err.cause == cause
    assert err.cause in CAUSES[err.reason]


def test_health_and_revision_fail_soft_through_a_broken_transport() -> None:
    """healthy() is False and revision() is '' when the transport cannot answer."""

    async def main() -> tuple[bool, str]:
        client = OpaClient(
            "http://unused.invalid", "/v1/data/jit/decision", 0.05, transport=MockTransport(_broken)
        )
        return await client.healthy(), await client.revision()

    assert asyncio.run(main()) == (False, "")


def test_explain_returns_the_checked_decision_and_opas_whole_answer() -> None:
    """explain() asks for metrics (and the trace) and type-checks the decision like decide()."""
    answer = {"result": ALLOW, "metrics": {"timer_rego_query_eval_ns": 1000}, "explanation": ["x"]}
    transport = answering(200, json.dumps(answer).encode())

    async def main() -> Any:
        client = OpaClient(
            "http://unused.invalid", "/v1/data/jit/decision", 1.0, transport=transport
        )
        return await client.explain(INPUT, trace=True)

    decision, document = asyncio.run(main())
    ((_, path, _),) = transport.requests
    assert path == "/v1/data/jit/decision?metrics=true&explain=full&pretty=true"
    assert decision.allow is True
    assert document == answer


# ---------------------------------------------------------------------- batch (GrantStream)
BATCH = "/v1/data/jit/batch_decisions"


def decide_many(transport: MockTransport, inputs: list[dict[str, Any]], rounds: int = 1) -> Any:
    async def main() -> Any:
        client = OpaClient(
            "http://unused.invalid",
            "/v1/data/jit/decision",
            1.0,
            transport=transport,
            batch_path=BATCH,
        )
        try:
            return [await client.decide_many(inputs) for _ in range(rounds)]
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_batch_decisions_come_from_one_request() -> None:
    """decide_many posts every input in one `input.batch` and type-checks each answer, all
    carrying the evaluation's decision_id."""
    deny = {"allow": False, "reasons": ["no: not allowed"]}
    body = json.dumps({"result": [ALLOW, deny], "decision_id": "d-9"}).encode()
    transport = answering(200, body)
    (decisions,) = decide_many(transport, [INPUT, INPUT])
    ((method, path, sent),) = transport.requests
    assert (method, path) == ("POST", BATCH)
    assert json.loads(sent) == {"input": {"batch": [INPUT, INPUT]}}
    assert [d.allow for d in decisions] == [True, False]
    assert {d.decision_id for d in decisions} == {"d-9"}


def test_policy_without_a_batch_rule_is_asked_once_per_intent() -> None:
    """An undefined batch document means no batch evaluation: None, and the client stops
    asking for it (the caller then decides one input per call)."""
    transport = answering(200, b"{}")
    assert decide_many(transport, [INPUT, INPUT], rounds=2) == [None, None]
    assert len(transport.requests) == 1


@pytest.mark.parametrize(
    "result",
    [[ALLOW], [ALLOW, ALLOW, ALLOW], {"allow": True}, [ALLOW, {"allow": "yes"}]],
    ids=["too-few", "too-many", "not-a-list", "bad-element"],
)
def test_a_malformed_batch_answer_is_policy_result_invalid(result: Any) -> None:
    """A batch answer that is not one valid decision per input fails the whole batch with
    policy_result_invalid (cause shape): no decision is taken from it."""
    transport = answering(200, json.dumps({"result": result}).encode())
    with pytest.raises(PolicyResultInvalid) as caught:
        decide_many(transport, [INPUT, INPUT])
    assert caught.value.cause == "shape"

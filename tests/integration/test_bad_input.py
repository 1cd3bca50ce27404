"""Bad input and policy faults: every case answers a precise status and reason, issues
nothing, and leaves an audit record. Real sidecar process, real gRPC over its Unix socket;
the real OPA binary except where OPA must misbehave (tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import InvalidRequest, SidecarRpcError, socket_target
from tests.fakes import VALID_JIT, FakeOpa
from tests.harness import OpaServer, SidecarProcess, running, wait_for


@pytest.fixture
def fake_opa() -> Iterator[FakeOpa]:
    fake = FakeOpa().start()
    yield fake
    fake.stop()


def assert_nothing_issued(sidecar: SidecarProcess) -> None:
    assert sidecar.events("grant_issued") == []
    assert sidecar.grant_rows() == []


def health_status(sidecar: SidecarProcess) -> int:
    with grpc.insecure_channel(socket_target(sidecar.socket)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


BAD_INTENTS = [
    pytest.param("", "docs://a", "", id="empty-action"),
    pytest.param("docs.read", "", "", id="empty-resource"),
    pytest.param("a" * 257, "docs://a", "", id="oversized-action"),
    pytest.param("docs.read", "docs://" + "a" * 2042, "", id="oversized-resource"),
    pytest.param("docs.read", "docs://a", "j" * 4097, id="oversized-justification"),
    pytest.param("docs.re\x00ad", "docs://a", "", id="nul-in-action"),
    pytest.param("docs.read", "docs://a\x00b", "", id="nul-in-resource"),
    pytest.param("docs.read\n", "docs://a", "", id="newline-in-action"),
    pytest.param("docs.read", "docs://a\x1b[31m", "", id="escape-in-resource"),
    pytest.param("docs.r\u0435ad", "docs://a", "", id="cyrillic-confusable-action"),
    pytest.param("docs.read", "docs://a", "fine\u202eevil", id="bidi-override-justification"),
]


@pytest.mark.parametrize(("action", "resource", "justification"), BAD_INTENTS)
def test_invalid_intent_rejected(
    sidecar: SidecarProcess, action: str, resource: str, justification: str
) -> None:
    """A malformed intent: INVALID_ARGUMENT invalid_intent, nothing issued, rejection audited."""
    with sidecar.client() as c:
        task = c.begin_task("bad input")
        with pytest.raises(InvalidRequest) as err:
            c.request_grant(task.task_id, action, resource, justification=justification)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "invalid_intent"
    assert_nothing_issued(sidecar)
    (record,) = sidecar.events("request_rejected")
    assert record["reason"] == "invalid_intent"
    assert "\x00" not in str(record) and "\u202e" not in str(record)


BAD_RESOURCES = [
    pytest.param("docs://a b", id="space-in-resource"),
    pytest.param("not a uri", id="resource-not-a-uri"),
    pytest.param("docs:a", id="no-authority"),
    pytest.param("DOCS://a", id="upper-case-scheme"),
    pytest.param("docs://a/../b", id="dot-segment"),
    pytest.param("docs://\u0430", id="cyrillic-authority"),
]


@pytest.mark.parametrize("resource", BAD_RESOURCES)
def test_invalid_resource_rejected(sidecar: SidecarProcess, resource: str) -> None:
    """A resource that is not one canonical name (docs/api.md, "Resource names"):
    INVALID_ARGUMENT invalid_resource, nothing issued, rejection audited. The full table of
    spellings is tests/integration/test_resource_spellings.py."""
    with sidecar.client() as c:
        task = c.begin_task("bad input")
        with pytest.raises(InvalidRequest) as err:
            c.request_grant(task.task_id, "docs.read", resource)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "invalid_resource"
    assert_nothing_issued(sidecar)
    (record,) = sidecar.events("request_rejected")
    assert record["reason"] == "invalid_resource"


def test_absurd_ttl_rejected(sidecar: SidecarProcess) -> None:
    """A TTL beyond max_requested_ttl (a day) is rejected, not clamped."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        with pytest.raises(InvalidRequest) as err:
            c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=86401)
    assert err.value.reason == "invalid_ttl"
    assert_nothing_issued(sidecar)


def test_unknown_task(sidecar: SidecarProcess) -> None:
    """A grant in a task that never existed: NOT_FOUND task_not_found."""
    with sidecar.client() as c, pytest.raises(SidecarRpcError) as err:
        c.request_grant("t-nope", "docs.read", "docs://a")
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert err.value.reason == "task_not_found"
    assert_nothing_issued(sidecar)
    assert sidecar.events("request_rejected")[0]["reason"] == "task_not_found"


def test_malformed_task_id(sidecar: SidecarProcess) -> None:
    """A task id with forbidden characters: INVALID_ARGUMENT invalid_task."""
    with sidecar.client() as c, pytest.raises(InvalidRequest) as err:
        c.request_grant("../etc/passwd", "docs.read", "docs://a")
    assert err.value.reason == "invalid_task"
    assert_nothing_issued(sidecar)


def test_ttl_above_global_max_is_clamped(tmp_path: Path, fake_opa: FakeOpa) -> None:
    """Requested 5000 s with a policy allowing 5000 s: clamped to the JIT tier maximum
    (300 s), recorded with what limited it; never widened."""
    fake_opa.answer({"result": VALID_JIT | {"ttl_seconds": 5000}})
    with running(SidecarProcess(tmp_path / "s", fake_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("x", max_duration=3600)
        grant = c.request_grant(task.task_id, "x.write", "x://1", ttl_seconds=5000)
        (issued,) = sidecar.events("grant_issued")
    assert grant.expires_at.seconds - grant.issued_at.seconds <= 300
    assert issued["ttl_seconds"] == 300 and issued["ttl_limited_by"] == "tier_max"


def test_task_remaining_time_bounds_ttl(tmp_path: Path, fake_opa: FakeOpa) -> None:
    """A task with 5 s left gets a token of at most 5 s, whatever was asked."""
    with running(SidecarProcess(tmp_path / "s", fake_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("x", max_duration=5)
        grant = c.request_grant(task.task_id, "x.write", "x://1", ttl_seconds=60)
        (issued,) = sidecar.events("grant_issued")
    assert grant.expires_at.seconds <= task.deadline.seconds
    assert issued["ttl_limited_by"] == "task_remaining" and issued["ttl_seconds"] <= 5


POLICY_FAULTS = [
    pytest.param(
        500,
        {"code": "internal_error"},
        "policy_unavailable",
        "http_5xx",
        grpc.StatusCode.UNAVAILABLE,
        id="opa-500",
    ),
    pytest.param(
        200,
        b"<html>not json",
        "policy_result_invalid",
        "bad_json",
        grpc.StatusCode.INTERNAL,
        id="garbage-json",
    ),
    pytest.param(
        200,
        {},
        "policy_result_invalid",
        "undefined",
        grpc.StatusCode.INTERNAL,
        id="undefined-result",
    ),
    pytest.param(
        200,
        {"result": {"allow": "yes"}},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="allow-not-boolean",
    ),
    pytest.param(
        200,
        {"result": [True]},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="result-not-object",
    ),
    pytest.param(
        200,
        {"result": {k: v for k, v in VALID_JIT.items() if k != "ttl_seconds"}},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="allow-no-ttl",
    ),
    pytest.param(
        200,
        {"result": {k: v for k, v in VALID_JIT.items() if k != "audience"}},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="allow-no-audience",
    ),
    pytest.param(
        200,
        {"result": VALID_JIT | {"tier": "gold"}},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="allow-unknown-tier",
    ),
    pytest.param(
        200,
        {"result": VALID_JIT | {"ttl_seconds": 1.5}},
        "policy_result_invalid",
        "shape",
        grpc.StatusCode.INTERNAL,
        id="ttl-not-integer",
    ),
    pytest.param(
        404,
        {"code": "not_found"},
        "policy_result_invalid",
        "http_4xx",
        grpc.StatusCode.INTERNAL,
        id="opa-404",
    ),
]


@pytest.mark.parametrize(("status", "body", "reason", "cause", "code"), POLICY_FAULTS)
def test_policy_fault_fails_closed(
    tmp_path: Path,
    fake_opa: FakeOpa,
    status: int,
    body: Any,
    reason: str,
    cause: str,
    code: grpc.StatusCode,
) -> None:
    """OPA misbehaving: no token, the documented status and reason, a policy_error record,
    and jit_policy_errors_total{reason,cause} counts it."""
    fake_opa.answer(body, status)
    with running(SidecarProcess(tmp_path / "s", fake_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "x.write", "x://1", justification="because I must")
        errors = sidecar.metric("jit_policy_errors_total", reason=reason, cause=cause)
        assert_nothing_issued(sidecar)
        (record,) = sidecar.events("policy_error")
    assert err.value.code is code
    assert err.value.reason == reason
    assert err.value.metadata == {"cause": cause}
    assert record["reason"] == reason and record["cause"] == cause
    assert errors == 1


def test_policy_timeout_fails_closed(tmp_path: Path, fake_opa: FakeOpa) -> None:
    """OPA slower than opa_timeout (100 ms here): UNAVAILABLE policy_unavailable (timeout)."""
    fake_opa.answer({"result": VALID_JIT}, delay=1.0)
    process = SidecarProcess(tmp_path / "s", fake_opa.url, "--opa-timeout", "0.1")
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "x.write", "x://1", justification="because I must")
        assert_nothing_issued(sidecar)
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert err.value.reason == "policy_unavailable"
    assert err.value.metadata == {"cause": "timeout"}


def test_opa_down_at_start_then_recovers(tmp_path: Path) -> None:
    """OPA absent at start: the sidecar starts NOT_SERVING, /readyz fails, grants fail
    closed with policy_unavailable; once OPA comes up it serves without a restart."""
    opa = OpaServer(tmp_path)
    with running(SidecarProcess(tmp_path / "s", opa.url)) as sidecar, sidecar.client() as c:
        assert health_status(sidecar) == health_pb2.HealthCheckResponse.NOT_SERVING
        ready = requests.get(sidecar.http + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["checks"]["policy"]
        task = c.begin_task("x")
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "docs.read", "docs://a")
        assert err.value.code is grpc.StatusCode.UNAVAILABLE
        assert err.value.reason == "policy_unavailable"
        assert_nothing_issued(sidecar)
        opa.start()
        try:
            wait_for(
                lambda: health_status(sidecar) == health_pb2.HealthCheckResponse.SERVING,
                what="health SERVING",
            )
            assert requests.get(sidecar.http + "/readyz", timeout=5).status_code == 200
            grant = c.request_grant(task.task_id, "docs.read", "docs://a")
        finally:
            opa.stop()
    assert grant.grant_id


def test_opa_killed_mid_run_then_restarted(tmp_path: Path, own_opa: OpaServer) -> None:
    """Killing OPA: UNAVAILABLE policy_unavailable, health NOT_SERVING, /readyz 503;
    restarting OPA restores service without restarting the sidecar."""
    with running(SidecarProcess(tmp_path / "s", own_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        before = c.request_grant(task.task_id, "docs.read", "docs://a")
        own_opa.stop()
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(
                task.task_id, "tickets.update", "tickets://1", justification="closing stale ticket"
            )
        assert health_status(sidecar) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert requests.get(sidecar.http + "/readyz", timeout=5).status_code == 503
        issued_while_down = len(sidecar.events("grant_issued"))
        own_opa.start()
        wait_for(
            lambda: health_status(sidecar) == health_pb2.HealthCheckResponse.SERVING,
            what="health SERVING",
        )
        after = c.request_grant(
            task.task_id, "tickets.update", "tickets://1", justification="closing stale ticket"
        )
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert err.value.reason == "policy_unavailable"
    assert issued_while_down == 1  # only `before`
    assert before.grant_id != after.grant_id


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_context_number_json_cannot_carry_is_refused(
    sidecar: SidecarProcess, number: float
) -> None:
    """A raw client (the SDK refuses it first) sending NaN or Infinity inside the context,
    nested in a list: INVALID_ARGUMENT invalid_intent, never INTERNAL; nothing issued."""
    from google.protobuf import struct_pb2

    from sidecar._proto.jit.v1 import access_pb2 as pb
    from sidecar._proto.jit.v1 import access_pb2_grpc

    context = struct_pb2.Struct()
    context.update({"scores": [1, number]})
    with sidecar.client() as c:
        task = c.begin_task("raw context")
    with grpc.insecure_channel(socket_target(sidecar.socket)) as channel:
        stub = access_pb2_grpc.AccessServiceStub(channel)
        request = pb.RequestGrantRequest(
            task_id=task.task_id,
            intent=pb.Intent(action="docs.read", resource="docs://a", context=context),
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.RequestGrant(request, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or Infinity" in (err.value.details() or "")
    assert_nothing_issued(sidecar)

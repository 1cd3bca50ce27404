"""Property-based fuzzing of a real sidecar process over its real Unix socket and HTTP
listener (real OPA on rego/, real SQLite, real audit log).

Every generated request — well-formed protobuf with hostile field values, or raw bytes that
are not protobuf at all — must get a defined answer: OK, or a status code with a
`google.rpc.ErrorInfo` whose reason is one of `sidecar.errors.Reason` and fits the code.
A token is issued only for a request an independent oracle calls valid; at the end the
process is alive and SERVING, the audit chain verifies, and every grant a client received is
in the audit log and the store (and nothing else is).
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar.audit import log_files, verify
from sidecar.client import socket_target
from sidecar.errors import Reason
from sidecar.verify import TokenRejected, TokenVerifier
from tests.fuzz.strategies import (
    VALID_ACTIONS,
    VALID_RESOURCES,
    examples,
    hostile_text,
    json_values,
    jwt_like,
)
from tests.harness import OpaServer, SidecarProcess

pytestmark = [
    pytest.mark.integration,
    # Hostile inputs are large by design; Hypothesis warns when it prints them.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

#: Which status code each reason may come with (docs/api.md, "Errors").
CODE_OF_REASON = {
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_INTENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_RESOURCE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_TTL: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_TASK: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.TASK_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.GRANT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.APPROVAL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.TASK_INACTIVE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.APPROVAL_INACTIVE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.TASK_NOT_OWNED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TASK_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.TOO_MANY_TASKS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_GRANTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.MESSAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.IDENTITY_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.INVALID_POP_PROOF: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.PRINCIPAL_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.MAY_ACT: grpc.StatusCode.PERMISSION_DENIED,
}
ACTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
# docs/api.md, "Resource names": scheme://authority[/segment]..., one spelling; escapes only
# of the characters that cannot appear raw (space and "#%<>?[]^`{|}), no dot segments.
_SEGMENT = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%(?:2[0235]|3[CEF]|5[BDE]|60|7[BCD]))+"
RESOURCE_RE = re.compile(
    rf"[a-z][a-z0-9+.-]*://[a-z0-9_-]+(?:\.[a-z0-9_-]+)*(?:/(?!\.\.?(?:/|$)){_SEGMENT})*"
)
BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Stands for "the task this test keeps open" in generated requests.
OPEN = "\x00open-task\x00"


@dataclass
class Ledger:
    """What the fuzzing sent and got, for the end-of-module invariants and the report."""

    tried: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    granted: dict[str, dict[str, Any]] = field(default_factory=dict)
    """grant_id -> the request that got it."""
    open_task: str = ""


@dataclass
class Target:
    process: SidecarProcess
    channel: grpc.Channel
    stub: pb_grpc.AccessServiceStub
    ledger: Ledger


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[Target]:
    process = SidecarProcess(
        tmp_path_factory.mktemp("fuzz-sidecar"),
        opa.url,
        "--durability",
        "flush",  # the audit content is checked, not its fsync; keeps the run short
        "--max-tasks-per-identity",
        "100000",
        "--heartbeat-interval",
        "120",
    ).start()
    channel = grpc.insecure_channel(
        socket_target(process.socket), options=[("grpc.max_send_message_length", 1 << 22)]
    )
    try:
        yield Target(process, channel, pb_grpc.AccessServiceStub(channel), Ledger())
    finally:
        channel.close()
        process.stop()


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError as mismatch:  # the status detail disagrees with the call's status
        raise AssertionError(f"{mismatch}: {err.details()!r}") from None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


#: max_message_bytes (64 KiB): gRPC core itself refuses requests over twice that.
CORE_LIMIT = 2 * 64 * 1024


def assert_defined_refusal(err: grpc.RpcError, what: str, size: int) -> str:
    """The refusal has an ErrorInfo with a fixed reason that fits its status code; the one
    documented exception is gRPC core's own refusal of a request over its hard limit."""
    info = _error_info(err)
    if info is None and size > CORE_LIMIT and err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert err.details().startswith("SERVER: Received message larger than max")
        return "core_message_too_large"
    assert info is not None, f"{what}: {err.code()} without ErrorInfo: {err.details()}"
    assert info.domain == "jit-sidecar"
    reason = Reason(info.reason)  # ValueError if not in the fixed set
    assert CODE_OF_REASON.get(reason) == err.code(), f"{what}: {reason} with {err.code()}"
    return reason.value


def _clean(text: str, limit: int, newlines: bool) -> bool:
    if len(text.encode()) > limit:
        return False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in BIDI or cat == "Cs" or (cat == "Cc" and not (newlines and ch in "\n\t")):
            return False
    return True


def valid_grant_request(request: pb.RequestGrantRequest, open_task: str) -> bool:
    """The input rules of docs/api.md written out independently of sidecar.validation."""
    i = request.intent
    context = json_format.MessageToDict(i.context) if i.HasField("context") else {}
    try:
        context_size = len(json.dumps(context, separators=(",", ":"), allow_nan=False))
    except ValueError:
        return False
    return (
        request.task_id == open_task
        and ACTION_RE.fullmatch(i.action) is not None
        and len(i.action) <= 256
        and RESOURCE_RE.fullmatch(i.resource) is not None
        and len(i.resource) <= 2048
        and _clean(i.justification, 4096, newlines=True)
        and context_size <= 8192
        and 0 <= request.ttl_seconds <= 86400  # 0: the maximum the bounds allow
    )


def _struct(value: Any) -> struct_pb2.Struct | None:
    if not isinstance(value, dict):
        value = {"v": value}
    out = struct_pb2.Struct()
    try:
        json_format.ParseDict(value, out)
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        return None
    return out


task_ids = st.one_of(st.just(OPEN), st.just(OPEN), hostile_text(valid=["t-nope", "t-1"]))
uint32 = st.one_of(
    st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 59, 60, 86400, 86401, 2**31, 2**32 - 1])
)
labels = st.one_of(
    st.dictionaries(hostile_text(valid=["team", "env"]), hostile_text(), max_size=8),
    st.integers(30, 2000).map(lambda n: {f"k{i}": "v" * 200 for i in range(n)}),
)
random_intents = st.tuples(
    hostile_text(valid=VALID_ACTIONS),
    hostile_text(valid=VALID_RESOURCES),
    hostile_text(valid=["closing stale ticket 42", ""]),
    st.one_of(st.none(), json_values(20), st.integers(1, 5000).map(lambda n: {"k": "x" * n})),
)
valid_intents = st.tuples(
    st.sampled_from(VALID_ACTIONS),
    st.sampled_from(VALID_RESOURCES),
    st.sampled_from(["closing stale ticket 42", "", "because"]),
    st.one_of(st.none(), st.just({"ticket": 42})),
)


def _one_hostile(intent: tuple[Any, ...], index: int, text: str, value: Any) -> tuple[Any, ...]:
    """A valid intent with exactly one field made hostile."""
    out = list(intent)
    out[index] = value if index == 3 else text
    return tuple(out)


intents = st.one_of(
    random_intents,
    valid_intents,
    st.builds(_one_hostile, valid_intents, st.integers(0, 3), hostile_text(), json_values(8)),
)
ttls = st.one_of(st.integers(1, 900), st.integers(1, 900), uint32)


def _request_grant(task: str, intent: tuple[Any, ...], ttl: int) -> tuple[str, Any]:
    action, resource, justification, context = intent
    msg = pb.RequestGrantRequest(
        task_id=task,
        intent=pb.Intent(action=action, resource=resource, justification=justification),
        ttl_seconds=ttl,
    )
    if context is not None:
        struct = _struct(context)
        if struct is not None:
            msg.intent.context.CopyFrom(struct)
    return "RequestGrant", msg


requests_strategy = st.one_of(
    st.builds(_request_grant, task_ids, intents, ttls),
    st.builds(_request_grant, task_ids, intents, ttls),
    st.builds(
        lambda t, g, d, lab, jwk, proof: (
            "BeginTask",
            pb.BeginTaskRequest(
                task_id=t,
                goal=g,
                max_duration_seconds=d,
                labels=lab,
                pop_jwk=jwk,
                pop_proof=proof,
            ),
        ),
        hostile_text(valid=[""]),
        hostile_text(valid=["fuzz"]),
        uint32,
        labels,
        st.one_of(st.none(), json_values(6).map(_struct)),
        st.one_of(st.just(""), jwt_like()),
    ),
    st.builds(
        lambda token, kind: (
            "BeginTask",
            pb.BeginTaskRequest(goal="fuzz", subject_token=token, subject_token_type=kind),
        ),
        st.one_of(st.just(""), jwt_like()),
        hostile_text(valid=["", "urn:ietf:params:oauth:token-type:id_token"]),
    ),
    st.builds(lambda t: ("Heartbeat", pb.HeartbeatRequest(task_id=t)), task_ids),
    st.builds(
        lambda t, o, d: ("CompleteTask", pb.CompleteTaskRequest(task_id=t, outcome=o, detail=d)),
        task_ids,
        st.integers(-(2**31), 2**31 - 1),
        hostile_text(),
    ),
    st.builds(
        lambda g, r: ("RevokeGrant", pb.RevokeGrantRequest(grant_id=g, reason=r)),
        hostile_text(valid=[secrets.token_urlsafe(16)]),
        hostile_text(),
    ),
    st.builds(lambda t: ("IntrospectToken", pb.IntrospectTokenRequest(token=t)), jwt_like()),
    st.builds(
        lambda t, inc: ("ListGrants", pb.ListGrantsRequest(task_id=t, include_inactive=inc)),
        task_ids,
        st.booleans(),
    ),
    st.builds(
        lambda a: ("AwaitApproval", pb.AwaitApprovalRequest(approval_id=a)),
        hostile_text(valid=["a-" + secrets.token_urlsafe(16)]),
    ),
)


def _open_task(t: Target) -> str:
    if not t.ledger.open_task:
        task = t.stub.BeginTask(pb.BeginTaskRequest(goal="fuzz target"), timeout=10).task
        t.ledger.open_task = task.task_id
    return t.ledger.open_task


def _substitute(request: Any, open_task: str) -> Any:
    if hasattr(request, "task_id") and request.task_id == OPEN:
        request.task_id = open_task
    return request


@settings(max_examples=examples(700))
@given(requests_strategy)
def test_grpc_requests_get_defined_answers(target: Target, generated: tuple[str, Any]) -> None:
    """Any AccessService request with hostile field values: OK or a fixed reason that fits
    the status code; GRANTED only when the oracle calls the request valid."""
    method, request = generated
    open_task = _open_task(target)
    request = _substitute(request, open_task)
    target.ledger.tried[method] += 1
    try:
        response = getattr(target.stub, method)(request, timeout=10)
    except grpc.RpcError as err:
        reason = assert_defined_refusal(err, method, request.ByteSize())
        target.ledger.answers[f"{method}:{reason}"] += 1
        return
    target.ledger.answers[f"{method}:OK"] += 1
    if method == "RequestGrant" and response.decision == pb.DECISION_GRANTED:
        assert valid_grant_request(request, open_task), request
        assert response.grant.token
        target.ledger.granted[response.grant.grant_id] = {
            "action": request.intent.action,
            "resource": request.intent.resource,
        }
    if method == "CompleteTask" and request.task_id == open_task:
        target.ledger.open_task = ""
    if method == "BeginTask":
        assert response.task.task_id


ROUTES = [
    f"/jit.v1.AccessService/{m}"
    for m in (
        "BeginTask",
        "RequestGrant",
        "Heartbeat",
        "CompleteTask",
        "RevokeGrant",
        "IntrospectToken",
        "ListGrants",
        "AwaitApproval",
    )
]


def _mutated(data: st.DataObject) -> bytes:
    base = pb.RequestGrantRequest(
        task_id="t-1",
        intent=pb.Intent(action="docs.read", resource="docs://a", justification="because"),
        ttl_seconds=60,
    ).SerializeToString()
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    return bytes(raw)


@settings(max_examples=examples(300))
@given(st.sampled_from(ROUTES), st.data())
def test_raw_bytes_get_defined_answers(target: Target, route: str, data: st.DataObject) -> None:
    """Bytes that may not be protobuf at all (random, truncated varints, invalid UTF-8,
    mutated valid messages, oversize): a reason code (invalid_argument, message_too_large,
    ...) — never a bare INTERNAL from gRPC core — and no grant."""
    raw = data.draw(
        st.one_of(
            st.binary(max_size=256),
            st.builds(_mutated, st.data()),
            st.sampled_from(
                [
                    b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # field 1 (string) holding invalid UTF-8
                    b"\x0a\xff\xff\xff\xff\x0f",  # length beyond the message
                    b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # overlong varint
                    b"\x0a\x80\x80\x04" + b"a" * 65536,  # just over max_message_bytes
                ]
            ),
        )
    )
    call = target.channel.unary_unary(route)
    target.ledger.tried["raw:" + route.rsplit("/", 1)[1]] += 1
    try:
        answer = call(raw, timeout=10)
    except grpc.RpcError as err:
        reason = assert_defined_refusal(err, route, len(raw))
        target.ledger.answers[f"raw:{reason}"] += 1
        return
    target.ledger.answers["raw:OK"] += 1
    if route.endswith("RequestGrant"):
        assert pb.RequestGrantResponse.FromString(answer).decision != pb.DECISION_GRANTED


@pytest.fixture(scope="module")
def live_token(target: Target) -> str:
    task = target.stub.BeginTask(pb.BeginTaskRequest(goal="introspection target"), timeout=10)
    answer = target.stub.RequestGrant(
        pb.RequestGrantRequest(
            task_id=task.task.task_id,
            intent=pb.Intent(action="docs.read", resource="docs://introspected"),
            ttl_seconds=600,
        ),
        timeout=10,
    )
    target.ledger.granted[answer.grant.grant_id] = {"action": "docs.read"}
    return str(answer.grant.token)


def _token_variants(live: str) -> st.SearchStrategy[str]:
    def mutate(index: int, char: str) -> str:
        i = index % len(live)
        return live[:i] + char + live[i + 1 :]

    header, payload, _signature = live.split(".")
    return st.one_of(
        jwt_like(),
        st.builds(mutate, st.integers(0, 10_000), st.sampled_from("AQgw-_.x=é\x00 ")),
        st.sampled_from(
            [
                live + ".",
                live + "x",
                f"{header}.{payload}.",
                f"{header}.{payload}",
                f"eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{payload}.",  # alg none
                live * 2,
                live.upper(),
                " " + live,
            ]
        ),
    )


@settings(max_examples=examples(200))
@given(st.data())
def test_introspection_http_and_grpc(target: Target, live_token: str, data: st.DataObject) -> None:
    """/introspect form bodies and gRPC IntrospectToken agree: active only for the exact
    live token; garbage is `{"active": false}` (HTTP 200) or 400/413 for a body that is not
    a form with a token; /revoke of garbage answers 200 and revokes nothing."""
    token = data.draw(_token_variants(live_token))
    kind = data.draw(st.sampled_from(["form", "form", "raw", "json", "revoke"]))
    target.ledger.tried[f"http:{kind}"] += 1
    http = target.process.http
    auth = target.process.http_auth
    if kind == "raw":
        body = data.draw(st.one_of(st.binary(max_size=300), st.just(b"a" * 40_000)))
        ctype = data.draw(
            st.sampled_from(
                ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""]
            )
        )
        r = requests.post(
            http + "/introspect", data=body, headers={"Content-Type": ctype} | auth, timeout=10
        )
        assert r.status_code in (200, 400, 413), r.status_code
        if r.status_code == 200:
            assert r.json()["active"] is False or token == live_token
        target.ledger.answers[f"http:{r.status_code}"] += 1
        return
    if kind == "json":
        r = requests.post(http + "/introspect", json={"token": token}, headers=auth, timeout=10)
        assert r.status_code == 400
        target.ledger.answers["http:400"] += 1
        return
    if kind == "revoke":
        if token == live_token:
            return
        r = requests.post(http + "/revoke", data={"token": token}, headers=auth, timeout=10)
        assert r.status_code in (200, 413), r.status_code  # 413: over the 32 KiB form limit
        target.ledger.answers[f"http:revoke-{r.status_code}"] += 1
        return
    r = requests.post(http + "/introspect", data={"token": token}, headers=auth, timeout=10)
    assert r.status_code in (200, 413), r.status_code
    target.ledger.answers[f"http:{r.status_code}"] += 1
    request = pb.IntrospectTokenRequest(token=token)
    try:
        via_grpc = target.stub.IntrospectToken(request, timeout=10)
    except grpc.RpcError as err:
        reason = assert_defined_refusal(err, "IntrospectToken", request.ByteSize())
        assert reason in ("message_too_large", "core_message_too_large")
        return
    if r.status_code == 200:
        assert r.json()["active"] is via_grpc.active
    assert via_grpc.active is (token == live_token) or _same_bytes(token, live_token)


def _same_bytes(a: str, b: str) -> bool:
    """Two compact JWS that decode to identical parts (base64url's unused trailing bits)."""
    import base64

    try:
        pa, pb_ = a.split("."), b.split(".")
        return len(pa) == len(pb_) == 3 and all(
            base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            == base64.urlsafe_b64decode(y + "=" * (-len(y) % 4))
            for x, y in zip(pa, pb_, strict=True)
        )
    except ValueError:
        return False


@settings(max_examples=examples(150))
@given(_token_variants("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"))
def test_resource_server_verifier_refuses_garbage(target: Target, token: str) -> None:
    """The resource-server verifier (sidecar.verify) against the live JWKS: garbage and
    forged tokens raise TokenRejected with a reason, never anything else."""
    verifier = _verifier(target)
    target.ledger.tried["verifier"] += 1
    refused: TokenRejected | None = None
    try:
        verifier.verify(token, action="docs.read", resource="docs://a")
    except TokenRejected as err:
        refused = err
    assert refused is not None, "a forged token verified"
    assert refused.reason
    target.ledger.answers[f"verifier:{refused.reason}"] += 1


_VERIFIERS: dict[str, TokenVerifier] = {}


def _verifier(target: Target) -> TokenVerifier:
    url = target.process.http + "/.well-known/jwks.json"
    if url not in _VERIFIERS:
        _VERIFIERS[url] = TokenVerifier(url, "https://jit-sidecar.local", "docs")
    return _VERIFIERS[url]


def test_invariants_after_fuzzing(target: Target, live_token: str, tmp_path: Path) -> None:
    """After every fuzz test of this module (it runs last): the process is alive and
    SERVING, the audit chain verifies, the grants clients received are exactly the
    grant_issued records and grant rows, and the live token is still active."""
    process = target.process
    assert process.proc is not None and process.proc.poll() is None
    health = health_pb2_grpc.HealthStub(target.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    issued = {r["grant_id"] for r in process.events("grant_issued")}
    rows = {r["grant_id"] for r in process.grant_rows()}
    verdict = verify(log_files(process.audit))
    active = target.stub.IntrospectToken(pb.IntrospectTokenRequest(token=live_token), timeout=5)
    report = {
        "inputs_tried": sum(target.ledger.tried.values()),
        "by_target": dict(sorted(target.ledger.tried.items())),
        "answers": dict(sorted(target.ledger.answers.items())),
        "granted": len(target.ledger.granted),
    }
    (Path(process.workdir) / "fuzz-report.json").write_text(json.dumps(report, indent=1))
    print("\nfuzz report:", json.dumps(report, indent=1))
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert verdict.ok, verdict
    assert issued == rows == set(target.ledger.granted)
    assert active.active
    assert report["inputs_tried"] >= 1000


@pytest.fixture(scope="module")
def svid_target(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[Target]:
    from tests.identity_kit import AUDIENCE, TrustDomain

    root = tmp_path_factory.mktemp("fuzz-svid")
    domain = TrustDomain.create("example.org")
    bundle = domain.write_bundle(root / "example.org.jwks")
    process = SidecarProcess(
        root / "s",
        opa.url,
        "--trust-bundle",
        f"example.org={bundle}",
        "--audience",
        AUDIENCE,
        "--durability",
        "flush",
        identity="jwt-svid",
    ).start()
    channel = grpc.insecure_channel(socket_target(process.socket))
    try:
        yield Target(process, channel, pb_grpc.AccessServiceStub(channel), Ledger())
    finally:
        channel.close()
        process.stop()


_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@settings(max_examples=examples(200))
@given(
    st.one_of(
        jwt_like().map(lambda t: "".join(c for c in t if " " <= c <= "~")),
        st.text(_PRINTABLE, max_size=300),
    ),
    st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  ", "DPoP "]),
    st.sampled_from(["BeginTask", "RequestGrant", "ListGrants"]),
)
def test_identity_metadata_is_refused(
    svid_target: Target, token: str, scheme: str, method: str
) -> None:
    """jwt-svid mode, hostile `authorization` metadata on the real socket: UNAUTHENTICATED
    identity_invalid with a cause, and no task or grant ever created."""
    request: Any = {
        "BeginTask": pb.BeginTaskRequest(goal="x"),
        "RequestGrant": pb.RequestGrantRequest(
            task_id="t-1", intent=pb.Intent(action="docs.read", resource="docs://a"), ttl_seconds=60
        ),
        "ListGrants": pb.ListGrantsRequest(task_id="t-1"),
    }[method]
    svid_target.ledger.tried["svid-metadata"] += 1
    with pytest.raises(grpc.RpcError) as caught:
        getattr(svid_target.stub, method)(
            request, metadata=[("authorization", scheme + token)], timeout=10
        )
    if len(token) > 16_000 and caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Documented: gRPC core refuses metadata over 16 KiB before any of our code runs.
        assert "metadata size exceeds" in caught.value.details()
        svid_target.ledger.answers["svid:core_metadata_too_large"] += 1
        return
    reason = assert_defined_refusal(caught.value, method, request.ByteSize())
    svid_target.ledger.answers[f"svid:{reason}"] += 1
    info = _error_info(caught.value)
    assert reason == "identity_invalid"
    assert info is not None and info.metadata.get("cause")
    assert token not in caught.value.details() or len(token) < 8


def test_identity_fuzz_created_nothing(svid_target: Target) -> None:
    """After the metadata fuzzing: no task_begun or grant_issued record, no grant row, and
    the process still serves."""
    process = svid_target.process
    alive = process.proc is not None and process.proc.poll() is None
    assert alive
    assert process.events("task_begun") == []
    assert process.events("grant_issued") == []
    assert process.grant_rows() == []

"""Resource limits on a real sidecar process: each one answers RESOURCE_EXHAUSTED with its
reason code in ErrorInfo and counts jit_rejected_requests_total{reason} exactly once; a noisy
identity cannot take the service away from a quiet one. Real gRPC over the Unix socket; OPA
is the fake only where a decision must take a known time."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.client import AccessClient, SidecarRpcError, socket_target
from tests.fakes import FakeOpa
from tests.harness import OpaServer, SidecarProcess, running
from tests.identity_kit import AUDIENCE, TrustDomain
from tests.load import Load, own_connection

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_opa() -> Iterator[FakeOpa]:
    fake = FakeOpa().start()
    yield fake
    fake.stop()


def test_too_many_tasks(tmp_path: Path, opa: OpaServer) -> None:
    """max_tasks_per_identity 2: the third BeginTask is RESOURCE_EXHAUSTED too_many_tasks,
    counted once in jit_rejected_requests_total and audited as request_rejected."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--max-tasks-per-identity", "2")
    with running(process) as sidecar, sidecar.client() as c:
        c.begin_task("one")
        c.begin_task("two")
        with pytest.raises(SidecarRpcError) as err:
            c.begin_task("three")
        count = sidecar.metric("jit_rejected_requests_total", reason="too_many_tasks")
        (record,) = sidecar.events("request_rejected")
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.reason == "too_many_tasks"
    assert count == 1
    assert record["reason"] == "too_many_tasks"


def test_too_many_grants(tmp_path: Path, opa: OpaServer) -> None:
    """max_grants_per_task 2: the third grant is RESOURCE_EXHAUSTED too_many_grants, counted
    once, and no third token exists."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--max-grants-per-task", "2")
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("grants")
        c.request_grant(task.task_id, "docs.read", "docs://1")
        c.request_grant(task.task_id, "docs.read", "docs://2")
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "docs.read", "docs://3")
        count = sidecar.metric("jit_rejected_requests_total", reason="too_many_grants")
        issued = len(sidecar.events("grant_issued"))
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.reason == "too_many_grants"
    assert count == 1
    assert issued == 2


def test_message_too_large(sidecar: SidecarProcess) -> None:
    """A request over max_message_bytes (64 KiB) is RESOURCE_EXHAUSTED message_too_large
    with ErrorInfo and counted; one over twice that is refused by gRPC core itself
    (RESOURCE_EXHAUSTED without ErrorInfo, documented); nothing is created either way."""
    big = {f"k{i}": "v" * 250 for i in range(300)}  # ~80 KB
    huge = {f"k{i}": "v" * 250 for i in range(700)}  # ~190 KB
    with sidecar.client() as c:
        with pytest.raises(SidecarRpcError) as ours:
            c.begin_task("big", labels=big)
        with pytest.raises(SidecarRpcError) as core:
            c.begin_task("huge", labels=huge)
    count = sidecar.metric("jit_rejected_requests_total", reason="message_too_large")
    assert ours.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ours.value.reason == "message_too_large"
    assert core.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert core.value.reason == "resource_exhausted"  # the SDK's name when there is no ErrorInfo
    assert count == 1
    assert sidecar.events("task_begun") == []


def test_undecodable_request(sidecar: SidecarProcess) -> None:
    """Bytes that are not a valid protobuf message: INVALID_ARGUMENT invalid_argument with
    ErrorInfo (not gRPC core's bare INTERNAL), counted in jit_rejected_requests_total."""
    with grpc.insecure_channel(socket_target(sidecar.socket)) as channel:
        call = channel.unary_unary("/jit.v1.AccessService/BeginTask")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=5)  # a string field of invalid UTF-8
    from sidecar.client import translate_error

    translated = translate_error(err.value)
    count = sidecar.metric("jit_rejected_requests_total", reason="invalid_argument")
    assert translated.code is grpc.StatusCode.INVALID_ARGUMENT
    assert translated.reason == "invalid_argument"
    assert count == 1


def test_too_many_concurrent_rpcs(tmp_path: Path, fake_opa: FakeOpa) -> None:
    """max_concurrent_rpcs 4 with decisions taking 0.5 s and 7 callers at once: 4 are served,
    the rest get RESOURCE_EXHAUSTED too_many_requests (ErrorInfo limit=global) at once, each
    counted; no token for a refused call."""
    fake_opa.answer(fake_opa.body, delay=0.5)
    process = SidecarProcess(
        tmp_path / "s", fake_opa.url, "--max-concurrent-rpcs", "4", "--opa-timeout", "2"
    )
    with running(process) as sidecar:
        with sidecar.client() as c:
            task_id = c.begin_task("busy").task_id
        results: list[object] = []
        lock = threading.Lock()

        def call(n: int) -> None:
            with own_connection(AccessClient(sidecar.socket), sidecar.socket) as client:
                try:
                    outcome: object = client.request_grant(task_id, "x.write", f"x://{n}")
                except SidecarRpcError as err:
                    outcome = err
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        count = sidecar.metric("jit_rejected_requests_total", reason="too_many_requests")
        issued = len(sidecar.events("grant_issued"))
    refused = [r for r in results if isinstance(r, SidecarRpcError)]
    granted = [r for r in results if not isinstance(r, SidecarRpcError)]
    assert len(results) == 7
    assert refused and granted
    assert all(r.code is grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert all(r.reason == "too_many_requests" for r in refused)
    assert all(r.metadata.get("limit") == "global" for r in refused)
    assert count == len(refused)
    assert issued == len(granted)


def _svid_sidecar(tmp_path: Path, opa_url: str, domain: TrustDomain, *extra: str) -> SidecarProcess:
    bundle = domain.write_bundle(tmp_path / "bundle.jwks")
    return SidecarProcess(
        tmp_path / "s",
        opa_url,
        "--trust-bundle",
        f"{domain.name}={bundle}",
        "--audience",
        AUDIENCE,
        *extra,
        identity="jwt-svid",
    )


def test_noisy_identity_does_not_starve_a_quiet_one(tmp_path: Path, fake_opa: FakeOpa) -> None:
    """One identity floods with 24 concurrent callers (more than max_concurrent_rpcs 16);
    max_rpcs_per_identity 4 caps it, so it gets RESOURCE_EXHAUSTED too_many_requests
    (limit=per_identity) while another identity's calls all succeed. Latency of the quiet
    identity (p50 alone and under the flood) is printed, not asserted."""
    fake_opa.answer(fake_opa.body, delay=0.05)
    domain = TrustDomain.create("example.org")
    noisy = domain.svid("agent/noisy", ttl=600)
    quiet = domain.svid("agent/quiet", ttl=600)
    process = _svid_sidecar(
        tmp_path,
        fake_opa.url,
        domain,
        "--max-concurrent-rpcs",
        "16",
        "--max-rpcs-per-identity",
        "4",
        "--max-tasks-per-identity",
        "1000",
    )
    with (
        running(process) as sidecar,
        own_connection(AccessClient(sidecar.socket, identity_token=quiet), sidecar.socket) as q,
    ):
        task = q.begin_task("quiet work").task_id

        def quiet_calls(n: int) -> list[float]:
            out = []
            for i in range(n):
                started = time.perf_counter()
                q.request_grant(task, "x.write", f"x://quiet/{i}")
                out.append(time.perf_counter() - started)
            return out

        alone = quiet_calls(20)
        with Load(sidecar, clients=24, action="x.write", identity_token=noisy) as flood:
            time.sleep(0.5)
            under_flood = quiet_calls(40)
        ledger = flood.ledger
        per_identity = sidecar.metric("jit_rejected_requests_total", reason="too_many_requests")
    print(
        f"\nnoisy neighbour: quiet p50 alone {statistics.median(alone) * 1000:.1f} ms, under a "
        f"24-caller flood {statistics.median(under_flood) * 1000:.1f} ms; flood got "
        f"{len(ledger.received)} grants and {per_identity:.0f} too_many_requests"
    )
    assert len(under_flood) == 40  # every quiet call succeeded (an error would have raised)
    assert ledger.refusals[("RESOURCE_EXHAUSTED", "too_many_requests")] > 0
    assert len(ledger.received) > 0
    assert ledger.undefined_reasons == []
    assert per_identity == ledger.refusals[("RESOURCE_EXHAUSTED", "too_many_requests")]

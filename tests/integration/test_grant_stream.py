"""GrantStream (docs/api.md) against a real OPA and a real sidecar process over its Unix
socket: ordering, per-intent errors, batches, crash on close, the SDK's fallback to unary,
a slow consumer and a stream outliving its task."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import AccessClient, AsyncAccessClient, TaskEnded
from sidecar.client._errors import translate_error
from tests.grant_streams import RawStream
from tests.grant_streams import status_reason as _reason
from tests.grant_streams import stream_intent as _intent
from tests.harness import OpaServer, SidecarProcess, clean_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
#: Heartbeats every hour: only the stream can tell the sidecar the agent is gone.
NO_HEARTBEATS = ("--heartbeat-interval", "3600", "--sweep-interval", "0.2")


READ = ("docs.read", "docs://handbook/intro")
WRITE = ("tickets.update", "tickets://t-4711", "update the ticket the customer named")


@pytest.fixture
def quiet_sidecar(tmp_path: Path, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar whose heartbeat window is an hour (tasks crash only through the stream)."""
    process = SidecarProcess(tmp_path / "sidecar", opa.url, *NO_HEARTBEATS).start()
    yield process
    process.stop(timeout=15)


def _begin(sidecar: SidecarProcess) -> str:
    with sidecar.client() as c:
        return str(c.begin_task("stream test").task_id)


def _write_burst(sidecar: SidecarProcess, count: int) -> Any:
    """One message of `count` JIT intents (never cached: each needs the policy)."""
    task_id = _begin(sidecar)
    stream = RawStream(sidecar)
    writes = [
        _intent("tickets.update", f"tickets://t-{n}", "update the ticket the user named")
        for n in range(count)
    ]
    stream.send(task_id=task_id, intents=writes)
    answer = stream.read()
    stream.close()
    return answer


def test_answers_come_in_request_order_with_their_ids(quiet_sidecar: SidecarProcess) -> None:
    """Pipelined messages are answered one for one, in order, each echoing its request_id,
    and the audit log records the grants in that order. (Four rounds: a fifth denial within
    ten minutes would make the flows' probing rule escalate the task, rego/jit/flows.rego.)"""
    task_id = _begin(quiet_sidecar)
    stream = RawStream(quiet_sidecar)
    kinds = [READ, WRITE, ("payments.refund", "payments://orders/42", "duplicate charge"), READ]
    stream.send(request_id="open", task_id=task_id)
    for n, kind in enumerate(kinds * 4):
        stream.send(request_id=f"r{n}", intents=[_intent(*kind)])
    answers = [stream.read() for _ in range(1 + len(kinds) * 4)]
    stream.close()
    assert [a.request_id for a in answers] == ["open"] + [f"r{n}" for n in range(16)]
    assert answers[0].task.task_id == task_id
    assert answers[0].task.state == pb.TASK_STATE_ACTIVE
    decisions = [a.results[0].response.decision for a in answers[1:]]
    expected = [pb.DECISION_GRANTED, pb.DECISION_GRANTED, pb.DECISION_DENIED, pb.DECISION_GRANTED]
    assert decisions == expected * 4
    issued = [
        a.results[0].response.grant.grant_id
        for a in answers[1:]
        if a.results[0].response.grant.grant_id
    ]
    audited = [r["grant_id"] for r in quiet_sidecar.events("grant_issued")]
    assert audited == issued


def test_per_intent_errors_carry_the_unary_status_and_reason(quiet_sidecar: SidecarProcess) -> None:
    """A bad intent gets RequestGrant's status and reason inside its result; the other
    intents of the same message are answered; nothing is issued for the bad one."""
    task_id = _begin(quiet_sidecar)
    with quiet_sidecar.client() as c, pytest.raises(grpc.RpcError) as unary:
        c._stub.RequestGrant(
            pb.RequestGrantRequest(
                task_id=task_id, intent=pb.Intent(action="docs.read", resource="DOCS://x")
            )
        )
    stream = RawStream(quiet_sidecar)
    stream.send(
        task_id=task_id,
        intents=[
            _intent(*READ),
            _intent("docs.read", "DOCS://x"),
            _intent("", "docs://a"),
            _intent(*WRITE),
        ],
    )
    answer = stream.read()
    stream.close()
    good, bad_resource, bad_intent, write = answer.results
    assert good.response.decision == pb.DECISION_GRANTED
    assert write.response.decision == pb.DECISION_GRANTED
    assert not bad_resource.HasField("response")
    assert bad_resource.error.code == code_pb2.INVALID_ARGUMENT
    assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(bad_resource.error) == "invalid_resource"
    assert bad_resource.error.message == unary.value.details()
    assert bad_intent.error.code == code_pb2.INVALID_ARGUMENT
    assert _reason(bad_intent.error) == "invalid_intent"
    assert len(quiet_sidecar.events("grant_issued")) == 2
    rejected = [r for r in quiet_sidecar.events("request_rejected") if r["rpc"] == "GrantStream"]
    assert [r["reason"] for r in rejected] == ["invalid_resource", "invalid_intent"]


def test_a_batch_is_decided_in_one_policy_evaluation(quiet_sidecar: SidecarProcess) -> None:
    """Several intents in one message that the cache cannot answer share one OPA decision
    (one evaluation of data.jit.batch_decisions): their audit records carry one decision_id."""
    answer = _write_burst(quiet_sidecar, 5)
    assert [r.response.decision for r in answer.results] == [pb.DECISION_GRANTED] * 5
    records = quiet_sidecar.events("grant_issued")
    assert len(records) == 5
    assert len({r["decision_id"] for r in records}) == 1
    assert records[0]["decision_id"]
    assert [r["intent"]["resource"] for r in records] == [f"tickets://t-{n}" for n in range(5)]
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # one commit: consecutive records


def test_stream_must_name_an_owned_task(quiet_sidecar: SidecarProcess) -> None:
    """A stream whose first message names no task, or an unknown one, ends with the unary
    status and reason."""
    for first, code, reason in (
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_task"),
        ({"task_id": "t-nobody"}, grpc.StatusCode.NOT_FOUND, "task_not_found"),
    ):
        stream = RawStream(quiet_sidecar)
        stream.send(**first)
        with pytest.raises(grpc.RpcError) as refused:
            stream.read()
        stream.close()
        assert refused.value.code() == code
        assert translate_error(refused.value).reason == reason


def _spawn_agent(
    sidecar: SidecarProcess, grants: int
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "tests.stream_agent", str(sidecar.socket), str(grants)],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None
    line = agent.stdout.readline()
    assert line, "the agent printed nothing"
    return agent, json.loads(line)


def test_killed_agent_loses_its_grants_through_the_stream(quiet_sidecar: SidecarProcess) -> None:
    """SIGKILL of an agent process holding a GrantStream ends its task as crashed and revokes
    its grants (agent_lost) although its heartbeat window is an hour."""
    agent, held = _spawn_agent(quiet_sidecar, 3)
    with quiet_sidecar.client() as c:
        assert len(c.list_grants(held["task_id"])) == 3
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        assert agent.stdout is not None
        agent.stdout.close()
        wait_for(lambda: not c.list_grants(held["task_id"]), 30, what="the grants to end")
        ended = c.list_grants(held["task_id"], include_inactive=True)
    assert sorted(g.grant_id for g in ended) == sorted(held["grant_ids"])
    assert {g.revocation_reason for g in ended} == {"agent_lost"}
    wait_for(lambda: quiet_sidecar.events("task_completed"), 10, what="the record")
    (done,) = quiet_sidecar.events("task_completed")
    assert (done["state"], done["reason"], done["revoked_grants"]) == ("crashed", "agent_lost", 3)
    assert "GrantStream closed before CompleteTask" in done["detail"]
    with quiet_sidecar.client() as c, pytest.raises(TaskEnded) as late:
        c.request_grant(held["task_id"], *READ)
    assert "GrantStream closed" in str(late.value)


def test_sdk_streams_inside_task_and_completes_cleanly(quiet_sidecar: SidecarProcess) -> None:
    """Inside task() the sync and async SDKs grant over the stream; leaving the block
    completes the task (succeeded), and closing the stream afterwards crashes nothing."""
    import asyncio

    with quiet_sidecar.client() as c, c.task("sync") as task:
        assert task._stream is not None
        task.grant(*READ)
        task.grant(WRITE[0], WRITE[1], justification=WRITE[2])

    async def run_async() -> None:
        async with AsyncAccessClient(quiet_sidecar.socket) as ac, ac.task("async") as atask:
            assert atask._stream is not None
            await atask.grant(*READ)

    asyncio.run(run_async())
    wait_for(lambda: len(quiet_sidecar.events("task_completed")) == 2, 10, what="records")
    states = [r["state"] for r in quiet_sidecar.events("task_completed")]
    assert states == ["succeeded", "succeeded"]
    assert (
        quiet_sidecar.metric("jit_rpc_duration_seconds_count", method="RequestGrant", code="OK")
        == 0
    )
    assert (
        quiet_sidecar.metric("jit_rpc_duration_seconds_count", method="GrantStream", code="OK") >= 5
    )


def test_sdk_falls_back_to_unary_when_the_stream_breaks(tmp_path: Path, opa: OpaServer) -> None:
    """A sidecar restart breaks the stream but not the task (a drain is not a crash): the
    SDK's next grant goes unary and succeeds."""
    sidecar = SidecarProcess(tmp_path / "sidecar", opa.url, *NO_HEARTBEATS).start()
    try:
        with sidecar.client() as c, c.task("survives a restart") as task:
            first = task.grant(*READ)
            assert task._stream is not None
            sidecar.stop()
            sidecar.start()
            second = task.grant(WRITE[0], WRITE[1], justification=WRITE[2])
            assert task._stream is None
            active = {g.grant_id for g in c.list_grants(task.task_id)}
        assert {first.grant_id, second.grant_id} <= active
        states = [r["state"] for r in sidecar.events("task_completed")]
        assert states == ["succeeded"]
    finally:
        sidecar.stop(timeout=15)


def test_sdk_uses_unary_when_the_sidecar_offers_no_stream(
    quiet_sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a server without GrantStream (UNIMPLEMENTED, as an older sidecar answers),
    task() works over unary calls."""
    from tests.no_stream_proxy import NoStreamProxy

    with NoStreamProxy(quiet_sidecar.socket, quiet_sidecar.socket.parent / "old.sock") as old:
        with AccessClient(old.socket) as c, c.task("old sidecar") as task:
            assert task._stream is None
            grant = task.grant(*READ)
        assert grant.grant_id
    assert [r["state"] for r in quiet_sidecar.events("task_completed")] == ["succeeded"]


def test_a_slow_consumer_stalls_only_its_own_stream(quiet_sidecar: SidecarProcess) -> None:
    """A client that sends many messages without reading: the sidecar keeps serving other
    calls, the stream's task stays alive, and every answer arrives later, in order."""
    task_id = _begin(quiet_sidecar)
    stream = RawStream(quiet_sidecar)
    stream.send(request_id="open", task_id=task_id)
    for n in range(300):
        stream.send(
            request_id=f"r{n}", intents=[_intent("docs.read", f"docs://handbook/p{n % 40}")]
        )
    with quiet_sidecar.client() as c:
        other = c.begin_task("meanwhile")
        grant = c.request_grant(other.task_id, *READ)
        assert grant.grant_id
        assert c.heartbeat(task_id).task.state == pb.TASK_STATE_ACTIVE
    ids = [stream.read().request_id for _ in range(301)]
    stream.close()
    assert ids == ["open"] + [f"r{n}" for n in range(300)]


def test_a_stream_outliving_its_task_answers_task_inactive(quiet_sidecar: SidecarProcess) -> None:
    """After CompleteTask (unary) the open stream answers each intent with
    FAILED_PRECONDITION task_inactive, and closing it then crashes nothing."""
    task_id = _begin(quiet_sidecar)
    stream = RawStream(quiet_sidecar)
    stream.send(task_id=task_id, intents=[_intent(*READ)])
    assert stream.read().results[0].response.decision == pb.DECISION_GRANTED
    with quiet_sidecar.client() as c:
        c.complete_task(task_id, "succeeded")
    stream.send(intents=[_intent(*READ)])
    late = stream.read().results[0]
    stream.send(request_id="beat")
    beat = stream.read()
    stream.close()
    assert late.error.code == code_pb2.FAILED_PRECONDITION
    assert _reason(late.error) == "task_inactive"
    assert beat.task.state == pb.TASK_STATE_SUCCEEDED
    wait_for(lambda: quiet_sidecar.metric("jit_active_tasks") == 0, 5, what="no active task")
    states = [r["state"] for r in quiet_sidecar.events("task_completed")]
    assert states == ["succeeded"]
    assert len(quiet_sidecar.events("grant_issued")) == 1


def test_a_task_ending_under_an_open_stream_is_reported_on_it(
    quiet_sidecar: SidecarProcess,
) -> None:
    """An operator ending the task while the stream is open: the stream's next intent is
    refused with task_inactive, and the stream's close adds no crash."""
    task_id = _begin(quiet_sidecar)
    stream = RawStream(quiet_sidecar)
    stream.send(task_id=task_id, intents=[_intent(*READ)])
    stream.read()
    with quiet_sidecar.admin() as admin:
        admin.revoke(task_id=task_id, reason="operator")
    stream.send(intents=[_intent(*READ)])
    late = stream.read().results[0]
    stream.close()
    assert _reason(late.error) == "task_inactive"
    threading.Event().wait(0.5)
    assert [r["reason"] for r in quiet_sidecar.events("task_completed")] == ["revoked_by_operator"]


def test_without_batch_evaluation_each_intent_is_decided_alone(
    tmp_path: Path, opa: OpaServer
) -> None:
    """With batch evaluation off (`--opa-batch-path ""`, as for a policy without the rule)
    a message's intents get one OPA decision each, and are still committed together."""
    sidecar = SidecarProcess(tmp_path / "sidecar", opa.url, "--opa-batch-path", "").start()
    try:
        answer = _write_burst(sidecar, 3)
        records = sidecar.events("grant_issued")
    finally:
        sidecar.stop(timeout=15)
    assert [r.response.decision for r in answer.results] == [pb.DECISION_GRANTED] * 3
    assert len({r["decision_id"] for r in records}) == 3
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + 3))


def test_a_malformed_message_ends_the_stream_with_its_status(
    quiet_sidecar: SidecarProcess,
) -> None:
    """More than 64 intents in one message: the stream ends with INVALID_ARGUMENT
    invalid_argument, nothing of the message is issued, and the stream's end crashes the
    task (fail closed) like any close before CompleteTask."""
    task_id = _begin(quiet_sidecar)
    stream = RawStream(quiet_sidecar)
    stream.send(task_id=task_id)
    stream.read()
    stream.send(intents=[_intent(*READ)] * 65)
    with pytest.raises(grpc.RpcError) as refused:
        stream.read()
    stream.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert translate_error(refused.value).reason == "invalid_argument"
    assert quiet_sidecar.events("grant_issued") == []
    wait_for(lambda: quiet_sidecar.events("task_completed"), 30, what="the crash record")
    assert [r["state"] for r in quiet_sidecar.events("task_completed")] == ["crashed"]

"""Issue 13 finding 1: the same resource in another spelling must not bypass approval or
task scope. Every spelling is sent by a real agent client over the real Unix socket to a real
sidecar (dev identity spiffe://jit.local/agent/ops), which asks the real OPA binary running the
SHIPPED rego/. Each is either refused at the door (INVALID_ARGUMENT invalid_resource, nothing
issued, refusal audited) or decided exactly as its canonical twin (docs/api.md, "Resource
names"; docs/security.md, threat model)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import InvalidRequest
from sidecar.validation import preview
from tests.harness import OpaServer, SidecarProcess

OPS = "spiffe://jit.local/agent/ops"
ACTION = "infra.restart"
JUSTIFICATION = "incident 77: the web tier is wedged"

#: Spellings that name infra://prod/web (or try to), all refused before the policy runs.
REFUSED = [
    pytest.param("infra://PROD/web", id="upper-authority"),
    pytest.param("infra://Prod/web", id="mixed-case-authority"),
    pytest.param("INFRA://prod/web", id="upper-scheme"),
    pytest.param("Infra://prod/web", id="mixed-case-scheme"),
    pytest.param("infra://%70rod/web", id="escaped-unreserved-in-authority"),
    pytest.param("infra://%70%72%6F%64/web", id="fully-escaped-authority"),
    pytest.param("infra://prod/%77eb", id="escaped-unreserved-in-path"),
    pytest.param("infra://prod/%77%65%62", id="fully-escaped-segment"),
    pytest.param("infra://prod/w%65b", id="escaped-letter-mid-segment"),
    pytest.param("infra://staging/../prod/web", id="dot-dot-segment"),
    pytest.param("infra://staging/%2E%2E/prod/web", id="escaped-dot-dot"),
    pytest.param("infra://staging/%2e%2e/prod/web", id="lower-escaped-dot-dot"),
    pytest.param("infra://./prod/web", id="dot-authority"),
    pytest.param("infra://prod/./web", id="dot-segment"),
    pytest.param("infra://prod/web/.", id="trailing-dot-segment"),
    pytest.param("infra://prod/web/x/..", id="trailing-dot-dot"),
    pytest.param("infra://prod%2Fweb", id="encoded-slash-in-authority"),
    pytest.param("infra://prod%2fweb", id="lower-encoded-slash"),
    pytest.param("infra://prod/web%2Fx", id="encoded-slash-in-path"),
    pytest.param("infra://prod/web%5Cx", id="encoded-backslash"),
    pytest.param("infra://prod/web/", id="trailing-slash"),
    pytest.param("infra://prod//web", id="empty-segment"),
    pytest.param("infra:///prod/web", id="empty-authority"),
    pytest.param("infra://prod./web", id="trailing-dot-authority"),
    pytest.param("infra://prod:443/web", id="port"),
    pytest.param("infra://prod:/web", id="empty-port"),
    pytest.param("infra://ops@prod/web", id="userinfo"),
    pytest.param("infra://[prod]/web", id="ip-literal-brackets"),
    pytest.param("infra://prod/web?x=1", id="query"),
    pytest.param("infra://prod/web#top", id="fragment"),
    pytest.param("infra://prod\\web", id="backslash"),
    pytest.param("infra:prod/web", id="no-authority"),
    pytest.param("infra://pr\u043ed/web", id="cyrillic-o-authority"),
    pytest.param("infra://prod/w\u0435b", id="cyrillic-e-segment"),
    pytest.param("infra://\uff50rod/web", id="fullwidth-p"),
    pytest.param("infra://prod/web\u200b", id="zero-width-space"),
    pytest.param("infra://prod/web%00", id="escaped-nul"),
    pytest.param("infra://prod/web%C2%A0", id="escaped-non-ascii"),
]

#: (spelling, canonical twin): accepted names the policy must decide as it decides the twin.
TWINS = [
    pytest.param("infra://prod", "infra://prod/web", id="bare-authority-needs-approval"),
    pytest.param("infra://prod/WEB", "infra://prod/web", id="path-case-is-another-resource"),
    pytest.param("infra://prod/web;x", "infra://prod/web", id="matrix-param-stays-under-prod"),
    pytest.param("infra://prod/a%20b", "infra://prod/web", id="escaped-space-stays-under-prod"),
    pytest.param("infra://production/web", "infra://staging/web", id="longer-name-not-prod"),
    pytest.param("infra://prod-eu/web", "infra://staging/web", id="prefix-of-name-not-prod"),
]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """One sidecar for the table, as the ops agent (home domain infra)."""
    workdir: Path = tmp_path_factory.mktemp("ops")
    process = SidecarProcess(workdir, opa.url, "--dev-subject", OPS).start()
    yield process
    process.stop(timeout=15)


def decide(
    sidecar: SidecarProcess, resource: str, labels: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """(decision, reason codes) of one request in a task of its own; the task is ended."""
    with sidecar.client() as c:
        task = c.begin_task("spellings", labels=labels)
        try:
            answer = c.request_grant_raw(
                task.task_id, ACTION, resource, justification=JUSTIFICATION
            )
        finally:
            c.complete_task(task.task_id)
    codes = sorted(reason.split(":", 1)[0] for reason in answer.reasons)
    return pb.Decision.Name(answer.decision), codes


def outcomes(sidecar: SidecarProcess) -> tuple[int, int, int]:
    """Tokens issued, approvals requested and grant rows so far."""
    return (
        len(sidecar.events("grant_issued")),
        len(sidecar.events("grant_pending")),
        len(sidecar.grant_rows()),
    )


def assert_refused(sidecar: SidecarProcess, resource: str, labels: dict[str, str] | None) -> None:
    before = outcomes(sidecar)
    with sidecar.client() as c:
        task = c.begin_task("spellings", labels=labels)
        with pytest.raises(InvalidRequest) as err:
            c.request_grant(task.task_id, ACTION, resource, justification=JUSTIFICATION)
        c.complete_task(task.task_id)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "invalid_resource"
    assert outcomes(sidecar) == before
    record = sidecar.events("request_rejected")[-1]
    assert record["reason"] == "invalid_resource"
    assert record["task_id"] == task.task_id
    assert record["intent"]["resource"] == preview(resource)


def test_the_canonical_name_needs_approval(ops: SidecarProcess) -> None:
    """The baseline: infra.restart on infra://prod/web is PENDING_APPROVAL for ops."""
    assert decide(ops, "infra://prod/web") == (
        "DECISION_PENDING_APPROVAL",
        ["approval_resource", "tier_approval"],
    )


@pytest.mark.parametrize("resource", REFUSED)
def test_other_spellings_are_refused_at_the_door(ops: SidecarProcess, resource: str) -> None:
    """A second spelling of infra://prod/web: INVALID_ARGUMENT invalid_resource, no token,
    no approval request, the refusal audited."""
    assert_refused(ops, resource, None)


@pytest.mark.parametrize(("resource", "twin"), TWINS)
def test_accepted_names_are_decided_as_their_twin(
    ops: SidecarProcess, resource: str, twin: str
) -> None:
    """A canonical name is decided exactly as the canonical twin the policy must treat alike."""
    assert decide(ops, resource) == decide(ops, twin)


def test_table_is_large_enough() -> None:
    """The finding asks for at least 30 spellings."""
    assert len(REFUSED) + len(TWINS) >= 30


def test_task_scope_cannot_be_left_by_another_spelling(ops: SidecarProcess) -> None:
    """A task scoped to infra://staging/ reaches neither prod through a dot segment nor a
    longer name; its own resources are granted."""
    scope = {"resources": "infra://staging/"}
    assert_refused(ops, "infra://staging/../prod/web", scope)
    assert_refused(ops, "infra://staging/%2E%2E/prod/web", scope)
    assert decide(ops, "infra://staging-eu/web", scope) == ("DECISION_DENIED", ["intent_mismatch"])
    assert decide(ops, "infra://prod/web", scope) == ("DECISION_DENIED", ["intent_mismatch"])
    assert decide(ops, "infra://staging/web", scope) == ("DECISION_GRANTED", ["tier_jit"])
    assert decide(ops, "infra://staging", scope) == ("DECISION_GRANTED", ["tier_jit"])


@pytest.mark.parametrize(
    "label", ["infra://STAGING/", "infra://staging/../prod", "infra://staging//", "infra:"]
)
def test_task_scope_in_another_spelling_is_refused(ops: SidecarProcess, label: str) -> None:
    """BeginTask with a `resources` label that is not canonical: INVALID_ARGUMENT
    invalid_resource, and no task is opened."""
    begun = len(ops.events("task_begun"))
    with ops.client() as c, pytest.raises(InvalidRequest) as err:
        c.begin_task("spellings", labels={"resources": label})
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "invalid_resource"
    assert len(ops.events("task_begun")) == begun
    assert ops.events("request_rejected")[-1]["reason"] == "invalid_resource"


def test_policy_explain_sends_the_parts_and_refuses_other_spellings(opa: OpaServer) -> None:
    """`jit-sidecar policy explain` asks the shipped policy as the sidecar would: with
    resource_parts for a canonical name, and not at all for another spelling."""

    def explain(resource: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "sidecar.cli", "policy", "explain", ACTION, resource),
                *("--subject", OPS, "--justification", JUSTIFICATION, "--opa-url", opa.url),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    canonical, other = explain("infra://prod"), explain("infra://PROD/web")
    assert canonical.returncode == 0, canonical.stderr
    assert canonical.stdout.startswith("ALLOW after human approval")
    assert "approval_resource" in canonical.stdout
    assert other.returncode == 2
    assert "invalid_resource: intent.resource has an upper-case authority" in other.stderr
    assert other.stdout == ""

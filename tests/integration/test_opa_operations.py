"""OPA as it is run in operation, against the real `opa` binary and a real sidecar process
over its Unix socket: decision ids end to end, metric series that exist from start-up, and
`jit-sidecar policy explain` over TCP and OPA's Unix socket, and `make run`'s watch over
its OPA."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sidecar.client import AccessClient, AccessDenied
from sidecar.metrics import REJECTION_REASONS, rpc_methods
from sidecar.model import RevocationReason
from sidecar.policy import CAUSES
from tests.harness import ROOT, OpaServer, SidecarProcess, free_port, running, wait_for


def decision_log(opa: OpaServer) -> dict[str, dict[str, Any]]:
    """OPA's console decision log (JSON lines on its stderr), by decision_id."""
    entries = {}
    for line in opa.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == "Decision Log":
                entries[entry["decision_id"]] = entry
    return entries


def test_grant_and_denial_carry_opas_decision_id(tmp_path: Path, own_opa: OpaServer) -> None:
    """RequestGrant's answer, AccessDenied and the audit records carry the decision_id that
    OPA's console decision log shows for that very decision."""
    with running(SidecarProcess(tmp_path / "s", own_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("triage", labels={"purpose": "support"})
        granted = c.request_grant_raw(
            task.task_id, "tickets.update", "tickets://t-7", justification="asked to close"
        )
        with pytest.raises(AccessDenied) as denied:
            c.request_grant(task.task_id, "payments.refund", "payments://orders/1")
        (issued,) = sidecar.events("grant_issued")
        (refused,) = sidecar.events("grant_denied")
    wanted = {granted.decision_id, denied.value.decision_id}

    def logged_both() -> dict[str, dict[str, Any]] | None:
        log = decision_log(own_opa)
        return log if wanted <= set(log) else None

    logged = wait_for(logged_both, 10, what="OPA's decision log")
    assert granted.decision_id != ""
    assert denied.value.decision_id not in ("", granted.decision_id)
    assert issued["decision_id"] == granted.decision_id
    assert refused["decision_id"] == denied.value.decision_id
    assert logged[granted.decision_id]["path"] == "jit/decision"
    assert logged[granted.decision_id]["result"]["allow"] is True
    assert logged[granted.decision_id]["input"]["intent"]["resource"] == "tickets://t-7"
    assert logged[denied.value.decision_id]["result"]["allow"] is False


def _samples(sidecar: SidecarProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(sidecar.http + "/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fresh_sidecar_exposes_every_known_series_at_zero(sidecar: SidecarProcess) -> None:
    """Before any request, policy errors, rejections, RPC durations (code OK) and revocation
    lag exist for every known label combination, at 0."""
    samples = _samples(sidecar)
    expected = [
        *(
            ("jit_policy_errors_total", {"reason": r.value, "cause": c})
            for r, causes in CAUSES.items()
            for c in causes
        ),
        *(("jit_rejected_requests_total", {"reason": r}) for r in REJECTION_REASONS),
        *(("jit_rpc_duration_seconds_count", {"method": m, "code": "OK"}) for m in rpc_methods()),
        *(("jit_revocation_lag_seconds_count", {"reason": r.value}) for r in RevocationReason),
    ]
    keys = [(name, frozenset(labels.items())) for name, labels in expected]
    missing = [key for key in keys if key not in samples]
    values = {samples[key] for key in keys if key in samples}
    assert missing == []
    assert values == {0.0}
    assert len(expected) == 7 + len(REJECTION_REASONS) + len(rpc_methods()) + 10
    assert {"RequestGrant", "BeginTask", "Admin.Revoke"} <= set(rpc_methods())


def _opa_children(pid: int) -> list[int]:
    """Child processes of `pid` that are `opa run`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if Path(cmdline[0].decode()).name == "opa" and cmdline[1] == b"run":
                    found.append(int(child))
    return found


def test_make_run_restarts_opa_when_it_dies(tmp_path: Path) -> None:
    """scripts/dev-run.sh notices its OPA was killed, says so, starts a new one that serves
    grants again, and stops both on SIGTERM."""
    opa_port, http_port = free_port(), free_port()
    socket = tmp_path / "sidecar.sock"
    stderr = tmp_path / "dev-run.err"
    args = [
        str(ROOT / "scripts" / "dev-run.sh"),
        *("--opa-url", f"http://127.0.0.1:{opa_port}", "--http-addr", f"127.0.0.1:{http_port}"),
        *("--socket", str(socket), "--admin-socket", str(tmp_path / "admin.sock")),
        *("--state", f"sqlite:{tmp_path / 'state.db'}", "--audit-log", str(tmp_path / "a.jsonl")),
        *("--signing-key", str(tmp_path / "key.pem")),
    ]
    env = {**os.environ, "OPA_ADDR": f"127.0.0.1:{opa_port}", "OPA_LOG": str(tmp_path / "opa.log")}
    env = {k: v for k, v in env.items() if not k.startswith("JIT_SIDECAR_")}
    with stderr.open("wb") as err:
        script = subprocess.Popen(args, env=env, stdout=err, stderr=err, start_new_session=True)
    try:
        wait_for(socket.exists, 30, what="the sidecar's socket")
        (first,) = _opa_children(script.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "OPA is back" in stderr.read_text(), 30, what="OPA to be restarted")
        (second,) = _opa_children(script.pid)
        with AccessClient(socket) as c:
            task = c.begin_task("after a restart")
            grant = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        script.send_signal(signal.SIGTERM)
        status = script.wait(30)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(10)
    said = stderr.read_text()
    assert f"make run: OPA (pid {first}) exited with status 137; restarting it" in said
    assert f"make run: OPA is back (pid {second})" in said
    assert grant.decision_id != ""
    assert status == 143
    assert not Path(f"/proc/{second}").exists()


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "policy", "explain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _shape(value: Any) -> Any:
    """The key structure of a JSON document (values dropped)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_policy_explain_over_opas_unix_socket_builds_the_sidecars_input(
    tmp_path: Path,
) -> None:
    """`policy explain` reaches OPA over a unix:// URL, exits 3 on DENY and 0 on ALLOW, and
    sends an input shaped exactly like the one the sidecar sends for a real grant."""
    opa = OpaServer(tmp_path, unix_socket=tmp_path / "opa.sock").start()
    try:
        with running(SidecarProcess(tmp_path / "s", opa.url)) as sidecar, sidecar.client() as c:
            task = c.begin_task("triage", labels={"purpose": "support"})
            c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
            held = c.request_grant_raw(
                task.task_id, "tickets.update", "tickets://t-7", justification="asked to close"
            )
        url = f"unix://{tmp_path / 'opa.sock'}"
        common = (
            "--opa-url",
            url,
            "--label",
            "purpose=support",
            "--grant",
            "docs.read=docs://handbook/intro",
        )
        allowed = _explain(
            "tickets.update",
            "tickets://t-7",
            "--justification",
            "asked to close",
            *common,
            "--json",
        )
        denied = _explain("payments.refund", "payments://orders/1", *common)
        sent = decision_log(opa)[held.decision_id]["input"]
    finally:
        opa.stop()
    explained = json.loads(allowed.stdout)
    assert allowed.returncode == 0, allowed.stderr
    assert explained["decision"]["allow"] is True
    assert explained["decision_id"] != ""
    assert _shape(explained["input"]) == _shape(sent)
    held_grants = [(g["action"], g["resource"]) for g in explained["input"]["task"]["grants"]]
    assert held_grants == [(g["action"], g["resource"]) for g in sent["task"]["grants"]]
    assert denied.returncode == 3, denied.stderr
    assert denied.stdout.startswith("DENY  spiffe://jit.local/agent/dev → payments.refund")
    assert "  - cross_domain: payments is not among this agent's domains" in denied.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--opa-url", "ftp://127.0.0.1:1"), 2, "--opa-url: unsupported scheme"),
        (("--context", "{not json"), 2, "Expecting property name"),
        (("--subject", "not-a-spiffe-id"), 2, "jit-sidecar: "),
        (("--opa-url", "unix:///nonexistent/opa.sock"), 1, "no usable decision"),
    ],
)
def test_policy_explain_bad_input_is_a_message_not_a_traceback(
    args: tuple[str, ...], code: int, message: str
) -> None:
    """An unusable URL, context or subject exits 2, an unreachable OPA 1, each with one line
    on stderr and no Python traceback."""
    result = _explain("docs.read", "docs://a", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr

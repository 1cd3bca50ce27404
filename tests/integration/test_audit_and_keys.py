"""Tamper-evident audit log and signing-key rotation, with real sidecar processes, the real
OPA and the `jit-sidecar` CLI as people run it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests

from sidecar.audit import log_files
from tests.faults import tmpfs
from tests.harness import OpaServer, SidecarProcess, running, wait_for


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def audit_log(tmp_path: Path, opa: OpaServer) -> Path:
    """An audit log with a dozen records written by a real sidecar."""
    with running(SidecarProcess(tmp_path / "s", opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("audit me")
        for i in range(4):
            c.request_grant(task.task_id, "docs.read", f"docs://page/{i}")
        denied = c.request_grant_raw(task.task_id, "payments.refund", "payments://1")
        assert denied.reasons  # a denial is part of the record too
        c.complete_task(task.task_id)
    return sidecar.audit


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_verify_intact_log(audit_log: Path) -> None:
    """An untouched log verifies: exit 0 and the record count."""
    result = cli("audit", "verify", str(audit_log))
    count = len(lines(audit_log))
    assert result.returncode == 0, result.stdout
    assert f"OK: {count} records" in result.stdout


def _broken(path: Path, mutate: str) -> int:
    """Tamper with the log; return the 1-based line verification must name."""
    data = lines(path)
    if mutate == "edit-byte":
        target = 5
        data[target - 1] = data[target - 1].replace(b"docs://page/2", b"docs://page/9")
    elif mutate == "delete-line":
        target = 4
        del data[target - 1]
    elif mutate == "reorder-pair":
        target = 3
        data[2], data[3] = data[3], data[2]
    elif mutate == "truncate-last":
        target = len(data)
        data[-1] = data[-1][: len(data[-1]) // 2]
    else:
        raise AssertionError(mutate)
    path.write_bytes(b"".join(data))
    return target


@pytest.mark.parametrize("mutate", ["edit-byte", "delete-line", "reorder-pair", "truncate-last"])
def test_verify_names_first_broken_line(audit_log: Path, mutate: str) -> None:
    """Any edit, deletion, reordering or truncation: exit 1 naming the first broken line."""
    target = _broken(audit_log, mutate)
    result = cli("audit", "verify", str(audit_log), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["ok"] is False
    assert report["line"] == target
    assert report["records"] == target - 1


def _cut(path: Path, mutate: str) -> str:
    """Tamper with the log in a way the chain alone cannot see; return what verify says."""
    data = lines(path)
    if mutate == "delete-last-3":
        path.write_bytes(b"".join(data[:-3]))
        return "records were removed from its end"
    if mutate == "delete-first-3":
        path.write_bytes(b"".join(data[3:]))
        return "starts at seq 4, neither at its genesis"
    if mutate == "duplicate-subject":
        data[1] = data[1].replace(b',"hash"', b',"subject":"spiffe://x/evil","hash"', 1)
        path.write_bytes(b"".join(data))
        return "duplicate member 'subject'"
    if mutate == "empty":
        path.write_bytes(b"")
        return "the log is empty"
    raise AssertionError(mutate)


@pytest.mark.parametrize(
    "mutate", ["delete-last-3", "delete-first-3", "duplicate-subject", "empty"]
)
def test_verify_fails_on_a_log_cut_at_either_end(audit_log: Path, mutate: str) -> None:
    """Records deleted at the end (below the shutdown checkpoint) or at the start, a
    shadowed duplicate member and an empty file: exit 1 naming the problem (each verified
    as OK before)."""
    expected = _cut(audit_log, mutate)
    key = audit_log.parent / "signing-key.pem"
    signed = cli("audit", "verify", str(audit_log), "--key", str(key))
    unsigned = cli("audit", "verify", str(audit_log), "--json")
    assert signed.returncode == 1, signed.stdout
    assert expected in signed.stdout
    assert unsigned.returncode == 1
    assert json.loads(unsigned.stdout)["ok"] is False
    assert "Traceback" not in signed.stderr + unsigned.stderr


def test_shutdown_checkpoint_covers_the_whole_log(audit_log: Path) -> None:
    """After SIGTERM the signed checkpoint names the last record: verified with the key
    file, every record is covered, and the store applied the same last record."""
    key = audit_log.parent / "signing-key.pem"
    state = audit_log.parent / "state.db"
    result = cli(
        "audit", "verify", str(audit_log), "--key", str(key), "--state", f"sqlite:{state}", "--json"
    )
    report = json.loads(result.stdout)
    text = cli("audit", "verify", str(audit_log), "--key", str(key)).stdout
    count = len(lines(audit_log))
    (checkpoint,) = report["checkpoints"]
    assert result.returncode == 0, result.stdout
    assert (report["ok"], report["first_seq"], report["last_seq"]) == (True, 1, count)
    assert checkpoint["status"] == "covered"
    assert checkpoint["signature_verified"] is True
    assert (checkpoint["seq"], checkpoint["uncovered_records"]) == (count, 0)
    assert report["store_applied_seq"] == count
    assert f"records 1..{count} covered by a checkpoint signed at" in text
    assert "0 record(s) after it are not yet covered" in text


def test_a_forged_checkpoint_is_refused(audit_log: Path, tmp_path: Path) -> None:
    """A checkpoint signed by another key, even naming the sidecar's kid, fails against the
    sidecar's JWKS (as a file) and its key file."""
    from sidecar.checkpoints import checkpoint_path
    from sidecar.tokens import SigningKey, generate_private_key, load_private_key

    real = SigningKey.from_private_key(load_private_key(audit_log.parent / "signing-key.pem"))
    other = SigningKey.from_private_key(generate_private_key("EdDSA"))
    posing = SigningKey(real.kid, other.alg, other.private_key, other.jwk, b"")
    last = json.loads(lines(audit_log)[-1])
    claims = {"iss": "https://jit-sidecar.local", "iat": 1, "seq": last["seq"] + 5}
    forged = posing.sign_typed(claims | {"hash": "0" * 64}, "jit-audit-checkpoint+jwt")
    checkpoint_path(audit_log).write_text(forged + "\n")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [dict(real.jwk)]}))
    with_jwks = cli("audit", "verify", str(audit_log), "--jwks", str(jwks))
    with_key = cli(
        "audit", "verify", str(audit_log), "--key", str(audit_log.parent / "signing-key.pem")
    )
    assert with_jwks.returncode == 1
    assert "the signature does not verify" in with_jwks.stdout
    assert with_key.returncode == 1
    assert "the signature does not verify" in with_key.stdout


def test_state_store_ahead_of_the_log_is_detected(audit_log: Path) -> None:
    """The last record deleted and the checkpoint removed too: --state still sees that the
    store applied a record the log no longer has."""
    from sidecar.checkpoints import checkpoint_path

    state = audit_log.parent / "state.db"
    count = len(lines(audit_log))
    audit_log.write_bytes(b"".join(lines(audit_log)[:-1]))
    checkpoint_path(audit_log).unlink()
    without = cli("audit", "verify", str(audit_log))
    with_state = cli("audit", "verify", str(audit_log), "--state", str(state))
    assert without.returncode == 0, without.stdout
    assert "no checkpoint" in without.stdout
    assert with_state.returncode == 1
    assert f"the state store applied record {count} but the log ends at seq {count - 1}" in (
        with_state.stdout
    )


def test_checkpoint_read_through_the_running_sidecars_jwks(tmp_path: Path, opa: OpaServer) -> None:
    """With a long interval, records written after the last checkpoint (the one written at
    SIGTERM) are reported as not yet covered; the JWKS URL of the running sidecar verifies
    the checkpoint."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--audit-checkpoint-interval", "3600")
    with running(process) as sidecar, sidecar.client() as c:
        c.begin_task("before the restart")
    covered = len(lines(process.audit))
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("after the restart")
        c.request_grant(task.task_id, "docs.read", "docs://after")
        jwks = sidecar.http + "/.well-known/jwks.json"
        result = cli("audit", "verify", str(process.audit), "--jwks", jwks, "--json")
        total = len(lines(process.audit))
    (checkpoint,) = json.loads(result.stdout)["checkpoints"]
    assert result.returncode == 0, result.stdout
    assert checkpoint["signature_verified"] is True
    assert (checkpoint["seq"], checkpoint["uncovered_records"]) == (covered, total - covered)
    assert total > covered


def test_a_log_shorter_than_its_checkpoint_refuses_to_start(tmp_path: Path, opa: OpaServer) -> None:
    """With the state gone too (so the store cannot tell), the checkpoint alone stops a
    sidecar from continuing a log that lost its last records."""
    process = SidecarProcess(tmp_path / "s", opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        c.request_grant(task.task_id, "docs.read", "docs://a")
    count = len(lines(process.audit))
    process.audit.write_bytes(b"".join(lines(process.audit)[:-1]))
    for leftover in process.workdir.glob("state.db*"):
        leftover.unlink()
    with pytest.raises(RuntimeError, match="sidecar exited"):
        process.start()
    assert f"covers record {count} but the log" in process.log()


def test_chain_continues_across_restarts_and_rotation(tmp_path: Path, opa: OpaServer) -> None:
    """With rotation at ~2 KB, the log spans several files; the chain verifies across all of
    them, across restarts, and each rotated file verifies on its own."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--audit-rotate-bytes", "2000")
    for round_ in range(2):
        with running(process) as sidecar, sidecar.client() as c:
            task = c.begin_task(f"round {round_}")
            for i in range(6):
                c.request_grant(task.task_id, "docs.read", f"docs://r{round_}/{i}")
            c.complete_task(task.task_id)
    rotated = log_files(process.audit)[:-1]
    whole = cli("audit", "verify", str(process.audit))
    first_alone = cli("audit", "verify", str(rotated[0]))
    second_alone = cli("audit", "verify", str(rotated[1]))
    all_records = [json.loads(x) for p in [*rotated, process.audit] for x in lines(p)]
    assert len(rotated) >= 3
    assert whole.returncode == 0, whole.stdout
    assert f"{len(rotated) + 1} file(s)" in whole.stdout
    assert first_alone.returncode == 0
    assert second_alone.returncode == 0, second_alone.stdout
    assert "starting at its genesis (seq 1)" in first_alone.stdout
    assert "starting at a log_rotated record" in second_alone.stdout
    assert [r["seq"] for r in all_records] == list(range(1, len(all_records) + 1))
    assert [r["event"] for r in all_records].count("log_rotated") >= len(rotated) - 1
    assert "0 record(s) after it are not yet covered" in whole.stdout


def test_torn_last_record_is_dropped_at_start_up(tmp_path: Path, opa: OpaServer) -> None:
    """A record torn by a crash mid-write (never acknowledged) is cut at start-up; the chain
    then continues and verifies."""
    process = SidecarProcess(tmp_path / "s", opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        c.begin_task("x")
    with process.audit.open("ab") as f:
        f.write(b'{"event":"grant_issued","seq":99,"hash":"abc')  # no newline: torn
    with running(process) as sidecar, sidecar.client() as c:
        c.begin_task("y")
    result = cli("audit", "verify", str(process.audit))
    assert result.returncode == 0, result.stdout
    assert b'"seq":99' not in process.audit.read_bytes()
    assert any("torn" in r.get("msg", "") for r in process.log_records())


def test_truncated_log_refuses_to_start(tmp_path: Path, opa: OpaServer) -> None:
    """If the log lost records the store has applied (truncated or replaced), the sidecar
    refuses to start rather than continue a broken chain of evidence."""
    process = SidecarProcess(tmp_path / "s", opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        c.request_grant(task.task_id, "docs.read", "docs://a")
    data = lines(process.audit)
    process.audit.write_bytes(b"".join(data[:-1]))
    with pytest.raises(RuntimeError, match="sidecar exited"):
        process.start()
    assert "was the log truncated or replaced" in process.log()


def test_audit_disk_full_fails_closed(tmp_path: Path, opa: OpaServer) -> None:
    """When the audit log cannot be written (a full disk), no grant is issued, the error is
    UNAVAILABLE audit_unavailable, jit_audit_write_errors_total rises and /readyz fails."""
    from sidecar.client import SidecarUnavailable

    with tmpfs(tmp_path / "audit-disk", "64k") as disk:
        process = SidecarProcess(tmp_path / "s", opa.url)
        process.audit = disk / "audit.jsonl"
        with running(process) as sidecar, sidecar.client() as c:
            task = c.begin_task("fill the disk")
            issued = 0
            failure: SidecarUnavailable | None = None
            for i in range(10_000):
                try:
                    c.request_grant(
                        task.task_id, "docs.read", f"docs://{i}", justification="x" * 3000
                    )
                except SidecarUnavailable as err:
                    failure = err
                    break
                issued += 1
            errors = sidecar.metric("jit_audit_write_errors_total")
            ready = requests.get(sidecar.http + "/readyz", timeout=5)
            rows = len(sidecar.grant_rows())
        records = len(sidecar.events("grant_issued"))
    assert failure is not None
    assert failure.reason == "audit_unavailable"
    assert issued > 0
    assert errors >= 1
    assert ready.status_code == 503
    assert ready.json()["checks"]["audit"] == "not writable"
    assert rows == issued == records  # nothing issued that the log does not record


def test_key_rotation(tmp_path: Path, opa: OpaServer) -> None:
    """`jit-sidecar keys rotate`: new tokens use the new key at once; a token signed by the
    old key still verifies against the JWKS until it expires, then the old key leaves."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--sweep-interval", "0.2")
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        old = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=3)
        rotated = cli("keys", "rotate", "--admin-socket", str(sidecar.admin_socket), "--json")
        new = c.request_grant(task.task_id, "docs.read", "docs://b", ttl_seconds=60)
        jwks_during = requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5).json()
        old_verifies = jwt.decode(
            old.token,
            key=jwt.PyJWKSet.from_dict(jwks_during)[jwt.get_unverified_header(old.token)["kid"]],
            algorithms=["EdDSA"],
            audience="docs",
        )
        wait_for(lambda: old.expires_at.seconds < time.time() - 0.5, 10, what="old token expiry")
        wait_for(
            lambda: (
                len(requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5).json()["keys"])
                == 1
            ),
            5,
            what="the old key to leave the JWKS",
        )
        jwks_after = requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5).json()
        (record,) = [r for r in sidecar.events("key_rotated") if "previous_kid" in r]
    info = json.loads(rotated.stdout)
    old_kid = jwt.get_unverified_header(old.token)["kid"]
    new_kid = jwt.get_unverified_header(new.token)["kid"]
    assert rotated.returncode == 0, rotated.stderr
    assert info["previous_kid"] == old_kid
    assert info["kid"] == new_kid != old_kid
    assert {k["kid"] for k in jwks_during["keys"]} == {old_kid, new_kid}
    assert old_verifies["jti"] == old.grant_id
    assert [k["kid"] for k in jwks_after["keys"]] == [new_kid]
    assert record["previous_kid"] == old_kid
    assert record["kid"] == new_kid
    with pytest.raises(KeyError):
        jwt.PyJWKSet.from_dict(jwks_after)[old_kid]


def test_unreadable_key_at_rotation_keeps_the_old_key(tmp_path: Path, opa: OpaServer) -> None:
    """Reloading a key file that is unreadable or garbage keeps the current key, fails the
    request with signing_unavailable and counts jit_key_rotation_errors_total."""
    process = SidecarProcess(tmp_path / "s", opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        before = c.request_grant(task.task_id, "docs.read", "docs://a")
        sidecar.key.write_text("not a key")
        failed = cli("keys", "rotate", "--reload", "--admin-socket", str(sidecar.admin_socket))
        after = c.request_grant(task.task_id, "docs.read", "docs://b")
        errors = sidecar.metric("jit_key_rotation_errors_total")
    assert failed.returncode == 1
    assert "signing_unavailable" in failed.stderr
    assert (
        jwt.get_unverified_header(before.token)["kid"]
        == jwt.get_unverified_header(after.token)["kid"]
    )
    assert errors == 1

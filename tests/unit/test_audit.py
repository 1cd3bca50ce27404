"""Audit chain primitives: sealing, verification, tail recovery, rotation, signed checkpoints
(real files, real keys)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import pytest

from sidecar.audit import (
    GENESIS,
    AuditFile,
    AuditWriteError,
    Head,
    chain_hash,
    log_files,
    read_tail,
    records_after,
    verify,
)
from sidecar.checkpoints import (
    Checkpoint,
    Checkpointer,
    CheckpointError,
    checkpoint_path,
    coverage,
    read_checkpoint,
    sign_checkpoint,
)
from sidecar.clock import SystemClock
from sidecar.jws import VerifyKey, verify_key_from_jwk
from sidecar.tokens import KeyRing, SigningKey, generate_private_key


def write(path: Path, n: int, **kw: object) -> AuditFile:
    f = AuditFile(path, **kw)  # type: ignore[arg-type]
    for i in range(n):
        f.write([{"event": "grant_issued", "grant_id": f"g{i}", "n": i, "note": "é\u202e"}])
    return f


def test_records_chain_from_genesis(tmp_path: Path) -> None:
    """Each record's hash is sha256(prev_hash + canonical JSON without hash)."""
    path = tmp_path / "a.jsonl"
    write(path, 3).close()
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert records[0]["prev_hash"] == GENESIS
    for prev, rec in zip([None, *records], records, strict=False):
        expected_prev = GENESIS if prev is None else prev["hash"]
        body = {k: v for k, v in rec.items() if k != "hash"}
        assert rec["prev_hash"] == expected_prev
        assert chain_hash(expected_prev, body) == rec["hash"]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert verify([path]).ok


def test_lines_are_ascii(tmp_path: Path) -> None:
    """Non-ASCII and bidi characters are escaped, so a line reads the same everywhere."""
    path = tmp_path / "a.jsonl"
    write(path, 1).close()
    assert path.read_bytes().isascii()


def test_tail_and_records_after_span_blocks(tmp_path: Path) -> None:
    """Reading backwards finds the last record and everything after a seq, across blocks."""
    path = tmp_path / "a.jsonl"
    f = AuditFile(path)
    for i in range(300):
        f.write([{"event": "x", "pad": "p" * (i % 700)}])
    f.close()
    tail = read_tail(path)
    assert tail.seq == 300
    assert [r["seq"] for r in records_after(path, 290)] == list(range(291, 301))
    assert len(records_after(path, 0)) == 300


def test_failed_write_leaves_chain_unchanged(tmp_path: Path) -> None:
    """A failed write is cut back; the next batch continues the chain as if it never ran."""
    path = tmp_path / "a.jsonl"
    f = write(path, 2)
    real_fd = f._fd
    f._fd = 10_000  # a closed descriptor: os.write fails
    with pytest.raises(AuditWriteError):
        f.write([{"event": "lost"}])
    f._fd = real_fd
    f.write([{"event": "after"}])
    f.close()
    result = verify([path])
    assert result.ok
    assert result.count == 3


def test_reopen_continues_and_truncated_tail_is_repaired(tmp_path: Path) -> None:
    """A torn final line is cut at open; the chain continues from the last intact record."""
    path = tmp_path / "a.jsonl"
    write(path, 2).close()
    with path.open("ab") as out:
        out.write(b'{"event":"torn"')
    f = AuditFile(path)
    assert f.recovered_torn
    assert f.seq == 2
    f.write([{"event": "next"}])
    f.close()
    assert verify([path]).count == 3


def test_corrupt_last_record_refuses(tmp_path: Path) -> None:
    """A complete but unparseable last line is tampering, not a crash: refuse to open."""
    path = tmp_path / "a.jsonl"
    write(path, 1).close()
    with path.open("ab") as out:
        out.write(b"not json\n")
    with pytest.raises(AuditWriteError):
        AuditFile(path)


def test_rotation_keeps_one_chain(tmp_path: Path) -> None:
    """Rotated files plus the active file verify as one chain; a reopened log continues it;
    each later file starts with a log_rotated record naming the file and record before it."""
    path = tmp_path / "a.jsonl"
    write(path, 20, rotate_bytes=600).close()
    f = AuditFile(path, rotate_bytes=600)
    f.write([{"event": "after-reopen"}])
    f.close()
    files = log_files(path)
    result = verify(files)
    records = [json.loads(x) for p in files for x in p.read_text().splitlines()]
    firsts = [json.loads(p.read_text().splitlines()[0]) for p in files[1:] if p.stat().st_size]
    assert len(files) > 3
    assert result.ok
    assert result.count == len(records) == 21 + len(firsts)
    assert [r["event"] for r in records].count("log_rotated") == len(firsts)
    for previous, first in zip(files, firsts, strict=False):
        tail = read_tail(previous)
        assert first["event"] == "log_rotated"
        assert first["previous_file"] == previous.name
        assert (first["previous_last_seq"], first["previous_last_hash"]) == (tail.seq, tail.hash)


def test_a_rotated_file_alone_starts_at_its_rotation_record(tmp_path: Path) -> None:
    """A later file verifies on its own from its log_rotated record (older files archived)."""
    path = tmp_path / "a.jsonl"
    write(path, 20, rotate_bytes=600).close()
    second = log_files(path)[1]
    result = verify([second])
    assert result.ok
    assert result.first_seq == json.loads(second.read_text().splitlines()[0])["seq"] > 1


def _rechain(path: Path, records: list[dict[str, object]]) -> None:
    """Rewrite `records` as a self-consistent chain from the first one's prev_hash."""
    prev = str(records[0]["prev_hash"])
    out = []
    for record in records:
        body = {k: v for k, v in record.items() if k != "hash"} | {"prev_hash": prev}
        prev = chain_hash(prev, body)
        out.append(json.dumps(body | {"hash": prev}) + "\n")
    path.write_text("".join(out))


def test_deleting_the_first_records_is_detected(tmp_path: Path) -> None:
    """A never-rotated log missing its first 3 records does not verify: its first record is
    neither the genesis record nor a log_rotated record."""
    path = tmp_path / "a.jsonl"
    write(path, 8).close()
    path.write_text("".join(path.read_text().splitlines(keepends=True)[3:]))
    result = verify([path])
    assert not result.ok
    assert (result.bad_line, result.count) == (1, 0)
    assert "starts at seq 4" in result.problem


def test_a_forged_rotation_record_at_the_head_is_caught_by_a_checkpoint(tmp_path: Path) -> None:
    """Deleting the first records and forging a log_rotated record in their place forces
    rewriting every later hash: the chain then verifies, and the signed checkpoint names
    another hash at its seq."""
    path = tmp_path / "a.jsonl"
    write(path, 8).close()
    key = _key()
    head = read_tail(path)
    checkpoint = read_checkpoint(
        sign_checkpoint(key, issuer="i", head=Head(head.seq, head.hash), at=1.0), _keys(key)
    )
    records = [json.loads(x) for x in path.read_text().splitlines()][3:]
    records[0] = {
        "event": "log_rotated",
        "seq": 4,
        "prev_hash": "e" * 64,
        "previous_file": "a.jsonl.000000000001",
        "previous_last_seq": 3,
        "previous_last_hash": "e" * 64,
    }
    _rechain(path, records)
    result = verify([path], at={checkpoint.seq})
    covered = coverage(result, checkpoint, whole=True)
    assert result.ok
    assert (covered.ok, covered.status) == (False, "rewritten")
    assert "the log was rewritten" in covered.text


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    """A second "subject" member (json.loads keeps the last; the hash covers only it) makes
    the line invalid."""
    path = tmp_path / "a.jsonl"
    write(path, 3).close()
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('{"event"', '{"subject":"spiffe://evil","event"', 1)
    lines[1] = lines[1].replace(',"hash"', ',"subject":"spiffe://evil","hash"', 1)
    path.write_text("".join(lines))
    result = verify([path])
    assert not result.ok
    assert (result.bad_line, result.count) == (2, 1)
    assert "duplicate member 'subject'" in result.problem


@pytest.mark.parametrize("case", ["empty", "missing", "no-files"])
def test_an_empty_or_missing_log_does_not_verify(tmp_path: Path, case: str) -> None:
    """An empty file, a missing file and no file at all are failures, never "0 records OK"."""
    path = tmp_path / "a.jsonl"
    if case == "empty":
        path.write_bytes(b"")
    result = verify([] if case == "no-files" else [path])
    assert not result.ok
    assert result.count == 0
    assert result.problem


def _key() -> SigningKey:
    return SigningKey.from_private_key(generate_private_key("EdDSA"))


def _keys(key: SigningKey) -> dict[str, VerifyKey]:
    return {key.kid: verify_key_from_jwk(key.jwk)}


def _checkpointed(path: Path, n: int, key: SigningKey) -> Checkpoint:
    """A log of `n` records and a verified checkpoint of its last one."""
    write(path, n).close()
    tail = read_tail(path)
    token = sign_checkpoint(key, issuer="i", head=Head(tail.seq, tail.hash), at=1_800_000_000)
    return read_checkpoint(token, _keys(key))


def test_checkpoint_coverage_counts_records_after_it(tmp_path: Path) -> None:
    """A checkpoint at seq 6 of a log of 9 covers 1..6 and leaves 3 uncovered."""
    path = tmp_path / "a.jsonl"
    key = _key()
    checkpoint = _checkpointed(path, 6, key)
    f = AuditFile(path)
    f.write([{"event": "later"}, {"event": "later"}, {"event": "later"}])
    f.close()
    covered = coverage(verify([path], at={6}), checkpoint, whole=True)
    assert (covered.ok, covered.status, covered.uncovered) == (True, "covered", 3)
    signed = f"signed at 2027-01-15T08:00:00.000000Z by kid {key.kid}"
    assert f"records 1..6 covered by a checkpoint {signed}" in covered.text


def test_deleting_the_last_records_below_a_checkpoint_is_detected(tmp_path: Path) -> None:
    """The last 3 records deleted: the chain is intact, the checkpoint says it is short."""
    path = tmp_path / "a.jsonl"
    checkpoint = _checkpointed(path, 8, _key())
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-3]))
    result = verify([path], at={checkpoint.seq})
    whole = coverage(result, checkpoint, whole=True)
    part = coverage(result, checkpoint, whole=False)
    assert result.ok
    assert (whole.ok, whole.status) == (False, "truncated")
    assert "ends at seq 5" in whole.text
    assert (part.ok, part.status) == (True, "beyond")


def test_a_checkpoint_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    """A checkpoint forged with another key (even one claiming our kid) does not verify."""
    ours, theirs = _key(), _key()
    forged_kid = SigningKey(ours.kid, theirs.alg, theirs.private_key, theirs.jwk, b"")
    other = sign_checkpoint(theirs, issuer="i", head=Head(1, "a" * 64), at=1.0)
    same_kid = sign_checkpoint(forged_kid, issuer="i", head=Head(1, "a" * 64), at=1.0)
    with pytest.raises(CheckpointError) as unknown:
        read_checkpoint(other, _keys(ours))
    with pytest.raises(CheckpointError) as bad_signature:
        read_checkpoint(same_kid, _keys(ours))
    assert "none of the given keys" in unknown.value.message
    assert "does not verify" in bad_signature.value.message


def test_an_access_token_is_not_a_checkpoint() -> None:
    """A token the same key signed (typ at+jwt) is refused as a checkpoint, and a
    checkpoint is not an access token (RFC 8725 §3.11 explicit typing)."""
    key = _key()
    token = key.sign({"iss": "i", "iat": 1, "seq": 1, "hash": "a" * 64})
    checkpoint = sign_checkpoint(key, issuer="i", head=Head(1, "a" * 64), at=1.0)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(token, _keys(key))
    assert "not an audit checkpoint" in refused.value.message
    assert KeyRing(key).verify(checkpoint, issuer="i", now=2.0) is None


def test_checkpointer_writes_when_the_log_grew_and_refuses_a_shorter_log(
    tmp_path: Path,
) -> None:
    """The checkpointer signs the head once per change; a restart on a log shorter than the
    checkpoint refuses to start."""
    path = tmp_path / "a.jsonl"
    key = _key()
    audit = write(path, 3)

    async def run() -> list[bool]:
        writer = Checkpointer(audit, lambda: key, interval=60, issuer="i", clock=SystemClock())
        await writer.start()  # checkpoints seq 3
        again = writer.write()
        audit.write([{"event": "more"}])
        grew = writer.write()
        await writer.stop()
        return [again, grew]

    written = asyncio.run(run())
    audit.close()
    checkpoint = read_checkpoint(checkpoint_path(path).read_text(), _keys(key))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    shorter = AuditFile(path)
    restarted = Checkpointer(shorter, lambda: key, interval=60, issuer="i", clock=SystemClock())
    with pytest.raises(AuditWriteError) as refused:
        asyncio.run(restarted.start())
    shorter.close()
    assert written == [False, True]
    assert (checkpoint.seq, checkpoint.kid) == (4, key.kid)
    assert "covers record 4 but the log" in str(refused.value)


def test_a_checkpoint_never_covers_records_a_failed_fsync_cuts_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint signs only synced records: when records appended but not yet synced (an
    AuthZEN decision in its SYNC_WINDOW) are cut away by a failed fsync after the checkpoint
    was written, the log is not shorter than its checkpoint and the sidecar starts again.
    The one fault injected: `os.fsync` fails with EIO on the log's own descriptor."""
    path = tmp_path / "a.jsonl"
    key = _key()
    audit = write(path, 2)
    with audit.lock:
        audit.append([{"event": "authzen_decided", "request_id": "unsynced"}])
    checkpointer = Checkpointer(audit, lambda: key, interval=60, issuer="i", clock=SystemClock())
    checkpointer.write()
    real = os.fsync

    def fsync(fd: int) -> None:
        if fd == audit._fd:  # the log's own descriptor, not the checkpointer's
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(AuditWriteError):
        audit.sync()
    monkeypatch.setattr(os, "fsync", real)
    audit.close()
    checkpoint = read_checkpoint(checkpoint_path(path).read_text(), _keys(key))
    reopened = AuditFile(path)
    restarted = Checkpointer(reopened, lambda: key, interval=60, issuer="i", clock=SystemClock())
    asyncio.run(restarted.start())
    reopened.close()
    assert checkpoint.seq == 2
    assert read_tail(path).seq == 2
    assert verify([path]).ok


def test_a_failed_fsync_in_rotation_cuts_unsynced_records_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record appended while `sync` fsyncs (the loop's AuthZEN record) is synced by the
    rotation that follows; when that fsync fails its pages may be gone (fsyncgate), so it is
    cut away and `epoch` moves on, as for a failed `sync`: a later fsync that succeeds must
    not make it count. The one fault injected: `os.fsync` fails with EIO on demand."""
    path = tmp_path / "a.jsonl"
    audit = write(path, 2, rotate_bytes=1)  # every sync rotates
    calls = 0
    real = os.fsync

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # sync's own fsync: the loop appends meanwhile
            real(fd)
            with audit.lock:
                audit.append([{"event": "authzen_decided", "request_id": "unsynced"}])
            return
        raise OSError(errno.EIO, os.strerror(errno.EIO))  # the rotation's fsync

    with audit.lock:
        audit.append([{"event": "authzen_decided", "request_id": "synced"}])
    monkeypatch.setattr(os, "fsync", fsync)
    audit.sync()
    monkeypatch.setattr(os, "fsync", real)
    epoch = audit.epoch
    audit.write([{"event": "authzen_decided", "request_id": "after"}])
    audit.close()
    files = log_files(path)
    ids = [r.get("request_id") for f in files for r in records_after(f, 0) if "request_id" in r]
    assert epoch == 1
    assert ids == ["synced", "after"]
    assert verify(files).ok


def test_reopening_a_log_makes_its_records_durable_before_it_counts_them_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a kill -9 in an AuthZEN record's SYNC_WINDOW its record is in the page cache
    only: the reopened log fsyncs it before it counts it as synced (replay applies it to the
    store and a checkpoint signs it; a power loss must not leave either ahead of the log).
    Observed, not injected: the test records which descriptors `os.fsync` was given."""
    path = tmp_path / "a.jsonl"
    crashed = AuditFile(path)
    with crashed.lock:
        crashed.append([{"event": "authzen_decided", "request_id": "in the window"}])
    os.close(crashed._fd)  # killed: no sync, no close()
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    reopened = AuditFile(path)
    before_use = list(synced)
    reopened.close()
    assert reopened.synced.seq == 1
    assert path.stat().st_ino in before_use


def test_verify_rejects_wrong_genesis(tmp_path: Path) -> None:
    """A log claiming to start at seq 1 from a non-genesis hash is rejected."""
    path = tmp_path / "a.jsonl"
    write(path, 1).close()
    record = json.loads(path.read_text())
    record["prev_hash"] = "f" * 64
    body = {k: v for k, v in record.items() if k != "hash"}
    record["hash"] = chain_hash(record["prev_hash"], body)
    path.write_text(json.dumps(record) + "\n")
    result = verify([path])
    assert not result.ok
    assert "genesis" in result.problem

"""Audit chain primitives: sealing, verification, tail recovery, rotation (real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.audit import (
    GENESIS,
    AuditFile,
    AuditWriteError,
    chain_hash,
    log_files,
    read_tail,
    records_after,
    verify,
)


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
    """Rotated files plus the active file verify as one chain; a reopened log continues it."""
    path = tmp_path / "a.jsonl"
    write(path, 20, rotate_bytes=600).close()
    f = AuditFile(path, rotate_bytes=600)
    f.write([{"event": "after-reopen"}])
    f.close()
    files = log_files(path)
    result = verify(files)
    assert len(files) > 3
    assert result.ok
    assert result.count == 21


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

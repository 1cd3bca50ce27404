"""Tamper-evident audit log: JSON Lines, append-only, hash-chained.

Each record carries `seq`, `prev_hash` and `hash = sha256(prev_hash + canonical JSON of the
record without "hash")`, where canonical JSON is UTF-8 JSON with keys sorted, no whitespace
and every non-ASCII character escaped (`json.dumps(r, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`). The first record of a fresh log has `prev_hash` = 64 zeros.

Rotation renames the active file to `<name>.<first seq, 12 digits>`; the next file starts
with a `log_rotated` record naming the rotated file and its last seq and hash (and chained to
that hash), so `audit verify` over all the files in order checks one unbroken chain, and over
a suffix of them checks it from a start it can prove. Either the log starts at its genesis
(seq 1 from 64 zeros) or at a `log_rotated` record: deleting records at the head of a log
leaves neither, and forging a `log_rotated` record changes every later hash, which a signed
checkpoint of the end (sidecar.checkpoints) then contradicts. Members are read strictly: a
duplicate member is refused, because `json.loads` keeps only the last one and the canonical
form could not show the other. Tokens never enter a record; the grant's `jti` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clock import rfc3339

log = logging.getLogger("jit_sidecar.audit")
GENESIS = "0" * 64
FILE_MODE = 0o640
ROTATED = "log_rotated"
"""The event of the first record of a file that continues a rotated one."""


class AuditWriteError(OSError):
    """The audit log could not be written; nothing in the failed batch counts as recorded."""


# One encoder, built once: `json.dumps` with arguments builds a new JSONEncoder on every call,
# which costs more than encoding a grant's record. Same settings, hence the same bytes.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(record: dict[str, Any]) -> bytes:
    return _CANONICAL.encode(record).encode()


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """Hash of a record (given without its `hash` field) chained to `prev_hash`."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(record)).hexdigest()


def seal(record: dict[str, Any], seq: int, prev_hash: str) -> bytes:
    """Add seq/prev_hash/hash to `record` (in place) and return its line.

    The line is the canonical JSON with `"hash"` appended last: any JSON layout verifies,
    because verification re-serialises the parsed record without its hash.
    """
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    record.pop("hash", None)
    body = canonical_json(record)
    digest = hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()
    record["hash"] = digest
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'


def _intact_end(f: Any, size: int, block: int = 65536) -> int:
    """Offset just past the last newline (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk: bytes = f.read(step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return pos + cut + 1
    return 0


def _reverse_lines(f: Any, end: int, block: int = 65536) -> Iterator[tuple[int, bytes]]:
    """(offset, line) from the last line before `end` back to the first; `end` must be 0 or
    just past a newline."""
    pos = end
    carry = b""
    first = True
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        lines = (f.read(step) + carry).split(b"\n")
        carry = lines[0]
        whole = lines[1:-1] if first else lines[1:]
        first = False
        offset = pos + len(carry) + 1
        offsets = []
        for line in whole:
            offsets.append(offset)
            offset += len(line) + 1
        yield from zip(reversed(offsets), reversed(whole), strict=True)
    if carry or end:
        yield 0, carry


@dataclass(frozen=True, slots=True)
class Tail:
    seq: int
    hash: str
    size: int
    """Byte length of the file's intact part (up to and including its last newline)."""
    torn: bool = False
    """True when bytes followed the last newline (a write interrupted by a crash)."""


def read_tail(path: Path) -> Tail:
    """The last intact record of a log (seq 0 / GENESIS for an empty or missing file)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Tail(0, GENESIS, 0)
    with f:
        size = os.fstat(f.fileno()).st_size
        end = _intact_end(f, size)
        for offset, line in _reverse_lines(f, end):
            try:
                record = json.loads(line)
                return Tail(int(record["seq"]), str(record["hash"]), end, end < size)
            except (ValueError, KeyError, TypeError):
                raise AuditWriteError(
                    f"{path}: the last record (byte {offset}) is not a valid audit record; "
                    "run `jit-sidecar audit verify` and repair the log before starting"
                ) from None
        return Tail(0, GENESIS, 0, end < size)


def records_after(path: Path, seq: int) -> list[dict[str, Any]]:
    """Intact records with a sequence number above `seq`, oldest first."""
    out: list[dict[str, Any]] = []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return out
    with f:
        end = _intact_end(f, os.fstat(f.fileno()).st_size)
        for _offset, line in _reverse_lines(f, end):
            record = json.loads(line)
            if record.get("seq", 0) <= seq:
                break
            out.append(record)
    out.reverse()
    return out


@dataclass(frozen=True, slots=True)
class Head:
    """The last record written: one value, so another thread reads seq and hash together."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class _Mark:
    """A point of the file: its size, the chain's head there, and the rotated file a still
    empty file continues."""

    size: int
    head: Head
    continues: str | None


class AuditFile:
    """The active log file. `append` puts records in the OS (in the chain) and `sync` makes
    them durable; `write` does both. Any thread may `append` (a lock orders the chain);
    one thread (sidecar.journal's writer) calls `sync`, `write`, `rotate` and `close`."""

    def __init__(self, path: Path, *, fsync: bool = True, rotate_bytes: int = 0) -> None:
        self.path = path
        self._fsync = fsync
        self._rotate_bytes = rotate_bytes
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tail = read_tail(path)
        if tail.torn:
            # The torn record was never acknowledged (its batch had not been synced), so
            # dropping it loses nothing that was promised; the chain continues from `tail`.
            with path.open("r+b") as f:
                f.truncate(tail.size)
                os.fsync(f.fileno())
        self.recovered_torn = tail.torn
        self.head = Head(tail.seq, tail.hash)
        self._continues: str | None = None
        """The rotated file this (still empty) file continues: its first record says so."""
        if tail.seq == 0:
            # A fresh active file right after a rotation continues the rotated file's chain.
            for rotated in reversed(log_files(path)[:-1] if path.exists() else log_files(path)):
                previous = read_tail(rotated)
                if previous.seq:
                    self.head = Head(previous.seq, previous.hash)
                    self._continues = rotated.name
                    break
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        if fsync and tail.size:
            # After a kill -9 the last records (AuthZEN ones within their SYNC_WINDOW) may be
            # in the page cache only; they count as synced below (replay applies them to a
            # store whose applied seq is durable), so make them so.
            try:
                os.fsync(self._fd)
            except OSError as err:
                os.close(self._fd)
                raise AuditWriteError(f"cannot sync audit log {path}: {err.strerror}") from err
        self._size = tail.size
        self._rotation_failing = False
        self.lock = threading.Lock()
        """Held while records are sealed and appended, and while the file is cut back or
        rotated: the chain has one order whichever thread appends."""
        self._synced = self._mark()
        """Where the file was last made durable: a failed fsync cuts it back to here."""
        self.epoch = 0
        """Counts fsync failures: records appended in an earlier epoch and not synced then
        were cut out of the log."""
        self._epoch_ends: list[int] = []
        """The last synced seq when each earlier epoch ended: its records up to there stay."""

    @property
    def seq(self) -> int:
        return self.head.seq

    @property
    def last_hash(self) -> str:
        return self.head.hash

    @property
    def synced(self) -> Head:
        """The last record made durable by `sync` (or a rotation, or `close`): records after
        it may still be cut away by a failed fsync, so a checkpoint must not cover them."""
        return self._synced.head

    def _mark(self) -> _Mark:
        return _Mark(self._size, self.head, self._continues)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Seal and append records as one write, then fsync (when configured).

        On failure the file is cut back to where it was and the chain state is unchanged, so
        a later batch continues the chain as if the failed one had never been tried.
        """
        if not records:
            return
        with self.lock:
            self.append(records)
        self.sync()

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Seal `records` (adds seq, prev_hash, hash) and hand them to the OS in one write,
        without fsync: they survive a crash of this process, not a power loss, until `sync`.
        The caller holds `lock`. On failure the file is cut back and the chain is unchanged."""
        if not records:
            return
        seq, prev = self.seq, self.last_hash
        if self._continues is not None:
            records = [self._rotation_record(self._continues), *records]
        lines = []
        for record in records:
            seq += 1
            lines.append(seal(record, seq, prev))
            prev = record["hash"]
        data = b"".join(lines)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise AuditWriteError(f"short write to {self.path} ({written}/{len(data)} bytes)")
        except OSError as err:
            self._cut_back(self._size)
            if isinstance(err, AuditWriteError):
                raise
            raise AuditWriteError(f"cannot write audit log {self.path}: {err.strerror}") from err
        self.head = Head(seq, prev)
        self._continues = None
        self._size += len(data)

    def sync(self) -> None:
        """Make everything appended so far durable (fsync, when configured), then rotate if
        the file is due. Appends may go on meanwhile; the fsync runs without the lock.

        A failed fsync leaves the kernel's copy of the unsynced pages unknown (it may have
        dropped them: "fsyncgate", PostgreSQL 2018), so the file is cut back to the last
        durable point and `epoch` moves on: what was appended since counts as never written.
        """
        with self.lock:
            mark = self._mark()
        if mark.size == self._synced.size and mark.head == self._synced.head:
            return
        if self._fsync:
            try:
                os.fsync(self._fd)
            except OSError as err:
                with self.lock:
                    self._lose_unsynced()
                raise AuditWriteError(f"cannot sync audit log {self.path}: {err.strerror}") from err
        self._synced = mark
        if self._rotate_bytes and mark.size >= self._rotate_bytes:
            try:
                with self.lock:
                    self.rotate()
            except OSError as err:
                # The records are written and synced: they count. The log grows past its
                # size until a later sync's rotation succeeds (logged once per outage).
                if not self._rotation_failing:
                    log.error("cannot rotate audit log %s: %s (retrying)", self.path, err)
                self._rotation_failing = True
            else:
                self._rotation_failing = False

    def survived(self, epoch: int, seq: int) -> bool:
        """Whether record `seq`, appended in `epoch`, is still in the log: a failed fsync
        cut out only what no earlier fsync had made durable."""
        return epoch == self.epoch or seq <= self._epoch_ends[epoch]

    def _lose_unsynced(self) -> None:
        """After a failed fsync: cut the file back to its last durable point (the caller
        holds `lock`); what was appended since counts as never written."""
        self._epoch_ends.append(self._synced.head.seq)
        self._cut_back(self._synced.size)
        self._size = self._synced.size
        self.head = self._synced.head
        self._continues = self._synced.continues
        self.epoch += 1

    def _cut_back(self, size: int) -> None:
        # If even this fails, the torn tail is repaired on the next start-up.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)

    def rotate(self) -> Path:
        """Close the active file under a name carrying its first seq; start a new one. The
        caller holds `lock`."""
        first = self._first_seq()
        rotated = self.path.with_name(f"{self.path.name}.{first:012d}")
        try:
            os.fsync(self._fd)
        except OSError:
            # Records appended since the last sync (the loop's) may have lost their pages
            # (fsyncgate): a later fsync that succeeds would not bring them back.
            self._lose_unsynced()
            raise
        # The open descriptor stays the active file until its successor exists: a failure
        # anywhere leaves one file to append to, never a closed (or reused) descriptor.
        os.replace(self.path, rotated)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError:
            os.replace(rotated, self.path)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = 0
        self._continues = rotated.name
        self._synced = self._mark()  # the old file was synced above; the new one is empty
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return rotated

    def _rotation_record(self, previous: str) -> dict[str, Any]:
        return {
            "event": ROTATED,
            "time": rfc3339(time.time()),
            "previous_file": previous,
            "previous_last_seq": self.seq,
            "previous_last_hash": self.last_hash,
        }

    def _first_seq(self) -> int:
        with self.path.open("rb") as f:
            line = f.readline()
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            return self.seq

    def close(self) -> None:
        if self._fd >= 0:
            try:
                with self.lock:
                    mark = self._mark()
                os.fsync(self._fd)
                self._synced = mark  # the final checkpoint covers what this made durable
            finally:
                os.close(self._fd)
                self._fd = -1


@dataclass(frozen=True, slots=True)
class Located:
    """Where a verified record is, and its hash."""

    hash: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    count: int
    last_seq: int = 0
    last_hash: str = GENESIS
    bad_file: str = ""
    bad_line: int = 0
    problem: str = ""
    first_seq: int = 0
    """1 when the log starts at its genesis; more when it starts at a `log_rotated` record."""
    found: Mapping[int, Located] = field(default_factory=dict)
    """The records asked for by seq (`verify(at=…)`) that the chain reached."""


class _DuplicateMember(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate members, and the canonical form (hence the
    # hash) then shows only that one: a line could carry a value the chain never covered.
    # RFC 8259 §4 leaves duplicates to the parser; I-JSON (RFC 7493 §2.3) forbids them.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateMember(key)
        out[key] = value
    return out


def _start_problem(record: dict[str, Any], seq: int) -> str | None:
    """Why the first record verified cannot be the start of a log (None when it can)."""
    if seq == 1:
        if record.get("prev_hash") != GENESIS:
            return "first record does not start from the genesis hash"
        return None
    if record.get("event") != ROTATED:
        return (
            f"the log starts at seq {seq}, neither at its genesis (seq 1) nor at a "
            f"{ROTATED} record: records before it were deleted or the files are incomplete"
        )
    return None


class _Chain:
    """Running state of a chain check."""

    def __init__(self) -> None:
        self.count = 0
        self.seq = 0
        self.first = 0
        self.hash: str | None = None

    def check(self, raw: bytes) -> str | None:
        """The problem with the next line, or None when it extends the chain."""
        if not raw.endswith(b"\n"):
            return "truncated record (no line end)"
        try:
            record = json.loads(raw, object_pairs_hook=_unique_members)
        except _DuplicateMember as err:
            return f"duplicate member {str(err)!r} (only one of its values is hashed)"
        except ValueError:
            return "not valid JSON"
        if not isinstance(record, dict):
            return "not a JSON object"
        stated = record.pop("hash", None)
        seq = record.get("seq")
        if not isinstance(stated, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return "missing hash or seq"
        if seq < 1:
            return f"seq {seq} is not a record number"
        if self.hash is None:  # the first record anchors the chain
            problem = _start_problem(record, seq)
            if problem is not None:
                return problem
            self.hash = str(record.get("prev_hash"))
            self.seq, self.first = seq - 1, seq
        if record.get("prev_hash") != self.hash:
            return "prev_hash does not match the previous record (deleted, reordered or inserted)"
        if seq != self.seq + 1:
            return f"seq {seq} does not follow {self.seq}"
        if record.get("event") == ROTATED and (
            record.get("previous_last_seq") != self.seq
            or record.get("previous_last_hash") != self.hash
        ):
            return f"the {ROTATED} record does not name the record before it"
        if chain_hash(self.hash, record) != stated:
            return "hash mismatch (record edited)"
        self.hash, self.seq = stated, seq
        self.count += 1
        return None


def verify(paths: Sequence[Path], *, at: Collection[int] = ()) -> VerifyResult:
    """Check the chain over `paths` in order (rotated files first, the active file last).

    The first record verified must prove it is a start: seq 1 from the genesis hash, or a
    `log_rotated` record (the files before it were left out, or archived). An empty log, or
    none, is a failure: there is nothing to vouch for. `at` names records whose hash and
    place the result reports (a checkpoint's seq), as far as the chain is intact.
    """
    chain = _Chain()
    found: dict[int, Located] = {}

    def failed(path: Path, line: int, problem: str) -> VerifyResult:
        last = chain.hash or GENESIS
        return VerifyResult(
            False, chain.count, chain.seq, last, str(path), line, problem, chain.first, found
        )

    if not paths:
        return VerifyResult(False, 0, problem="no log file")
    for path in paths:
        try:
            f = path.open("rb")
        except OSError as err:
            return failed(path, 0, err.strerror or str(err))
        with f:
            for number, raw in enumerate(f, start=1):
                problem = chain.check(raw)
                if problem is not None:
                    return failed(path, number, problem)
                if chain.seq in at:
                    found[chain.seq] = Located(chain.hash or GENESIS, str(path), number)
    if chain.count == 0:
        return failed(paths[-1], 0, "the log is empty: it holds no record to verify")
    return VerifyResult(
        True, chain.count, chain.seq, chain.hash or GENESIS, first_seq=chain.first, found=found
    )


def log_files(path: Path) -> list[Path]:
    """The rotated files of the log at `path` in order, then the active one."""
    rotated = sorted(p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit())
    return [*rotated, path] if path.exists() else rotated

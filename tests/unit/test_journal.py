"""The journal on a real audit file and a real SQLite store: `record` (AuthZEN decisions) is
in the log before it returns and synced after; commits keep their order and full durability.
A failing fsync is the one fault injected here (the kernel cannot be made to fail one on
demand): `os.fsync` raises EIO while the test says so."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit import AuditFile, log_files, records_after, verify
from sidecar.events import AuthzenDecided, Event
from sidecar.journal import CommitError, Journal
from sidecar.store.sqlite import SqliteStore
from tests.fakes import hold_applies
from tests.harness import wait_for


def decided(request_id: str) -> Event:
    return AuthzenDecided(
        time="2026-11-30T12:00:00Z",
        subject="spiffe://jit.local/agent/dev",
        authzen={"subject_type": "agent", "action": "docs.read", "resource_type": "uri"},
        decision=True,
        request_id=request_id,
    )


class _Rig:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "audit.jsonl"
        self.store = SqliteStore(tmp / "state.db")
        self.journal = Journal(AuditFile(self.path), self.store)
        self.journal.start()

    def request_ids(self) -> list[str]:
        return [r.get("request_id", r["event"]) for r in records_after(self.path, 0)]

    def hold_store_writes(self) -> tuple[threading.Event, threading.Event]:
        """The writer blocks in its next store write until `release` is set (it is busy)."""
        entered, release, _ = hold_applies(self.store)
        return entered, release


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[_Rig]:
    r = _Rig(tmp_path)
    try:
        yield r
    finally:
        r.journal.close()
        r.store.close()


@pytest.fixture
def failing_fsync(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While the returned event is set, fsync fails with EIO."""
    failing = threading.Event()
    real = os.fsync

    def fsync(fd: int) -> None:
        if failing.is_set():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failing


def test_a_record_is_in_the_log_when_it_returns_and_applied_after_its_fsync(rig: _Rig) -> None:
    """`record` returns with its record in the file (in the chain), before the writer has
    synced and applied it; the writer then does both without anyone waiting."""
    entered, release = rig.hold_store_writes()

    async def body() -> list[str]:
        rig.journal.touch("t-1", 1.0)  # the writer is now busy, in a store write
        assert await asyncio.to_thread(entered.wait, 5)
        await rig.journal.record([decided("r-1")])
        return rig.request_ids()

    try:
        in_file = asyncio.run(body())
        applied_before = rig.store.applied_seq()
    finally:
        release.set()
    assert in_file == ["r-1"]
    assert applied_before == 0
    assert wait_for(lambda: rig.store.applied_seq() == 1, 10, what="the record applied")
    assert verify([rig.path]).ok


def test_a_record_never_overtakes_a_commit_queued_before_it(rig: _Rig) -> None:
    """A commit that had to queue for the busy writer comes before a later `record` in the
    chain: the loop appends only when nothing queued before is still unwritten."""
    entered, release = rig.hold_store_writes()

    async def body() -> list[str]:
        rig.journal.touch("t-1", 1.0)
        assert await asyncio.to_thread(entered.wait, 5)
        committing = asyncio.ensure_future(rig.journal.commit([decided("c-1")]))
        await asyncio.sleep(0)  # the commit is queued behind the busy writer
        recording = asyncio.ensure_future(rig.journal.record([decided("r-1")]))
        await asyncio.sleep(0.05)
        release.set()
        await recording
        await committing
        return rig.request_ids()

    try:
        ids = asyncio.run(body())
    finally:
        release.set()
    assert ids == ["c-1", "r-1"]
    assert verify([rig.path]).ok


def test_a_failed_fsync_cuts_unsynced_records_out_and_refuses_until_it_recovers(
    rig: _Rig, failing_fsync: threading.Event
) -> None:
    """A record whose fsync fails is cut out of the log (fsyncgate: its pages may be gone),
    the journal turns unhealthy and `record` raises until a sync succeeds again; the chain
    stays whole."""

    async def body() -> tuple[list[str], str, list[str]]:
        await rig.journal.record([decided("r-0")])
        await asyncio.to_thread(wait_for, lambda: rig.store.applied_seq() == 1, 10)
        failing_fsync.set()
        await rig.journal.record([decided("r-lost")])  # answered: it is in the OS
        await asyncio.to_thread(
            wait_for, lambda: not rig.journal.audit_healthy, 10, what="the failed sync"
        )
        after_failure = rig.request_ids()
        try:
            await rig.journal.record([decided("r-refused")])
            refused = "answered"
        except CommitError as err:
            refused = f"{err.reason.value} durable={err.durable}"
        failing_fsync.clear()
        await rig.journal.record([decided("r-2")])  # a full commit: healthy again
        return after_failure, refused, rig.request_ids()

    after_failure, refused, final = asyncio.run(body())
    assert after_failure == ["r-0"]
    assert refused == "audit_unavailable durable=False"
    assert final == ["r-0", "r-2"]
    assert rig.journal.audit_healthy
    assert verify([rig.path]).ok


def test_the_store_is_never_told_it_applied_a_record_it_was_not_given(
    rig: _Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record the loop appends while the writer syncs an earlier one is not in that batch:
    the batch tells the store it applied up to its own last record, not up to the end of the
    log (a crash would otherwise leave that record unapplied on replay, and a power loss
    would leave the store ahead of the log)."""
    calls: list[tuple[list[int], int]] = []
    apply = rig.store.apply

    def seen(records: Any, touches: Any, seq: int) -> None:
        calls.append(([r.seq for r in records], seq))
        apply(records, touches, seq)

    rig.store.apply = seen  # type: ignore[method-assign]
    syncing, release = threading.Event(), threading.Event()
    real = os.fsync

    def fsync(fd: int) -> None:
        if not syncing.is_set():
            syncing.set()
            release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def body() -> None:
        await rig.journal.record([decided("r-1")])
        assert await asyncio.to_thread(syncing.wait, 10)  # the writer syncs r-1
        await rig.journal.record([decided("r-2")])  # appended meanwhile
        release.set()
        await asyncio.to_thread(wait_for, lambda: rig.store.applied_seq() == 2, 10)

    try:
        asyncio.run(body())
    finally:
        release.set()
    applied: list[int] = []
    for records, through in calls:
        applied += records
        assert through <= max(applied, default=0)
    assert applied == [1, 2]


def test_records_appended_by_the_loop_rotate_with_the_log(tmp_path: Path) -> None:
    """Records `record` appends on the loop, mixed with commits, rotate with the log (the
    writer rotates after a sync, under the file's lock) and the files verify as one chain."""
    path = tmp_path / "audit.jsonl"
    store = SqliteStore(tmp_path / "state.db")
    journal = Journal(AuditFile(path, rotate_bytes=2000), store)
    journal.start()

    async def body() -> None:
        for i in range(40):
            if i % 5 == 0:
                await journal.commit([decided(f"c-{i}")])
            else:
                await journal.record([decided(f"r-{i}")])

    try:
        asyncio.run(body())
    finally:
        journal.close()
        store.close()
    files = log_files(path)
    ids = [r.get("request_id") for f in files for r in records_after(f, 0) if "request_id" in r]
    assert len(files) > 3
    assert ids == [f"{'c' if i % 5 == 0 else 'r'}-{i}" for i in range(40)]
    assert verify(files).ok


def test_a_failed_append_keeps_the_journal_unhealthy_though_earlier_records_sync(
    rig: _Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose append fails (a full disk) turns the journal unhealthy, and the fsync
    of `record`s appended before the failure, in the same batch, does not end the outage:
    only a synced commit after it does (/readyz says `audit: not writable` meanwhile). The
    one fault injected: `os.write` to the log fails with ENOSPC while the test says so."""
    entered, release = rig.hold_store_writes()
    full = threading.Event()
    real = os.write

    def write(fd: int, data: Any) -> int:
        if full.is_set() and fd == rig.journal._audit._fd:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)

    async def body() -> tuple[str, bool]:
        rig.journal.touch("t-1", 1.0)  # the writer is now busy, in a store write
        assert await asyncio.to_thread(entered.wait, 5)
        await rig.journal.record([decided("r-1")])  # appended on the loop, not yet synced
        full.set()
        committing = asyncio.ensure_future(rig.journal.commit([decided("c-1")]))
        await asyncio.sleep(0.05)  # queued behind the busy writer
        release.set()
        try:
            await committing
            outcome = "committed"
        except CommitError as err:
            outcome = err.reason.value
        await asyncio.to_thread(wait_for, lambda: rig.store.applied_seq() == 1, 10)
        return outcome, rig.journal.audit_healthy

    try:
        outcome, healthy = asyncio.run(body())
    finally:
        release.set()
    assert outcome == "audit_unavailable"
    assert healthy is False
    assert rig.request_ids() == ["r-1"]
    assert verify([rig.path]).ok


def test_a_record_synced_before_a_failed_fsync_still_reaches_the_store(
    tmp_path: Path, failing_fsync: threading.Event
) -> None:
    """A `record` the loop appends after the writer's batch is gathered but before its fsync
    starts is made durable by that fsync, though it belongs to the next batch; when the next
    batch's fsync fails, the cut-back keeps it in the log, so the store must still be given
    it (else it is told it applied through a later seq without having seen this one, and
    replay never brings it). The writer's scheduling is steered by holding its `sync`."""
    path = tmp_path / "audit.jsonl"
    store = SqliteStore(tmp_path / "state.db")
    steps = [(threading.Event(), threading.Event()) for _ in range(2)]
    calls = 0

    class Steered(AuditFile):
        def sync(self) -> None:
            nonlocal calls
            if calls < len(steps):  # let the loop append before this fsync starts
                reached, go = steps[calls]
                calls += 1
                reached.set()
                go.wait(10)
            super().sync()

    given: list[int] = []
    apply = store.apply

    def seen(records: Any, touches: Any, seq: int) -> None:
        given.extend(r.seq for r in records)
        apply(records, touches, seq)

    store.apply = seen  # type: ignore[method-assign]
    journal = Journal(Steered(path), store)
    journal.start()

    async def body() -> None:
        await journal.record([decided("r-1")])
        assert await asyncio.to_thread(steps[0][0].wait, 10)
        await journal.record([decided("r-2")])  # after r-1's batch, before its fsync
        steps[0][1].set()
        assert await asyncio.to_thread(steps[1][0].wait, 10)  # r-2's own batch
        await journal.record([decided("r-lost")])
        failing_fsync.set()
        steps[1][1].set()
        await asyncio.to_thread(wait_for, lambda: not journal.audit_healthy, 10)
        failing_fsync.clear()
        await journal.record([decided("r-3")])  # a full commit: healthy again

    try:
        asyncio.run(body())
    finally:
        for _, go in steps:
            go.set()
        journal.close()
        store.close()
    in_log = [r.get("request_id") for r in records_after(path, 0)]
    assert in_log == ["r-1", "r-2", "r-3"]
    assert given == [1, 2, 3]
    assert verify([path]).ok


class _Broken(AuthzenDecided):
    """An event whose record cannot be built: a bug in the writer's path, not a disk error."""

    def record(self) -> dict[str, Any]:
        raise TypeError("not serializable")


def test_an_unexpected_writer_error_refuses_the_commit_and_the_writer_goes_on(
    rig: _Rig,
) -> None:
    """A commit whose batch hits an error the writer has no rule for is refused
    (`audit_unavailable`, not left waiting forever), the journal is unhealthy meanwhile, and
    the writer thread lives on: the next commit is written, synced and heals it."""
    broken = _Broken(
        **{k: getattr(decided("x"), k) for k in ("time", "subject", "authzen")},
        decision=True,
        request_id="broken",
    )

    async def body() -> tuple[str, bool, bool]:
        with pytest.raises(CommitError) as refused:
            await asyncio.wait_for(rig.journal.commit([broken]), timeout=10)
        unhealthy = rig.journal.audit_healthy
        await asyncio.wait_for(rig.journal.commit([decided("after")]), timeout=10)
        return refused.value.reason.value, unhealthy, rig.journal.audit_healthy

    reason, unhealthy, healed = asyncio.run(body())
    assert reason == "audit_unavailable"
    assert unhealthy is False
    assert healed is True
    assert rig.request_ids() == ["after"]
    assert verify(log_files(rig.path)).ok

"""The durable commit path: audit first, then state, with group commit.

Every state change is an audit event. One writer thread takes whatever events have queued up,
appends them to the audit log with one write and one fsync (group commit: concurrent requests
share the fsync), then applies them to the state store in one transaction. The audit log is
therefore the write-ahead log: after a crash, events the store had not applied yet are
replayed from it at start-up (`Journal.open`), so the store never disagrees with the record of
what was issued and revoked.

Heartbeats ("touches") ride along in the same transaction but are not audited (they would
flood the log) and need no fsync.

AuthZEN decisions give no access, and take a lighter path (`record`): the event loop's
thread appends them to the log itself, in the chain, and answers; the writer fsyncs them
within SYNC_WINDOW, grouped with whatever else is due, then applies them like the rest.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .audit import AuditFile, AuditWriteError, log_files, records_after
from .errors import Reason, Unavailable
from .events import Event, Recorded, from_record

log = logging.getLogger("jit_sidecar.journal")
MAX_BATCH = 512


class StateWriter(Protocol):
    """The write side of a store, called from the journal's thread only."""

    def applied_seq(self) -> int: ...

    def apply(
        self, records: Sequence[Recorded], touches: Sequence[tuple[str, float]], seq: int
    ) -> None:
        """Apply audited events (each with its audit `seq`) and `touches` in one transaction;
        `seq` is the last audit record they account for."""


class CommitError(Unavailable):
    """A commit did not complete. `durable` says whether its events reached the audit log
    (and so will reach the store on replay) even though the store write failed."""

    def __init__(self, message: str, reason: Reason, *, durable: bool) -> None:
        super().__init__(message, reason)
        self.durable = durable


@dataclass(slots=True)
class _Entry:
    events: Sequence[Event]
    touches: list[tuple[str, float]]
    future: asyncio.Future[None] | None
    loop: asyncio.AbstractEventLoop | None
    enqueued: float = field(default_factory=time.perf_counter)
    records: list[dict[str, Any]] | None = None
    """The sealed records once appended to the log (by the loop thread or the writer)."""
    epoch: int = 0
    """The audit file's epoch when they were appended (sidecar.audit.AuditFile.epoch)."""
    early: bool = False
    """The waiter asked only for the records to be in the OS (`Journal.record`), not synced."""


_STOP = object()
SYNC_WINDOW = 0.005
"""How long after a record's append `Journal.record` leaves its fsync to gather others, at
most (a commit that waits for its fsync ends the window early: they share it)."""


class Journal:
    """Owns the audit file and the store's write side; one thread does the writing, except
    that `record` appends on the event loop's thread when it can (no hop to the writer and
    back), always in call order."""

    def __init__(
        self,
        audit: AuditFile,
        store: StateWriter,
        *,
        on_audit_error: Callable[[], None] = lambda: None,
        on_batch: Callable[[int, float], None] = lambda n, seconds: None,
        stamp: Callable[[Event], Event] | None = None,
    ) -> None:
        """`stamp` completes each event before it is written (it adds the principal of the
        event's task: sidecar.engine.delegation.TaskPrincipals)."""
        self._audit = audit
        self._store = store
        self._stamp = stamp
        self._queue: queue.SimpleQueue[_Entry | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._on_audit_error = on_audit_error
        self._on_batch = on_batch
        self._backlog: list[Recorded] = []
        """Audited events the store failed to apply; retried before the next batch."""
        self._queued = 0
        """Entries the event loop queued for the writer to append (changed by the loop only)."""
        self._appended = 0
        """Of those, how many the writer has appended (changed by the writer only, under the
        audit file's lock): while they differ, the loop must not append ahead of them."""
        self._deferred: list[_Entry] = []
        """Answered `record`s appended by the loop, waiting for the writer's fsync (guarded
        by the audit file's lock)."""
        self._deferred_since = 0.0
        self._applied_through = 0
        """The last audit seq the store was told it applied (set by the writer thread)."""
        self.store_healthy = True
        self.audit_healthy = True

    # ------------------------------------------------------------------ start-up
    def replay(self) -> list[dict[str, Any]]:
        """Apply audited events the store has not seen (after a crash); returns them.

        Refuses to start when the store is ahead of the log: that means the log was
        truncated or replaced, and the chain of evidence is broken.
        """
        applied = self._store.applied_seq()
        if applied > self._audit.seq:
            raise AuditWriteError(
                f"the state store has applied audit record {applied} but the audit log "
                f"{self._audit.path} ends at {self._audit.seq}: was the log truncated or "
                "replaced? Run `jit-sidecar audit verify` before starting."
            )
        missing: list[dict[str, Any]] = []
        if applied == self._audit.seq:
            return missing
        for path in reversed(log_files(self._audit.path)):
            # An empty file (the fresh one a rotation just started) says nothing about what
            # is missing: keep reading older files until the record after `applied`.
            older = records_after(path, applied)
            missing[:0] = older
            if older and older[0]["seq"] <= applied + 1:
                break
        if missing:
            log.warning(
                "replaying %d audited events into the state store (seq %d..%d)",
                len(missing),
                missing[0]["seq"],
                missing[-1]["seq"],
            )
            recorded = [Recorded(r["seq"], from_record(r)) for r in missing]
            self._store.apply(recorded, (), missing[-1]["seq"])
        return missing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jit-journal", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API
    async def commit(
        self, events: Sequence[Event], touches: Sequence[tuple[str, float]] = ()
    ) -> None:
        """Make `events` durable in the audit log (as `event.record()`) and apply them to
        the store.

        Entries are written in the order `commit` is called, so callers that change
        in-memory state synchronously before awaiting get the same order on disk.
        """
        await self._submit(events, touches, early=False)

    async def record(self, events: Sequence[Event]) -> None:
        """Put `events` in the audit log, in the chain, before returning (a crash of this
        process loses nothing); their fsync follows within SYNC_WINDOW, grouped with others
        (a power loss within it can lose them). For answers that give no access: AuthZEN
        decisions (docs/authzen.md, "Audit"). Raises CommitError while the log is failing;
        then every call is a full `commit`, so the first one that succeeds ends the outage."""
        if not self.audit_healthy:
            await self.commit(events)
            return
        await self._submit(events, (), early=True)

    async def _submit(
        self, events: Sequence[Event], touches: Sequence[tuple[str, float]], *, early: bool
    ) -> None:
        if self._stamp is not None:
            events = [self._stamp(e) for e in events]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = _Entry(events, list(touches), future, loop, early=early)
        if early and self._append_here(entry):
            return  # the writer syncs it with the other deferred ones (`_defer`)
        if events:
            self._queued += 1
        self._queue.put(entry)
        await future

    def _append_here(self, entry: _Entry) -> bool:
        """Append an answered `record`'s entry on the calling (event loop) thread: a short
        write() on the open descriptor under the file's lock, never an fsync, so the loop
        is not blocked on the disk and the answer needs no hop to the writer thread and
        back. False when the writer holds the lock or entries queued before are not
        appended yet (the chain keeps `commit` order). Commits always hop: they wait for
        the writer's fsync anyway, and appending them here did not pay (bench.ab, in
        docs/performance.md "AuthZEN")."""
        audit = self._audit
        if self._queued != self._appended or not audit.lock.acquire(blocking=False):
            return False
        try:
            if self._queued != self._appended:
                return False
            records = [e.record() for e in entry.events]
            try:
                audit.append(records)
            except AuditWriteError as err:
                self._audit_failed(err)
                raise _unwritten() from err
            entry.records, entry.epoch = records, audit.epoch
            self._defer(entry)
            return True
        finally:
            audit.lock.release()

    def _defer(self, entry: _Entry) -> None:
        """Leave the fsync of an answered `record` to the writer; the first one of a window
        wakes it (with an empty entry), the others ride along without a wake-up each."""
        entry.future = entry.loop = None
        self._deferred.append(entry)
        if len(self._deferred) == 1:
            self._deferred_since = entry.enqueued
            self._queue.put(_Entry([], [], None, None))

    def touch(self, task_id: str, at: float) -> None:
        """Persist a heartbeat without waiting (no audit record, no fsync)."""
        self._queue.put(_Entry([], [(task_id, at)], None, None))

    def close(self) -> None:
        """Drain what is queued, stop the thread and close the audit file."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._audit.close()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        self._applied_through = self._store.applied_seq()
        while True:
            first = self._queue.get()
            batch: list[_Entry] = []
            stop = first is _STOP
            if not stop:
                batch.append(first)  # type: ignore[arg-type]
                stop = self._gather(batch, None)
            if not stop and self._deferred and all(e.future is None for e in batch):
                # Nobody waits: leave the fsync of answered `record`s to gather others for
                # a while (SYNC_WINDOW), or until a commit needs one.
                stop = self._gather(batch, self._deferred_since + SYNC_WINDOW)
            try:
                self._write(batch)
            except Exception as err:  # a bug, not a disk error: fail closed, never hang
                self._writer_failed(batch, err)
            if stop:
                return

    def _writer_failed(self, batch: list[_Entry], err: Exception) -> None:
        """The writer met an error it has no rule for (an audit or store error has one).
        The thread goes on, so no commit ever waits forever; the log counts as unwritable
        until a batch is written again, and every waiter of this batch is refused: no token
        leaves on records that may be missing from the log. Its records may be in the log
        all the same (an `issued` with no token sent; the waiters undo their grants)."""
        self.audit_healthy = False
        log.error(
            "journal writer failed: %s", type(err).__name__, extra={"reason": "audit_unavailable"}
        )
        try:
            self._on_audit_error()
            waiting = self._deferred + batch
            self._deferred = []
            self._resolve(waiting, _unwritten())
        except Exception as again:  # e.g. the loop of a waiter is closed: nothing to tell
            log.error("journal writer could not refuse its waiters: %s", type(again).__name__)

    def _gather(self, batch: list[_Entry], until: float | None) -> bool:
        """Add queued entries to `batch`: those already there (`until` None), or those that
        come before `until` or before one that waits. True when asked to stop."""
        while len(batch) < MAX_BATCH:
            try:
                if until is None:
                    item = self._queue.get_nowait()
                else:
                    remaining = until - time.perf_counter()
                    if remaining <= 0:
                        return False
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)  # type: ignore[arg-type]
            if until is not None and item.future is not None:  # type: ignore[attr-defined]
                return self._gather(batch, None)
        return False

    def _write(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        audit = self._audit
        fresh = [entry for entry in batch if entry.records is None and entry.events]
        records: list[dict[str, Any]] = []
        with audit.lock:
            # Under one hold of the lock: every record before this batch's last one is in
            # this batch or an earlier one, so the store can be told it applied them all.
            batch = self._deferred + batch
            self._deferred = []
            if fresh:
                records = [e.record() for entry in fresh for e in entry.events]
                try:
                    audit.append(records)  # seals each record: adds its seq
                except AuditWriteError as err:
                    self._audit_failed(err)
                    records = []
                self._appended += len(fresh)
                at = 0
                for entry in fresh:
                    if records:
                        entry.records = records[at : at + len(entry.events)]
                        entry.epoch = audit.epoch
                    at += len(entry.events)
        if not any(e.events or e.touches or e.future is not None for e in batch):
            return  # only the wake-up of a window whose records a commit already took
        if fresh:
            if not records:
                self._resolve(fresh, _unwritten())
                batch = [entry for entry in batch if entry not in fresh]
            # `record` answers once its records are in the OS, before the fsync.
            self._resolve([entry for entry in batch if entry.early], None)
        # Records appended before an fsync failed were cut out of the log with it, unless
        # an earlier fsync had made them durable (the loop appended them before it began).
        stale = [e for e in batch if e.records is not None and not _kept(audit, e)]
        if stale:
            self._resolve(stale, _unwritten())
            batch = [entry for entry in batch if entry not in stale]
        try:
            audit.sync()
        except AuditWriteError as err:
            self._audit_failed(err)
            self._resolve(batch, _unwritten())
            # `record`s an earlier fsync covered stay in the log: the store still needs them.
            kept = [
                Recorded(r["seq"], e)
                for entry in batch
                if entry.records is not None and _kept(audit, entry)
                for r, e in zip(entry.records, entry.events, strict=True)
            ]
            self._backlog = sorted(self._backlog + kept, key=lambda r: r.seq)
            return
        # Only records this batch appended end an outage: `record`s the loop appended before
        # a failure (their fsync is this one) say nothing about whether the log takes writes.
        if any(entry.records is not None for entry in fresh):
            self.audit_healthy = True
        events = [e for entry in batch for e in entry.events]
        touches = [t for entry in batch for t in entry.touches]
        recorded = [
            Recorded(r["seq"], e)
            for entry in batch
            if entry.records is not None
            for r, e in zip(entry.records, entry.events, strict=True)
        ]
        # Appended by two threads, so in seq order only once sorted.
        pending = self._backlog + sorted(recorded, key=lambda r: r.seq)
        # Not audit.seq: the loop may have appended records since, not synced nor applied.
        through = max(self._applied_through, pending[-1].seq if pending else 0)
        try:
            self._store.apply(pending, touches, through)
            self._applied_through = through
            self._backlog = []
            self.store_healthy = True
            error: CommitError | None = None
        except Exception as err:  # the store's own errors vary by backend
            self._backlog = pending
            self.store_healthy = False
            log.error("state store write failed: %s", err, extra={"reason": "store_unavailable"})
            error = CommitError(
                "the state store cannot be written", Reason.STORE_UNAVAILABLE, durable=True
            )
        self._on_batch(len(events), time.perf_counter() - started)
        self._resolve([entry for entry in batch if not entry.early], error)

    def _audit_failed(self, err: AuditWriteError) -> None:
        self.audit_healthy = False
        self._on_audit_error()
        log.error("audit write failed: %s", err, extra={"reason": "audit_unavailable"})

    @staticmethod
    def _resolve(batch: list[_Entry], error: Exception | None) -> None:
        # One wake-up per loop for the whole batch: each call_soon_threadsafe writes to the
        # loop's self-pipe, and a group commit can settle hundreds of waiters.
        futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for entry in batch:
            if entry.future is not None and entry.loop is not None:
                futures.setdefault(entry.loop, []).append(entry.future)
        for loop, waiting in futures.items():
            loop.call_soon_threadsafe(_settle, waiting, error)


def _kept(audit: AuditFile, entry: _Entry) -> bool:
    """Whether an appended entry's records are still in the log (no failed fsync cut them)."""
    assert entry.records is not None
    return not entry.records or audit.survived(entry.epoch, entry.records[-1]["seq"])


def _unwritten() -> CommitError:
    return CommitError("the audit log cannot be written", Reason.AUDIT_UNAVAILABLE, durable=False)


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():  # the awaiting call was cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

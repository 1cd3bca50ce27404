"""Writing what the engine did: revocations that must reach the audit log whatever
happens, refusals, and commits that outlive a cancelled caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..brokers.base import Lease
from ..clock import Clock, rfc3339
from ..errors import PolicyError, SidecarError
from ..events import (
    Event,
    GrantDenied,
    GrantEnded,
    GrantExpired,
    PolicyFailed,
    RequestRejected,
    TaskCompleted,
)
from ..journal import CommitError, Journal
from ..model import AccessEnded, Identity, Intent
from ..validation import preview
from .outcome import GrantOutcome, reason_code
from .settings import EngineMetrics

log = logging.getLogger("jit_sidecar.engine")


@dataclass(slots=True)
class Ended:
    """Bookkeeping for revocations made durable by one commit."""

    events: list[Event] = field(default_factory=list)
    lags: list[tuple[str, float]] = field(default_factory=list)
    """(reason, trigger time) per revoked grant, for jit_revocation_lag_seconds."""
    leases: list[tuple[Lease, str, str]] = field(default_factory=list)
    """(lease, reason, task id) of each ended grant holding a broker credential: handed to
    the broker revocation queue once the commit returns (sidecar.engine.credentials)."""
    access: list[AccessEnded] = field(default_factory=list)
    """Ends of access for `on_access_ended` (tasks, and grants revoked on their own)."""


class Recorder:
    def __init__(
        self,
        journal: Journal,
        metrics: EngineMetrics,
        clock: Clock,
        on_access_ended: Callable[[Sequence[AccessEnded]], None] | None = None,
        *,
        leases_ended: Callable[[Sequence[tuple[Lease, str, str]]], None] | None = None,
        denied: Callable[[str, float], None] | None = None,
    ) -> None:
        """`leases_ended` takes the broker leases of ended grants once their end has been
        committed (or the commit failed: the credential goes anyway, fail closed). `denied`
        is told (task id, time) of each committed denial (the task's flow counts them)."""
        self.journal = journal
        self.metrics = metrics
        self.clock = clock
        self._leases_ended = leases_ended
        self._denied = denied
        self.on_access_ended = on_access_ended
        """Told of every end of access before it is committed (the Shared Signals
        transmitter, docs/shared-signals.md); it must not block and must not raise."""
        self._retries: set[asyncio.Task[None]] = set()

    async def revocations(self, ended: Ended) -> None:
        """Make revocations durable. They already hold in memory (fail closed) whatever
        happens; when the audit log is down they are retried until it is back."""
        if not ended.events:
            return
        if ended.access and self.on_access_ended is not None:
            # Before the commit: access has already ended in memory, and resource servers
            # should hear of it as soon as possible; a lost commit is retried, not undone.
            try:
                self.on_access_ended(ended.access)
            except Exception:
                log.exception("a subscriber to ends of access failed")
        # The commit runs on its own: a caller cancelled meanwhile (deadline, client gone)
        # must not take the retry with it, or a revocation that holds in memory would
        # never reach the audit log and would be undone by the next restart.
        commit = asyncio.ensure_future(self.journal.commit(ended.events))
        commit.add_done_callback(lambda done: self._retry_if_lost(done, ended.events))
        if ended.leases and self._leases_ended is not None:
            # A done callback, not code after the await: a cancelled caller must not keep a
            # downstream credential alive. Registered first, so it runs before the caller
            # resumes (CompleteTask returns with the revocation already started).
            leases_ended = self._leases_ended
            commit.add_done_callback(lambda done: leases_ended(ended.leases))
        try:
            await asyncio.shield(commit)
        except CommitError as err:
            if err.durable:
                return  # in the audit log; the store catches up on its next write or replay
            raise
        done = self.clock.now()
        for event in ended.events:
            if isinstance(event, TaskCompleted):
                log.info(
                    "task ended (%s)",
                    event.state,
                    extra={"task_id": event.task_id, "reason": event.reason},
                )
            elif isinstance(event, GrantEnded):
                expired = isinstance(event, GrantExpired)
                log.log(
                    logging.DEBUG if expired else logging.INFO,
                    "%s",
                    "grant expired" if expired else "grant revoked",
                    extra={
                        "task_id": event.task_id,
                        "grant_id": event.grant_id,
                        "reason": event.reason,
                    },
                )
        for reason, triggered in ended.lags:
            self.metrics.revocation_lag(reason, max(0.0, done - triggered))

    def _retry_if_lost(self, commit: asyncio.Future[None], events: Sequence[Event]) -> None:
        if commit.cancelled():
            return
        err = commit.exception()
        if isinstance(err, CommitError) and not err.durable:
            self._retry_later(events)

    def _retry_later(self, events: Sequence[Event]) -> None:
        async def retry() -> None:
            delay = 0.5
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.journal.commit(events)
                    log.info("%d revocation records written after retry", len(events))
                    return
                except CommitError as err:
                    if err.durable:
                        return
                    delay = min(delay * 2, 10.0)

        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def policy_failure(
        self, err: PolicyError, identity: Identity, intent: Intent, task_id: str, now: float
    ) -> None:
        """Count, log and audit a policy that gave no usable decision. Never raises."""
        self.metrics.policy_error(err.reason.value, err.cause)
        log.error(
            "policy error: %s",
            err.message,
            extra={"reason": err.reason.value, "task_id": task_id, "cause": err.cause},
        )
        event = PolicyFailed(
            time=rfc3339(now),
            task_id=task_id,
            subject=identity.subject,
            intent=intent.as_input(),
            reason=err.reason.value,
            cause=err.cause,
        )
        try:
            await self.journal.commit([event])
        except CommitError:
            log.error("policy_error record could not be written")

    async def denial(
        self,
        identity: Identity,
        task_id: str,
        intent: Intent,
        now: float,
        reasons: tuple[str, ...],
        decision_id: str = "",
        approval_id: str = "",
    ) -> GrantOutcome:
        """A denial is an answer, not an error: counted, logged and audited."""
        event, outcome = self.denied(
            identity, task_id, intent, now, reasons, decision_id, approval_id
        )
        await self.journal.commit([event])
        self.denial_committed(task_id, now)
        return outcome

    def denied(
        self,
        identity: Identity,
        task_id: str,
        intent: Intent,
        now: float,
        reasons: tuple[str, ...],
        decision_id: str = "",
        approval_id: str = "",
    ) -> tuple[GrantDenied, GrantOutcome]:
        """A denial counted and logged; its event still to be committed (a GrantStream
        batch commits it with the batch's other records)."""
        self.metrics.denied()
        log.info(
            "grant denied: %s %s",
            intent.action,
            preview(intent.resource, 128),
            extra={
                "task_id": task_id,
                "decision_id": decision_id or None,
                "reason": reason_code(reasons),
            },
        )
        event = GrantDenied(
            time=rfc3339(now),
            task_id=task_id,
            subject=identity.subject,
            intent=intent.as_input(),
            decision_id=decision_id or None,
            approval_id=approval_id or None,
            reasons=list(reasons),
        )
        return event, GrantOutcome("denied", reasons=reasons, decision_id=decision_id)

    def denial_committed(self, task_id: str, now: float) -> None:
        """A denial's record is in the log: the task's denials count it (the flows' probing
        rule, engine/flows.py)."""
        if self._denied is not None:
            self._denied(task_id, now)

    async def rejection(
        self,
        rpc: str,
        identity: Identity,
        err: SidecarError,
        *,
        task_id: str = "",
        intent: Intent | None = None,
    ) -> None:
        """Audit a refused request (bad input, unknown task, limits). Never raises."""
        if isinstance(err, CommitError | PolicyError):
            return
        self.metrics.rejected(err.reason.value)
        event = RequestRejected(
            time=rfc3339(self.clock.now()),
            rpc=rpc,
            task_id=preview(task_id, 128) if task_id else None,
            subject=identity.subject,
            reason=err.reason.value,
            detail=err.message,
            intent=(
                {
                    "action": preview(intent.action),
                    "resource": preview(intent.resource),
                    "justification": preview(intent.justification, 512),
                }
                if intent is not None
                else None
            ),
        )
        try:
            await self.journal.commit([event])
        except CommitError:
            log.error("could not audit a rejected %s", rpc, extra={"reason": err.reason.value})


async def commit_or_undo(journal: Journal, event: Event, undo: Callable[[], None]) -> None:
    """Commit `event`, shielded from the caller's cancellation (see `to_completion`); when
    the audit log refused it, `undo` what memory already holds: memory never keeps what the
    log does not."""
    await to_completion(_commit_or_undo(journal, event, undo))


async def _commit_or_undo(journal: Journal, event: Event, undo: Callable[[], None]) -> None:
    try:
        await journal.commit([event])
    except CommitError as err:
        if not err.durable:
            undo()
        raise


async def to_completion(work: Coroutine[Any, Any, None]) -> None:
    """Await `work` in its own task, shielded: a caller cancelled meanwhile (deadline,
    client gone) does not stop it, so the undo that follows a commit the audit log refused
    still happens, and memory never keeps what the log does not."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_consume_outcome)
    await asyncio.shield(task)


def _consume_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here when the caller was cancelled

"""The sweeper: ends whatever falls due (grant expiry, task deadline, missed heartbeats,
approval expiry), on a timer and whenever a request finds something overdue."""

from __future__ import annotations

import asyncio
import logging

from ..clock import Clock
from ..journal import CommitError
from ..model import GrantState, RevocationReason, TaskState
from ..tokens import KeyRing
from .commits import Ended, Recorder
from .due import Due
from .live import LiveState

log = logging.getLogger("jit_sidecar.engine")


class Sweeper:
    def __init__(
        self,
        live: LiveState,
        *,
        keys: KeyRing,
        recorder: Recorder,
        clock: Clock,
        interval: float,
    ) -> None:
        self.live = live
        self.keys = keys
        self.recorder = recorder
        self.clock = clock
        self.interval = interval

    async def sweep(self) -> int:
        """End whatever is due; returns how many grants ended. One pass over the due heap;
        O(k log n) for k due items."""
        live = self.live
        due = live.due
        now = self.clock.now()
        ended = Ended()
        count = 0
        misses = live.heartbeat_misses
        for kind, ident in due.pop_due(now):
            if kind is Due.GRANT_EXPIRY:
                grant = live.grants.get(ident)
                if grant is not None and grant.state is GrantState.ACTIVE:
                    if grant.expires_at <= now:
                        live.end_grant(
                            grant,
                            GrantState.EXPIRED,
                            RevocationReason.EXPIRED,
                            grant.expires_at,
                            ended,
                        )
                        count += 1
                    else:  # clock went backwards since it was scheduled
                        due.push(grant.expires_at, kind, ident)
                continue
            if kind is Due.APPROVAL_EXPIRY:
                approval = live.approvals.get(ident)
                if approval is not None and approval.expires_at <= now:
                    ended.events.append(live.approvals.expire(approval, now))
                continue
            task = live.tasks.get(ident)
            if task is None or not task.active:
                continue
            if kind is Due.TASK_DEADLINE:
                if task.deadline <= now:
                    count += live.end_task(
                        task, TaskState.EXPIRED, RevocationReason.TASK_EXPIRED, task.deadline, ended
                    )
                else:
                    due.push(task.deadline, kind, ident)
            else:
                deadline = task.heartbeat_deadline(misses)
                if deadline <= now:
                    count += live.end_task(
                        task, TaskState.CRASHED, RevocationReason.AGENT_LOST, deadline, ended
                    )
                else:
                    due.push(deadline, kind, ident)
        # Retired signing keys leave the JWKS once their last token has expired.
        self.keys.drop_expired(now)
        if ended.events:
            await self.recorder.revocations(ended)
        return count

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until `stop` is set: at the next due time, at the latest every interval."""
        due = self.live.due
        while not stop.is_set():
            when = due.next_due()
            delay = self.interval
            if when is not None:
                delay = min(delay, max(0.0, when - self.clock.now()))
            due.wakeup.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(due.wakeup.wait())]
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if stop.is_set():
                return
            try:
                await self.sweep()
            except CommitError as err:
                log.error("sweep could not commit: %s (retrying)", err.message)
            except Exception:
                log.exception("sweep failed")

"""Open GrantStreams: an open stream is a live agent, a closed one a lost agent.

While a task has a GrantStream open, the stream is its heartbeat: the service calls
`alive` on every message and every heartbeat interval, so no Heartbeat RPC is needed.
When a stream closes while its task is still active (the agent ended it without
CompleteTask, or its process died and the kernel closed the socket), the agent is gone:
the task is ended as crashed and its grants revoked at once (reason `agent_lost`), without
waiting `heartbeat_misses` intervals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from ..clock import Clock
from ..journal import Journal
from ..model import RevocationReason, Task, TaskState
from .commits import Ended, Recorder
from .live import LiveState

log = logging.getLogger("jit_sidecar.engine")
LOST_DETAIL = "the agent's GrantStream closed before CompleteTask"
RECENTLY_LOST = 4096


class StreamWatch:
    def __init__(self, live: LiveState, recorder: Recorder, journal: Journal, clock: Clock):
        self._live = live
        self._recorder = recorder
        self._journal = journal
        self._clock = clock
        self.open: dict[str, int] = {}
        """Open streams per task id."""
        self.lost: OrderedDict[str, str] = OrderedDict()
        """Tasks recently ended by a closed stream (why), newest last: the store keeps
        only `crashed`/`agent_lost`, which reads as missed heartbeats."""

    def opened(self, task: Task) -> None:
        self.open[task.task_id] = self.open.get(task.task_id, 0) + 1
        self.alive(task, durable=True)

    def alive(self, task: Task, *, durable: bool = False) -> None:
        """The stream is open: as good as a heartbeat (not audited, no fsync). Memory is
        what the sweeper reads; `durable` also writes it to the store (for a restart),
        which the stream does once per half heartbeat interval, not on every message."""
        if task.active:
            now = self._clock.now()
            task.last_heartbeat = now
            if durable:
                self._journal.touch(task.task_id, now)

    def forget(self, task: Task) -> None:
        """A stream of `task` ended and says nothing about its agent (shutdown)."""
        left = self.open.get(task.task_id, 1) - 1
        if left > 0:
            self.open[task.task_id] = left
        else:
            self.open.pop(task.task_id, None)

    def closed(self, task: Task) -> asyncio.Task[None] | None:
        """A stream of `task` ended. When the task is still active its agent is lost: the
        task ends and its grants are revoked now, in memory (fail closed); the returned
        asyncio task makes that durable (None when nothing ended)."""
        self.forget(task)
        if not task.active or self._live.tasks.get(task.task_id) is not task:
            return None
        ended = Ended()
        task.end_detail = LOST_DETAIL
        self.lost[task.task_id] = LOST_DETAIL
        if len(self.lost) > RECENTLY_LOST:
            self.lost.popitem(last=False)
        count = self._live.end_task(
            task,
            TaskState.CRASHED,
            RevocationReason.AGENT_LOST,
            self._clock.now(),
            ended,
            detail=LOST_DETAIL,
        )
        log.warning(
            "grant stream closed before CompleteTask: task crashed, %d grants revoked",
            count,
            extra={"task_id": task.task_id, "reason": RevocationReason.AGENT_LOST.value},
        )
        return asyncio.get_running_loop().create_task(self._recorder.revocations(ended))

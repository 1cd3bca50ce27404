"""The due queue: when each grant, task, heartbeat and approval next needs looking at."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator
from enum import IntEnum


class Due(IntEnum):
    GRANT_EXPIRY = 1
    TASK_DEADLINE = 2
    TASK_HEARTBEAT = 3
    APPROVAL_EXPIRY = 4


#: Entries due at the same time come out in this order: a task's end before its grants' (so
#: that a grant whose exp equals its task's deadline ends as `task_expired`).
_ORDER = (Due.TASK_DEADLINE, Due.TASK_HEARTBEAT, Due.GRANT_EXPIRY, Due.APPROVAL_EXPIRY)
_RANK = {d: rank for rank, d in enumerate(_ORDER)}


class DueQueue:
    """A heap of (when, rank of the kind, id); pushing something earlier than everything
    else wakes the sweeper (`wakeup`). Entries due at the same time come out in `_ORDER`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        """The kind is stored as a plain int: a tuple of floats, ints and strs is untracked by
        the cyclic GC, one holding an enum member is not, and full collections with 100k
        grants took 3-4 times as long (docs/performance.md). No sequence number: it cost an
        int object and a slot per entry, 4 MB of RSS with 100k grants."""
        self.wakeup = asyncio.Event()

    def push(self, when: float, kind: Due, ident: str) -> None:
        entry = (when, _RANK[kind], ident)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self.wakeup.set()

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[Due, str]]:
        """(kind, id) of everything due at `now`, earliest first; O(k log n) for k items.
        Items pushed while iterating are seen when they are due too."""
        while self._heap and self._heap[0][0] <= now:
            _, rank, ident = heapq.heappop(self._heap)
            yield _ORDER[rank], ident

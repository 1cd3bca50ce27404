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


_DUE = {int(d): d for d in Due}


class DueQueue:
    """A heap of (when, seq, kind, id); pushing something earlier than everything else
    wakes the sweeper (`wakeup`)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, str]] = []
        """`kind` is stored as a plain int: a tuple of floats, ints and strs is untracked by
        the cyclic GC, one holding an enum member is not, and full collections with 100k
        grants took 3-4 times as long (docs/performance.md)."""
        self._seq = 0
        self.wakeup = asyncio.Event()

    def push(self, when: float, kind: Due, ident: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, int(kind), ident))
        if self._heap[0][1] == self._seq:
            self.wakeup.set()

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[Due, str]]:
        """(kind, id) of everything due at `now`, earliest first; O(k log n) for k items.
        Items pushed while iterating are seen when they are due too."""
        while self._heap and self._heap[0][0] <= now:
            _, _, kind, ident = heapq.heappop(self._heap)
            yield _DUE[kind], ident

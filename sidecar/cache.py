"""Cache of standing-tier decisions (never JIT or approval decisions).

A standing decision with `cache_seconds > 0` is reused for the same identity, action,
resource, task labels, intent context and task flow (`TaskFlow.cache_key`: the flow labels the
task holds, its plan, its denials and their times), for at most `cache_seconds`, bounded in
size (LRU), and dropped whenever OPA's policy revision changes. A cached reuse still gets its
own audit record and a fresh token: only the OPA round trip is saved. A task acting for a
person is never served from the cache nor put in it (the engine; docs/delegation.md), so the
person is not part of the key; a broker's `credential` request is part of the cached decision
itself.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .model import Identity, Intent, PolicyDecision, Tier

CacheKey = tuple[str, str, str, str, str, str, str]
_SORTED = json.JSONEncoder(sort_keys=True)
"""Built once (`json.dumps` with arguments builds an encoder per call): a task's labels and
an intent's context, in the key of every decision looked up."""


class DecisionCache:
    def __init__(
        self, max_entries: int = 10_000, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[CacheKey, tuple[float, PolicyDecision]] = OrderedDict()
        self._max = max_entries
        self._monotonic = monotonic
        self.revision = ""

    @staticmethod
    def key(
        identity: Identity, intent: Intent, labels: Mapping[str, str], flow: str = ""
    ) -> CacheKey:
        """`flow` is the task's `TaskFlow.cache_key()`."""
        context = _SORTED.encode(intent.context) if intent.context else ""
        label_key = _SORTED.encode(labels) if labels else ""
        return (
            identity.subject,
            identity.issuer,
            intent.action,
            intent.resource,
            label_key,
            context,
            flow,
        )

    def get(self, key: CacheKey) -> PolicyDecision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if self._monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: CacheKey, decision: PolicyDecision) -> None:
        if not (decision.allow and decision.tier is Tier.STANDING and decision.cache_seconds > 0):
            return
        if decision.approval_required:
            return
        self._entries[key] = (
            self._monotonic() + decision.cache_seconds,
            replace(decision, cached=True),
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def set_revision(self, revision: str) -> bool:
        """Record OPA's policy revision; clears the cache (and returns True) on a change."""
        if revision == self.revision:
            return False
        self.revision = revision
        self._entries.clear()
        return True

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "revision": self.revision}

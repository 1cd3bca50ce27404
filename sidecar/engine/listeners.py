"""Who is told, synchronously and in memory, that a grant stopped being active.

A grant ends in one place (`LiveState.end_grant`): revoked, expired, its task ended, the
kill switch, a fleet revocation. Parts that keep their own view of live grants (the egress
proxy cuts the grant's open streams and forgets its verified token) subscribe here. The
registry is built first and handed to the engine and to each subscriber at construction, so
nothing is wired into the engine afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..model import Grant

log = logging.getLogger("jit_sidecar.engine")

GrantEndListener = Callable[[Grant], None]


class GrantEndListeners:
    """The listeners called with each grant as it ends, before the end is committed."""

    def __init__(self) -> None:
        self._listeners: list[GrantEndListener] = []

    def subscribe(self, listener: GrantEndListener) -> None:
        """Call `listener(grant)` each time a grant stops being active."""
        self._listeners.append(listener)

    def notify(self, grant: Grant) -> None:
        for listener in self._listeners:
            try:
                listener(grant)
            except Exception:  # a listener's bug must never stop a revocation
                log.exception("grant-end listener failed")

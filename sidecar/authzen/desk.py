"""What the AuthZEN endpoints need from the rest of the sidecar: the approval desk, the
journal, the clock and the settings, as `AuthzenDesk`, which the engine provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..approvals import Approval
from ..clock import Clock
from ..engine import EngineSettings
from ..events import Event
from ..model import Intent, PolicyDecision


class Journal(Protocol):
    async def commit(self, events: Sequence[Event]) -> None: ...

    async def record(self, events: Sequence[Event]) -> None:
        """In the audit log before returning, synced shortly after (sidecar.journal)."""


class AuthzenDesk(Protocol):
    """What the endpoints need from the sidecar; the engine provides all of it."""

    @property
    def clock(self) -> Clock: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def settings(self) -> EngineSettings:
        """Of these, only `approval_ttl` (how long an access request waits for a decision)."""
        ...

    async def open_approval(
        self,
        subject: str,
        task_id: str,
        intent: Intent,
        digest: str,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> Approval: ...

    async def decide_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str
    ) -> Approval: ...

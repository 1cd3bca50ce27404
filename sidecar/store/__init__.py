"""State stores: where tasks, grants and retired keys persist.

A store is a projection of the audit log (see `sidecar.journal`): it applies audited events
in order, and answers the engine's cold-path questions (history, inactive grants). Live
state — active tasks and grants — is loaded once at start-up and then kept by the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..approvals import Approval
from ..brokers.base import Lease
from ..events import Recorded
from ..model import Grant, Task
from ..tokens import PublishedKey


@dataclass(slots=True)
class Snapshot:
    """Live state at start-up."""

    tasks: list[Task] = field(default_factory=list)
    """Tasks still active, with `grant_ids` of their active grants."""
    grants: list[Grant] = field(default_factory=list)
    """Grants still active (some may be past `expires_at`: the engine expires them)."""
    retired_keys: list[PublishedKey] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    """Approvals still pending or approved-but-unused."""
    current_key: dict[str, str] | None = None
    """Public JWK of the key that was signing when the store last saw a rotation."""
    last_exp_by_kid: dict[str, float] = field(default_factory=dict)
    """Latest `exp` of any token signed by each key id (when retired keys can leave)."""
    due_leases: list[Lease] = field(default_factory=list)
    """Broker leases whose grant ended and whose revocation has not completed: the durable
    queue the engine finishes at start-up (docs/brokers.md). Active leases ride on
    `grants`."""


class Store(Protocol):
    def applied_seq(self) -> int: ...

    def apply(
        self, records: Sequence[Recorded], touches: Sequence[tuple[str, float]], seq: int
    ) -> None: ...

    def load(self) -> Snapshot: ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def list_grants(self, task_id: str, include_inactive: bool) -> list[Grant]: ...

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def list_approvals(self, limit: int = 1000) -> list[Approval]: ...

    def check_writable(self) -> bool: ...

    def close(self) -> None: ...


def open_store(spec: str) -> Store:
    """`sqlite:PATH` (the default)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        from pathlib import Path

        from .sqlite import SqliteStore

        return SqliteStore(Path(rest))
    raise ValueError(f"unsupported state store {spec!r}")

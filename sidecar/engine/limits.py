"""How long a grant may live, and how many a task may hold (docs/api.md, "Token lifetime")."""

from __future__ import annotations

from ..errors import Reason, ResourceExhausted
from ..model import PolicyDecision, Task
from .settings import EngineSettings


def grant_ttl(
    requested: int, decision: PolicyDecision, task: Task, now: float, settings: EngineSettings
) -> tuple[int, str]:
    """The lifetime and what limited it: min(requested, policy, tier maximum, task time left,
    global maximum), never wider than any of the bounds. A request for 0 seconds asks for the
    longest the other bounds allow."""
    assert decision.tier is not None
    bounds = [
        (decision.ttl_seconds, "policy"),
        (settings.tier_max(decision.tier), "tier_max"),
        (int(task.deadline - now), "task_remaining"),
        (settings.max_ttl, "global_max"),
    ]
    if requested:
        bounds.insert(0, (requested, "requested"))
    return min(bounds)


def check_grant_room(task: Task, limit: int) -> None:
    """Refuse another grant in a task already holding `limit` (`max_grants_per_task`).
    Checked on arrival and again, with no await in between, right before a grant is added:
    requests decided concurrently would otherwise all pass the first check."""
    if len(task.grant_ids) >= limit:
        raise ResourceExhausted(
            f"task {task.task_id} already holds {limit} active grants", Reason.TOO_MANY_GRANTS
        )

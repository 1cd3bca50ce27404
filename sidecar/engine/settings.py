"""What the engine is given: its own settings and the metrics it updates."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ..config import Config
from ..metrics import Metrics
from ..model import RevocationReason, Tier


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The engine's section of the configuration (docs/configuration.md names each)."""

    issuer: str
    max_ttl: int
    """Global maximum token lifetime, and the standing tier's maximum."""
    max_ttl_jit: int
    max_requested_ttl: int
    """Requested TTLs above this are absurd (invalid_ttl); up to it they are clamped."""
    default_task_duration: int
    max_task_duration: int
    heartbeat_interval: int
    heartbeat_misses: int
    max_grants_per_task: int
    max_tasks_per_identity: int
    max_open_approvals_per_task: int
    approval_ttl: int
    sweep_interval: float

    def tier_max(self, tier: Tier) -> int:
        return self.max_ttl_jit if tier is Tier.JIT else self.max_ttl


def engine_settings(config: Config) -> EngineSettings:
    """The engine's settings out of the whole configuration."""
    return EngineSettings(
        issuer=config.issuer,
        max_ttl=config.max_ttl,
        max_ttl_jit=config.max_ttl_jit,
        max_requested_ttl=config.max_requested_ttl,
        default_task_duration=config.default_task_duration,
        max_task_duration=config.max_task_duration,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_misses=config.heartbeat_misses,
        max_grants_per_task=config.max_grants_per_task,
        max_tasks_per_identity=config.max_tasks_per_identity,
        max_open_approvals_per_task=config.max_open_approvals_per_task,
        approval_ttl=config.approval_ttl,
        sweep_interval=config.sweep_interval,
    )


class EngineMetrics:
    """The metrics the engine updates (docs/metrics.md), with their label children bound
    once: `.labels()` validates and locks on every call, which is measurable on the grant
    path and in sweeps of thousands of grants."""

    def __init__(self, metrics: Metrics) -> None:
        m = metrics
        self.registry: CollectorRegistry = m.registry
        """Read by the /metrics endpoint (sidecar.http), not by the engine."""
        self._requests = m.grant_requests
        self._granted = {t: m.grant_requests.labels(decision="granted", tier=t.value) for t in Tier}
        self._denied = m.grant_requests.labels(decision="denied", tier="")
        self._errored = m.grant_requests.labels(decision="error", tier="")
        self._active = {t: m.active_grants.labels(tier=t.value) for t in Tier}
        self._revoked = {r: m.revocations.labels(reason=r.value) for r in RevocationReason}
        self.cache_hit = m.policy_cache.labels(result="hit")
        self.cache_miss = m.policy_cache.labels(result="miss")
        self.active_tasks = m.active_tasks
        self.grant_ttl = m.grant_ttl
        self.policy_eval = m.policy_eval
        self._policy_errors = m.policy_errors
        self._lag = m.revocation_lag
        self._rejected = m.rejected

    def granted(self, tier: Tier) -> None:
        self._granted[tier].inc()

    def denied(self) -> None:
        self._denied.inc()

    def errored(self) -> None:
        self._errored.inc()

    def pending(self, tier: Tier) -> None:
        self._requests.labels(decision="pending_approval", tier=tier.value).inc()

    def grant_active(self, tier: Tier, delta: int) -> None:
        self._active[tier].inc(delta)

    def revoked(self, reason: RevocationReason) -> None:
        self._revoked[reason].inc()

    def revocation_lag(self, reason: str, seconds: float) -> None:
        self._lag.labels(reason=reason).observe(seconds)

    def policy_error(self, reason: str, cause: str) -> None:
        self._policy_errors.labels(reason=reason, cause=cause).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason=reason).inc()

"""Prometheus metrics (names and labels are a contract: docs/metrics.md).

Every label is a bounded set: decision, tier, reason codes, RPC method names, gRPC codes.
Never a token, subject, task id or resource. The registry is passed in, so tests read exact
values from their own registry.

Series whose label values are known in advance exist from start-up, at 0, as the Prometheus
instrumentation guide asks ("Avoid missing metrics"): a series born with its first event
leaves panels at "No data" and makes `rate()` and `increase()` blind to that first event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__
from ._proto.jit.v1 import access_pb2, admin_pb2
from .errors import Reason
from .model import RevocationReason
from .policy import CAUSES

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
TTL_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
NOT_REJECTIONS = frozenset(
    {
        # Counted elsewhere (jit_policy_errors_total, jit_audit_write_errors_total, ...),
        # refused before the sidecar knows who asks (identity), or not a refusal of the
        # request itself.
        Reason.IDENTITY_INVALID,
        Reason.POLICY_UNAVAILABLE,
        Reason.POLICY_RESULT_INVALID,
        Reason.AUDIT_UNAVAILABLE,
        Reason.SIGNING_UNAVAILABLE,
        Reason.SHUTTING_DOWN,
        Reason.UNIMPLEMENTED,
        Reason.INTERNAL,
    }
)
REJECTION_REASONS = tuple(r.value for r in Reason if r not in NOT_REJECTIONS)
"""Reason codes of jit_rejected_requests_total, each created at 0."""


def rpc_methods() -> tuple[str, ...]:
    """The `method` label of every RPC the sidecar serves, as CallGuard names them."""
    access = access_pb2.DESCRIPTOR.services_by_name["AccessService"].methods
    admin = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods
    return (*(m.name for m in access), *(f"Admin.{m.name}" for m in admin))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.grant_requests = Counter(
            "jit_grant_requests_total",
            "RequestGrant answers by decision (granted, denied, pending_approval, error) and tier.",
            ["decision", "tier"],
            registry=r,
        )
        self.revocations = Counter(
            "jit_revocations_total",
            "Grants that stopped being active, by reason (expiry counted once per grant).",
            ["reason"],
            registry=r,
        )
        self.active_grants = Gauge(
            "jit_active_grants", "Grants currently active, by tier.", ["tier"], registry=r
        )
        self.active_tasks = Gauge("jit_active_tasks", "Tasks currently active.", registry=r)
        self.grant_ttl = Histogram(
            "jit_grant_ttl_seconds",
            "Lifetime of issued tokens.",
            buckets=TTL_BUCKETS,
            registry=r,
        )
        self.policy_eval = Histogram(
            "jit_policy_eval_seconds",
            "Round trip of one OPA decision, as seen by the sidecar.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_errors = Counter(
            "jit_policy_errors_total",
            "Decisions that could not be used (no token issued), by reason code and cause.",
            ["reason", "cause"],
            registry=r,
        )
        self.authzen_evaluations = Counter(
            "jit_authzen_evaluations_total",
            "AuthZEN evaluations answered, by decision (permit, deny, error: denied because "
            "no usable decision came back).",
            ["decision"],
            registry=r,
        )
        self.policy_cache = Counter(
            "jit_policy_cache_total",
            "Standing-decision cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "jit_rpc_duration_seconds",
            "Server-side duration of gRPC calls by method and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_write_errors = Counter(
            "jit_audit_write_errors_total",
            "Audit log writes that failed (every grant in the batch was refused).",
            registry=r,
        )
        self.journal_batch = Histogram(
            "jit_journal_batch_seconds",
            "Duration of one group commit (audit write + fsync + state store transaction).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.revocation_lag = Histogram(
            "jit_revocation_lag_seconds",
            "From the triggering event (completion, deadline, missed heartbeat, expiry) to the "
            "revocation being durable.",
            ["reason"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "jit_rejected_requests_total",
            "Requests refused before policy evaluation, by reason code.",
            ["reason"],
            registry=r,
        )
        self.key_rotation_errors = Counter(
            "jit_key_rotation_errors_total",
            "Signing key rotations that failed (the previous key stayed in use).",
            registry=r,
        )
        # --- fleet (shared state on Redis; docs/scale-out.md)
        self.fleet_outbox_depth = Gauge(
            "jit_fleet_outbox_depth",
            "Changes (revocations, completions, registrations) queued for Redis, not yet pushed.",
            registry=r,
        )
        self.fleet_replay_lag = Histogram(
            "jit_fleet_outbox_replay_lag_seconds",
            "Time a change waited in the outbox before the replay pushed it to Redis.",
            buckets=(*LAG_BUCKETS, 60.0, 300.0, 1800.0),
            registry=r,
        )
        self.fleet_view_staleness = Gauge(
            "jit_fleet_view_staleness_seconds",
            "Seconds since the revocation view was last known complete (+Inf before the first "
            "sync); above fleet_stale_after, introspection fails closed.",
            registry=r,
        )
        self.fleet_view_entries = Gauge(
            "jit_fleet_view_entries",
            "Revocations (grants, tasks, subjects, all) held in the in-memory view.",
            registry=r,
        )
        self.fleet_propagation = Histogram(
            "jit_fleet_propagation_seconds",
            "From a revocation entering the Redis stream to this sidecar's view holding it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fleet_resyncs = Counter(
            "jit_fleet_resyncs_total",
            "Resynchronisations of the view after (re)connecting, by kind (incremental: from "
            "the stream; full: from the revocation index).",
            ["kind"],
            registry=r,
        )
        self.fleet_redis_errors = Counter(
            "jit_fleet_redis_errors_total",
            "Times Redis became unreachable, by side (read: the view's reader; write: pushes).",
            ["side"],
            registry=r,
        )
        self.fleet_remote_revocations = Counter(
            "jit_fleet_remote_revocations_total",
            "Revocations made on other sidecars that ended grants or tasks of this one, by scope.",
            ["scope"],
            registry=r,
        )
        # --- secretless HTTP egress (docs/brokers.md)
        self.egress_requests = Counter(
            "jit_egress_requests_total",
            "Requests to the egress proxy by upstream (empty: not a configured one) and "
            "outcome (forwarded, bad_request, unknown_upstream, unauthenticated, forbidden, "
            "unavailable, upstream_error, cut, internal).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.egress_duration = Histogram(
            "jit_egress_request_duration_seconds",
            "From a request's arrival at the egress proxy to its answer: the proxy's checks "
            "plus the upstream's whole response, streamed.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # --- credential brokers (docs/brokers.md)
        self.broker_operations = Counter(
            "jit_broker_operations_total",
            "Broker operations by broker, op (issue, revoke, orphan_sweep) and outcome (ok, "
            "unavailable, error).",
            ["broker", "op", "outcome"],
            registry=r,
        )
        self.broker_seconds = Histogram(
            "jit_broker_operation_seconds",
            "Duration of one broker operation, by broker and op.",
            ["broker", "op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.broker_pending_revocations = Gauge(
            "jit_broker_pending_revocations",
            "Leases whose grant has ended but whose downstream credential is not revoked yet "
            "(retried with backoff); above 0 for long, JitSidecarBrokerRevocationsStuck fires.",
            registry=r,
        )
        # --- Shared Signals transmitter (docs/shared-signals.md); `stream` is a stream id,
        # one per receiver, bounded by the transmitter's stream limit.
        self.ssf_queue_depth = Gauge(
            "jit_ssf_queue_depth",
            "Security event tokens queued for a stream and not yet acknowledged.",
            ["stream"],
            registry=r,
        )
        self.ssf_lag = Gauge(
            "jit_ssf_lag_seconds",
            "Age of the oldest unacknowledged security event token of a stream (0 when none).",
            ["stream"],
            registry=r,
        )
        self.ssf_events = Counter(
            "jit_ssf_events_total",
            "Security event tokens by stream and result (queued, delivered, retried, refused, "
            "lost).",
            ["stream", "result"],
            registry=r,
        )
        self.build_info = Info("jit_build", "Build information.", registry=r)
        self.build_info.info({"version": __version__})
        for tier in ("standing", "jit"):
            self.active_grants.labels(tier=tier).set(0)
        self._create_known_series()

    def _create_known_series(self) -> None:
        """Every label combination known in advance, at 0. For RPC durations only code OK:
        a histogram per (method, code) for all 17 gRPC codes would be ~3,700 series per
        sidecar; other codes appear with their first call (docs/metrics.md)."""
        for reason, causes in CAUSES.items():
            for cause in causes:
                self.policy_errors.labels(reason=reason.value, cause=cause)
        for rejection in REJECTION_REASONS:
            self.rejected.labels(reason=rejection)
        for method in rpc_methods():
            self.rpc_duration.labels(method=method, code="OK")
        for revocation in RevocationReason:
            self.revocation_lag.labels(reason=revocation.value)

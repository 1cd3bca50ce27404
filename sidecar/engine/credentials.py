"""Downstream credentials in the grant path (docs/brokers.md): step 6 of a grant ("issue any
downstream credential"), and the durable revocation of every lease when its grant ends.

Issue: the decision's `credential` object is validated by the broker it names (unknown broker
or malformed → policy_result_invalid); the broker makes the credential before the grant is
persisted, and its lease is committed with the grant (`credential_issued`, same journal
commit as `grant_issued`). A failure means no grant; a commit that fails after the broker
issued revokes the credential at once.

Revoke: ending a grant is first made durable (the `grant_revoked`/`grant_expired` record also
marks its lease `revoking` in the store: the durable queue); then this module asks the broker,
and retries with capped exponential backoff while the downstream system is unreachable (a
schedule per lease in a queue, rather than stamina's retry loop around one call: one lease
waiting must not hold up the others). Each
completed revocation is recorded (`credential_revoked`). The token itself was revoked in
memory before any of this, so a database that is down never delays the end of the token.

At start-up the queue is reloaded from the store (leases still `revoking`), and every
broker's `orphans` lists credentials that a crash between the broker's work and the journal
commit left unrecorded; they are revoked too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ..brokers.base import (
    Broker,
    BrokerUnavailable,
    CredentialSpec,
    CredentialSpecInvalid,
    IssuedCredential,
    Lease,
    LeaseRequest,
)
from ..clock import Clock, rfc3339
from ..events import CredentialIssued, CredentialRevoked
from ..journal import CommitError, Journal
from ..metrics import Metrics
from ..model import Grant, Intent, PolicyDecision

log = logging.getLogger("jit_sidecar.brokers")
#: Backoff of a revocation the downstream system refused or could not take: first retry,
#: then doubling (with jitter) up to the cap.
RETRY_FIRST = 0.25
RETRY_MAX = 15.0
ORPHAN_REASON = "orphan"
T = TypeVar("T")


@dataclass(slots=True)
class _Due:
    lease: Lease
    reason: str
    task_id: str
    attempts: int = 0
    next_try: float = 0.0


class Credentials:
    """The brokers the engine may use, and the durable queue of their revocations."""

    def __init__(
        self,
        brokers: Mapping[str, Broker],
        *,
        journal: Journal,
        metrics: Metrics,
        clock: Clock,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.brokers = dict(brokers)
        self.journal = journal
        self.clock = clock
        self._metrics = metrics
        self._retry_first = retry_first
        self._retry_max = retry_max
        self.due: dict[str, _Due] = {}
        """Leases whose revocation is due, by grant id (the in-memory face of the store's
        `revoking` leases)."""
        self.in_flight: set[str] = set()
        """Grant ids a broker is issuing for right now: their credentials are no orphans."""
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._orphans_swept = not self.brokers
        for name in self.brokers:
            for op in ("issue", "revoke", "orphan_sweep"):
                for outcome in ("ok", "unavailable"):
                    metrics.broker_operations.labels(broker=name, op=op, outcome=outcome)
        metrics.broker_pending_revocations.set(0)

    # ------------------------------------------------------------------ issue (step 6)
    def spec(self, decision: PolicyDecision, intent: Intent) -> CredentialSpec | None:
        """The decision's `credential` object, validated by the broker it names; None when the
        decision asks for no credential."""
        raw = decision.credential
        if raw is None:
            return None
        broker = self.brokers.get(str(raw.get("broker")))
        if broker is None:
            raise CredentialSpecInvalid(f"no broker {raw.get('broker')!r} is configured here")
        return broker.parse(raw, resource=intent.resource)

    async def issue(self, grant: Grant, spec: CredentialSpec) -> IssuedCredential:
        """Make the credential for `grant` (not yet persisted). Raises `BrokerUnavailable`
        and leaves nothing behind; a caller cancelled meanwhile does not leave the credential
        behind either (it is revoked as soon as the broker returns it)."""
        broker = self.brokers[spec.broker]
        request = LeaseRequest(
            grant_id=grant.grant_id,
            task_id=grant.task_id,
            subject=grant.subject,
            action=grant.action,
            resource=grant.resource,
            expires_at=grant.expires_at,
        )
        work = asyncio.ensure_future(self._timed(broker.name, "issue", broker.issue(request, spec)))
        self.in_flight.add(grant.grant_id)
        try:
            issued = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(lambda done: self._revoke_abandoned(done, grant))
            raise
        finally:
            self.in_flight.discard(grant.grant_id)
        return issued

    def _revoke_abandoned(self, done: asyncio.Future[IssuedCredential], grant: Grant) -> None:
        if not done.cancelled() and done.exception() is None:
            self.revoke_soon([(done.result().lease, "issue_aborted", grant.task_id)])

    def issued_event(self, grant: Grant, lease: Lease) -> CredentialIssued:
        """The record committed with the grant's own (`credential_issued`)."""
        return CredentialIssued(
            time=rfc3339(self.clock.now()),
            task_id=grant.task_id,
            grant_id=grant.grant_id,
            subject=grant.subject,
            broker=lease.broker,
            handle=lease.handle,
            expires_at=rfc3339(lease.expires_at),
            details=dict(lease.details) or None,
        )

    # ------------------------------------------------------------------ revoke
    def revoke_soon(self, leases: Iterable[tuple[Lease, str, str]]) -> None:
        """Queue (lease, reason, task id) revocations whose end is already durable (or whose
        lease never was); the worker (`run`) starts on them at once."""
        now = time.monotonic()
        for lease, reason, task_id in leases:
            if lease.grant_id not in self.due:
                self.due[lease.grant_id] = _Due(lease, reason, task_id, next_try=now)
        if self.due:
            self._empty.clear()
        self._metrics.broker_pending_revocations.set(len(self.due))
        self._wakeup.set()

    def restore(self, due: Iterable[Lease]) -> None:
        """At start-up: the store's durable queue (leases whose grant ended)."""
        self.revoke_soon((lease, "restart", "") for lease in due)
        if self.due:
            log.warning("%d broker revocations were due at start-up", len(self.due))

    @property
    def pending(self) -> int:
        return len(self.due)

    async def run(self, stop: asyncio.Event, live: Mapping[str, Grant]) -> None:
        """Revoke what is due until `stop` is set; retry each failure with backoff. First
        (and until it succeeds) sweep every broker for orphans. `live` is the engine's
        active grants by id."""
        while not stop.is_set():
            try:
                if not self._orphans_swept:
                    await self._sweep_orphans(live)
                now = time.monotonic()
                ready = [d for d in self.due.values() if d.next_try <= now]
                if ready:
                    await asyncio.gather(*(self._revoke(d) for d in ready))
                    continue
            except Exception:  # the queue must outlive any bug in one revocation
                log.exception("broker revocation loop failed; retrying")
                await asyncio.sleep(self._retry_first)
                continue
            waits = [d.next_try - now for d in self.due.values()]
            if not self._orphans_swept:
                waits.append(self._retry_max)
            self._wakeup.clear()
            timeout = max(0.0, min(waits)) if waits else None
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._wakeup.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _revoke(self, due: _Due) -> None:
        lease = due.lease
        broker = self.brokers.get(lease.broker)
        due.attempts += 1
        if broker is None:
            # A lease of a broker this sidecar no longer configures: it stays queued (and
            # counted, so the alert fires) until the broker is configured again.
            log.error(
                "lease %s needs the %s broker, which is not configured",
                lease.handle,
                lease.broker,
                extra={"grant_id": lease.grant_id},
            )
            due.next_try = time.monotonic() + self._retry_max
            return
        try:
            await self._timed(broker.name, "revoke", broker.revoke(lease))
        except BrokerUnavailable as err:
            delay = min(self._retry_max, self._retry_first * 2 ** (due.attempts - 1))
            due.next_try = time.monotonic() + delay * random.uniform(0.8, 1.2)
            log.warning(
                "could not revoke %s lease %s (attempt %d, retrying in %.1f s): %s",
                lease.broker,
                lease.handle,
                due.attempts,
                delay,
                err.message,
                extra={"grant_id": lease.grant_id, "cause": err.cause},
            )
            return
        self.due.pop(lease.grant_id, None)
        self._metrics.broker_pending_revocations.set(len(self.due))
        if not self.due:
            self._empty.set()
        event = CredentialRevoked(
            time=rfc3339(self.clock.now()),
            grant_id=lease.grant_id,
            task_id=due.task_id or None,
            broker=lease.broker,
            handle=lease.handle,
            reason=due.reason,
            attempts=due.attempts,
        )
        try:
            await self.journal.commit([event])
        except CommitError as err:
            # The credential is gone; only its record is missing. After a restart the lease
            # is revoked again, which is idempotent, and recorded then.
            log.error("could not record the revocation of %s: %s", lease.handle, err.message)
        log.info(
            "%s credential %s revoked (%s)",
            lease.broker,
            lease.handle,
            due.reason,
            extra={"grant_id": lease.grant_id, "reason": due.reason},
        )

    async def _sweep_orphans(self, live: Mapping[str, Grant]) -> None:
        known = {g.lease.handle for g in live.values() if g.lease is not None}
        known |= {d.lease.handle for d in self.due.values()}
        try:
            for broker in self.brokers.values():
                listed = await self._timed(broker.name, "orphan_sweep", broker.orphans(known))
                # Checked after the broker's listing: a credential issued meanwhile is in
                # flight, or its grant is live, or its failed issue already queued it.
                found = [
                    lease
                    for lease in listed
                    if lease.grant_id not in live
                    and lease.grant_id not in self.in_flight
                    and lease.grant_id not in self.due
                ]
                if found:
                    log.warning(
                        "%d %s credentials were made but never recorded: revoking them",
                        len(found),
                        broker.name,
                    )
                    self.revoke_soon((lease, ORPHAN_REASON, "") for lease in found)
        except BrokerUnavailable as err:
            log.warning("orphan sweep postponed: %s", err.message, extra={"cause": err.cause})
            return
        self._orphans_swept = True

    async def _timed(self, broker: str, op: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await work
            outcome = "ok"
            return result
        except BrokerUnavailable:
            outcome = "unavailable"
            raise
        except Exception as err:
            # A broker's own bug must not escape as a traceback: it is a failed operation
            # (fail closed), retried like an unreachable downstream system.
            log.exception("%s broker %s failed", broker, op)
            raise BrokerUnavailable(broker, f"{op} failed: {type(err).__name__}", "error") from err
        finally:
            self._metrics.broker_operations.labels(broker=broker, op=op, outcome=outcome).inc()
            self._metrics.broker_seconds.labels(broker=broker, op=op).observe(
                time.perf_counter() - started
            )

    async def drained(self) -> None:
        """Wait until no revocation is due (at shutdown, bounded by the caller: what is left
        is finished by the next start, from the store)."""
        await self._empty.wait()

    async def aclose(self) -> None:
        for broker in self.brokers.values():
            await broker.aclose()

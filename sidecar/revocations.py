"""The fleet's revocation view: what a sidecar must know to refuse tokens it did not issue.

A sidecar that shares state with a fleet (docs/scale-out.md) keeps, in memory, every
revocation still relevant anywhere in the fleet: revoked grant ids, revoked tasks, per-subject
cutoffs (the kill switch: every token of that subject issued at or before the cutoff is
inactive) and a global cutoff, plus the fleet's public keys. Introspection answers from this
view; a background reader (`sidecar.fleet`) keeps it current from Redis. Nothing here does
I/O: the view is data plus the rules that read it.

Revocations only ever accumulate until they expire (an entry expires when no token it covers
can still be valid), so merging two views is a union, and a resynchronisation can never
un-revoke anything.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .model import Grant, Tier

SCOPES = ("grant", "task", "subject", "all", "principal")
STALE = "revocation_view_stale"
"""The revocation reason given while the view cannot be trusted (fail closed)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One fleet-wide revocation."""

    scope: str
    """grant, task, subject or all."""
    target: str
    """The grant id, task id or subject ("" for all)."""
    cutoff: float = 0.0
    """task, subject, all: tokens whose `iat` is at or before this time are inactive."""
    reason: str = ""
    """A RevocationReason value (completed, revoked_by_operator, kill_switch, ...)."""
    expires_at: float = 0.0
    """When no token this covers can still be valid, so the entry can be forgotten."""
    origin: str = ""
    """fleet_id of the sidecar that made it."""
    detail: str = ""
    """The operator's words, if any (carried by the stream, not kept in the index)."""

    def member(self) -> str:
        """The entry's identity in the Redis index (everything but expiry and detail)."""
        return json.dumps(
            [self.scope, self.target, self.cutoff, self.reason, self.origin],
            separators=(",", ":"),
        )

    @classmethod
    def from_member(cls, member: str, expires_at: float, detail: str = "") -> Revocation | None:
        """Parse an index member; None when it is not a well-formed revocation."""
        try:
            scope, target, cutoff, reason, origin = json.loads(member)
        except (ValueError, TypeError):
            return None
        if (
            scope not in SCOPES
            or not isinstance(target, str)
            or not isinstance(cutoff, int | float)
            or not isinstance(reason, str)
            or not isinstance(origin, str)
            or not math.isfinite(cutoff)
            or not math.isfinite(expires_at)
        ):
            return None
        if scope != "all" and not target:
            return None
        return cls(scope, target, float(cutoff), reason, expires_at, origin, detail)


@dataclass(frozen=True, slots=True)
class FleetKey:
    """A public signing key of some sidecar of the fleet."""

    jwk: Mapping[str, str]
    expires_at: float
    """When its last token has expired (refreshed while the key is current)."""
    owner: str
    """fleet_id of the sidecar holding the private half."""

    @property
    def kid(self) -> str:
        return self.jwk["kid"]


@dataclass(frozen=True, slots=True)
class _Cut:
    cutoff: float
    expires_at: float
    reason: str


class RevocationView:
    """In-memory revocations and keys of the fleet; fresh while `mark_synced` keeps up."""

    _BARRING = (
        ("task", "txn"),
        ("subject", "client_id"),
        ("principal", "sub"),
        ("all", None),
    )

    def __init__(self, stale_after: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._monotonic = monotonic
        self._grants: dict[str, tuple[float, str]] = {}
        self._cuts: dict[tuple[str, str], _Cut] = {}
        """(scope, target) → cutoff for task, subject and all."""
        self._keys: dict[str, FleetKey] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self.synced_at: float | None = None
        """Monotonic time up to which the view is known to hold every revocation."""
        self.problem = "not connected to Redis yet"
        """Why the view is not being kept current ("" while it is)."""

    # ------------------------------------------------------------------ freshness
    def mark_synced(self, at: float) -> None:
        """Everything published before monotonic time `at` is in the view."""
        if self.synced_at is None or at > self.synced_at:
            self.synced_at = at
        self.problem = ""

    def staleness(self) -> float:
        """Seconds since the view was last known complete (inf before the first sync)."""
        if self.synced_at is None:
            return math.inf
        return max(0.0, self._monotonic() - self.synced_at)

    def is_stale(self) -> bool:
        return self.staleness() > self.stale_after

    # ------------------------------------------------------------------ revocations
    def add(self, rev: Revocation) -> bool:
        """Merge one revocation; True when it told the view something new."""
        if rev.scope == "grant":
            old = self._grants.get(rev.target)
            if old is not None and old[0] >= rev.expires_at:
                return False
            self._grants[rev.target] = (rev.expires_at, old[1] if old else rev.reason)
        else:
            key = (rev.scope, rev.target)
            cut = self._cuts.get(key)
            if cut is None:
                self._cuts[key] = _Cut(rev.cutoff, rev.expires_at, rev.reason)
            elif cut.cutoff >= rev.cutoff and cut.expires_at >= rev.expires_at:
                return False
            else:
                # A later cutoff covers every token an earlier one did.
                self._cuts[key] = _Cut(
                    max(rev.cutoff, cut.cutoff),
                    max(rev.expires_at, cut.expires_at),
                    rev.reason if rev.cutoff >= cut.cutoff else cut.reason,
                )
        heapq.heappush(self._expiry, (rev.expires_at, rev.scope, rev.target))
        return True

    def barred(self, claims: Mapping[str, Any], now: float) -> str:
        """Why a token with these (verified) claims is inactive fleet-wide, or "".

        A stale view bars every token: it cannot tell whether one was revoked elsewhere.
        """
        if self.is_stale():
            return STALE
        jti = claims.get("jti")
        if isinstance(jti, str):
            entry = self._grants.get(jti)
            if entry is not None and entry[0] > now:
                return entry[1]
        iat = claims.get("iat")
        # A token without a usable iat counts as issued before every cutoff (fail closed).
        issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else -1.0
        # `client_id` is the agent, also when `sub` is the person a delegated token acts for
        # (RFC 8693 §4.1); a person's kill switch bars the `sub` of delegated tokens only.
        for scope, claim in self._BARRING:
            if scope == "principal" and "act" not in claims:
                continue
            target = "" if claim is None else claims.get(claim)
            if scope == "subject" and "client_id" not in claims:
                target = claims.get("sub")  # a token of ours always has client_id; fail safe
            if not isinstance(target, str):
                continue
            cut = self._cuts.get((scope, target))
            if cut is not None and cut.expires_at > now and issued <= cut.cutoff:
                return cut.reason
        return ""

    def prune(self, now: float) -> int:
        """Forget entries whose tokens have all expired; returns how many went."""
        gone = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, scope, target = heapq.heappop(self._expiry)
            if scope == "grant":
                entry = self._grants.get(target)
                if entry is not None and entry[0] <= now:
                    del self._grants[target]
                    gone += 1
            else:
                cut = self._cuts.get((scope, target))
                if cut is not None and cut.expires_at <= now:
                    del self._cuts[(scope, target)]
                    gone += 1
        for kid in [k for k, v in self._keys.items() if v.expires_at <= now]:
            del self._keys[kid]
        return gone

    def __len__(self) -> int:
        return len(self._grants) + len(self._cuts)

    # ------------------------------------------------------------------ keys
    def add_key(self, key: FleetKey) -> None:
        old = self._keys.get(key.kid)
        if old is None or key.expires_at >= old.expires_at:
            self._keys[key.kid] = key

    def key(self, kid: str, now: float) -> FleetKey | None:
        found = self._keys.get(kid)
        return found if found is not None and found.expires_at > now else None

    def keys(self, now: float) -> Iterator[FleetKey]:
        return (k for k in list(self._keys.values()) if k.expires_at > now)


class FleetGate(Protocol):
    """What the engine asks of a fleet (see sidecar.fleet.Fleet); the engine does no I/O."""

    fleet_id: str

    def check_issuable(self) -> None:
        """Raise Unavailable(store_unavailable) when a new grant could not be made
        visible to the fleet (Redis unreachable, or older changes still in the outbox)."""
        ...

    def barred(self, claims: Mapping[str, Any], now: float) -> str:
        """Why these verified claims are inactive fleet-wide ("" when they are not)."""
        ...

    async def verify(self, token: str, *, issuer: str, now: float) -> dict[str, Any] | None:
        """Claims of a token signed by another sidecar of the fleet, or None."""
        ...


def grant_from_claims(claims: Mapping[str, Any]) -> Grant | None:
    """The grant a verified token of another sidecar describes (None when malformed)."""
    try:
        details = claims["authorization_details"][0]
        grant = Grant(
            grant_id=claims["jti"],
            task_id=claims["txn"],
            subject=claims.get("client_id", claims["sub"]),
            action=details["actions"][0],
            resource=details["locations"][0],
            tier=Tier(claims["tier"]),
            audience=claims["aud"],
            scope=tuple(str(claims.get("scope", "")).split()),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            kid="",
            cnf_jkt=(claims.get("cnf") or {}).get("jkt", ""),
            principal=claims["sub"] if "act" in claims else "",
            actor=claims.get("act") if isinstance(claims.get("act"), dict) else None,
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if not all(isinstance(v, str) and v for v in (grant.grant_id, grant.task_id, grant.subject)):
        return None
    return grant

"""Token introspection (RFC 7662): is this token one we signed, for a grant active now?"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..model import Grant
from ..revocations import FleetGate, grant_from_claims
from ..store import Store
from ..tokens import KeyRing
from .live import LiveState

#: Longer than any token this sidecar signs: not parsed at all.
MAX_TOKEN = 16384


@dataclass(frozen=True, slots=True)
class Introspection:
    active: bool
    claims: Mapping[str, Any] = field(default_factory=dict)
    grant: Grant | None = None
    revocation_reason: str = ""


async def introspect(
    token: str,
    *,
    issuer: str,
    keys: KeyRing,
    live: LiveState,
    store: Store,
    fleet: FleetGate | None,
    clock: Clock,
    with_reason: bool,
) -> Introspection:
    """RFC 7662 §2.2: active only for a token we signed whose grant is active right now;
    `with_reason` adds why an inactive token of ours is inactive."""
    if not token or len(token) > MAX_TOKEN:
        return Introspection(False)
    now = clock.now()
    claims = keys.verify(token, issuer=issuer, now=now)
    foreign = False
    if claims is None and fleet is not None:
        claims = await fleet.verify(token, issuer=issuer, now=now)
        foreign = claims is not None
    if claims is None:
        return Introspection(False)
    jti = claims.get("jti")
    if not isinstance(jti, str):
        return Introspection(False)
    if fleet is not None:
        barred = fleet.barred(claims, now)
        if barred:
            return Introspection(False, revocation_reason=barred if with_reason else "")
        if foreign:
            return _foreign(claims, now, with_reason)
    grant = live.grants.get(jti)
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if (
        grant is not None
        and grant.is_active(now)
        and isinstance(exp, int)
        and isinstance(nbf, int)
        and nbf <= now < exp
        and claims.get("client_id") == grant.subject  # `sub` is the person when delegated
        and claims.get("txn") == grant.task_id
    ):
        return Introspection(True, claims, grant)
    reason = ""
    if with_reason:
        stored = grant or live.recently_ended.get(jti) or await store.get_grant(jti)
        if stored is not None:
            reason = stored.end_reason or (
                "expired" if stored.expires_at <= now else stored.state.value
            )
    return Introspection(False, revocation_reason=reason)


def _foreign(claims: Mapping[str, Any], now: float, with_reason: bool) -> Introspection:
    """A token another sidecar of the fleet signed and nobody revoked: active while its time
    claims say so."""
    grant = grant_from_claims(claims)
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if grant is None or not isinstance(exp, int) or not isinstance(nbf, int):
        return Introspection(False)
    if nbf <= now < exp:
        return Introspection(True, claims, grant)
    return Introspection(False, revocation_reason="expired" if with_reason else "")

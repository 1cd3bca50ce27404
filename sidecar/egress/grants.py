"""What the egress proxy needs from the sidecar: "is this token's grant active right now?"
answered from memory, and "tell me when a grant ends".

`GrantLookup` is the whole interface, so the proxy does not depend on the engine's shape;
`EngineGrants` implements it over the engine's live grants and key ring. Revocation is
therefore checked in memory on every request, with no network hop: a grant the engine ends
(task completed, revoked, expired, kill switch, a fleet revocation) is inactive for the next
request at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..model import Grant

if TYPE_CHECKING:
    from ..engine import Engine, GrantEndListeners

GrantEnded = Callable[[str, str], None]
"""Called with (grant_id, reason) when a grant stops being active."""


@dataclass(frozen=True, slots=True)
class ActiveGrant:
    """A verified token whose grant is active now."""

    grant_id: str
    task_id: str
    subject: str
    audience: str
    action: str
    resource: str
    expires_at: float
    cnf_jkt: str
    """The RFC 7638 thumbprint the token is bound to (RFC 9449), '' when unbound."""
    claims: Mapping[str, Any] = field(repr=False)
    """The verified claims (for the DPoP check)."""


class GrantLookup(Protocol):
    def active(self, token: str, now: float) -> ActiveGrant | None:
        """The token's grant when the token is one this sidecar signed and its grant is
        active at `now`; None otherwise. Memory only."""
        ...

    def why_inactive(self, token: str, now: float) -> str:
        """For a token this sidecar signed whose grant is not active: why (`completed`,
        `expired`, `kill_switch`, …), when known; '' for any other token."""
        ...

    def on_end(self, callback: GrantEnded) -> None:
        """Call `callback(grant_id, reason)` synchronously whenever a grant ends."""
        ...


class EngineGrants:
    """`GrantLookup` over the engine's in-memory grants (`Engine.grant`) and `KeyRing.verify`.

    A token's signature is checked once: the claims of a token that verified are kept, keyed
    by the exact token string, until its grant ends (at most `max_verified` of them). Every
    request still checks the grant's state and time claims from memory. The signature check
    was a third of the proxy's CPU per request (docs/performance.md).
    """

    def __init__(
        self, engine: Engine, grant_end: GrantEndListeners, *, max_verified: int = 16_384
    ) -> None:
        """`grant_end` is the registry the engine was built with: it reports the ends of
        the engine's grants."""
        self._engine = engine
        self._grant_end = grant_end
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._token_of: dict[str, str] = {}
        self._max = max_verified
        self._ended: OrderedDict[str, str] = OrderedDict()
        """Recently ended grants and why (bounded like the verified tokens)."""
        grant_end.subscribe(self._forget)

    def _claims(self, token: str, now: float) -> dict[str, Any] | None:
        claims = self._verified.get(token)
        if claims is not None:
            # A retired key's tokens have all expired (the key outlives its last token), so
            # the check below on exp makes a re-verification unnecessary.
            return claims
        engine = self._engine
        claims = engine.keys.verify(token, issuer=engine.settings.issuer, now=now)
        jti = claims.get("jti") if claims is not None else None
        if claims is None or not isinstance(jti, str) or engine.grant(jti) is None:
            return claims  # not kept: only tokens of live grants are worth remembering
        self._verified[token] = claims
        self._token_of[jti] = token
        if len(self._verified) > self._max:
            _, oldest = self._verified.popitem(last=False)
            self._token_of.pop(str(oldest.get("jti")), None)
        return claims

    def _forget(self, grant: Grant) -> None:
        token = self._token_of.pop(grant.grant_id, None)
        if token is not None:
            self._verified.pop(token, None)
        self._ended[grant.grant_id] = grant.end_reason or grant.state.value
        if len(self._ended) > self._max:
            self._ended.popitem(last=False)

    def why_inactive(self, token: str, now: float) -> str:
        engine = self._engine
        # Verified first: a forged token learns nothing about real grants.
        claims = engine.keys.verify(token, issuer=engine.settings.issuer, now=now)
        jti = claims.get("jti") if claims is not None else None
        if claims is None or not isinstance(jti, str):
            return ""
        ended = self._ended.get(jti)
        if ended:
            return ended
        exp = claims.get("exp")
        return "expired" if isinstance(exp, int) and exp <= now else ""

    def active(self, token: str, now: float) -> ActiveGrant | None:
        engine = self._engine
        claims = self._claims(token, now)
        if claims is None:
            return None
        jti = claims.get("jti")
        grant = engine.grant(jti) if isinstance(jti, str) else None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if (
            grant is None
            or not grant.is_active(now)
            or not isinstance(exp, int)
            or not isinstance(nbf, int)
            or not nbf <= now < exp
            # The agent: `sub` is the person a delegated token acts for (RFC 8693 §4.1).
            or claims.get("client_id") != grant.subject
            or claims.get("txn") != grant.task_id
        ):
            return None
        # The grant's own record, not the token's copy: the two were made together and the
        # record is what the policy decided.
        return ActiveGrant(
            grant_id=grant.grant_id,
            task_id=grant.task_id,
            subject=grant.subject,
            audience=grant.audience,
            action=grant.action,
            resource=grant.resource,
            expires_at=grant.expires_at,
            cnf_jkt=grant.cnf_jkt,
            claims=claims,
        )

    def on_end(self, callback: GrantEnded) -> None:
        def ended(grant: Grant) -> None:
            callback(grant.grant_id, grant.end_reason or grant.state.value)

        self._grant_end.subscribe(ended)

"""Signing-key changes: rotation, and noticing a key changed while the sidecar was down.

A retired key's public half stays in the JWKS until the last token it signed expires, so
resource servers can still verify those tokens (RFC 7517 key sets; docs/security.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..clock import Clock, rfc3339
from ..events import KeyRotated
from ..journal import Journal
from ..tokens import KeyRing, SigningKey
from .live import LiveState

log = logging.getLogger("jit_sidecar.engine")


class KeyRotation:
    def __init__(self, keys: KeyRing, live: LiveState, journal: Journal, clock: Clock) -> None:
        self.keys = keys
        self.live = live
        self.journal = journal
        self.clock = clock

    async def rotate(self, new: SigningKey) -> tuple[str, float]:
        """Sign with `new` from now on; the previous public key stays in the JWKS until the
        last token it signed expires. Returns (previous kid, when it leaves the JWKS)."""
        old = self.keys.current
        if new.kid == old.kid:
            return old.kid, 0.0
        now = self.clock.now()
        # No await between reading the last expiry and swapping keys: no token can be
        # signed with the old key after its retirement time is fixed.
        retire_at = max(self.live.last_exp(old.kid), now)
        self.keys.rotate(new, retire_at)
        log.warning(
            "signing key rotated; previous key %s stays published until %s",
            old.kid,
            rfc3339(retire_at),
            extra={"kid": new.kid},
        )
        await self.journal.commit([_rotated(now, new, old.jwk, retire_at)])
        return old.kid, retire_at

    async def record_in_use(self, stored: Mapping[str, str] | None) -> None:
        """At start-up: if the key file changed while the sidecar was down, keep the previous
        public key published for its outstanding tokens and record the rotation."""
        current = self.keys.current
        if stored is not None and stored.get("kid") == current.kid:
            return
        now = self.clock.now()
        retire_at = None
        if stored is not None:
            retire_at = max(self.live.last_exp(stored["kid"]), now)
            self.keys.publish_retired(stored, retire_at)
            log.warning(
                "the signing key changed while the sidecar was down", extra={"kid": current.kid}
            )
        await self.journal.commit([_rotated(now, current, stored, retire_at)])


def _rotated(
    now: float, new: SigningKey, previous: Mapping[str, str] | None, retire_at: float | None
) -> KeyRotated:
    return KeyRotated(
        time=rfc3339(now),
        kid=new.kid,
        jwk=dict(new.jwk),
        previous_kid=previous["kid"] if previous else None,
        previous_jwk=dict(previous) if previous else None,
        retire_at=rfc3339(retire_at) if retire_at is not None else None,
    )

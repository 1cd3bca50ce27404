"""Security Event Tokens (RFC 8417) for ends of access, as SSF 1.0 and CAEP 1.0 profile them.

Each SET carries exactly one event (SSF 1.0 §4.1.3 / RFC 8417 §2.2 `events`), `iss`, `aud`
(the stream's), `jti` (the event id), `iat`, and `sub_id` (RFC 9493 §4.1, placed at the top
level as SSF 1.0 §3 asks). It is a JWS signed with the sidecar's token key and typed
`secevent+jwt` (RFC 8417 §2.3), so it can never pass for an access token (`at+jwt`). No `exp`
(optional in RFC 8417 §2.2): a SET must not be refused for arriving late after a receiver
outage; delivery bounds its life instead (transmitter.DELIVERY_GRACE), and receivers
deduplicate by `jti`.

The event types:
- a task's end (completed, failed, errored, crashed, expired, killed): CAEP 1.0 §3.1
  `session-revoked`. The task is the session: `sub_id` is a complex subject (SSF 1.0 §3.2)
  whose `session` is the task id (RFC 9493 §3.2.6 `opaque`) and whose `user` is the agent's
  SPIFFE ID (RFC 9493 §3.2.7 `uri`); the task id is also the SET's `txn` (RFC 8417 §2.2), as it
  is the access token's.
- one grant revoked on its own (RevokeGrant, RFC 7009 /revoke, an operator's revoke):
  `TOKEN_REVOKED`, an event type of our own. CAEP defines no event for one access token:
  `session-revoked` would end the whole task; `credential-change` speaks of a person's
  credentials (password, FIDO key, certificate) and RISC `credential-compromise` asserts a
  compromise that did not happen. The event carries the token's `jti`; `sub_id` is the same
  complex subject as above, so a receiver that ignores our type still knows whom it concerns.
- SSF 1.0 §8.1.4.1 `verification`, whose subject is the stream (`opaque`, the stream id).
  (No §8.1.5 `stream-updated`: the transmitter never changes a stream's status on its own;
  only the receiver does, and it knows.)
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from ..model import AccessEnded, RevocationReason

SET_TYPE = "secevent+jwt"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
TOKEN_REVOKED = "urn:jit-sidecar:secevent:event-type:token-revoked"  # noqa: S105 (not a secret)
"""Ours (see the module docstring); RFC 8417 §2.2 lets any URI name an event type."""
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
ACCESS_EVENTS = (SESSION_REVOKED, TOKEN_REVOKED)
"""What a stream delivers besides the SSF control events (which are always delivered)."""

# CAEP 1.0 §2 `initiating_entity`: who made access end.
_INITIATOR = {
    RevocationReason.COMPLETED: "user",
    RevocationReason.FAILED: "user",
    RevocationReason.ERRORED: "user",
    RevocationReason.REVOKED_BY_AGENT: "user",
    RevocationReason.REVOKED_BY_OPERATOR: "admin",
    RevocationReason.KILL_SWITCH: "admin",
    RevocationReason.AGENT_LOST: "policy",
    RevocationReason.TASK_EXPIRED: "policy",
    RevocationReason.EXPIRED: "policy",
}


def new_event_id() -> str:
    """A SET `jti`: 128 random bits (RFC 8417 §2.2 asks for a negligible collision chance)."""
    return secrets.token_urlsafe(16)


def _initiator(reason: str) -> str:
    try:
        return _INITIATOR.get(RevocationReason(reason), "system")
    except ValueError:
        return "system"


def access_subject(task_id: str, agent: str) -> dict[str, Any]:
    """The complex subject (SSF 1.0 §3.2) of an end of access: the task and the agent."""
    return {
        "format": "complex",
        "session": {"format": "opaque", "id": task_id},
        "user": {"format": "uri", "uri": agent},
    }


def stream_subject(stream_id: str) -> dict[str, Any]:
    """The subject of SSF control events: the stream (SSF 1.0 §8.1.4.1)."""
    return {"format": "opaque", "id": stream_id}


def access_event(ended: AccessEnded) -> tuple[str, dict[str, Any]]:
    """(event type, event body) for one end of access."""
    body: dict[str, Any] = {
        "event_timestamp": int(ended.ended_at),  # CAEP 1.0 §2
        "initiating_entity": _initiator(ended.reason),
        "reason_admin": {"en": ended.reason},  # the fixed reason code (docs/api.md)
    }
    if ended.grant_id:
        return TOKEN_REVOKED, {"jti": ended.grant_id, **body}
    if ended.state:
        body["task_state"] = ended.state
    return SESSION_REVOKED, body


def set_claims(
    *,
    issuer: str,
    audience: str,
    event_type: str,
    event: Mapping[str, Any],
    subject: Mapping[str, Any],
    iat: int,
    txn: str | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of one SET (RFC 8417 §2.2, SSF 1.0 §4)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "jti": jti or new_event_id(),
        "iat": iat,
        "sub_id": dict(subject),
        "events": {event_type: dict(event)},
    }
    if txn:
        claims["txn"] = txn
    return claims

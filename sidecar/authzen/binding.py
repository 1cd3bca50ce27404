"""What binds an ARAP access request to the denial it asks about (ARAP "Requestable Denial
Context", "Binding Token Integrity"): the digest of the denied request, and the binding token
the PEP carries from the denial to its submission."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .documents import canonical
from .errors import Problem


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bound_digest(request: Mapping[str, Any], context_names: Sequence[str]) -> str:
    """What a requestable denial and its approval are bound to (ARAP "Requestable Denial
    Context"; the exact-match baseline of "Completion Semantics"): subject, resource and
    action whole, and the members of the denied evaluation's context (`approval`
    excluded), so a submission may add members such as a justification but not change the
    ones policy saw."""
    context = request.get("context", {})
    material = {
        "subject": request["subject"],
        "resource": request["resource"],
        "action": request["action"],
        "context": {n: context.get(n) for n in context_names},
    }
    return hashlib.sha256(canonical(material)).hexdigest()


def context_names(request: Mapping[str, Any]) -> list[str]:
    return sorted(n for n in request.get("context", {}) if n != "approval")


@dataclass(slots=True)
class Requestable:
    """A requestable denial this sidecar answered (ARAP "Evaluation Identifier")."""

    evaluation_id: str
    digest: str
    context_names: list[str]
    expires_at: float
    reason: str
    template: str


class BindingKey:
    """Signs and checks binding tokens. The key is per process unless given, so a token
    from before a restart no longer binds (the PEP evaluates again)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, payload: str, digest: str) -> bytes:
        return hmac.new(self._key, f"{payload}.{digest}".encode(), hashlib.sha256).digest()

    def token(self, evaluation_id: str, exp: int, names: list[str], digest: str) -> str:
        """`payload.mac`: the payload names the evaluation, its expiry and the context members
        bound; the HMAC-SHA256 covers it and the bound request (ARAP "Binding Token
        Integrity": integrity protected, opaque to the PEP)."""
        payload = _b64(canonical({"eid": evaluation_id, "exp": exp, "ctx": names}))
        return f"{payload}.{_b64(self._mac(payload, digest))}"

    def verify(
        self,
        submission: dict[str, Any],
        denial: dict[str, Any],
        requestables: Mapping[str, Requestable],
    ) -> Requestable:
        """The requestable denial a submission is bound to (ARAP "Access Request
        Submission"), or a Problem. Without a binding token, the `evaluation_id` must be
        one of `requestables`, the denials this process remembers."""
        token = denial.get("binding_token")
        if isinstance(token, str):
            try:
                payload_b64, _, mac_b64 = token.partition(".")
                payload = json.loads(_unb64(payload_b64))
                eid, exp, names = payload["eid"], payload["exp"], payload["ctx"]
                mac = _unb64(mac_b64)
                if not (isinstance(eid, str) and isinstance(exp, int) and isinstance(names, list)):
                    raise ValueError("bad payload")
                names = [str(n) for n in names]
            except (ValueError, KeyError, TypeError) as err:
                raise Problem(400, "invalid_denial_binding", "malformed binding_token") from err
            digest = bound_digest(submission, names)
            if not hmac.compare_digest(mac, self._mac(payload_b64, digest)):
                raise Problem(
                    400, "invalid_denial_binding", "the binding_token does not bind this request"
                )
            known = requestables.get(eid)
            return known or Requestable(eid, digest, names, float(exp), "", "")
        eid = denial.get("evaluation_id")
        known = requestables.get(eid) if isinstance(eid, str) else None
        if known is None:
            raise Problem(
                400, "invalid_denial_binding", "need a binding_token or a known evaluation_id"
            )
        if bound_digest(submission, known.context_names) != known.digest:
            raise Problem(
                400, "invalid_denial_binding", "the request differs from the denied evaluation"
            )
        return known

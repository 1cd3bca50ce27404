"""The two ways an AuthZEN endpoint refuses: a 400 for a request it will not evaluate
(AuthZEN §10.1.2), and an ARAP problem document (RFC 9457) for an access request. The
handlers turn both into responses (`service.py`); neither ever becomes a 500."""

from __future__ import annotations

PROBLEM = "urn:openid:authzen:access-request:error:"


class BadRequest(Exception):
    """A request the sidecar will not evaluate: HTTP 400 with a reason code."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class Problem(Exception):
    """An ARAP error (ARAP "Error Responses"): an RFC 9457 problem document."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail

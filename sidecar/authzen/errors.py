"""The ways an AuthZEN endpoint refuses: a 400 for a request it will not evaluate (AuthZEN
§10.1.2), and an ARAP problem document (RFC 9457)
for an access request. The handlers turn them into responses (`service.py`); none ever
becomes a 500."""

from __future__ import annotations

PROBLEM = "urn:openid:authzen:access-request:error:"


class Refused(Exception):
    """An evaluation the sidecar does not answer: an HTTP error with a reason code."""

    status = 400
    error = "invalid_request"

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class BadRequest(Refused):
    """A request the sidecar will not evaluate: HTTP 400 with a reason code."""


class BodyTimeout(Refused):
    """A body that did not arrive within `http_body_timeout`: HTTP 408 (RFC 9110 §15.5.9), and
    the connection is closed, as on /introspect."""

    status = 408

    def __init__(self) -> None:
        super().__init__("body_timeout", "the request body did not arrive in time")


class Problem(Exception):
    """An ARAP error (ARAP "Error Responses"): an RFC 9457 problem document."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail

"""POST /token on the HTTP listener: RFC 8693 token exchange (docs/delegation.md).

The form of RFC 8693 §2.1, behind the listener's HTTP credential like /introspect:
`grant_type` urn:ietf:params:oauth:grant-type:token-exchange, `subject_token` (an access
token this sidecar issued) with `subject_token_type` …:access_token or …:jwt, optionally
`actor_token` (the calling workload's identity token, verified like a gRPC caller's) with
`actor_token_type` …:jwt, `scope` (space-separated), `audience`, `requested_token_type` and
the extension `expires_in` (seconds; never more than the subject token has left). The answer
is RFC 8693 §2.2.1's; errors are RFC 8693 §2.2.2's (RFC 6749 §5.2 JSON, HTTP 400) with a
bounded cause in `error_description`. Nothing here ever logs a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .engine.exchange import Exchanged, ExchangeRefused, ExchangeRequest
from .errors import SidecarError, Unauthenticated
from .identity import Authenticator
from .model import Identity
from .principals import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT

log = logging.getLogger("jit_sidecar.http")
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
_SUBJECT_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
_MAX_SCOPE_VALUES = 32
_MAX_FIELD = 16384

Exchange = Callable[[ExchangeRequest], Awaitable[Exchanged]]


def oauth_error(error: str, cause: str, status: int = 400) -> web.Response:
    """RFC 6749 §5.2 error body; `cause` is one of the bounded causes, never input."""
    return web.json_response(
        {"error": error, "error_description": cause},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > _MAX_FIELD:
        raise ExchangeRefused("invalid_request", "malformed", f"`{name}` is malformed")
    return value


def _scope(raw: str) -> tuple[str, ...] | None:
    if not raw:
        return None
    values = tuple(raw.split())
    if len(values) > _MAX_SCOPE_VALUES or any(not v.isprintable() for v in values):
        raise ExchangeRefused("invalid_request", "malformed", "`scope` is malformed")
    return values


def _ttl(raw: str) -> int:
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise ExchangeRefused(
            "invalid_request", "malformed", "`expires_in` must be a positive integer"
        )
    return int(raw)


class TokenExchangeEndpoint:
    """The /token handler: parses the form, authenticates the actor, asks the engine."""

    def __init__(self, exchange: Exchange, authenticator: Authenticator) -> None:
        self._exchange = exchange
        self._auth = authenticator

    async def _actor(self, token: str, token_type: str) -> Identity | None:
        if not token:
            if token_type:
                raise ExchangeRefused("invalid_request", "malformed", "actor_token is missing")
            return None
        if token_type != TOKEN_TYPE_JWT:
            raise ExchangeRefused(
                "invalid_request", "actor_token_type", "actor_token_type must be …:jwt"
            )
        try:
            return await self._auth.authenticate({"authorization": f"Bearer {token}"})
        except Unauthenticated as err:
            raise ExchangeRefused(
                "invalid_request", "actor_token_invalid", "the actor token does not verify"
            ) from err

    async def request(self, form: Mapping[str, Any]) -> ExchangeRequest:
        if _field(form, "grant_type") != GRANT_TYPE:
            raise ExchangeRefused(
                "unsupported_grant_type", "grant_type", "grant_type must be token-exchange"
            )
        subject = _field(form, "subject_token")
        if not subject:
            raise ExchangeRefused("invalid_request", "malformed", "subject_token is missing")
        if _field(form, "subject_token_type") not in _SUBJECT_TYPES:
            raise ExchangeRefused(
                "invalid_request",
                "subject_token_type",
                "subject_token_type must be …:access_token or …:jwt",
            )
        requested = _field(form, "requested_token_type")
        if requested and requested not in _SUBJECT_TYPES:
            raise ExchangeRefused(
                "invalid_request", "requested_token_type", "only access tokens are issued"
            )
        if _field(form, "resource"):
            raise ExchangeRefused(
                "invalid_target", "resource_not_allowed", "a token is never re-targeted"
            )
        return ExchangeRequest(
            subject_token=subject,
            actor=await self._actor(_field(form, "actor_token"), _field(form, "actor_token_type")),
            scope=_scope(_field(form, "scope")),
            audience=_field(form, "audience"),
            ttl_seconds=_ttl(_field(form, "expires_in")),
        )

    async def handle(self, request: web.Request, body_timeout: float) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error("invalid_request", "not_a_form")
        try:
            async with asyncio.timeout(body_timeout):
                form = await request.post()
        except TimeoutError:
            return oauth_error("invalid_request", "body_timeout", 408)
        except ValueError:
            return oauth_error("invalid_request", "not_a_form")
        try:
            exchanged = await self._exchange(await self.request(form))
        except ExchangeRefused as err:
            log.info("token exchange refused", extra={"reason": err.cause})
            return oauth_error(err.error, err.cause)
        except SidecarError as err:  # store, audit, policy, fleet: nothing was issued
            log.error("token exchange failed", extra={"reason": err.reason.value})
            return oauth_error("temporarily_unavailable", err.reason.value, 503)
        grant = exchanged.grant
        return web.json_response(
            {
                "access_token": exchanged.token,
                "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
                "token_type": "DPoP" if grant.cnf_jkt else "Bearer",
                "expires_in": exchanged.expires_in,
                "scope": " ".join(grant.scope),
            },
            headers={"Cache-Control": "no-store"},  # RFC 6749 §5.1
        )

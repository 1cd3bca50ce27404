"""Who does the task act for? Verifies the subject token BeginTask names (docs/delegation.md).

The subject token is a person's OIDC ID token or access token from a configured principal
issuer (`principal_issuer`), verified as strictly as a caller's OIDC identity token
(`sidecar.identity`, through the JOSE core `sidecar.jws`): an asymmetric algorithm
allow-list, keys from the issuer's discovery document and JWKS (`sidecar.oidc.OidcKeys`),
exact `iss`, `aud` containing `principal_audience`, `exp` required, leeway bounded. Only the
claims `principal_claims` allows are kept. A token this sidecar issued itself (a token
exchanged earlier) is not verified here: the engine checks it against its live grants
(`sidecar.engine.delegation`).

Every refusal raises `Unauthenticated` with reason `principal_invalid` and a bounded `cause`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .clock import Clock
from .errors import Reason, Unauthenticated
from .identity import TokenRules, verify_issued
from .jws import OIDC_JWT_ALGS, Jws, JwsError, check_header, kid_of, parse
from .model import Principal
from .oidc import OidcKeys

# RFC 8693 §3 token type identifiers a subject token may be named by.
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URI, not a secret)
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
SUBJECT_TOKEN_TYPES = frozenset({"", TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN})
#: `typ` headers of a person's token: an ID token (none or JWT) or an RFC 9068 access token.
_PERSON_TYPS = frozenset({None, "jwt", "at+jwt"})
_MAX_SUBJECT = 1024


def principal_invalid(cause: str, message: str) -> Unauthenticated:
    """The one refusal of a subject token: UNAUTHENTICATED principal_invalid."""
    return Unauthenticated(
        f"subject token rejected: {message}", Reason.PRINCIPAL_INVALID, metadata={"cause": cause}
    )


def check_token_type(token_type: str) -> None:
    if token_type not in SUBJECT_TOKEN_TYPES:
        raise principal_invalid(
            "token_type_unsupported",
            "subject_token_type must be an RFC 8693 id_token, access_token or jwt type URI",
        )


def unverified_issuer(token: str) -> str:
    """The `iss` a token claims, before any verification: only to choose who verifies it."""
    try:
        iss = parse(token).claims.get("iss")
    except JwsError as err:
        raise principal_invalid(err.cause, err.message) from err
    if not isinstance(iss, str) or not iss:
        raise principal_invalid("issuer_not_allowed", "the token has no `iss`")
    return iss


def select_claims(claims: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """The claims a task records and the policy sees: only those `principal_claims` names."""
    return {name: claims[name] for name in allowed if name in claims}


class PrincipalVerifier:
    """Verifies people's tokens from the configured principal issuers."""

    def __init__(
        self,
        keys: OidcKeys,
        rules: TokenRules,
        *,
        claims: Sequence[str],
        clock: Clock,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.keys = keys
        self._rules = rules
        self._claims = tuple(claims)
        self._clock = clock
        self._on_close = on_close

    async def start(self) -> None:
        await self.keys.start()

    async def close(self) -> None:
        await self.keys.stop()
        if self._on_close is not None:
            self._on_close()

    async def verify(self, token: str) -> Principal:
        """The person a subject token proves; raises Unauthenticated principal_invalid."""
        try:
            jws, iss, _generation, _exp = await verify_issued(
                token, self.keys, self._rules, self._clock.now(), header=_person_header
            )
        except Unauthenticated as err:
            # The identity path's checks, its refusal re-worded as a subject token's.
            message = err.message.removeprefix("identity token rejected: ")
            raise principal_invalid(err.metadata.get("cause", "invalid"), message) from err
        sub = jws.claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUBJECT:
            raise principal_invalid("subject_invalid", "the token has no usable `sub`")
        return Principal(subject=sub, issuer=iss, claims=select_claims(jws.claims, self._claims))


def _person_header(jws: Jws, rules: TokenRules) -> tuple[str, str]:
    """Algorithm allow-list, no key material from the token (RFC 8725 §3.1-3.2), and
    explicit typing (RFC 8725 §3.11): an ID token or an RFC 9068 access token. Unlike a
    caller's identity token, a person's may be an `at+jwt` (of their authorization server,
    never ours: `iss` must be a principal issuer)."""
    typ = jws.header.get("typ")
    normalized = typ.lower().removeprefix("application/") if isinstance(typ, str) else typ
    try:
        alg = check_header(jws.header, rules.algorithms)
        kid = kid_of(jws.header)
    except JwsError as err:
        raise Unauthenticated(err.message, metadata={"cause": err.cause}) from err
    if normalized not in rules.typs:
        raise Unauthenticated(
            "the token `typ` is not a person's token", metadata={"cause": "typ_not_allowed"}
        )
    return alg, kid


def person_rules(audience: str, leeway: int, own_issuer: str) -> TokenRules:
    """The claim rules of a subject token: the OIDC identity path's, with its own audience."""
    return TokenRules(
        audience=audience,
        leeway=leeway,
        own_issuer=own_issuer,
        own_kids=lambda: (),
        typs=_PERSON_TYPS,
        algorithms=OIDC_JWT_ALGS,
    )

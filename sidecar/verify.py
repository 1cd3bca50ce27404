"""Verifying jit-sidecar access tokens in a resource server (the API an agent calls).

    from sidecar.verify import TokenVerifier, TokenRejected

    verifier = TokenVerifier(
        "http://127.0.0.1:9464/.well-known/jwks.json",
        issuer="https://jit-sidecar.local",
        audience="tickets",
        introspection_url="http://127.0.0.1:9464/introspect",   # optional: revocation
    )
    try:
        token = verifier.verify(raw_token, action="tickets.update", resource="tickets://t-1001")
    except TokenRejected as err:
        ...  # err.reason (fixed code), err.status (401/403/503), err.error, err.www_authenticate

Checks, in order: the compact JWS parses strictly (the JOSE core, `sidecar.jws`: canonical
base64url, no duplicate JSON members, no `jku`/`x5u`/`jwk`/`x5c`/`crit`); its `alg` is allowed
(EdDSA or its RFC 9864 name Ed25519, ES256) and fits the algorithm pinned by the signing key
in the JWKS (no `none`, no HS256 with a public key as the secret); the `kid` is published (the
JWKS is cached and re-fetched on an unknown kid at most once per `jwks_refresh_interval`); the
signature; `typ` is `at+jwt` (RFC 9068); `iss`; `aud`; `exp`/`nbf`/`iat` with `leeway`; that
`authorization_details` (RFC 9396, type `jit_intent`) names exactly the action and resource
being served; a DPoP proof when the token is bound to a key (`cnf.jkt`); and, with
`introspection_url`, that the grant is still active (RFC 7662; answers cached for
`introspection_cache_seconds`). With `signals` (a `sidecar.ssf.receiver.Subscription`), the
revocations come from the sidecar's Shared Signals stream instead, checked in memory, and
introspection is only the fallback while the stream is unhealthy (docs/shared-signals.md).
Every failure raises `TokenRejected` with
one of the fixed `REASONS`; every doubt (JWKS or introspection unreachable) rejects.
Tokens are never logged; only their `jti`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from .dpop import DpopError, ReplayCache, verify_dpop_proof
from .errors import InvalidArgument
from .jws import (
    EDDSA_ALGS,
    JwsError,
    VerifyKey,
    check_header,
    narrow_algorithms,
    parse,
    public_key_from_jwk,
    verify_signature,
)
from .resources import parse_resource
from .ssf.receiver import SetRejected, SignalReceiver, Subscription

log = logging.getLogger("jit_sidecar.verify")

ALGORITHMS = ("EdDSA", "Ed25519", "ES256")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
SET_TYPES = ("secevent+jwt", "application/secevent+jwt")  # RFC 8417 §2.3
INTENT_TYPE = "jit_intent"
MAX_TOKEN_BYTES = 16 * 1024
_MAX_INTROSPECTION_CACHE = 10_000
# (kty, crv) → the algorithm such a key may verify (Ed25519: under either name).
_KEY_ALGORITHMS = {("OKP", "Ed25519"): EDDSA_ALGS, ("EC", "P-256"): frozenset({"ES256"})}

REASONS = frozenset(
    {
        "missing_token",  # no Authorization header (or not Bearer/DPoP)
        "malformed",  # not a compact JWS, bad base64/JSON, required claim missing or mistyped
        "algorithm_not_allowed",  # alg outside the allow-list, or not the key's pinned alg
        "unknown_kid",  # kid absent from the JWKS even after a refresh
        "bad_signature",  # signature does not verify (tampered header or payload)
        "wrong_type",  # typ is not at+jwt
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",  # nbf or iat in the future (beyond leeway)
        "wrong_action",  # authorization_details does not name the action served
        "wrong_resource",  # ... names the action, but not for this resource
        "dpop_required",  # token bound to a key (cnf.jkt) presented without a DPoP proof
        "dpop_invalid",  # the DPoP proof does not verify
        "revoked",  # introspection (or the Shared Signals stream) says the grant ended
        "jwks_unavailable",  # keys could not be fetched (fail closed)
        "introspection_unavailable",  # revocation could not be checked (fail closed)
        "actor_required",  # the server requires a delegated token (RFC 8693 `act`); none
        "actor_forbidden",  # the server refuses delegated tokens; this one has `act`
    }
)
_FORBIDDEN = frozenset({"wrong_action", "wrong_resource", "actor_required", "actor_forbidden"})
_KEY_REASONS = frozenset(
    {"unknown_kid", "bad_signature", "algorithm_not_allowed", "jwks_unavailable"}
)
ACTOR_POLICIES = ("any", "required", "forbidden")
#: Deepest `act` chain read (agent → sub-agent → ...); deeper is malformed.
MAX_ACTOR_DEPTH = 8
_UNAVAILABLE = frozenset({"jwks_unavailable", "introspection_unavailable"})


class TokenRejected(Exception):
    """The token does not let the caller do this; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason

    @property
    def status(self) -> int:
        """HTTP status for the answer: 403 wrong action/resource, 503 when the check could
        not be made, 401 otherwise (RFC 6750 §3.1)."""
        if self.reason in _FORBIDDEN:
            return 403
        if self.reason in _UNAVAILABLE:
            return 503
        return 401

    @property
    def error(self) -> str:
        """RFC 6750 error code: insufficient_scope (403), temporarily_unavailable (503),
        invalid_token otherwise."""
        if self.reason in _FORBIDDEN:
            return "insufficient_scope"
        if self.reason in _UNAVAILABLE:
            return "temporarily_unavailable"
        return "invalid_token"

    @property
    def www_authenticate(self) -> str:
        """`WWW-Authenticate` header value (RFC 6750 §3; no error code when no token came)."""
        if self.reason == "missing_token":
            return 'Bearer realm="jit"'
        return f'Bearer realm="jit", error="{self.error}", error_description="{self.reason}"'


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Claims of a token that passed every check for `action` on `resource`."""

    claims: Mapping[str, Any] = field(repr=False)
    """Every claim, as signed."""
    subject: str
    """`sub`: the person the task acts for when the token is delegated (`actor` is then set),
    else the agent's workload identity."""
    jti: str
    """= the sidecar's grant id; safe to log."""
    task_id: str
    """`txn`: the agent's task."""
    audience: tuple[str, ...]
    scope: tuple[str, ...]
    tier: str
    expires_at: datetime
    action: str
    resource: str
    actor: str = ""
    """`act.sub` (RFC 8693 §4.1): the agent acting for `subject`, when the token is
    delegated; '' when the agent acts on its own (then `subject` is the agent)."""
    actors: tuple[str, ...] = ()
    """The whole `act` chain, current actor first (agent → sub-agent chains)."""
    client_id: str = ""
    """The agent that owns the task (always the workload the sidecar issued the grant to)."""

    def authorizes(self, action: str, resource: str) -> bool:
        """Does `authorization_details` name exactly this action on this resource?"""
        return _authorization_problem(self.claims, action, resource) is None


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed", f"`{name}` must be a number")
    return float(value)


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _canonical(resource: str) -> bool:
    try:
        parse_resource(resource)
    except InvalidArgument:
        return False
    return True


def _authorization_problem(claims: Mapping[str, Any], action: str, resource: str) -> str | None:
    """None when some jit_intent entry names both `action` and `resource` exactly.

    Resources compare by the sidecar's rules (sidecar.resources): only a canonical name can
    match, and then only itself. A server that asks about `docs://a/../b` or `DOCS://a` gets
    wrong_resource, never a match through another spelling (RFC 3986 §6.2.2)."""
    canonical = _canonical(resource)
    details = claims.get("authorization_details")
    if not isinstance(details, list):
        return "malformed"
    action_seen = False
    for entry in details:
        if not isinstance(entry, dict) or entry.get("type") != INTENT_TYPE:
            continue
        actions, locations = _strings(entry.get("actions")), _strings(entry.get("locations"))
        if actions is None or locations is None or action not in actions:
            continue
        action_seen = True
        if canonical and resource in locations:
            return None
    return "wrong_resource" if action_seen else "wrong_action"


def actor_chain(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The `act` chain of RFC 8693 §4.1, current actor first; raises TokenRejected
    (malformed) on an `act` that is not an object with a string `sub` at every level."""
    chain: list[str] = []
    act = claims.get("act")
    while act is not None:
        sub = act.get("sub") if isinstance(act, dict) else None
        if not isinstance(sub, str) or not sub or len(chain) >= MAX_ACTOR_DEPTH:
            raise TokenRejected("malformed", "`act` must be an object with a string `sub`")
        chain.append(sub)
        act = act.get("act")
    return tuple(chain)


def jwk_algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The algorithms a published key may verify (its JWK `alg` pins one; Ed25519 keys answer
    to both EdDSA names), or nothing for keys we never accept."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    derived = (
        _KEY_ALGORITHMS.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None
    )
    if derived is None or jwk.get("use", "sig") != "sig":
        return frozenset()
    try:
        return narrow_algorithms(derived, jwk.get("alg"))
    except ValueError:
        return frozenset()


class _HttpSessions(threading.local):
    """One keep-alive `requests.Session` per thread (Sessions are not thread-safe)."""

    def __init__(self) -> None:
        self.session = requests.Session()


class TokenVerifier:
    """Verifies jit-sidecar tokens for one audience (see the module docstring).

    `introspection_credential` (a string or a callable returning one) is sent as
    `Authorization: Bearer …` to `introspection_url` (the sidecar's `http_token_file`).
    Thread-safe.
    """

    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        audience: str,
        *,
        leeway: float = 30,
        introspection_url: str | None = None,
        introspection_credential: str | Callable[[], str] | None = None,
        introspection_cache_seconds: float = 2,
        http_timeout: float = 2.0,
        jwks_refresh_interval: float = 30,
        jwks_max_age: float = 300,
        algorithms: tuple[str, ...] = ALGORITHMS,
        clock: Callable[[], float] = time.time,
        dpop_max_age: float = 60.0,
        dpop_replay_cache: ReplayCache | None = None,
        signals: Subscription | None = None,
        actor: str = "any",
    ) -> None:
        """`actor`: "required" accepts only delegated tokens (a person's, with `act`),
        "forbidden" only tokens of agents acting on their own, "any" both."""
        if actor not in ACTOR_POLICIES:
            raise ValueError(f"actor must be one of {', '.join(ACTOR_POLICIES)}")
        self.actor = actor
        unknown = set(algorithms) - set(ALGORITHMS)
        if unknown:
            raise ValueError(f"only {', '.join(ALGORITHMS)} are supported, not {unknown}")
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.introspection_url = introspection_url
        self._credential = introspection_credential
        self._introspection_ttl = introspection_cache_seconds
        self._timeout = http_timeout
        self._refresh_interval = jwks_refresh_interval
        self._max_age = jwks_max_age
        self._algorithms = frozenset(algorithms)
        self._clock = clock
        self._http = _HttpSessions()
        self._lock = threading.Lock()
        self._keys: dict[str, VerifyKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt = float("-inf")
        self._cache: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._dpop_max_age = dpop_max_age
        self._dpop_replay = dpop_replay_cache or ReplayCache()
        """Proof jtis seen: share one cache across every verifier of a process."""
        self.jwks_fetches = 0
        """How many times the JWKS was fetched (for tests and metrics)."""
        self.introspections = 0
        """How many introspection requests were made (for tests and metrics)."""
        self._vouched: OrderedDict[str, float] = OrderedDict()
        """jti → exp of tokens introspected active while the stream was healthy: any later
        revocation reaches the stream, so they need no further introspection."""
        self.signals = (
            SignalReceiver(
                signals,
                audience=audience,
                verify_set=self.verify_set,
                http_timeout=http_timeout,
                clock=clock,
            )
            if signals is not None
            else None
        )
        """With `signals`: the Shared Signals stream; call `signals.start()` to subscribe."""

    # ------------------------------------------------------------------ public API
    def verify(
        self,
        token: str,
        *,
        action: str,
        resource: str,
        dpop_proof: str | None = None,
        http_method: str | None = None,
        http_url: str | None = None,
        fresh: bool = False,
    ) -> VerifiedToken:
        """The verified claims if `token` lets its bearer do `action` on `resource` now;
        TokenRejected otherwise. `dpop_proof`, `http_method` and `http_url` are needed for
        tokens bound to a key (`cnf.jkt`). `fresh=True` skips the cached introspection
        answer (use it for writes: a revocation then takes effect at once rather than
        within `introspection_cache_seconds`)."""
        header, claims = self._verify_signature(token)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
            raise TokenRejected("wrong_type", f"typ {typ!r} is not at+jwt")
        self._check_claims(claims)
        actors = actor_chain(claims)
        if self.actor == "required" and not actors:
            raise TokenRejected("actor_required", "this server serves people's delegated tokens")
        if self.actor == "forbidden" and actors:
            raise TokenRejected("actor_forbidden", "this server refuses delegated tokens")
        problem = _authorization_problem(claims, action, resource)
        if problem is not None:
            raise TokenRejected(problem, f"token does not authorize {action} on {resource}")
        if "cnf" in claims:
            self._check_dpop(token, claims, dpop_proof, http_method, http_url)
        if self.signals is not None:
            self._check_signals(token, claims, fresh)
        elif self.introspection_url:
            self._check_active(token, claims, fresh)
        aud = claims["aud"]
        return VerifiedToken(
            claims=claims,
            subject=claims["sub"],
            jti=claims["jti"],
            task_id=str(claims.get("txn", "")),
            audience=(aud,) if isinstance(aud, str) else tuple(aud),
            scope=tuple(str(claims.get("scope", "")).split()),
            tier=str(claims.get("tier", "")),
            expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
            action=action,
            resource=resource,
            actor=actors[0] if actors else "",
            actors=actors,
            client_id=str(claims.get("client_id", "")),
        )

    def verify_request(
        self,
        headers: Mapping[str, str],
        method: str,
        url: str,
        *,
        action: str,
        resource: str,
        fresh: bool = False,
    ) -> VerifiedToken:
        """`verify` for an HTTP request: reads `Authorization: Bearer|DPoP <token>` (and the
        `DPoP` proof header) from `headers` (any case-insensitive or plain mapping)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        scheme, _, token = lowered.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() not in ("bearer", "dpop") or not token:
            raise TokenRejected("missing_token", "Authorization: Bearer <token> expected")
        proof = lowered.get("dpop") if scheme.lower() == "dpop" else None
        return self.verify(
            token,
            action=action,
            resource=resource,
            dpop_proof=proof,
            http_method=method,
            http_url=url,
            fresh=fresh,
        )

    # ------------------------------------------------------------------ signature
    def _verify_signature(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(token, str) or not token:
            raise TokenRejected("malformed", "empty token")
        try:
            jws = parse(token, max_length=MAX_TOKEN_BYTES)
            alg = check_header(jws.header, self._algorithms)
        except JwsError as err:
            reason = "algorithm_not_allowed" if err.cause == "alg_not_allowed" else "malformed"
            raise TokenRejected(reason, err.message) from err
        kid = jws.header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("unknown_kid", "no kid in the header")
        key = self._key(kid)
        if alg not in key.algs:
            raise TokenRejected(
                "algorithm_not_allowed", f"key {kid} verifies {sorted(key.algs)}, not {alg}"
            )
        try:
            verify_signature(jws, alg, key)
        except JwsError as err:
            raise TokenRejected("bad_signature", "signature does not verify") from err
        return jws.header, jws.claims

    def _key(self, kid: str) -> VerifyKey:
        with self._lock:
            now = time.monotonic()
            stale = self._fetched_at is None or now - self._fetched_at > self._max_age
            # First use, or the cached set is old: fetch (retrying at most once a second).
            if stale and now - self._last_attempt >= min(1.0, self._refresh_interval):
                self._refresh(now)
            key = self._keys.get(kid)
            if key is None and now - self._last_attempt >= self._refresh_interval:
                # An unknown kid may be a freshly rotated key; the rate limit stops tokens
                # with random kids from turning into a flood of JWKS fetches.
                self._refresh(now)
                key = self._keys.get(kid)
            if key is None:
                if self._fetched_at is None:
                    raise TokenRejected("jwks_unavailable", "the JWKS could not be fetched")
                raise TokenRejected("unknown_kid", f"kid {kid} is not published")
            return key

    def _refresh(self, now: float) -> None:
        self._last_attempt = now
        self.jwks_fetches += 1
        try:
            response = self._http.session.get(self.jwks_url, timeout=self._timeout)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as err:
            # Keep the keys we have (if any): a JWKS hiccup must not reject valid tokens.
            log.warning("JWKS fetch from %s failed: %s", self.jwks_url, err)
            return
        keys: dict[str, VerifyKey] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            algs = jwk_algorithms(jwk) & self._algorithms
            if not algs:
                continue
            try:
                keys[jwk["kid"]] = VerifyKey(jwk["kid"], public_key_from_jwk(jwk), algs)
            except (ValueError, TypeError) as err:
                log.warning("ignoring unusable JWK %s: %s", jwk["kid"], err)
        self._keys = keys
        self._fetched_at = now

    # ------------------------------------------------------------------ claims
    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        for name in ("sub", "jti"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise TokenRejected("malformed", f"`{name}` missing")
        if claims.get("iss") != self.issuer:
            raise TokenRejected("wrong_issuer", f"iss {claims.get('iss')!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else _strings(aud)
        if audiences is None:
            raise TokenRejected("malformed", "`aud` must be a string or a list of strings")
        if self.audience not in audiences:
            raise TokenRejected("wrong_audience", f"token is for {aud!r}")
        now = self._clock()
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        if now >= exp + self.leeway:
            raise TokenRejected("expired", f"expired at {exp:.0f}")
        for name in ("nbf", "iat"):
            when = _number(claims, name, required=False)
            if when is not None and when > now + self.leeway:
                raise TokenRejected("not_yet_valid", f"`{name}` is in the future")

    # ------------------------------------------------------------------ proof of possession
    def _check_dpop(
        self,
        token: str,
        claims: Mapping[str, Any],
        proof: str | None,
        method: str | None,
        url: str | None,
    ) -> None:
        cnf = claims.get("cnf")
        if not isinstance(cnf, dict) or not isinstance(cnf.get("jkt"), str):
            raise TokenRejected("malformed", "`cnf` without `jkt`")
        if not proof:
            raise TokenRejected("dpop_required", "token is bound to a key: send a DPoP proof")
        if not method or not url:
            raise TokenRejected("dpop_invalid", "the request's method and URL are needed")
        try:
            verify_dpop_proof(
                token,
                proof,
                method,
                url,
                token_claims=claims,
                replay_cache=self._dpop_replay,
                now=self._clock(),
                max_age=self._dpop_max_age,
                leeway=self.leeway,
            )
        except DpopError as err:
            raise TokenRejected("dpop_invalid", f"{err.reason}: {err.message}") from err

    # ------------------------------------------------------------------ security events
    def verify_set(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a Security Event Token the sidecar signed for `audience`; raises
        `SetRejected` with an RFC 8935 §2.3 error code otherwise. Same JOSE checks as for
        access tokens (one parser), then RFC 8417's: `typ` secevent+jwt (§2.3), `iss`, `aud`,
        `jti`, `iat`, exactly one event (SSF 1.0 §4.1.3)."""
        try:
            header, claims = self._verify_signature(token)
        except TokenRejected as err:
            code = "invalid_key" if err.reason in _KEY_REASONS else "invalid_request"
            raise SetRejected(code, err.reason) from err
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in SET_TYPES:
            raise SetRejected("invalid_request", "typ is not secevent+jwt")
        if claims.get("iss") != self.issuer:
            raise SetRejected("invalid_issuer", "unexpected iss")
        aud = claims.get("aud")
        if aud != audience and not (isinstance(aud, list) and audience in aud):
            raise SetRejected("invalid_audience", "not for this receiver")
        events = claims.get("events")
        if (
            not isinstance(claims.get("jti"), str)
            or not isinstance(claims.get("iat"), int)
            or not isinstance(events, dict)
            or len(events) != 1
            or not all(isinstance(e, dict) for e in events.values())
        ):
            raise SetRejected("invalid_request", "not an SSF security event token")
        return claims

    def _check_signals(self, token: str, claims: Mapping[str, Any], fresh: bool) -> None:
        """Revocation from the stream's memory while it is healthy; otherwise (and once for
        tokens older than the subscription) from introspection; without it, refuse."""
        assert self.signals is not None
        jti, txn = claims["jti"], str(claims.get("txn", ""))
        if self.signals.revoked(jti, txn):
            raise TokenRejected("revoked", f"grant {jti} was revoked (security event)")
        healthy = self.signals.healthy()
        iat = _number(claims, "iat", required=False)
        if healthy and iat is not None and iat >= self.signals.since:
            return  # issued after we attached: any revocation of it is in the stream
        with self._cache_lock:
            if healthy and jti in self._vouched:
                return
        if not self.introspection_url:
            raise TokenRejected(
                "introspection_unavailable", "revocation stream unhealthy, no introspection"
            )
        self._check_active(token, claims, fresh or healthy)
        if healthy:
            with self._cache_lock:
                self._vouched[jti] = float(claims["exp"])
                while len(self._vouched) > _MAX_INTROSPECTION_CACHE:
                    self._vouched.popitem(last=False)

    # ------------------------------------------------------------------ revocation
    def _check_active(self, token: str, claims: Mapping[str, Any], fresh: bool) -> None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now and not (fresh and cached[1]):
                active = cached[1]
            else:
                cached = None
        if cached is None:
            active = self._introspect(token, claims)
            # Inactive is final (revocation is permanent): remember it until the token
            # expires anyway. Active is remembered only briefly, so revocations show quickly.
            ttl = (
                self._introspection_ttl
                if active
                else max(self._introspection_ttl, float(claims["exp"]) - self._clock())
            )
            with self._cache_lock:
                self._cache[key] = (now + ttl, active)
                self._cache.move_to_end(key)
                while len(self._cache) > _MAX_INTROSPECTION_CACHE:
                    self._cache.popitem(last=False)
        if not active:
            raise TokenRejected("revoked", f"grant {claims['jti']} is no longer active")

    def _introspect(self, token: str, claims: Mapping[str, Any]) -> bool:
        assert self.introspection_url is not None
        self.introspections += 1
        headers = {"Accept": "application/json"}
        credential = self._credential() if callable(self._credential) else self._credential
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        try:
            response = self._http.session.post(
                self.introspection_url,
                data={"token": token, "token_type_hint": "access_token"},
                headers=headers,
                timeout=self._timeout,
            )
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, ValueError) as err:
            log.warning("introspection of %s failed: %s", claims.get("jti"), err)
            raise TokenRejected("introspection_unavailable", "revocation status unknown") from err
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise TokenRejected("introspection_unavailable", "not an RFC 7662 answer")
        # An active answer about a different token would be a broken server: not active.
        return body["active"] is True and body.get("jti", claims["jti"]) == claims["jti"]

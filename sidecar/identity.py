"""Who is calling? Authenticators turn gRPC metadata into a verified `Identity`.

Modes (`--identity`, see docs/identity.md):
- `dev`: every local caller is `--dev-subject` (loud warning; refused when the HTTP listener
  or the socket is reachable beyond the local user/group).
- `jwt-svid`: a SPIFFE JWT-SVID in `authorization: Bearer …`, signed by a key of the bundle of
  the trust domain its `sub` names (bundles from files or the SPIFFE Workload API).
- `oidc`: an OIDC ID token (e.g. a Kubernetes projected service-account token) from an
  allowed issuer; its `sub` is mapped to an agent identity by `oidc_subject_map` rules.

Verification follows RFC 8725, through the JOSE core (`sidecar.jws`): an explicit asymmetric
algorithm allow-list (never HS* or `none`; JWT-SVIDs: RS/PS/ES as the SPIFFE spec says, OIDC:
those plus EdDSA/Ed25519), no key material taken from the token, exact `iss` match, `aud` must
contain ours, `exp` required, and our own `at+jwt` access tokens are never accepted as a caller
identity. A verified token is remembered (by its SHA-256, never the token itself) until its
`exp` or the next change of the trust material, so repeated calls cost a hash and a dict lookup
instead of a signature check. Every rejection raises `Unauthenticated` (reason
`identity_invalid`) whose metadata `cause` is a bounded label; the service layer logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .bundles import BundleFileWatcher, TrustBundles, WorkloadApiWatcher
from .clock import Clock, SystemClock
from .config import Config
from .errors import ConfigError, Unauthenticated
from .jws import (
    ASYMMETRIC_JWT_ALGS,
    OIDC_JWT_ALGS,
    Jws,
    JwsError,
    check_header,
    kid_of,
    parse,
    verify_signature,
)
from .model import Identity
from .oidc import HttpKeyFetcher, OidcKeys
from .tokens import TOKEN_TYPE

log = logging.getLogger("jit_sidecar.identity")

VERIFIED_CACHE_SIZE = 4096
#: Claims that differ on every token of the same workload: kept out of `input.identity.claims`
#: so policies (and the standing-decision cache) see stable facts only.
VOLATILE_CLAIMS = frozenset({"exp", "nbf", "iat", "jti"})
_SPIFFE_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SPIFFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SPIFFE_ID = 2048


class Authenticator(Protocol):
    method: str

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        """The verified caller, or raise Unauthenticated (reason identity_invalid)."""
        ...


@runtime_checkable
class ManagedAuthenticator(Protocol):
    """An authenticator with background work (bundle watchers, key refresh)."""

    async def start(self) -> None:
        """Load trust material and start background refresh; ConfigError when unusable."""
        ...

    async def close(self) -> None:
        """Stop background work."""
        ...


def _rejected(cause: str, message: str) -> Unauthenticated:
    return Unauthenticated(f"identity token rejected: {message}", metadata={"cause": cause})


def parse_spiffe_id(value: str) -> str:
    """The trust domain of a workload SPIFFE ID (strict SPIFFE-ID rules); raises ValueError.

    `spiffe://` + lowercase trust domain + a non-empty path of segments made of letters,
    digits, `.`, `-`, `_` (no empty, `.` or `..` segment, no query, fragment, port or user).
    """
    if len(value) > _MAX_SPIFFE_ID:
        raise ValueError("SPIFFE ID too long")
    if not value.startswith("spiffe://"):
        raise ValueError("not a SPIFFE ID (spiffe://…)")
    domain, slash, path = value[len("spiffe://") :].partition("/")
    if not domain or not _SPIFFE_DOMAIN.fullmatch(domain):
        raise ValueError("SPIFFE ID has an invalid trust domain")
    if not slash or not path:
        raise ValueError("SPIFFE ID has no workload path")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SPIFFE_SEGMENT.fullmatch(segment):
            raise ValueError("SPIFFE ID has an invalid path segment")
    return domain


def trust_domain_of(spiffe_id: str) -> str:
    """`example.org` for `spiffe://example.org/agent/x`; raises ValueError otherwise."""
    return parse_spiffe_id(spiffe_id)


class DevAuthenticator:
    """Every caller is `dev_subject`. For a laptop, never for a shared machine."""

    method = "dev"

    def __init__(self, subject: str) -> None:
        try:
            domain = trust_domain_of(subject)
        except ValueError as err:
            raise ConfigError(f"dev_subject must be a SPIFFE ID: {err}") from err
        self._identity = Identity(subject=subject, trust_domain=domain, method="dev")

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        return self._identity


def bearer_token(metadata: Mapping[str, str]) -> str:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing `authorization: Bearer <token>` metadata", metadata={"cause": "no_token"}
        )
    return token.strip()


# ---------------------------------------------------------------------------- shared rules


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What every identity token must satisfy besides its signature."""

    audience: str
    leeway: int
    own_issuer: str
    own_kids: Callable[[], Collection[str]]
    typs: frozenset[str | None]
    """Accepted `typ` header values, compared case-insensitively (None: absent)."""
    algorithms: frozenset[str] = ASYMMETRIC_JWT_ALGS
    """Accepted `alg` values: the SPIFFE JWT-SVID set unless the method allows more."""


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _rejected("claims_invalid", f"`{name}` is not a number")
    return float(value)


def check_header_rules(token: Jws, rules: TokenRules) -> tuple[str, str]:
    """Own-token, algorithm, key-reference, crit and typ rules; returns (alg, kid)."""
    typ = token.header.get("typ")
    normalized = typ.lower().removeprefix("application/") if isinstance(typ, str) else typ
    if normalized == TOKEN_TYPE:
        raise _rejected("own_access_token", "an access token (at+jwt) is not a caller identity")
    if token.header.get("kid") in rules.own_kids():
        raise _rejected("own_access_token", "the token names this sidecar's own signing key")
    try:
        alg = check_header(token.header, rules.algorithms)
        kid = kid_of(token.header)
    except JwsError as err:
        raise _rejected(err.cause, err.message) from err
    if normalized not in rules.typs:
        raise _rejected("typ_not_allowed", "the token `typ` is not one of an identity token")
    iss = token.claims.get("iss")
    if iss is not None and not isinstance(iss, str):
        raise _rejected("claims_invalid", "`iss` is not a string")
    if iss == rules.own_issuer:
        raise _rejected("own_access_token", "the token was issued by this sidecar")
    return alg, kid


def check_claims(claims: Mapping[str, Any], rules: TokenRules, now: float) -> float:
    """exp (required), nbf, iat with leeway, and aud ∋ ours; returns exp."""
    exp = _number(claims, "exp")
    if exp is None:
        raise _rejected("exp_missing", "the token has no `exp`")
    if now >= exp + rules.leeway:
        raise _rejected("expired", "the token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + rules.leeway:
        raise _rejected("not_yet_valid", "the token is not valid yet (`nbf`)")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + rules.leeway:
        raise _rejected("issued_in_future", "the token was issued in the future (`iat`)")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise _rejected("audience_mismatch", "the token has no valid `aud`")
    if rules.audience not in audiences:
        raise _rejected(
            "audience_mismatch", f"the token's `aud` does not include {rules.audience!r}"
        )
    return exp


def policy_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The verified claims policies see in `input.identity.claims` (docs/identity.md)."""
    return {k: v for k, v in claims.items() if k not in VOLATILE_CLAIMS}


class VerifiedCache:
    """Identities of verified tokens by SHA-256 of the token, until exp or a trust change.

    Bounded (LRU). `stamp` is whatever identifies the trust material the token was verified
    with (a bundle generation); a different stamp at lookup is a miss.
    """

    def __init__(self, max_entries: int = VERIFIED_CACHE_SIZE) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[Identity, float, object]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(
        self, digest: bytes, now: float, stamp: Callable[[Identity], object]
    ) -> Identity | None:
        if self._max <= 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            identity, valid_until, entry_stamp = entry
            if now >= valid_until or stamp(identity) != entry_stamp:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return identity

    def put(self, digest: bytes, identity: Identity, valid_until: float, stamp: object) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._entries[digest] = (identity, valid_until, stamp)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------- JWT-SVID


class JwtSvidAuthenticator:
    """SPIFFE JWT-SVIDs, verified against the bundle of the trust domain `sub` names."""

    method = "jwt-svid"

    def __init__(
        self,
        bundles: TrustBundles,
        rules: TokenRules,
        *,
        trust_domains: Collection[str] = (),
        clock: Clock | None = None,
        cache_size: int = VERIFIED_CACHE_SIZE,
        file_watcher: BundleFileWatcher | None = None,
        workload_watcher: WorkloadApiWatcher | None = None,
    ) -> None:
        self.bundles = bundles
        self._rules = rules
        self._trust_domains = frozenset(trust_domains)
        self._clock = clock or SystemClock()
        self.cache = VerifiedCache(cache_size)
        self._file_watcher = file_watcher
        self._workload_watcher = workload_watcher
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self._file_watcher is not None:
            await asyncio.to_thread(self._file_watcher.load_all)
            self._tasks.append(asyncio.create_task(self._file_watcher.run(self._stop)))
        if self._workload_watcher is not None:
            self._tasks.append(asyncio.create_task(self._workload_watcher.run(self._stop)))
            # Give the agent a moment so the first calls do not all fail; after that, calls
            # fail closed until bundles arrive.
            for _ in range(50):
                if self._workload_watcher.updates:
                    break
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self._tasks.clear()

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        return self.verify(bearer_token(metadata))

    def _stamp(self, _identity: Identity) -> object:
        return self.bundles.generation

    def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity a JWT-SVID proves; raises Unauthenticated."""
        now = self._clock.now() if now is None else now
        digest = VerifiedCache.digest(token)
        cached = self.cache.get(digest, now, self._stamp)
        if cached is not None:
            return cached
        generation = self.bundles.generation
        try:
            jws = parse(token)
        except JwsError as err:
            raise _rejected(err.cause, err.message) from err
        alg, kid = check_header_rules(jws, self._rules)
        sub = jws.claims.get("sub")
        if not isinstance(sub, str):
            raise _rejected("subject_invalid", "the token has no `sub`")
        try:
            domain = parse_spiffe_id(sub)
        except ValueError as err:
            raise _rejected("subject_invalid", f"`sub` is not a SPIFFE ID: {err}") from err
        if self._trust_domains and domain not in self._trust_domains:
            raise _rejected("trust_domain_not_allowed", f"trust domain {domain!r} is not allowed")
        keys = self.bundles.keys(domain)
        if keys is None:
            raise _rejected("trust_domain_unknown", f"no trust bundle for {domain!r}")
        key = keys.get(kid)
        if key is None:
            raise _rejected("kid_unknown", f"kid {kid!r} is not in the bundle of {domain!r}")
        try:
            verify_signature(jws, alg, key)
        except JwsError as err:
            raise _rejected(err.cause, err.message) from err
        exp = check_claims(jws.claims, self._rules, now)
        iss = jws.claims.get("iss")
        identity = Identity(
            subject=sub,
            trust_domain=domain,
            method=self.method,
            issuer=iss if isinstance(iss, str) else "",
            claims=policy_claims(jws.claims),
        )
        self.cache.put(digest, identity, exp + self._rules.leeway, generation)
        return identity


# ---------------------------------------------------------------------------- OIDC

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class SubjectRule:
    """`system:serviceaccount:{ns}:{sa}` → `spiffe://cluster.local/ns/{ns}/sa/{sa}`.

    A placeholder matches one SPIFFE path segment's characters (letters, digits, `.`, `-`,
    `_`), never `/` or `:`, so a subject cannot smuggle extra path segments in.
    """

    pattern: re.Pattern[str]
    template: str

    @classmethod
    def compile(cls, pattern: str, template: str) -> SubjectRule:
        names = _PLACEHOLDER.findall(pattern)
        if len(names) != len(set(names)):
            raise ConfigError(f"oidc_subject_map pattern {pattern!r} repeats a placeholder")
        unknown = set(_PLACEHOLDER.findall(template)) - set(names)
        if unknown:
            raise ConfigError(
                f"oidc_subject_map template {template!r} uses {sorted(unknown)} not in the pattern"
            )
        regex, pos = "", 0
        for m in _PLACEHOLDER.finditer(pattern):
            regex += re.escape(pattern[pos : m.start()])
            regex += f"(?P<{m.group(1)}>[A-Za-z0-9._-]+)"
            pos = m.end()
        regex += re.escape(pattern[pos:])
        sample = _PLACEHOLDER.sub("x", template)
        try:
            parse_spiffe_id(sample)
        except ValueError as err:
            raise ConfigError(
                f"oidc_subject_map template {template!r} does not make a SPIFFE ID: {err}"
            ) from err
        return cls(re.compile(regex), template)

    def apply(self, subject: str) -> str | None:
        m = self.pattern.fullmatch(subject)
        if m is None:
            return None
        values = m.groupdict()
        if any(v in (".", "..") for v in values.values()):
            return None
        return _PLACEHOLDER.sub(lambda p: values[p.group(1)], self.template)


class OidcAuthenticator:
    """OIDC ID tokens from allowed issuers; `sub` mapped to an agent identity."""

    method = "oidc"

    def __init__(
        self,
        keys: OidcKeys,
        rules: TokenRules,
        subject_rules: list[SubjectRule],
        *,
        clock: Clock | None = None,
        cache_size: int = VERIFIED_CACHE_SIZE,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.keys = keys
        self._issuers = frozenset(keys.issuers)
        self._rules = rules
        self._subject_rules = subject_rules
        self._clock = clock or SystemClock()
        self.cache = VerifiedCache(cache_size)
        self._on_close = on_close

    async def start(self) -> None:
        await self.keys.start()

    async def close(self) -> None:
        await self.keys.stop()
        if self._on_close is not None:
            self._on_close()

    def _stamp(self, identity: Identity) -> object:
        current = self.keys.keys(identity.issuer)
        return None if current is None else current.generation

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        return await self.verify(bearer_token(metadata))

    def map_subject(self, subject: str) -> str | None:
        for rule in self._subject_rules:
            mapped = rule.apply(subject)
            if mapped is not None:
                return mapped
        return None

    async def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity an OIDC ID token proves; raises Unauthenticated."""
        now = self._clock.now() if now is None else now
        digest = VerifiedCache.digest(token)
        cached = self.cache.get(digest, now, self._stamp)
        if cached is not None:
            return cached
        jws, iss, generation, exp = await verify_issued(token, self.keys, self._rules, now)
        sub = jws.claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _rejected("subject_invalid", "the token has no `sub`")
        mapped = self.map_subject(sub)
        if mapped is None:
            raise _rejected("subject_unmapped", "no oidc_subject_map rule matches the token's sub")
        try:
            domain = parse_spiffe_id(mapped)
        except ValueError as err:
            raise _rejected("subject_unmapped", f"the mapped subject is invalid: {err}") from err
        identity = Identity(
            subject=mapped,
            trust_domain=domain,
            method=self.method,
            issuer=iss,
            claims=policy_claims(jws.claims),
        )
        self.cache.put(digest, identity, exp + self._rules.leeway, generation)
        return identity


async def verify_issued(
    token: str,
    keys: OidcKeys,
    rules: TokenRules,
    now: float,
    *,
    header: Callable[[Jws, TokenRules], tuple[str, str]] = check_header_rules,
) -> tuple[Jws, str, int, float]:
    """A JWT from one of `keys.issuers`, its header (`header`), signature (the issuer's
    JWKS key named by `kid`) and claims (`rules`) checked: (jws, iss, key generation, exp).
    Raises Unauthenticated (identity_invalid, with a bounded `cause`)."""
    try:
        jws = parse(token)
    except JwsError as err:
        raise _rejected(err.cause, err.message) from err
    alg, kid = header(jws, rules)
    iss = jws.claims.get("iss")
    if not isinstance(iss, str) or iss not in keys.issuers:
        raise _rejected("issuer_not_allowed", "the token's `iss` is not an allowed issuer")
    current, key = await keys.key_for(iss, kid)
    if current is None:
        raise _rejected("issuer_keys_unavailable", f"no current keys for issuer {iss!r}")
    if key is None:
        raise _rejected("kid_unknown", f"kid {kid!r} is not among the keys of {iss!r}")
    try:
        verify_signature(jws, alg, key)
    except JwsError as err:
        raise _rejected(err.cause, err.message) from err
    return jws, iss, current.generation, check_claims(jws.claims, rules, now)


# ---------------------------------------------------------------------------- factory


def create_authenticator(
    config: Config,
    *,
    own_kids: Callable[[], Collection[str]] | None = None,
    clock: Clock | None = None,
) -> Authenticator:
    """The authenticator `config.identity` asks for.

    `own_kids` returns the kids of this sidecar's signing keys (tokens they signed are never
    an identity). Authenticators with background work implement `ManagedAuthenticator`.
    """
    if config.identity == "dev":
        log.warning(
            "DEV IDENTITY MODE: every local caller is trusted as %s. Never use this on a "
            "shared machine or in production (use --identity jwt-svid or oidc).",
            config.dev_subject,
        )
        return DevAuthenticator(config.dev_subject)
    no_kids: Callable[[], Collection[str]] = lambda: ()  # noqa: E731
    if config.identity == "jwt-svid":
        rules = TokenRules(
            audience=config.audience,
            leeway=config.identity_leeway,
            own_issuer=config.issuer,
            own_kids=own_kids or no_kids,
            typs=frozenset({None, "jwt", "jose"}),
        )
        bundles = TrustBundles()
        files = (
            BundleFileWatcher(bundles, config.trust_bundle, config.trust_bundle_refresh)
            if config.trust_bundle
            else None
        )
        workload = (
            WorkloadApiWatcher(bundles, config.spiffe_endpoint_socket)
            if config.spiffe_endpoint_socket
            else None
        )
        return JwtSvidAuthenticator(
            bundles,
            rules,
            trust_domains=config.trust_domains,
            clock=clock,
            file_watcher=files,
            workload_watcher=workload,
        )
    if config.identity == "oidc":
        rules = TokenRules(
            audience=config.audience,
            leeway=config.identity_leeway,
            own_issuer=config.issuer,
            own_kids=own_kids or no_kids,
            typs=frozenset({None, "jwt"}),
            algorithms=OIDC_JWT_ALGS,
        )
        subject_rules = [SubjectRule.compile(p, t) for p, t in config.oidc_subject_map.items()]
        fetcher = HttpKeyFetcher(
            ca_file=config.oidc_ca_file, token_file=config.oidc_fetch_token_file
        )
        keys = OidcKeys(
            config.oidc_issuer,
            fetcher,
            refresh=config.oidc_refresh,
            max_age=config.oidc_keys_max_age,
        )
        return OidcAuthenticator(keys, rules, subject_rules, clock=clock, on_close=fetcher.close)
    raise ConfigError(f"identity mode {config.identity!r} is not available in this build")

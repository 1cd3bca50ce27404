"""Who is using the console: the OIDC login (authorization code + PKCE), the dev bearer
credential, roles, and sessions with their CSRF token.

The login follows OpenID Connect Core 1.0 §3.1 (authorization code flow) with PKCE (RFC 7636,
method S256) and a `nonce`; the ID token is checked as §3.1.3.7 says, with the sidecar's own
strict JWS module (sidecar.jws) and keys from the issuer's JWKS. Sessions live in this
process's memory (a restart signs everyone out), named by a random cookie value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from .. import jws
from .settings import ROLES, ConsoleSettings

LOGIN_TTL = 600.0
"""Seconds a started login may take (state, nonce and PKCE verifier are kept that long)."""
CLOCK_SKEW = 60
MAX_SESSIONS = 10_000


class LoginError(Exception):
    """The login failed; `reason` is a fixed code shown to the person, `message` why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class User:
    name: str
    """Recorded as the approver in the audit log."""
    roles: frozenset[str]
    method: str
    """`oidc` or `dev`."""

    def can(self, role: str) -> bool:
        return role in self.roles


@dataclass(slots=True)
class Session:
    user: User
    csrf: str = field(repr=False)
    expires_at: float
    flash: str = ""
    """A message for the next page (the outcome of the last action)."""


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str
    nonce: str
    verifier: str = field(repr=False)
    browser: str = field(repr=False)
    """Random value also set in a cookie: the callback must come from the same browser."""
    started: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: S256 challenge = BASE64URL(SHA256(ASCII(code_verifier)))."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def roles_for(claims: Mapping[str, Any], settings: ConsoleSettings) -> frozenset[str]:
    value = claims.get(settings.roles_claim)
    groups = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    roles: set[str] = set()
    for group in groups:
        if isinstance(group, str):
            roles.update(settings.role_map.get(group, ()))
    return frozenset(r for r in roles if r in ROLES)


class Sessions:
    """Signed-in people by session id, and logins in progress by `state`."""

    def __init__(self, ttl: int) -> None:
        self._ttl = ttl
        self._sessions: dict[str, Session] = {}
        self._logins: dict[str, PendingLogin] = {}

    def create(self, user: User) -> tuple[str, Session]:
        self._prune()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].expires_at)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.time() + self._ttl)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires_at <= time.time():
            del self._sessions[sid]
            return None
        return session

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def start_login(self) -> PendingLogin:
        self._prune()
        login = PendingLogin(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            # RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]; 32 random bytes → 43.
            verifier=secrets.token_urlsafe(32),
            browser=secrets.token_urlsafe(24),
            started=time.time(),
        )
        if len(self._logins) < MAX_SESSIONS:
            self._logins[login.state] = login
        return login

    def finish_login(self, state: str, browser: str) -> PendingLogin:
        """The login `state` names, once, if this browser started it (login CSRF)."""
        login = self._logins.pop(state, None)
        if login is None or login.started + LOGIN_TTL < time.time():
            raise LoginError("login_state", "this sign-in link is unknown or too old; start again")
        if not hmac.compare_digest(login.browser, browser):
            raise LoginError("login_state", "this sign-in was started in another browser")
        return login

    def _prune(self) -> None:
        now = time.time()
        for sid in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
        for state in [k for k, p in self._logins.items() if p.started + LOGIN_TTL < now]:
            del self._logins[state]


class OidcLogin:
    """The relying party's half of the authorization code flow."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._s = settings
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, jws.VerifyKey] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def redirect_uri(self) -> str:
        return self._s.origin + "/login/callback"

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            ctx: ssl.SSLContext | bool = True
            if self._s.oidc_ca_file is not None:
                ctx = ssl.create_default_context(cafile=str(self._s.oidc_ca_file))
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), connector=aiohttp.TCPConnector(ssl=ctx)
            )
        return self._http

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._client().get(url) as response:
                if response.status != 200:
                    raise LoginError("issuer_unavailable", f"{url} answered HTTP {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise LoginError("issuer_unavailable", f"cannot read {url}") from err
        if not isinstance(body, dict):
            raise LoginError("issuer_unavailable", f"{url} is not a JSON object")
        return body

    async def metadata(self) -> dict[str, Any]:
        """OIDC Discovery 1.0 §4; its `issuer` must equal the configured one exactly (§4.3)."""
        if self._metadata is None:
            doc = await self._get_json(self._s.oidc_issuer + "/.well-known/openid-configuration")
            if doc.get("issuer") != self._s.oidc_issuer:
                raise LoginError("issuer_mismatch", "the issuer's discovery names another issuer")
            for member in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(member), str):
                    raise LoginError("issuer_unavailable", f"discovery has no {member}")
            self._metadata = doc
        return self._metadata

    async def authorize_url(self, login: PendingLogin) -> str:
        meta = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self._s.oidc_client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid email profile",
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": pkce_challenge(login.verifier),
            "code_challenge_method": "S256",
        }
        return f"{meta['authorization_endpoint']}?{urlencode(query)}"

    async def exchange(self, code: str, login: PendingLogin) -> User:
        """Trade the code for an ID token (RFC 6749 §4.1.3), verify it, and map roles."""
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self._s.oidc_client_id,
            "code_verifier": login.verifier,
        }
        auth = None
        if self._s.oidc_client_secret:  # RFC 6749 §2.3.1: HTTP Basic is the one to support
            auth = aiohttp.BasicAuth(self._s.oidc_client_id, self._s.oidc_client_secret)
        try:
            async with self._client().post(
                meta["token_endpoint"], data=form, auth=auth
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise LoginError("issuer_unavailable", "the token endpoint did not answer") from err
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise LoginError("code_refused", f"the issuer refused the code ({error or status})")
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise LoginError("code_refused", "the issuer's answer holds no id_token")
        claims = await self.verify_id_token(id_token, login.nonce)
        roles = roles_for(claims, self._s)
        if not roles:
            raise LoginError("no_role", "you are signed in but have no console role")
        name = claims.get(self._s.user_claim)
        if not isinstance(name, str) or not name:
            name = str(claims["sub"])
        return User(name=name, roles=roles, method="oidc")

    async def verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        """OIDC Core §3.1.3.7: signature by the issuer's key, exact iss, our aud (and azp when
        several), exp/iat in time, and the nonce we sent (§3.1.2.1, against replay)."""
        try:
            parsed = jws.parse(token)
            # The same algorithms as the sidecar's OIDC identities (RS/PS/ES and Ed25519).
            alg = jws.check_header(parsed.header, jws.OIDC_JWT_ALGS)
            kid = jws.kid_of(parsed.header)
            key = self._keys.get(kid)
            if key is None:
                await self._load_keys()
                key = self._keys.get(kid)
            if key is None:
                raise jws.JwsError("kid_unknown", "the ID token's key is not in the issuer's JWKS")
            jws.verify_signature(parsed, alg, key)
        except jws.JwsError as err:
            raise LoginError("id_token_invalid", err.message) from err
        claims = parsed.claims
        now = time.time()
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        problems = []
        if claims.get("iss") != self._s.oidc_issuer:
            problems.append("iss is not the configured issuer")
        if self._s.oidc_client_id not in auds:
            problems.append("aud does not name this console")
        if len(auds) > 1 and claims.get("azp") != self._s.oidc_client_id:
            problems.append("azp does not name this console")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or exp + CLOCK_SKEW < now:
            problems.append("expired")
        if not isinstance(iat, int | float) or iat - CLOCK_SKEW > now:
            problems.append("iat is in the future")
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
            str(claims.get("nonce")), nonce
        ):
            problems.append("nonce does not match this login")
        if not isinstance(claims.get("sub"), str) or not claims.get("sub"):
            problems.append("no sub")
        if problems:
            raise LoginError("id_token_invalid", "ID token refused: " + ", ".join(problems))
        return claims

    async def _load_keys(self) -> None:
        meta = await self.metadata()
        doc = await self._get_json(str(meta["jwks_uri"]))
        try:
            self._keys, _ = jws.parse_jwks(doc)
        except ValueError as err:
            raise LoginError("issuer_unavailable", f"the issuer's JWKS is unusable: {err}") from err

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

"""RFC 9449 DPoP binding end to end: a real sidecar issues a token bound (cnf.jkt) to the
agent's key; the resource-server check `sidecar.dpop.verify_dpop_proof` accepts proofs made
with that key and refuses stolen, replayed, stale and misdirected ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from sidecar.dpop import DpopError, ReplayCache, normalize_htu, verify_dpop_proof
from tests.harness import OpaServer, SidecarProcess
from tests.identity_kit import Key, dpop_proof, sign_raw, thumbprint

pytestmark = pytest.mark.integration
URL = "https://docs.example.com/handbook/intro"


class Bound:
    """A granted token bound to `key`, its verified claims, and an unbound one."""

    def __init__(self, process: SidecarProcess, key: Key) -> None:
        jwks = requests.get(process.http + "/.well-known/jwks.json", timeout=5).json()
        with process.client() as c:
            task = c.begin_task("bound", pop_jwk=key.private_jwk())
            self.token = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro").token
            plain = c.begin_task("unbound")
            self.unbound = c.request_grant(plain.task_id, "docs.read", "docs://handbook/x").token
        self.key = key
        self.claims = self._verify(self.token, jwks)
        self.unbound_claims = self._verify(self.unbound, jwks)

    @staticmethod
    def _verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
        """What a resource server does first: verify the access token with the JWKS."""
        kid = jwt.get_unverified_header(token)["kid"]
        (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
        claims: dict[str, Any] = jwt.decode(
            token,
            key=jwt.PyJWK(jwk),
            algorithms=[jwk["alg"]],
            audience="docs",
            issuer="https://jit-sidecar.local",
        )
        return claims


@pytest.fixture(scope="module")
def dev_sidecar(
    tmp_path_factory: pytest.TempPathFactory, opa: OpaServer
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(tmp_path_factory.mktemp("dpop") / "sc", opa.url).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["ES256", "EdDSA"])
def bound(request: pytest.FixtureRequest, dev_sidecar: SidecarProcess) -> Bound:
    return Bound(dev_sidecar, Key.generate(request.param))


def _check(b: Bound, proof: str | None, method: str = "GET", url: str = URL, **kw: Any) -> Any:
    kw.setdefault("replay_cache", ReplayCache())
    return verify_dpop_proof(b.token, proof, method, url, token_claims=b.claims, **kw)


def test_token_carries_thumbprint_and_valid_proof_passes(bound: Bound) -> None:
    """cnf.jkt is the RFC 7638 thumbprint of the agent key; its fresh proof is accepted,
    query and fragment and default port aside."""
    proof = dpop_proof(bound.key, "GET", "https://DOCS.example.com:443/handbook/intro", bound.token)
    result = _check(bound, proof, url=URL + "?page=2#top")
    assert bound.claims["cnf"] == {"jkt": thumbprint(bound.key)}
    assert result.jkt == thumbprint(bound.key)


def _cases(b: Bound) -> dict[str, tuple[str | None, dict[str, Any], str]]:
    now = time.time()
    thief = Key.generate(b.key.alg)
    public = {k: v for k, v in b.key.public_jwk().items() if k != "kid"}
    good = {"htm": "GET", "htu": URL, "iat": int(now), "jti": "jti-0123456789"}
    return {
        "stolen token without a proof": (None, {}, "proof_missing"),
        "stolen token, proof by the thief's key": (
            dpop_proof(thief, "GET", URL, b.token),
            {},
            "jkt_mismatch",
        ),
        "thief signs with his key but shows the victim's jwk": (
            dpop_proof(thief, "GET", URL, b.token, jwk=public),
            {},
            "signature_invalid",
        ),
        "proof for another URL": (
            dpop_proof(b.key, "GET", "https://docs.example.com/admin", b.token),
            {},
            "htu_mismatch",
        ),
        "proof for another host": (
            dpop_proof(b.key, "GET", "https://evil.example.com/handbook/intro", b.token),
            {},
            "htu_mismatch",
        ),
        "proof for another method": (
            dpop_proof(b.key, "POST", URL, b.token),
            {},
            "htm_mismatch",
        ),
        "stale proof": (dpop_proof(b.key, "GET", URL, b.token, iat=now - 120), {}, "proof_stale"),
        "proof from the future": (
            dpop_proof(b.key, "GET", URL, b.token, iat=now + 120),
            {},
            "iat_invalid",
        ),
        "proof for another token (wrong ath)": (
            dpop_proof(b.key, "GET", URL, b.unbound),
            {},
            "ath_mismatch",
        ),
        "private key in the jwk header": (
            dpop_proof(b.key, "GET", URL, b.token, jwk=b.key.private_jwk()),
            {},
            "jwk_private",
        ),
        "typ JWT": (dpop_proof(b.key, "GET", URL, b.token, typ="JWT"), {}, "typ_invalid"),
        "alg none": (
            sign_raw({"typ": "dpop+jwt", "alg": "none", "jwk": public}, good, None),
            {},
            "alg_not_allowed",
        ),
        "HS256 with the public key": (
            sign_raw({"typ": "dpop+jwt", "alg": "HS256", "jwk": public}, good, b"k" * 32),
            {},
            "alg_not_allowed",
        ),
        "jku header": (
            dpop_proof(b.key, "GET", URL, b.token, jku="https://evil.example.com/k"),
            {},
            "proof_malformed",
        ),
        "garbage": ("not-a-jwt", {}, "proof_malformed"),
        "server nonce missing": (
            dpop_proof(b.key, "GET", URL, b.token),
            {"nonce": "n-1"},
            "nonce_mismatch",
        ),
    }


def test_bad_proofs_are_refused(bound: Bound) -> None:
    """Every misuse is refused with its own reason."""
    reasons = {}
    for name, (proof, kw, _) in _cases(bound).items():
        with pytest.raises(DpopError) as err:
            _check(bound, proof, **kw)
        reasons[name] = err.value.reason
    assert reasons == {name: reason for name, (_, _, reason) in _cases(bound).items()}


def test_reused_jti_is_refused(bound: Bound) -> None:
    """The same proof (same jti) is accepted once, then refused as a replay."""
    cache = ReplayCache()
    proof = dpop_proof(bound.key, "GET", URL, bound.token)
    first = _check(bound, proof, replay_cache=cache)
    with pytest.raises(DpopError) as err:
        _check(bound, proof, replay_cache=cache)
    assert first.jti
    assert err.value.reason == "jti_replayed"
    assert len(cache) == 1


def test_unbound_token_has_no_dpop_binding(bound: Bound) -> None:
    """A token of a task without pop_jwk has no cnf; the check says so (token_not_bound)."""
    proof = dpop_proof(bound.key, "GET", URL, bound.unbound)
    with pytest.raises(DpopError) as err:
        verify_dpop_proof(
            bound.unbound, proof, "GET", URL, token_claims=bound.unbound_claims,
            replay_cache=ReplayCache(),
        )  # fmt: skip
    assert "cnf" not in bound.unbound_claims
    assert err.value.reason == "token_not_bound"


def test_replay_cache_is_bounded_and_fails_closed() -> None:
    """A full cache of live jtis refuses new proofs; expired entries make room."""
    cache = ReplayCache(max_entries=2)
    assert cache.add("a", 100.0, now=0.0)
    assert cache.add("b", 100.0, now=0.0)
    with pytest.raises(DpopError) as err:
        cache.add("c", 100.0, now=1.0)
    assert err.value.reason == "replay_cache_full"
    assert cache.add("c", 300.0, now=150.0)
    assert len(cache) == 1


def test_htu_normalisation() -> None:
    """Scheme/host case, default port, empty path, percent-encoding, query, fragment."""
    assert normalize_htu("HTTPS://Api.Example.COM:443?q=1#f") == "https://api.example.com/"
    assert normalize_htu("http://a.example:8080/%7euser/%2f") == "http://a.example:8080/~user/%2F"
    with pytest.raises(DpopError):
        normalize_htu("ftp://a.example/x")

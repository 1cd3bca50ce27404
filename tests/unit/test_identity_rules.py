"""Identity building blocks in-process: strict JWS rules, SPIFFE IDs, subject mapping, the
verified-token cache, OIDC key caching and the identity settings of Config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.bundles import TrustBundles
from sidecar.config import load
from sidecar.errors import ConfigError, Unauthenticated
from sidecar.identity import (
    JwtSvidAuthenticator,
    SubjectRule,
    TokenRules,
    parse_spiffe_id,
)
from sidecar.jws import (
    JwsError,
    VerifyKey,
    parse,
    parse_jwks,
    verify_key_from_jwk,
    verify_signature,
)
from sidecar.oidc import OidcKeys
from tests.identity_kit import AUDIENCE, Key, TrustDomain, b64


def _authenticator(domain: TrustDomain, **kw: object) -> JwtSvidAuthenticator:
    bundles = TrustBundles()
    keys, _ = parse_jwks(domain.bundle(), uses=(None, "jwt-svid"))
    bundles.set_file_bundle(domain.name, keys)
    rules = TokenRules(
        AUDIENCE, 10, "https://jit-sidecar.local", lambda: (), frozenset({None, "jwt"})
    )
    return JwtSvidAuthenticator(bundles, rules, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://Example.org/a",
        "spiffe://example.org:443/a",
        "spiffe://user@example.org/a",
        "spiffe://example.org/a//b",
        "spiffe://example.org/a/./b",
        "spiffe://example.org/a/?q",
        "spiffe://example.org/a#f",
        "https://example.org/a",
        "spiffe://example.org/" + "a" * 2048,
    ],
)
def test_invalid_spiffe_ids(value: str) -> None:
    """Trust-domain-only, uppercase domains, ports, users, empty/dot segments, query,
    fragment, other schemes and over-long IDs are not workload SPIFFE IDs."""
    with pytest.raises(ValueError, match="SPIFFE ID"):
        parse_spiffe_id(value)


def test_valid_spiffe_id() -> None:
    """The trust domain of a well-formed workload ID."""
    assert parse_spiffe_id("spiffe://prod.example-1.org/ns/a_b/sa/x.y-z") == "prod.example-1.org"


def test_subject_rule_maps_and_refuses_smuggling() -> None:
    """Placeholders match one path segment's characters only."""
    rule = SubjectRule.compile(
        "system:serviceaccount:{ns}:{sa}", "spiffe://cluster.local/ns/{ns}/sa/{sa}"
    )
    assert rule.apply("system:serviceaccount:agents:billing") == (
        "spiffe://cluster.local/ns/agents/sa/billing"
    )
    assert rule.apply("system:serviceaccount:a/b:c") is None
    assert rule.apply("system:serviceaccount:..:c") is None
    assert rule.apply("system:serviceaccount:agents:billing:extra") is None
    assert rule.apply("xsystem:serviceaccount:agents:billing") is None


def test_subject_rule_config_errors() -> None:
    """Unknown template placeholders and templates that are not SPIFFE IDs fail at start."""
    with pytest.raises(ConfigError):
        SubjectRule.compile("system:serviceaccount:{ns}:{sa}", "spiffe://c/ns/{namespace}")
    with pytest.raises(ConfigError):
        SubjectRule.compile("{sub}", "https://c/{sub}")


def test_short_rsa_keys_and_mismatched_alg_are_refused() -> None:
    """RSA below 2048 bits and a JWK whose alg does not fit its key are unusable."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    small = weak.public_key()
    n = small.public_numbers()
    jwk = {"kty": "RSA", "kid": "k1", "n": b64(n.n.to_bytes(128, "big")), "e": "AQAB"}
    with pytest.raises(ValueError, match="2048"):
        verify_key_from_jwk(jwk)
    ec_jwk = Key.generate("ES256").public_jwk(alg="RS256")
    with pytest.raises(ValueError, match="does not fit"):
        verify_key_from_jwk(ec_jwk)


def test_jwks_with_duplicate_kid_is_refused() -> None:
    """Two members with the same kid make a bundle ambiguous: refused as a whole."""
    key = Key.generate("ES256", kid="same")
    other = Key.generate("ES256", kid="same")
    with pytest.raises(ValueError, match="duplicate"):
        parse_jwks({"keys": [key.public_jwk(), other.public_jwk()]})


def test_es256_key_cannot_verify_es384_or_rs256() -> None:
    """A key verifies only the algorithms its type allows."""
    key = Key.generate("ES256")
    vk = verify_key_from_jwk(key.public_jwk())
    token = parse(key.sign({"sub": "x"}))
    verify_signature(token, "ES256", vk)
    for alg in ("ES384", "RS256", "PS256", "EdDSA"):
        with pytest.raises(JwsError) as err:
            verify_signature(token, alg, vk)
        assert err.value.cause == "alg_key_mismatch"


def test_verified_cache_hits_and_invalidates_on_bundle_change() -> None:
    """A verified token is served from the cache; a bundle change forces re-verification,
    which then fails when its key is gone."""
    domain = TrustDomain.create("example.org")
    auth = _authenticator(domain)
    token = domain.svid()
    first = auth.verify(token)
    second = auth.verify(token)
    assert second is first
    assert len(auth.cache) == 1
    auth.bundles.set_file_bundle("example.org", {})
    with pytest.raises(Unauthenticated) as err:
        auth.verify(token)
    assert err.value.metadata["cause"] == "kid_unknown"


def test_verified_cache_respects_exp() -> None:
    """A cached identity is not served once its token expired (plus leeway)."""
    domain = TrustDomain.create("example.org")
    auth = _authenticator(domain)
    token = domain.svid(ttl=30)
    auth.verify(token)
    with pytest.raises(Unauthenticated) as err:
        auth.verify(token, now=time.time() + 41)
    assert err.value.metadata["cause"] == "expired"


def test_trust_domain_allow_list() -> None:
    """With trust_domains set, a domain that has a bundle but is not listed is refused."""
    domain = TrustDomain.create("example.org")
    auth = _authenticator(domain, trust_domains=["other.org"])
    with pytest.raises(Unauthenticated) as err:
        auth.verify(domain.svid())
    assert err.value.metadata["cause"] == "trust_domain_not_allowed"


class _Fetcher:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.keys: dict[str, VerifyKey] = {}

    def __call__(self, issuer: str) -> Mapping[str, VerifyKey]:
        self.calls += 1
        if self.fail:
            raise OSError("issuer down")
        return self.keys


def test_oidc_keys_rate_limit_and_max_age() -> None:
    """Unknown-kid refetches happen at most once per interval; keys expire after max age."""
    clock = [1000.0]
    fetcher = _Fetcher()
    keys = OidcKeys(["https://issuer"], fetcher, refresh=10, max_age=60, monotonic=lambda: clock[0])

    async def scenario() -> tuple[bool, bool, bool, int]:
        await keys.fetch("https://issuer")
        first = await keys.refetch_for_unknown_kid("https://issuer")
        clock[0] += 10
        limited = await keys.refetch_for_unknown_kid("https://issuer")
        clock[0] += 25
        again = await keys.refetch_for_unknown_kid("https://issuer")
        return first, limited, again, fetcher.calls

    first, limited, again, calls = asyncio.run(scenario())
    assert (first, limited, again, calls) == (True, False, True, 3)
    fetcher.fail = True
    clock[0] += 59
    assert keys.keys("https://issuer") is not None
    clock[0] += 2
    assert keys.keys("https://issuer") is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"identity": "jwt-svid"}, "needs trust bundles"),
        ({"identity": "oidc"}, "at least one oidc_issuer"),
        ({"identity": "oidc", "oidc_issuer": "https://k8s"}, "oidc_subject_map"),
        (
            {
                "identity": "oidc",
                "oidc_issuer": "https://jit-sidecar.local",
                "oidc_subject_map": ["a=b"],
            },
            "own issuer",
        ),
        (
            {"identity": "oidc", "oidc_issuer": "http://k8s.example", "oidc_subject_map": ["a=b"]},
            "https://",
        ),
        (
            {"identity": "jwt-svid", "trust_bundle": ["a.org=/x"], "trust_domains": "b.org"},
            "trust_domains without a trust_bundle",
        ),
        (
            {"identity": "jwt-svid", "trust_bundle": ["a.org=/x"], "identity_leeway": "900"},
            "leeway",
        ),
    ],
)
def test_identity_config_combinations(settings: dict[str, object], message: str) -> None:
    """Settings that cannot work together are refused at start with a clear message."""
    with pytest.raises(ConfigError) as err:
        load(settings)
    assert message in err.value.message


def test_spiffe_endpoint_socket_env(tmp_path: Path) -> None:
    """The standard SPIFFE_ENDPOINT_SOCKET is honoured; the sidecar's own variable and the
    config file win over it."""
    env = {"SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/agent.sock"}
    cfg = load({"identity": "jwt-svid"}, env=env)
    assert cfg.spiffe_endpoint_socket == "unix:///run/spire/agent.sock"
    own = {**env, "JIT_SIDECAR_SPIFFE_ENDPOINT_SOCKET": "unix:///other.sock"}
    assert load({"identity": "jwt-svid"}, env=own).spiffe_endpoint_socket == "unix:///other.sock"
    toml = tmp_path / "c.toml"
    toml.write_text('spiffe_endpoint_socket = "unix:///from-file.sock"\n')
    from_file = load({"identity": "jwt-svid"}, env=env, config_file=toml)
    assert from_file.spiffe_endpoint_socket == "unix:///from-file.sock"


def test_trust_domain_without_bundle() -> None:
    """Without an allow-list, a trust domain that has no bundle is refused."""
    auth = _authenticator(TrustDomain.create("example.org"))
    with pytest.raises(Unauthenticated) as err:
        auth.verify(TrustDomain.create("evil.org").svid())
    assert err.value.metadata["cause"] == "trust_domain_unknown"

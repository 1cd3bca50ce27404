"""RFC 9449 DPoP binding end to end, with a real sidecar over its real Unix socket and the
real OPA: BeginTask binds a task to a key only on a proof signed by that key (issue 13,
finding 4), the sidecar issues tokens bound (cnf.jkt) to it, and the resource-server check
`sidecar.dpop.verify_dpop_proof` accepts proofs made with that key and refuses stolen,
replayed, stale and misdirected ones."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import jwt
import pytest
import requests
from google.protobuf import struct_pb2

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar.client import SidecarRpcError, socket_target, translate_error
from sidecar.dpop import BINDING_HTU, DpopError, ReplayCache, normalize_htu, verify_dpop_proof
from tests.harness import OpaServer, SidecarProcess
from tests.identity_kit import Key, b64, dpop_proof, sign_raw, thumbprint

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


def test_ed25519_alg_name_is_accepted_in_proofs(bound: Bound) -> None:
    """A proof under the RFC 9864 name `Ed25519` verifies like one under `EdDSA` (same key,
    same signature); an EC key cannot claim it (jwk_invalid, before any signature check)."""
    if bound.key.alg == "EdDSA":
        proof = dpop_proof(bound.key, "GET", URL, bound.token, alg="Ed25519")
        assert _check(bound, proof).jkt == thumbprint(bound.key)
        return
    _, claims, signature = dpop_proof(bound.key, "GET", URL, bound.token).split(".")
    header = {"typ": "dpop+jwt", "alg": "Ed25519", "jwk": _public(bound.key)}
    forged = f"{b64(json.dumps(header).encode())}.{claims}.{signature}"
    with pytest.raises(DpopError) as err:
        _check(bound, forged)
    assert err.value.reason == "jwk_invalid"


# ---------------------------------------------------------------------------- BeginTask binding


def _public(key: Key) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k != "kid"}


def _struct(jwk: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(jwk)
    return out


def _begin(process: SidecarProcess, request: pb.BeginTaskRequest) -> pb.Task:
    """BeginTask over the real socket, as raw protobuf (any proof, any pop_jwk)."""
    with grpc.insecure_channel(socket_target(process.socket)) as channel:
        try:
            response = pb_grpc.AccessServiceStub(channel).BeginTask(request, timeout=10)
        except grpc.RpcError as err:
            raise translate_error(err) from None
    return response.task


HOLDER = Key.generate("ES256")
THIEF = Key.generate("ES256")
BindingCase = Callable[[str], pb.BeginTaskRequest]
BINDING_CASES: dict[str, tuple[BindingCase, str]] = {
    "pop_jwk alone (a key the caller may not hold)": (
        lambda t: pb.BeginTaskRequest(task_id=t, pop_jwk=_struct(_public(HOLDER))),
        "proof_missing",
    ),
    "proof signed by another key than its jwk": (
        lambda t: pb.BeginTaskRequest(
            task_id=t, pop_proof=dpop_proof(THIEF, "POST", BINDING_HTU, None, jwk=_public(HOLDER))
        ),
        "signature_invalid",
    ),
    "pop_jwk is not the proof's key": (
        lambda t: pb.BeginTaskRequest(
            task_id=t,
            pop_jwk=_struct(_public(HOLDER)),
            pop_proof=dpop_proof(THIEF, "POST", BINDING_HTU, None),
        ),
        "jkt_mismatch",
    ),
    "stale iat": (
        lambda t: pb.BeginTaskRequest(
            task_id=t,
            pop_proof=dpop_proof(HOLDER, "POST", BINDING_HTU, None, iat=time.time() - 120),
        ),
        "proof_stale",
    ),
    "wrong htm": (
        lambda t: pb.BeginTaskRequest(
            task_id=t, pop_proof=dpop_proof(HOLDER, "GET", BINDING_HTU, None)
        ),
        "htm_mismatch",
    ),
    "wrong htu (a resource server's URL)": (
        lambda t: pb.BeginTaskRequest(task_id=t, pop_proof=dpop_proof(HOLDER, "POST", URL, None)),
        "htu_mismatch",
    ),
    "private key in the jwk header": (
        lambda t: pb.BeginTaskRequest(
            task_id=t,
            pop_proof=dpop_proof(HOLDER, "POST", BINDING_HTU, None, jwk=HOLDER.private_jwk()),
        ),
        "jwk_private",
    ),
    "not a JWS": (
        lambda t: pb.BeginTaskRequest(task_id=t, pop_proof="not.a.jws"),
        "proof_malformed",
    ),
}


def _rejections(process: SidecarProcess, task_id: str) -> list[dict[str, Any]]:
    return [r for r in process.events("request_rejected") if r.get("task_id") == task_id]


def _refused(
    process: SidecarProcess, task_id: str, request: pb.BeginTaskRequest
) -> SidecarRpcError:
    """BeginTask is refused; nothing of the task exists afterwards."""
    with pytest.raises(SidecarRpcError) as err:
        _begin(process, request)
    with process.client() as c, pytest.raises(SidecarRpcError) as lookup:
        c.list_grants(task_id)
    assert lookup.value.reason == "task_not_found"
    assert not [r for r in process.events("task_begun") if r["task_id"] == task_id]
    return err.value


@pytest.mark.parametrize("case", BINDING_CASES)
def test_begin_task_refuses_a_binding_without_a_valid_proof(
    dev_sidecar: SidecarProcess, case: str
) -> None:
    """Each bad binding: INVALID_ARGUMENT invalid_pop_proof with its cause, no task created,
    and the refusal audited (request_rejected) and counted like any other."""
    build, cause = BINDING_CASES[case]
    task_id = "pop-" + cause.replace("_", "-") + "-" + str(len(case))
    counted = dev_sidecar.metric("jit_rejected_requests_total", reason="invalid_pop_proof")
    err = _refused(dev_sidecar, task_id, build(task_id))
    (audited,) = _rejections(dev_sidecar, task_id)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "invalid_pop_proof"
    assert err.metadata.get("cause") == cause
    assert audited["rpc"] == "BeginTask"
    assert audited["reason"] == "invalid_pop_proof"
    after = dev_sidecar.metric("jit_rejected_requests_total", reason="invalid_pop_proof")
    assert after == counted + 1


def test_begin_task_refuses_a_replayed_proof(dev_sidecar: SidecarProcess) -> None:
    """A binding proof is accepted once; the same proof again (same jti) is refused as
    jti_replayed, audited, and creates no second task."""
    proof = dpop_proof(HOLDER, "POST", BINDING_HTU, None)
    first = _begin(dev_sidecar, pb.BeginTaskRequest(task_id="pop-once", pop_proof=proof))
    err = _refused(
        dev_sidecar, "pop-twice", pb.BeginTaskRequest(task_id="pop-twice", pop_proof=proof)
    )
    (audited,) = _rejections(dev_sidecar, "pop-twice")
    assert first.pop_jkt == thumbprint(HOLDER)
    assert err.reason == "invalid_pop_proof"
    assert err.metadata.get("cause") == "jti_replayed"
    assert audited["reason"] == "invalid_pop_proof"


@pytest.mark.parametrize(
    ("alg", "header_alg", "with_pop_jwk"),
    [("ES256", "ES256", False), ("EdDSA", "EdDSA", False), ("EdDSA", "Ed25519", True)],
)
def test_valid_binding_proof_binds_the_key(
    dev_sidecar: SidecarProcess, alg: str, header_alg: str, with_pop_jwk: bool
) -> None:
    """A fresh proof signed by the key (under EdDSA or Ed25519, with or without the
    deprecated matching pop_jwk) binds it: the task and every token carry its cnf.jkt, and
    task_begun audits it."""
    key = Key.generate(alg)
    request = pb.BeginTaskRequest(
        goal="bound", pop_proof=dpop_proof(key, "POST", BINDING_HTU, None, alg=header_alg)
    )
    if with_pop_jwk:
        request.pop_jwk.CopyFrom(_struct(_public(key)))
    task = _begin(dev_sidecar, request)
    with dev_sidecar.client() as c:
        token = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro").token
    claims = jwt.decode(token, options={"verify_signature": False})
    (begun,) = [r for r in dev_sidecar.events("task_begun") if r["task_id"] == task.task_id]
    assert task.pop_jkt == thumbprint(key)
    assert claims["cnf"] == {"jkt": thumbprint(key)}
    assert begun["pop_jkt"] == thumbprint(key)


def test_sdk_proves_possession_of_a_private_jwk(dev_sidecar: SidecarProcess) -> None:
    """The SDK turns a pop_jwk holding its private `d` into a proof and never sends `d`; a
    bare public pop_jwk is refused (invalid_pop_proof)."""
    key = Key.generate("EdDSA")
    with dev_sidecar.client() as c:
        task = c.begin_task("sdk bound", pop_jwk=key.private_jwk())
        with pytest.raises(SidecarRpcError) as err:
            c.begin_task("sdk bare key", pop_jwk=_public(key))
    assert task.pop_jkt == thumbprint(key)
    assert err.value.reason == "invalid_pop_proof"
    assert key.private_jwk()["d"] not in dev_sidecar.audit.read_text()

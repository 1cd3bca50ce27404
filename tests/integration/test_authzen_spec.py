"""Every request/response example of the AuthZEN Authorization API 1.0, table-driven, through
a real sidecar's HTTP listener and a real OPA (`opa run`) evaluating a test policy that
answers from the spec's own decisions (tests/integration/authzen/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import OpaServer, SidecarProcess, running

HERE = Path(__file__).parent / "authzen"
EXAMPLES = json.loads((HERE / "spec_examples.json").read_text())
CREDENTIAL = "authzen-spec-credential-0123456789"


@pytest.fixture(scope="module")
def spec_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("authzen-spec")
    opa = OpaServer(workdir, policy_dirs=[HERE / "authzen_spec.rego"]).start()
    opa.put_data("authzen_spec/rules", EXAMPLES["policy_rules"])
    token_file = workdir / "http-token"
    token_file.write_text(CREDENTIAL)
    sidecar = SidecarProcess(
        workdir / "sidecar",
        opa.url,
        "--authzen-decision-path",
        "authzen_spec/decision",
        "--http-token-file",
        str(token_file),
    )
    try:
        with running(sidecar):
            yield sidecar
    finally:
        opa.stop()


def _post(sidecar: SidecarProcess, case: dict[str, Any]) -> requests.Response:
    headers = {"Authorization": f"Bearer {CREDENTIAL}", **case.get("headers", {})}
    return requests.post(
        sidecar.http + case["endpoint"], json=case["request"], headers=headers, timeout=10
    )


@pytest.mark.parametrize(
    "case", EXAMPLES["cases"], ids=[c["source"][:60] for c in EXAMPLES["cases"]]
)
def test_spec_example(spec_sidecar: SidecarProcess, case: dict[str, Any]) -> None:
    """The sidecar answers each example of the spec with the spec's status, body and
    X-Request-ID."""
    response = _post(spec_sidecar, case)
    assert response.status_code == case["status"], response.text
    if "response" in case:
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == case["response"]
    for name, value in case.get("headers", {}).items():
        assert response.headers.get(name) == value


def test_discovery_is_the_spec_metadata(spec_sidecar: SidecarProcess) -> None:
    """§9.2.2: the metadata has the example's members for this PDP's URL, the evaluations and
    ARAP endpoints, and no search endpoints (not offered)."""
    response = requests.get(spec_sidecar.http + "/.well-known/authzen-configuration", timeout=10)
    example = EXAMPLES["metadata_example"]
    metadata = response.json()
    base = spec_sidecar.http
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert metadata["policy_decision_point"] == base
    assert metadata["access_evaluation_endpoint"] == example["access_evaluation_endpoint"].replace(
        example["policy_decision_point"], base
    )
    assert metadata["access_evaluations_endpoint"] == base + "/access/v1/evaluations"
    assert metadata["access_request_endpoint"] == base + "/access/v1/requests"
    assert metadata["capabilities"] == ["urn:openid:authzen:capability:access-request"]
    assert not any(key.startswith("search_") for key in metadata)


def test_every_example_was_audited(spec_sidecar: SidecarProcess) -> None:
    """Each decision answered above left an `authzen_decision` audit record and a count."""
    answered = sum(
        len(c["response"].get("evaluations", [c["response"]]))
        for c in EXAMPLES["cases"]
        if c["status"] == 200
    )
    events = spec_sidecar.events("authzen_decision")
    counted = sum(
        spec_sidecar.metric("jit_authzen_evaluations_total", decision=d) for d in ("permit", "deny")
    )
    assert len(events) >= answered
    assert counted == len(events)
    assert all("token" not in json.dumps(e).lower() for e in events)

"""JWT-SVID mode with trust bundles from the SPIFFE Workload API: a real sidecar process and
a real gRPC Workload API endpoint on a Unix socket (bundles minted by the tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import AccessClient, IdentityRejected, TokenFile, WorkloadApiToken
from tests.harness import OpaServer, SidecarProcess, wait_for
from tests.identity_kit import Key, TrustDomain
from tests.workload_api import WorkloadApi

pytestmark = pytest.mark.integration


@pytest.fixture
def workload_api(tmp_path: Path) -> Iterator[WorkloadApi]:
    api = WorkloadApi(tmp_path / "agent.sock", TrustDomain.create("example.org"), "agent/wl")
    api.start()
    yield api
    api.stop()


def test_bundles_from_workload_api_and_rotation(
    tmp_path: Path, opa: OpaServer, workload_api: WorkloadApi
) -> None:
    """SPIFFE_ENDPOINT_SOCKET alone configures the bundles; a pushed rotation is applied."""
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        identity="jwt-svid",
        env={"SPIFFE_ENDPOINT_SOCKET": workload_api.endpoint},
    ).start()
    try:
        old_domain = workload_api.domain
        with process.client(identity_token=old_domain.svid("agent/wl")) as c:
            first = c.begin_task("from workload api").subject
        rotated = TrustDomain("example.org", [Key.generate("ES256")])
        workload_api.rotate(rotated)
        wait_for(
            lambda: process.log().count("JWT bundles from the Workload API") >= 2,
            10,
            what="rotation",
        )
        with process.client(identity_token=rotated.svid("agent/wl")) as c:
            second = c.begin_task("after rotation").subject
        with (
            process.client(identity_token=old_domain.svid("agent/wl")) as c,
            pytest.raises(IdentityRejected) as err,
        ):
            c.begin_task("old key")
    finally:
        process.stop()
    assert first == second == "spiffe://example.org/agent/wl"
    assert err.value.metadata["cause"] == "kid_unknown"


def test_client_token_sources(tmp_path: Path, opa: OpaServer, workload_api: WorkloadApi) -> None:
    """The SDK attaches JWT-SVIDs fetched from the Workload API, or read from a token file
    that is re-read when it is rotated."""
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        "--spiffe-endpoint-socket",
        workload_api.endpoint,
        identity="jwt-svid",
    ).start()
    token_file = tmp_path / "svid.jwt"
    token_file.write_text(workload_api.domain.svid("agent/from-file") + "\n")
    source = WorkloadApiToken("jit-sidecar", workload_api.endpoint)
    try:
        with AccessClient(process.socket, identity_token=source) as c:
            from_api = c.begin_task("workload api").subject
        with AccessClient(process.socket, identity_token=TokenFile(token_file)) as c:
            from_file = c.begin_task("file").subject
            token_file.write_text(workload_api.domain.svid("agent/rotated-file"))
            after_rotation = c.begin_task("file rotated").subject
    finally:
        source.close()
        process.stop()
    assert from_api == "spiffe://example.org/agent/wl"
    assert from_file == "spiffe://example.org/agent/from-file"
    assert after_rotation == "spiffe://example.org/agent/rotated-file"


def test_agent_restart_keeps_bundles_then_follows_new_agent(
    tmp_path: Path, opa: OpaServer, workload_api: WorkloadApi
) -> None:
    """While the agent is down the last bundles stay in force; a restarted agent with rotated
    keys is reconnected to and its bundles applied."""
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        identity="jwt-svid",
        env={"SPIFFE_ENDPOINT_SOCKET": workload_api.endpoint},
    ).start()
    old_domain = workload_api.domain
    try:
        workload_api.stop()
        workload_api.socket.unlink(missing_ok=True)
        with process.client(identity_token=old_domain.svid("agent/wl")) as c:
            while_down = c.begin_task("agent down").subject
        rotated = TrustDomain("example.org", [Key.generate("ES256")])
        restarted = WorkloadApi(workload_api.socket, rotated, "agent/wl").start()
        try:
            wait_for(
                lambda: process.log().count("JWT bundles from the Workload API") >= 2,
                30,
                what="reconnect to the restarted agent",
            )
            with process.client(identity_token=rotated.svid("agent/wl")) as c:
                after_restart = c.begin_task("agent back").subject
        finally:
            restarted.stop()
    finally:
        process.stop()
    assert while_down == after_restart == "spiffe://example.org/agent/wl"

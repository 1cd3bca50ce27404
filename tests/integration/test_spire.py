"""Opt-in (`make test-spire`): a real SPIRE server and agent issue a JWT-SVID to this test
process (unix workload attestation, uid 0) and a real sidecar, taking its trust bundles from
the same agent's Workload API, accepts it. Skipped unless SPIRE_BIN_DIR names a directory with
spire-server and spire-agent (scripts/build-spire.sh builds them)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import AccessClient, IdentityRejected, WorkloadApiToken
from tests.harness import OpaServer, SidecarProcess, free_port, wait_for
from tests.identity_kit import TrustDomain

BIN = Path(os.environ.get("SPIRE_BIN_DIR", "/nonexistent"))
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (BIN / "spire-server").exists(), reason="SPIRE_BIN_DIR not set (make test-spire)"
    ),
]
DOMAIN = "example.org"
WORKLOAD_ID = f"spiffe://{DOMAIN}/agent/spire-test"


class Spire:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_socket = root / "server" / "api.sock"
        self.agent_socket = root / "agent" / "public" / "api.sock"
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def _write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def server_cmd(self, *args: str) -> str:
        out = subprocess.run(
            [str(BIN / "spire-server"), *args, "-socketPath", str(self.server_socket)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return out.stdout.decode()

    def start(self) -> Spire:
        for d in ("server", "agent/public", "server-data", "agent-data"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        server_conf = self._write(
            "server.conf",
            f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{self.port}"
  socket_path = "{self.server_socket}"
  trust_domain = "{DOMAIN}"
  data_dir = "{self.root}/server-data"
  log_level = "WARN"
  default_jwt_svid_ttl = "5m"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{self.root}/server-data/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
}}
""",
        )
        with (self.root / "server.log").open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    [str(BIN / "spire-server"), "run", "-config", str(server_conf)],
                    stdout=log,
                    stderr=log,
                )
            )
        wait_for(self._server_healthy, 60, 0.2, "spire-server")
        token = self.server_cmd("token", "generate", "-spiffeID", f"spiffe://{DOMAIN}/host")
        join_token = token.split()[-1]
        self.server_cmd(
            "entry", "create",
            "-parentID", f"spiffe://{DOMAIN}/host",
            "-spiffeID", WORKLOAD_ID,
            "-selector", f"unix:uid:{os.getuid()}",
        )  # fmt: skip
        agent_conf = self._write(
            "agent.conf",
            f"""
agent {{
  data_dir = "{self.root}/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{self.port}"
  socket_path = "{self.agent_socket}"
  trust_domain = "{DOMAIN}"
  insecure_bootstrap = true
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""",
        )
        with (self.root / "agent.log").open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "spire-agent"), "run",
                        "-config", str(agent_conf),
                        "-joinToken", join_token,
                    ],
                    stdout=log,
                    stderr=log,
                )
            )  # fmt: skip
        return self

    def _server_healthy(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text()[-3000:])
        result = subprocess.run(
            [str(BIN / "spire-server"), "healthcheck", "-socketPath", str(self.server_socket)],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


@pytest.fixture
def spire(tmp_path: Path) -> Iterator[Spire]:
    s = Spire(tmp_path / "spire").start()
    yield s
    s.stop()


def _fetch_svid(source: WorkloadApiToken) -> str | None:
    try:
        return source.token()
    except Exception:
        return None


def test_real_spire_jwt_svid_is_accepted(tmp_path: Path, opa: OpaServer, spire: Spire) -> None:
    """A JWT-SVID from a real SPIRE agent is accepted by a sidecar that takes its bundles
    from the same agent's Workload API; a self-minted token for the same ID is refused."""
    endpoint = f"unix://{spire.agent_socket}"
    wait_for(spire.agent_socket.exists, 60, 0.2, "the agent's Workload API socket")
    source = WorkloadApiToken("jit-sidecar", endpoint)
    try:
        # The registration entry reaches the agent on its next sync (a few seconds).
        svid = wait_for(lambda: _fetch_svid(source), 90, 0.5, "a JWT-SVID from SPIRE")
        process = SidecarProcess(
            tmp_path / "sc",
            opa.url,
            "--trust-domains",
            DOMAIN,
            identity="jwt-svid",
            env={"SPIFFE_ENDPOINT_SOCKET": endpoint},
        ).start()
        try:
            with AccessClient(process.socket, identity_token=source) as c:
                task = c.begin_task("issued by real SPIRE")
            forged = TrustDomain.create(DOMAIN).svid("agent/spire-test")
            with (
                AccessClient(process.socket, identity_token=forged) as c,
                pytest.raises(IdentityRejected) as err,
            ):
                c.begin_task("forged")
        finally:
            process.stop()
    finally:
        source.close()
    assert svid.count(".") == 2
    assert task.subject == WORKLOAD_ID
    assert err.value.metadata["cause"] == "kid_unknown"

"""Shared fixtures. Integration fixtures start the real `opa` binary and real sidecar
processes listening on real Unix sockets (see tests/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import OpaServer, RedisClusterServers, RedisServer, SidecarProcess, opa_binary
from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """One real OPA server on rego/ for the whole session (tests must not change it)."""
    server = OpaServer(tmp_path_factory.mktemp("opa")).start()
    yield server
    server.stop()


@pytest.fixture
def own_opa(tmp_path: Path) -> Iterator[OpaServer]:
    """A real OPA server of this test's own, which it may stop, restart or reprogram."""
    server = OpaServer(tmp_path / "opa-work")
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sidecar(tmp_path: Path, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar process (dev identity) against the shared OPA."""
    process = SidecarProcess(tmp_path / "sidecar", opa.url).start()
    yield process
    if process.proc is not None:
        try:
            process.stop(timeout=15)
        except Exception:
            process.kill()
            raise


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real, throwaway redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster (redis-cli --cluster create) for the session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real, throwaway PostgreSQL cluster (Debian's binaries, initdb in a temp dir, a
    free loopback port) for the session; stopped at the end."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.start()
    finally:
        server.stop()


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"opa: {opa_binary()} (real binary; integration tests run against it)"
    except RuntimeError as err:
        return f"opa: MISSING ({err})"

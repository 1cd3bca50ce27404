"""Test harness: the real `opa` binary, real sidecar processes on real Unix sockets.

Nothing here fakes a component; fakes for fault injection live in `tests/fakes.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
REGO = ROOT / "rego"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def opa_binary() -> str:
    """The real OPA: on PATH or built into .tools/bin by `make test` (never a fake)."""
    found = shutil.which("opa") or (
        str(ROOT / ".tools/bin/opa") if (ROOT / ".tools/bin/opa").exists() else None
    )
    if found is None:
        raise RuntimeError("the opa binary is missing: run `make test`, which installs it")
    return found


class OpaServer:
    """A real `opa run --server` on a loopback port (and optionally a Unix socket)."""

    def __init__(
        self, workdir: Path, policy_dirs: Sequence[Path] = (REGO,), unix_socket: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.policy_dirs = list(policy_dirs)
        self.port = free_port()
        self.unix_socket = unix_socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"opa-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpaServer:
        args = [
            opa_binary(),
            "run",
            "--server",
            "--skip-version-check",
            # Every decision gets a decision_id (in OPA's answer, the sidecar's audit record
            # and the RequestGrant response) and a "Decision Log" line in self.log.
            "--set",
            "decision_logs.console=true",
            "--log-level",
            "error",
            "--addr",
            f"127.0.0.1:{self.port}",
        ]
        if self.unix_socket is not None:
            args += ["--addr", f"unix://{self.unix_socket}"]
        args += [str(p) for p in self.policy_dirs]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self.healthy, 20, what="OPA to start")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"OPA exited: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(self.url + "/health", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def put_policy(self, policy_id: str, rego: str) -> None:
        r = requests.put(f"{self.url}/v1/policies/{policy_id}", data=rego.encode(), timeout=5)
        r.raise_for_status()

    def put_data(self, path: str, value: Any) -> None:
        r = requests.put(f"{self.url}/v1/data/{path}", json=value, timeout=5)
        r.raise_for_status()


class SidecarProcess:
    """`jit-sidecar serve` as a separate process, with its state in a temporary directory."""

    def __init__(
        self,
        workdir: Path,
        opa_url: str,
        *extra: str,
        env: dict[str, str] | None = None,
        identity: str = "dev",
        http_port: int | None = None,
        shared: str | None = None,
        http_credential: bool = True,
    ) -> None:
        self.workdir = workdir
        self.http_credential = http_credential
        self.shared = shared
        """A redis:// URL: state shared with a fleet (the local SQLite is still `state`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "run" / "sidecar.sock"
        self.admin_socket = workdir / "run" / "admin.sock"
        self.state = workdir / "state.db"
        self.audit = workdir / "audit.jsonl"
        self.key = workdir / "signing-key.pem"
        self.http_token = workdir / "http-token"
        """The bearer credential /introspect and /revoke require (`http_auth`), unless the
        test passes its own --http-token-file or --http-allow-anonymous-loopback."""
        self.http_port = http_port or free_port()
        self.opa_url = opa_url
        self.identity = identity
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sidecar.log"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_auth(self) -> dict[str, str]:
        """Headers for /introspect and /revoke."""
        return {"Authorization": "Bearer " + self.http_token.read_text().strip()}

    def args(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "sidecar.cli",
            "serve",
            "--identity",
            self.identity,
            "--socket",
            str(self.socket),
            "--admin-socket",
            str(self.admin_socket),
            "--opa-url",
            self.opa_url,
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            *(
                ("--state", self.shared, "--local-state", f"sqlite:{self.state}")
                if self.shared
                else ("--state", f"sqlite:{self.state}")
            ),
            "--audit-log",
            str(self.audit),
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]
        if "--signing-key" not in self.extra:
            args += ["--signing-key", str(self.key)]
        if self.http_credential and not {
            "--http-token-file",
            "--http-allow-anonymous-loopback",
        } & set(self.extra):
            args += ["--http-token-file", str(self.http_token)]
        return args + self.extra

    def start(self, wait: bool = True) -> SidecarProcess:
        if not self.key.exists() and "--signing-key" not in self.extra:
            from sidecar.tokens import generate_private_key, write_private_key

            write_private_key(self.key, generate_private_key("EdDSA"))
        if not self.http_token.exists():
            self.http_token.write_text(secrets.token_urlsafe(32) + "\n")
            self.http_token.chmod(0o600)
        env = clean_env() | self.env
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args(), cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        if wait:
            wait_for(self.ready_to_serve, 20, what="the sidecar to start")
        return self

    def ready_to_serve(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sidecar exited {self.proc.returncode}:\n{self.log()[-4000:]}")
        if not self.socket.exists():
            return False
        try:
            return requests.get(self.http + "/healthz", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.audit_records() if r["event"] == name]

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(self.http + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def client(self, **kwargs: Any) -> Any:
        from sidecar.client import AccessClient

        return AccessClient(self.socket, **kwargs)

    def admin(self) -> Any:
        from sidecar.client import AdminClient

        return AdminClient(self.admin_socket)

    def grant_rows(self) -> list[dict[str, Any]]:
        import sqlite3

        conn = sqlite3.connect(self.state)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM grants")]
        finally:
            conn.close()


def clean_env() -> dict[str, str]:
    """This process's environment without JIT_SIDECAR_* settings (a test states its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JIT_SIDECAR_")}


def run_captured(
    argv: Sequence[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a clean environment; text stdout and stderr."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def task_holders(task_id: str) -> list[int]:
    """Processes running `jit-sidecar task hold TASK_ID` (started by `task begin --hold`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"hold" in argv and task_id.encode() in argv:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def running(process: SidecarProcess) -> Iterator[SidecarProcess]:
    process.start()
    try:
        yield process
    finally:
        with contextlib.suppress(Exception):
            process.stop(timeout=15)
        if process.proc is not None:
            process.kill()


def redis_binary(name: str = "redis-server") -> str:
    """Debian's redis-server / redis-cli, installed by `make test` (scripts/bootstrap.sh)."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: run `make test`, which installs it")
    return found


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jit test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class RedisServer:
    """A real, throwaway `redis-server` on a free loopback port, without persistence
    (`--save '' --appendonly no`): a restart loses everything, like a crashed cache.
    Optionally TLS only (`tls` = (ca, cert, key)) and an ACL user instead of `default`."""

    def __init__(
        self,
        workdir: Path,
        *,
        cluster: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
        user: tuple[str, str] | None = None,
        acl: Sequence[str] = ("~*", "&*", "+@all"),
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.user = user
        self.acl = list(acl)
        self.cluster = cluster
        self.bus_port = free_port() if cluster else 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.user[0]}@" if self.user else ""
        return f"{scheme}://{user}127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        if self.tls:
            ca, cert, key = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            listen += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
            listen += ["--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        if self.user:
            name, password = self.user
            listen += ["--user", "default", "off"]
            listen += ["--user", name, "on", f">{password}", *self.acl]
        args = [
            redis_binary(),
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log),
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.bus_port),
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        return args

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            self.args(), cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(self.healthy, 10, what="redis-server to start")
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"redis-server exited: {tail}")
        import redis

        try:
            with redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=0.5, **self._auth()
            ) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _auth(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[0]))
        if self.user:
            options.update(username=self.user[0], password=self.user[1])
        return options

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def client(self) -> Any:
        """A redis-py client (use it in a `with` block: it holds sockets)."""
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=5,
            **self._auth(),
        )

    def used_memory(self) -> int:
        with self.client() as client:
            return int(client.info("memory")["used_memory"])


class RedisClusterServers:
    """Three real redis-server masters joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir / f"node{i}", cluster=True) for i in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.ready, 20, what="the Redis Cluster to agree on its slots")
        return self

    def ready(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
        return True

    def client(self) -> Any:
        """A redis-py cluster client (use it in a `with` block)."""
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class ConsoleProcess:
    """`jit-sidecar console` as a separate process, serving the given sidecars' admin sockets."""

    def __init__(self, workdir: Path, sidecars: dict[str, Path], *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.sidecars = sidecars
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "console.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "sidecar.cli",
            "console",
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        for name, path in self.sidecars.items():
            args += ["--sidecar", f"{name}={path}"]
        return [*args, "--log-format", "json", "--log-level", "debug", *self.extra]

    def start(self) -> ConsoleProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_SIDECAR_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args(), cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        wait_for(self.ready, 20, what="the console to start")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"console exited {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

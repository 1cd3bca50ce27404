"""`make demo`: OPA, the sidecar, the example resource server and the example agent, end to end.

Starts OPA on rego/ (127.0.0.1:8181 when free, else a free port), the sidecar in dev mode
with its state in a temporary directory, and examples/resource_server.py; runs
examples/agent.py (whose trace is the output); then shows the audit trail, verifies its hash
chain and stops everything. Exits non-zero if any step misbehaves.

    python examples/demo.py [--free-ports] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PREFERRED_OPA_PORT = 8181


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def opa_binary() -> str:
    found = shutil.which("opa") or (
        str(ROOT / ".tools/bin/opa") if (ROOT / ".tools/bin/opa").exists() else None
    )
    if found is None:
        sys.exit("demo: the opa binary is missing: run `make deps` first")
    return found


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


class Processes:
    """Child processes, stopped (SIGTERM, then SIGKILL) in reverse order of start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
            )
        self.started.append((name, proc, log_path))

    def wait_until(self, name: str, ready: Callable[[], bool], timeout: float = 20) -> None:
        proc, log_path = next((p, log) for n, p, log in self.started if n == name)
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready:\n{tail(log_path)}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for _name, proc, _log in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc, _log in reversed(self.started):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {n} ({log})\n{tail(log)}" for n, _p, log in self.started)


def tail(path: Path, lines: int = 30) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jit-demo-"))
    path.chmod(0o750)
    try:
        yield path
    finally:
        if keep:
            print(f"\n(state kept in {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


def show_audit(audit: Path) -> bool:
    """Print the audit trail of the run and verify its hash chain."""
    print("\n== audit trail of this run (hash-chained; tokens are never in it)")
    for line in audit.read_text().splitlines():
        r = json.loads(line)
        what = r.get("tier") or r.get("state") or (f'goal="{r["goal"]}"' if r.get("goal") else "")
        intent = r.get("intent") or {}
        detail = " ".join(
            part
            for part in (
                what,
                f"{intent.get('action')} {intent.get('resource')}" if intent else "",
                f"grant={r['grant_id']}" if r.get("grant_id") else "",
                f"reason={r['reason']}" if r.get("reason") else "",
                f"signing key {r['kid']}" if r["event"] == "key_rotated" else "",
                ("reasons=" + "; ".join(r["reasons"])) if r.get("reasons") else "",
            )
            if part
        )
        print(f"   {r['seq']:>3} {r['event']:<15} {detail}")
    check = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"   hash chain: {(check.stdout or check.stderr).strip()}")
    return check.returncode == 0


def start_opa_and_sidecar(
    procs: Processes, work: Path, opa_port: int, sidecar_port: int, env: dict[str, str]
) -> Path:
    """OPA on rego/ and a dev-mode sidecar with its state in `work`; returns its socket. The
    credential /introspect requires (RFC 7662 §2.1) is written to `work/http-token`."""
    opa_url = f"http://127.0.0.1:{opa_port}"
    sidecar_http = f"http://127.0.0.1:{sidecar_port}"
    sock = work / "run" / "sidecar.sock"
    http_token = work / "http-token"
    http_token.write_text(secrets.token_urlsafe(32) + "\n")
    http_token.chmod(0o600)
    procs.start(
        "opa",
        [
            opa_binary(),
            "run",
            "--server",
            "--skip-version-check",
            "--log-level",
            "error",
            "--addr",
            f"127.0.0.1:{opa_port}",
            str(ROOT / "rego"),
        ],
    )
    procs.wait_until("opa", lambda: http_ok(opa_url + "/health"))
    procs.start(
        "sidecar",
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "serve",
            "--identity",
            "dev",
            "--socket",
            str(sock),
            "--admin-socket",
            str(work / "run" / "admin.sock"),
            "--opa-url",
            opa_url,
            "--http-addr",
            f"127.0.0.1:{sidecar_port}",
            "--state",
            f"sqlite:{work / 'state.db'}",
            "--audit-log",
            str(work / "audit.jsonl"),
            "--signing-key",
            str(work / "signing-key.pem"),
            "--http-token-file",
            str(http_token),
            "--log-format",
            "text",
        ],
        env,
    )
    procs.wait_until("sidecar", lambda: sock.exists() and http_ok(sidecar_http + "/readyz"))
    return sock


def abort(name: str, procs: Processes, err: Exception) -> int:
    """A step failed: stop everything and show why."""
    print(f"{name}: {err}", file=sys.stderr)
    procs.stop_all()
    print(procs.logs(), file=sys.stderr)
    return 1


def finish(name: str, procs: Processes, ok: bool) -> int:
    """Stop everything; say OK, or show the logs."""
    procs.stop_all()
    if not ok:
        print(f"\n{name} FAILED; logs:\n" + procs.logs(), file=sys.stderr)
        return 1
    print(f"\n{name} OK: everything stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--free-ports", action="store_true", help=f"never use {PREFERRED_OPA_PORT} for OPA"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state")
    args = parser.parse_args(argv)

    opa_port = (
        PREFERRED_OPA_PORT
        if not args.free_ports and port_is_free(PREFERRED_OPA_PORT)
        else free_port()
    )
    sidecar_port, api_port = free_port(), free_port()
    opa_url = f"http://127.0.0.1:{opa_port}"
    sidecar_http = f"http://127.0.0.1:{sidecar_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_SIDECAR_")}

    with workspace(args.keep) as work:
        procs = Processes(work)
        try:
            sock = start_opa_and_sidecar(procs, work, opa_port, sidecar_port, env)
            http_token = work / "http-token"
            procs.start(
                "resource-server",
                [
                    sys.executable,
                    str(EXAMPLES / "resource_server.py"),
                    "--port",
                    str(api_port),
                    "--sidecar",
                    sidecar_http,
                    "--introspection-credential-file",
                    str(http_token),
                ],
                env,
            )
            procs.wait_until("resource-server", lambda: http_ok(api_url + "/healthz"))
            print("jit-sidecar demo")
            print(f"   OPA              {opa_url} (policy: rego/jit)")
            print(f"   sidecar          unix:{sock}  (dev identity), HTTP {sidecar_http}")
            print(f"   resource server  {api_url}  (sidecar.verify + introspection)")
            sys.stdout.flush()

            agent = subprocess.run(
                [
                    sys.executable,
                    str(EXAMPLES / "agent.py"),
                    "--socket",
                    str(sock),
                    "--api",
                    api_url,
                ],
                env=env,
                timeout=120,
                check=False,
            )
            audit_ok = show_audit(work / "audit.jsonl")
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            return abort("demo", procs, err)
        return finish("demo", procs, agent.returncode == 0 and audit_ok)


if __name__ == "__main__":
    sys.exit(main())

"""The `jit-sidecar` command on bad arguments: the real console script in a subprocess, a
real sidecar on a real Unix socket and the real OPA. Every refusal is one line
`jit-sidecar: <what is wrong>` with exit status 2 (usage), never a Python traceback, and
nothing reaches the sidecar."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import OpaServer, SidecarProcess

JIT_SIDECAR = str(Path(sys.executable).parent / "jit-sidecar")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT_SIDECAR, *args], capture_output=True, text=True, timeout=30, input=stdin
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """One sidecar for the module, with one open task."""
    process = SidecarProcess(tmp_path_factory.mktemp("cli") / "s", opa.url).start()
    yield process
    process.stop(timeout=15)


@pytest.fixture(scope="module")
def task_id(served: SidecarProcess) -> str:
    with served.client() as c:
        return str(c.begin_task("cli errors").task_id)


USAGE_ERRORS = {
    "context-not-json": (
        ["grant", "{task}", "docs.read", "docs://a", "--context", "{bad"],
        "jit-sidecar: --context is not valid JSON: ",
    ),
    "context-not-object": (
        ["grant", "{task}", "docs.read", "docs://a", "--context", "[1]"],
        "jit-sidecar: --context must be a JSON object ({...}), got list",
    ),
    "negative-ttl": (
        ["grant", "{task}", "docs.read", "docs://a", "--ttl", "-5"],
        "jit-sidecar: --ttl must be a whole number of seconds from 1, got -5",
    ),
    "ttl-beyond-uint32": (
        ["grant", "{task}", "docs.read", "docs://a", "--ttl", str(2**32)],
        f"jit-sidecar: --ttl must be a whole number of seconds from 1, got {2**32}",
    ),
    "label-without-value": (
        ["task", "begin", "--goal", "g", "--label", "purpose"],
        "jit-sidecar: --label 'purpose' is not KEY=VALUE",
    ),
    "label-twice": (
        ["task", "begin", "--goal", "g", "--label", "purpose=a", "--label", "purpose=b"],
        "jit-sidecar: --label 'purpose' is given twice",
    ),
    "introspect-empty": (
        ["introspect", ""],
        "jit-sidecar: introspect needs a token (use - to read it from stdin)",
    ),
    "introspect-empty-stdin": (
        ["introspect", "-"],
        "jit-sidecar: introspect needs a token (it was empty)",
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_bad_arguments_are_usage_errors(served: SidecarProcess, task_id: str, case: str) -> None:
    """Exit 2 with `jit-sidecar: <reason>`, no traceback, and no audit record (nothing sent)."""
    argv, message = USAGE_ERRORS[case]
    before = len(served.audit_records())
    args = [a.replace("{task}", task_id) for a in argv]
    result = run(*args, "--socket", str(served.socket))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert len(served.audit_records()) == before


def test_a_good_label_still_reaches_the_policy(served: SidecarProcess) -> None:
    """KEY=VALUE labels (a value may hold `=`) are sent as given."""
    result = run(
        "task", "begin", "--socket", str(served.socket), "--goal", "g", "--label", "purpose=a=b"
    )
    (begun,) = [r for r in served.events("task_begun") if r["goal"] == "g"]
    assert result.returncode == 0, result.stderr
    assert begun["labels"] == {"purpose": "a=b"}


def test_audit_verify_of_a_missing_file_fails(tmp_path: Path) -> None:
    """`audit verify` of a file that does not exist: exit 1 naming it (it printed OK)."""
    missing = tmp_path / "nowhere" / "audit.jsonl"
    result = run("audit", "verify", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"jit-sidecar: no audit log at {missing}\n"
    assert "OK" not in result.stdout


def test_a_missing_identity_token_file_is_an_error(served: SidecarProcess, tmp_path: Path) -> None:
    """A file the command was told to read is missing: exit 1, one line, no traceback."""
    result = run(
        "grants",
        "t-1",
        "--socket",
        str(served.socket),
        "--identity-token-file",
        str(tmp_path / "none.jwt"),
    )
    assert result.returncode == 1
    assert result.stderr.startswith("jit-sidecar: [Errno 2] No such file or directory")
    assert "Traceback" not in result.stderr


def test_help_documents_the_exit_codes() -> None:
    """`--help` lists the exit statuses scripts rely on: deny 3, error 1, usage 2."""
    result = run("--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    for line in ("0  success", "1  error", "2  usage error", "3  denied"):
        assert line in result.stdout

"""Acceptance: README.md's "A five-minute walkthrough", typed at human speed.

The exact commands of the README's walkthrough block run through bash against
`scripts/dev-run.sh` (what `make run` runs: the real OPA and a real sidecar in dev mode) in a
temporary copy of the repository's layout, with PAUSE seconds between the numbered steps:
longer than the 15 s after which a task without heartbeats counts as crashed. The output
must be the README's "What you should see" block once ids, times and the token are
normalised. Only the HTTP and OPA ports differ from the README (free ports, so parallel runs
do not collide). Takes about three minutes; part of `make test`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import ROOT, clean_env, free_port, run_captured, task_holders, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

PAUSE = 25.0
README = ROOT / "README.md"


def walkthrough() -> tuple[str, str]:
    """(the walkthrough's shell block, the expected output block) from README.md."""
    text = README.read_text()
    section = text.split("## A five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    shell = [body for lang, body in blocks if lang == "sh" and "jit-sidecar task begin" in body]
    output = [body for lang, body in blocks if lang == "text"]
    assert len(shell) == 1 and len(output) == 1, "the README walkthrough changed shape"
    return shell[0], output[0]


def steps(block: str) -> list[str]:
    """The block cut before each `# N.` comment (the preamble goes with step 1)."""
    parts = re.split(r"\n(?=# \d+\.)", block)
    preamble, numbered = parts[0], parts[1:]
    assert len(numbered) >= 5, "expected the numbered steps of the walkthrough"
    return [preamble + "\n" + numbered[0], *numbered[1:]]


def normalise(text: str) -> list[str]:
    """Output lines with grant and task ids, times and tokens replaced by placeholders."""
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"\bt-[A-Za-z0-9_-]{22}\b", "t-<id>", text)
    text = re.sub(r"grant [A-Za-z0-9_-]{22},", "grant <id>,", text)
    text = re.sub(r"(?m)^[A-Za-z0-9_-]{22}(?=  )", "<id>", text)
    text = re.sub(r"token: \S+", "token: <token>", text)
    # How much of the log the last checkpoint covers depends on when the 10 s checkpoint
    # timer last fired relative to the final records (docs/security.md).
    text = re.sub(
        r"records 1\.\.\d+ covered by a checkpoint signed at \S+ by kid \S+",
        "records 1..<n> covered by a checkpoint signed at <time> by kid <kid>",
        text,
    )
    text = re.sub(r"; \d+ record\(s\) after it", "; <m> record(s) after it", text)
    return [line.rstrip() for line in text.strip().splitlines()]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`scripts/dev-run.sh` in a copy of the repository layout: (its root, its HTTP port)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "dev-run.sh").write_bytes((ROOT / "scripts" / "dev-run.sh").read_bytes())
    (root / "scripts" / "dev-run.sh").chmod(0o755)
    for name in ("rego", ".venv", ".tools"):
        (root / name).symlink_to(ROOT / name)
    http_port, opa_port = free_port(), free_port()
    env = clean_env()
    env["OPA_ADDR"] = f"127.0.0.1:{opa_port}"
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        [
            str(root / "scripts" / "dev-run.sh"),
            "--http-addr",
            f"127.0.0.1:{http_port}",
            "--opa-url",
            f"http://127.0.0.1:{opa_port}",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "make-run.log").read_text()[-3000:])
        try:
            r = requests.get(f"http://127.0.0.1:{http_port}/readyz", timeout=0.5)
        except requests.RequestException:
            return False
        return r.status_code == 200 and (root / "var" / "sidecar.sock").exists()

    try:
        wait_for(ready, 60, interval=0.2, what="make run (OPA and the sidecar)")
        yield root, http_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_readme_walkthrough_at_human_speed(make_run: tuple[Path, int]) -> None:
    """The README walkthrough, with 25 s between steps, prints what the README says it
    prints; the task's holder process ends with the task."""
    root, http_port = make_run
    block, expected = walkthrough()
    script = f"\nsleep {PAUSE}\n".join(steps(block)).replace(
        "localhost:9464", f"localhost:{http_port}"
    )
    started = time.monotonic()
    run = run_captured(["bash", "-c", script], root, 360)
    elapsed = time.monotonic() - started
    assert elapsed >= PAUSE * (len(steps(block)) - 1)
    assert run.stderr == "", run.stderr
    assert normalise(run.stdout) == normalise(expected), run.stdout
    task_id = re.search(r"task (t-\S+) completed", run.stdout)
    assert task_id is not None
    wait_for(lambda: not task_holders(task_id.group(1)), 15, what="the task's holder to exit")

"""The examples of docs/policy-authoring.md are policy, run by the real `opa` binary on a copy
of the shipped rego/: what the page says about deny rules must be what OPA does (issue 14)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import opa_binary

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "policy-authoring.md"
NAIVE = "# naive: do not ship (rego/jit/reports.rego)"
RULE = "# rego/jit/reports.rego"
TESTS = "# rego/jit/reports_test.rego"


def rego_block(first_line: str) -> str:
    """The ```rego block of the page whose first line is `first_line`."""
    blocks = re.findall(r"```rego\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if b.startswith(first_line + "\n")]
    return block


def opa_test(policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [opa_binary(), "test", str(policy), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def failed_tests(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {r["name"] for r in json.loads(result.stdout) if r.get("fail") or r.get("error")}


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A copy of the shipped rego/ with the page's tests for the reports rule added."""
    copy = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", copy)
    (copy / "jit" / "reports_test.rego").write_text(rego_block(TESTS))
    return copy


def test_the_naive_rule_allows_a_task_without_purpose(policy_copy: Path) -> None:
    """With `not input.task.labels.purpose in ...`, the missing-label test fails, and only it."""
    (policy_copy / "jit" / "reports.rego").write_text(rego_block(NAIVE))
    result = opa_test(policy_copy)
    assert result.returncode != 0
    assert failed_tests(result) == {"test_report_without_purpose_is_denied"}


def test_the_documented_rule_denies_the_missing_case(policy_copy: Path) -> None:
    """With the `object.get` rule of the page, every shipped and example test passes."""
    (policy_copy / "jit" / "reports.rego").write_text(rego_block(RULE))
    result = opa_test(policy_copy)
    assert failed_tests(result) == set()
    assert result.returncode == 0, result.stderr

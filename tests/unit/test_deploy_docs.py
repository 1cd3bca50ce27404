"""docs/metrics.md stays true to sidecar/metrics.py."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics
from tests.deploy import ROOT
from tests.promql import exported_labels

DOCS = ROOT / "docs"


def _documented_names() -> dict[str, str]:
    """Name as queried (counters with _total, info with _info) -> exposition family name."""
    names = {}
    for family in Metrics(CollectorRegistry(auto_describe=True)).registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names[family.name + suffix] = family.name
    return names


def test_metrics_doc_has_a_section_per_metric() -> None:
    """Every metric the sidecar exports has its own section in docs/metrics.md, and the doc
    names no metric that does not exist."""
    text = (DOCS / "metrics.md").read_text()
    headings = set(re.findall(r"^### (jit_\w+)$", text, re.MULTILINE))
    assert headings == set(_documented_names())


def test_metrics_doc_table_lists_each_metrics_labels() -> None:
    """The summary table's label column is exactly the metric's label set."""
    text = (DOCS / "metrics.md").read_text()
    labels = exported_labels()
    rows = {
        m.group(1): set(re.findall(r"`(\w+)`", m.group(2)))
        for m in re.finditer(r"^\| \[`(jit_\w+)`\]\(#\w+\) \| [^|]+ \|([^|]*)\|$", text, re.M)
    }
    expected = {
        name: labels.get(name, labels.get(name + "_count", set())) - {"le"}
        for name in _documented_names()
    }
    assert rows == expected


def test_no_opa_is_started_with_the_deprecated_telemetry_flag() -> None:
    """Scripts, deploy/, docs, examples, bench and the test harness start OPA with
    --skip-version-check: OPA 1.x warns on every start that --disable-telemetry is deprecated."""
    places = [ROOT / "README.md", ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "tests/harness.py"]
    for directory in ("scripts", "deploy", "docs", "examples", "bench"):
        places += [p for p in (ROOT / directory).rglob("*") if p.is_file()]
    flag = "--disable-" + "telemetry"  # spelled apart so this file does not match itself
    stale = sorted(
        str(p.relative_to(ROOT)) for p in places if flag in p.read_text(errors="replace")
    )
    assert stale == []

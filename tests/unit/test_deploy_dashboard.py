"""deploy/grafana/jit-sidecar.json: valid Grafana JSON that only queries metrics we export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.promql import exported_labels, metric_names, selector_labels

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "jit-sidecar.json"
# Labels Prometheus attaches to every scraped series (static config, PodMonitor).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return out


def _exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_current_grafana_dashboard() -> None:
    """The JSON has a recent schema, a stable uid and a templated Prometheus data source."""
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "jit-sidecar"
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_query_panel_uses_the_templated_datasource() -> None:
    """Panels and their targets point at ${DS_PROMETHEUS}, never at a fixed data source uid."""
    wrong = [
        (panel["title"], holder.get("datasource"))
        for panel in _panels(_dashboard())
        if panel["type"] != "row"
        for holder in [panel, *panel.get("targets", [])]
        if holder.get("datasource") != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ]
    assert wrong == []


def test_panel_ids_and_ref_ids_are_unique() -> None:
    """Grafana keys panels by id and queries by refId; duplicates silently drop one."""
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    dup_refs = [
        p["title"]
        for p in panels
        if len({t["refId"] for t in p.get("targets", [])}) != len(p.get("targets", []))
    ]
    assert len(ids) == len(set(ids))
    assert dup_refs == []


@pytest.mark.parametrize(
    ("title_words", "metric"),
    [
        (("grant requests", "decision", "tier"), "jit_grant_requests_total"),
        (("denials", "reason"), "jit_rejected_requests_total"),
        (("active grants", "tier"), "jit_active_grants"),
        (("active tasks",), "jit_active_tasks"),
        (("revocations", "reason"), "jit_revocations_total"),
        (("revocation lag",), "jit_revocation_lag_seconds_bucket"),
        (("policy evaluation latency", "p99"), "jit_policy_eval_seconds_bucket"),
        (("policy errors", "reason", "cause"), "jit_policy_errors_total"),
        (("rpc latency", "method"), "jit_rpc_duration_seconds_bucket"),
        (("audit write errors",), "jit_audit_write_errors_total"),
        (("journal", "latency"), "jit_journal_batch_seconds_bucket"),
    ],
)
def test_required_panel_is_present(title_words: tuple[str, ...], metric: str) -> None:
    """Each view SREs asked for exists as a panel querying the metric it is named after."""
    matching = [
        expr
        for title, expr in _exprs()
        if all(word in title.lower() for word in title_words) and metric in metric_names(expr)
    ]
    assert matching, f"no panel titled with {title_words} queries {metric}"


def test_denials_panel_counts_policy_denials_too() -> None:
    """Denials are both refusals before policy and policy answers with decision="denied"."""
    exprs = [expr for title, expr in _exprs() if title.lower().startswith("denials")]
    assert any('decision="denied"' in e and "jit_grant_requests_total" in e for e in exprs)


def test_every_queried_metric_is_exported_by_the_sidecar() -> None:
    """Every metric name in every PromQL expression is produced by sidecar.metrics.Metrics."""
    exported = set(exported_labels())
    unknown = {(title, name) for title, expr in _exprs() for name in metric_names(expr) - exported}
    assert len(_exprs()) >= 20
    assert unknown == set()


def test_every_matched_label_exists_on_its_metric() -> None:
    """Label matchers only use the metric's own labels or Prometheus target labels."""
    labels = exported_labels()
    wrong = {
        (title, metric, label)
        for title, expr in _exprs()
        for metric, used in selector_labels(expr)
        for label in used - labels.get(metric, set()) - TARGET_LABELS
    }
    assert wrong == set()


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    """The lexer the checks above rely on finds metrics and skips functions/labels/keywords."""
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{method="X"}[5m]))) > 1e3 '
        'and on (job) b offset 1h or vector(0) unless c{d=~"$var"} * bool 2'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert selector_labels(expr) == [("a_bucket", {"method"}), ("c", {"d"})]

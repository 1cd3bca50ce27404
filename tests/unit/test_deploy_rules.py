"""deploy/prometheus/jit-sidecar.rules.yml: alerts query real metrics, carry severity and a
runbook that exists, and each has promtool unit tests (run by make deploy-check)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy import DEPLOY, ROOT, github_anchors, load_yaml
from tests.promql import exported_labels, metric_names, selector_labels

RULES = DEPLOY / "prometheus" / "jit-sidecar.rules.yml"
TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
RUNBOOK_PREFIX = "docs/operations.md#"
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint"}
REQUIRED = {
    "JitSidecarOpaUnreachable",
    "JitSidecarPolicyErrorRate",
    "JitSidecarRevocationsMissing",
    "JitSidecarAuditWriteFailures",
    "JitSidecarGrantLatencyHigh",
    "JitSidecarDenialSpike",
    "JitSidecarBrokerRevocationsStuck",
}


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_the_alerts_sres_asked_for_exist() -> None:
    """OPA unreachable, policy error rate, missing revocations, audit failures, grant latency
    and denial spike are all defined, once each."""
    names = [a["alert"] for a in _alerts()]
    assert set(names) >= REQUIRED
    assert len(names) == len(set(names))


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    """Routing needs severity; the pager needs summary, description and a runbook link whose
    anchor exists in docs/operations.md."""
    annotations = alert["annotations"]
    anchors = github_anchors((ROOT / "docs" / "operations.md").read_text())
    runbook = annotations["runbook_url"]
    assert alert["labels"]["severity"] in {"critical", "warning"}
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert runbook == RUNBOOK_PREFIX + alert["alert"].lower()
    assert runbook.removeprefix(RUNBOOK_PREFIX) in anchors


def test_alerts_query_only_exported_metrics_and_labels() -> None:
    """Every metric and label an alert selects is produced by sidecar.metrics.Metrics."""
    labels = exported_labels()
    unknown_metrics = {
        (a["alert"], name) for a in _alerts() for name in metric_names(a["expr"]) - set(labels)
    }
    unknown_labels = {
        (a["alert"], metric, label)
        for a in _alerts()
        for metric, used in selector_labels(a["expr"])
        for label in used - labels.get(metric, set()) - TARGET_LABELS
    }
    assert unknown_metrics == set()
    assert unknown_labels == set()


def _instance(series: str) -> str:
    match = re.search(r'instance="([^"]*)"', series)
    assert match, f"test series without an instance label: {series}"
    return match.group(1)


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    """deploy/prometheus/tests holds, for every alert, a case expecting it to fire and one
    expecting silence (at another time, or for a healthy instance next to the firing one)."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TESTS:
        for case in load_yaml(path)["tests"]:
            present = {_instance(s["series"]) for s in case["input_series"]}
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                fired = {e["exp_labels"]["instance"] for e in expected}
                if fired:
                    firing.add(check["alertname"])
                if present - fired:
                    silent.add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert TESTS
    assert names <= firing
    assert names <= silent

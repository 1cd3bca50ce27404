"""Metric names referenced by a PromQL expression, and the names `sidecar.metrics` exports.

A small lexer is enough here: the expressions in deploy/ are ours, and `promtool check rules`
parses the alert rules for real. Anything the lexer cannot classify counts as a metric name, so
a typo shows up as an unknown metric instead of being skipped.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics

# Functions are recognised by the "(" that follows them; these words never are.
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        # Aggregations may be followed by `by (...)` instead of "(".
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_DURATION = re.compile(r"\b\d+(?:ms|[smhdwy])\b")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(r"\1", text)
    text = _DURATION.sub("", text)
    names: set[str] = set()
    for match in _NAME.finditer(text):
        word = match.group()
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or suffix of a number, e.g. 1e3
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched on it) for each `metric{...}` selector in `expr`."""
    text = _STRING.sub('""', expr)
    return [
        (m.group(1), set(_MATCHER_LABEL.findall(m.group(2))))
        for m in _SELECTOR.finditer(text)
        if not text[m.end(1) :].lstrip().startswith("(")
    ]


def exported_labels() -> dict[str, set[str]]:
    """Label names of every sample name a scrape of `Metrics` can contain.

    Sample names carry the exposition suffixes (_total, _created, _bucket, _sum, _count, _info),
    so the keys are exactly what PromQL can select.
    """
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    for collector in vars(metrics).values():
        # prometheus_client has no public accessor for declared label names.
        names = getattr(collector, "_labelnames", ())
        if names:
            collector.labels(**dict.fromkeys(names, "x"))  # a child, so its samples exist
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def exported_names() -> set[str]:
    """Sample names a scrape of `Metrics` can contain."""
    return set(exported_labels())

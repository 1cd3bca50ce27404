"""Input checks for everything an agent sends. Pure functions; errors carry reason codes.

Actions and resources are ASCII on purpose: they are matched exactly by policy and read by
people in the audit log, so confusable Unicode, controls, bidi overrides and whitespace have
no place in them (docs/api.md, "Input limits").
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgument, Reason
from .resources import check_resource_label, parse_resource

MAX_ACTION_BYTES = 256
MAX_RESOURCE_BYTES = 2048
MAX_JUSTIFICATION_BYTES = 4096
MAX_CONTEXT_BYTES = 8192
MAX_GOAL_BYTES = 1024
MAX_LABELS = 32
MAX_LABEL_VALUE_BYTES = 256
MAX_REASON_BYTES = 512

ACTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
GRANT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
APPROVAL_ID_RE = GRANT_ID_RE
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_CONTEXT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""Built once: `json.dumps` with arguments builds an encoder per call (every RequestGrant)."""
_BIDI = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def _text_problem(value: str, *, allow_newlines: bool) -> str | None:
    if value.isascii() and value.isprintable():
        return None  # the usual case, at C speed: no controls, and bidi/surrogates aren't ASCII
    for ch in value:
        if ch in _BIDI:
            return "contains a bidirectional override character"
        cat = unicodedata.category(ch)
        if cat == "Cc" and not (allow_newlines and ch in "\n\t"):
            return "contains a control character"
        if cat == "Cs":
            return "contains a lone surrogate"
    return None


def _check_text(
    value: str, field: str, limit: int, reason: Reason, *, allow_newlines: bool = False
) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidArgument(f"{field} is {size} bytes; the limit is {limit}", reason)
    problem = _text_problem(value, allow_newlines=allow_newlines)
    if problem:
        raise InvalidArgument(f"{field} {problem}", reason)


def check_action(action: str) -> None:
    if not action:
        raise InvalidArgument("intent.action is empty", Reason.INVALID_INTENT)
    _check_text(action, "intent.action", MAX_ACTION_BYTES, Reason.INVALID_INTENT)
    if not ACTION_RE.fullmatch(action):
        raise InvalidArgument(
            "intent.action must be ASCII letters, digits and . _ : / - (e.g. payments.refund)",
            Reason.INVALID_INTENT,
        )


def check_resource(resource: str) -> None:
    """Limits first (invalid_intent), then the canonical form (invalid_resource)."""
    if not resource:
        raise InvalidArgument("intent.resource is empty", Reason.INVALID_INTENT)
    _check_text(resource, "intent.resource", MAX_RESOURCE_BYTES, Reason.INVALID_INTENT)
    parse_resource(resource)


def check_intent(
    action: str, resource: str, justification: str, context: Mapping[str, Any]
) -> None:
    check_action(action)
    check_resource(resource)
    _check_text(
        justification,
        "intent.justification",
        MAX_JUSTIFICATION_BYTES,
        Reason.INVALID_INTENT,
        allow_newlines=True,
    )
    try:
        size = len(_CONTEXT_JSON.encode(context)) if context else 2
    except ValueError as err:
        raise InvalidArgument("intent.context is not valid JSON", Reason.INVALID_INTENT) from err
    if size > MAX_CONTEXT_BYTES:
        raise InvalidArgument(
            f"intent.context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}",
            Reason.INVALID_INTENT,
        )


def check_ttl(ttl: int, max_requested: int) -> None:
    """0 (or omitted) asks for the longest lifetime the other bounds allow."""
    if ttl < 0:
        raise InvalidArgument("ttl_seconds must not be negative", Reason.INVALID_TTL)
    if ttl > max_requested:
        raise InvalidArgument(
            f"ttl_seconds {ttl} is absurd (limit {max_requested}); values up to that are "
            "clamped to the configured maximum",
            Reason.INVALID_TTL,
        )


def check_task_id(task_id: str) -> None:
    if not TASK_ID_RE.fullmatch(task_id):
        raise InvalidArgument(
            "task_id must be 1-128 of A-Z a-z 0-9 . _ : - (starting with a letter or digit)",
            Reason.INVALID_TASK,
        )


def check_grant_id(grant_id: str) -> None:
    if not GRANT_ID_RE.fullmatch(grant_id):
        raise InvalidArgument("grant_id is malformed", Reason.INVALID_ARGUMENT)


def check_task_fields(goal: str, labels: Mapping[str, str]) -> None:
    _check_text(goal, "goal", MAX_GOAL_BYTES, Reason.INVALID_TASK, allow_newlines=True)
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels", Reason.INVALID_TASK)
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"label key {key[:64]!r} must be 1-63 of A-Z a-z 0-9 . _ / -", Reason.INVALID_TASK
            )
        _check_text(value, f"label {key}", MAX_LABEL_VALUE_BYTES, Reason.INVALID_TASK)
    if "resources" in labels:
        # The policy reads it as resource prefixes (task scope): one spelling, as resources.
        check_resource_label(labels["resources"])


def check_reason_text(text: str, field: str = "reason") -> None:
    _check_text(text, field, MAX_REASON_BYTES, Reason.INVALID_ARGUMENT, allow_newlines=True)


def preview(value: str, limit: int = 256) -> str:
    """A bounded, printable rendering of rejected input for the audit log and logs."""
    clipped = value[:limit]
    if clipped.isascii() and clipped.isprintable():
        # The usual case, at C speed: printable ASCII has no character of category C.
        return clipped + ("…" if len(value) > limit else "")
    shown = "".join(
        ch if unicodedata.category(ch)[0] != "C" and ch not in _BIDI else f"\\u{ord(ch):04x}"
        for ch in clipped
    )
    return shown + ("…" if len(value) > limit else "")

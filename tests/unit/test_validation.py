"""Input checks: limits are exact and messages name the field."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidArgument, Reason
from sidecar.validation import check_intent, check_task_fields, check_ttl, preview


def test_limits_are_inclusive() -> None:
    """256-byte actions, 2048-byte resources and 4096-byte justifications are accepted."""
    check_intent("a" * 256, "r:" + "x" * 2046, "j" * 4096, {})


@pytest.mark.parametrize(
    ("action", "resource", "justification", "fragment"),
    [
        ("a" * 257, "r:x", "", "intent.action is 257 bytes"),
        ("a", "r:" + "x" * 2047, "", "intent.resource is 2049 bytes"),
        ("a", "r:x", "é" * 2049, "intent.justification is 4098 bytes"),
        ("a", "r:x", "tab\tand\nnewline are fine but \x07 is not", "control character"),
    ],
)
def test_violations_name_the_field(
    action: str, resource: str, justification: str, fragment: str
) -> None:
    """Each violation says which field and why, with reason invalid_intent."""
    with pytest.raises(InvalidArgument) as err:
        check_intent(action, resource, justification, {})
    assert fragment in err.value.message
    assert err.value.reason is Reason.INVALID_INTENT


def test_ttl_bounds() -> None:
    """Negative and absurd TTLs are invalid_ttl; 0 (no preference: the maximum) and anything
    in between pass (and are clamped later)."""
    check_ttl(0, 86400)
    check_ttl(1, 86400)
    check_ttl(86400, 86400)
    for bad in (-1, 86401):
        with pytest.raises(InvalidArgument) as err:
            check_ttl(bad, 86400)
        assert err.value.reason is Reason.INVALID_TTL


def test_labels_are_bounded() -> None:
    """Label keys are a safe charset and at most 32 labels are accepted."""
    check_task_fields("goal", {f"k{i}": "v" for i in range(32)})
    with pytest.raises(InvalidArgument):
        check_task_fields("goal", {f"k{i}": "v" for i in range(33)})
    with pytest.raises(InvalidArgument):
        check_task_fields("goal", {"bad key": "v"})


def test_preview_escapes_controls_and_bounds_length() -> None:
    """Rejected input is logged escaped and clipped."""
    assert preview("a\x00b\u202ec") == "a\\u0000b\\u202ec"
    assert preview("x" * 300, 10) == "x" * 10 + "…"

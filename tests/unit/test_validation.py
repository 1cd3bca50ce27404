"""Input checks: limits are exact and messages name the field."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidArgument, Reason
from sidecar.resources import parse_prefix, parse_resource
from sidecar.validation import check_intent, check_task_fields, check_ttl, preview


def test_limits_are_inclusive() -> None:
    """256-byte actions, 2048-byte resources and 4096-byte justifications are accepted."""
    check_intent("a" * 256, "r://" + "x" * 2044, "j" * 4096, {})


@pytest.mark.parametrize(
    ("action", "resource", "justification", "fragment"),
    [
        ("a" * 257, "r://x", "", "intent.action is 257 bytes"),
        ("a", "r://" + "x" * 2045, "", "intent.resource is 2049 bytes"),
        ("a", "r://x", "é" * 2049, "intent.justification is 4098 bytes"),
        ("a", "r://x", "tab\tand\nnewline are fine but \x07 is not", "control character"),
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


def test_preview_escapes_every_ascii_control() -> None:
    """Each ASCII control (0x00-0x1f, 0x7f) is escaped, alone or beside printable text, and
    printable ASCII passes unchanged (the fast path and the slow one agree)."""
    controls = [chr(c) for c in (*range(0x20), 0x7F)]
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    assert preview(printable, 200) == printable
    for ch in controls:
        assert preview(f"ok{ch}ok") == f"ok\\u{ord(ch):04x}ok"
        assert preview(f"ok{ch}" + "x" * 20, 3) == f"ok\\u{ord(ch):04x}…"


# One spelling per resource (docs/api.md, "Resource names"): each refused spelling with the
# part of the reason that names the rule it breaks.
REFUSED_RESOURCES = [
    ("infra://PROD/web", "upper-case authority"),
    ("INFRA://prod/web", "upper-case scheme"),
    ("infra://%70rod/web", "authority"),
    ("infra://prod/%77eb", "has %77, a second spelling of 'w'"),
    ("infra://prod/w%65b", "has %65, a second spelling of 'e'"),
    ("infra://prod%2Fweb", "authority"),
    ("infra://prod/a%2Fb", "has %2F, an escaped / or"),
    ("infra://prod/a%5Cb", "has %5C, an escaped / or"),
    ("infra://prod/a%2fb", "lower-case percent-escape"),
    ("infra://prod/a%3fb", "lower-case percent-escape"),
    ("infra://prod/a%21b", "has %21, a second spelling of '!'"),
    ("infra://prod/a%zzb", "does not start an escape"),
    ("infra://prod/a%2", "does not start an escape"),
    ("infra://prod/a%C3%A9", "has %C3, an escaped control or non-ASCII octet"),
    ("infra://prod/a%00", "has %00, an escaped control or non-ASCII octet"),
    ("infra://staging/../prod/web", "dot segment"),
    ("infra://prod/./web", "dot segment"),
    ("infra://prod/web/.", "dot segment"),
    ("infra://./prod/web", "authority"),
    ("infra://../prod", "authority"),
    ("infra://prod//web", "empty path segment"),
    ("infra://prod/web/", "empty path segment"),
    ("infra://prod/", "empty path segment"),
    ("infra://", "empty authority"),
    ("infra:///prod/web", "empty authority"),
    ("infra://prod./web", "authority"),
    ("infra://prod..eu/web", "authority"),
    ("infra://prod:443/web", "port"),
    ("infra://prod:/web", "port"),
    ("infra://ops@prod/web", "userinfo"),
    ("infra://[::1]/web", "authority"),
    ("infra://prod/web?x=1", "query or fragment"),
    ("infra://prod/web#top", "query or fragment"),
    ("infra://prod\\web", "backslash"),
    ("infra://prod/a\\..\\b", "backslash"),
    ("infra://pr\u043ed/web", "not ASCII"),
    ("infra://prod/w\u0435b", "not ASCII"),
    ("infra://prod/caf\u00e9", "not ASCII"),
    ("infra://prod/a b", "not allowed in a path segment"),
    ('infra://prod/a"b', "not allowed in a path segment"),
    ("infra:prod/web", "scheme://authority/path"),
    ("urn:infra:prod", "scheme://authority/path"),
    ("1nfra://prod/web", "scheme://authority/path"),
    ("//prod/web", "scheme://authority/path"),
    ("not a uri", "scheme://authority/path"),
]


@pytest.mark.parametrize(("resource", "fragment"), REFUSED_RESOURCES)
def test_non_canonical_resources_are_refused(resource: str, fragment: str) -> None:
    """A second spelling of a resource is refused with invalid_resource, never rewritten."""
    with pytest.raises(InvalidArgument) as err:
        check_intent("infra.restart", resource, "", {})
    assert err.value.reason is Reason.INVALID_RESOURCE
    assert fragment in err.value.message
    assert err.value.message.startswith("intent.resource ")


@pytest.mark.parametrize(
    ("resource", "parts"),
    [
        ("infra://prod", ("infra", "prod", ())),
        ("infra://prod/web", ("infra", "prod", ("web",))),
        ("tickets://t-1/comments", ("tickets", "t-1", ("comments",))),
        ("docs://handbook/Intro/v2", ("docs", "handbook", ("Intro", "v2"))),
        ("s3+x.y://bucket.eu-1/a:b@c/~d_e.f", ("s3+x.y", "bucket.eu-1", ("a:b@c", "~d_e.f"))),
        ("docs://a/100%25/a%20b/%3F%23", ("docs", "a", ("100%25", "a%20b", "%3F%23"))),
        ("docs://a/..a/.b/...", ("docs", "a", ("..a", ".b", "..."))),
        ("docs://a/x*", ("docs", "a", ("x*",))),
    ],
)
def test_canonical_resources_parse_and_round_trip(
    resource: str, parts: tuple[str, str, tuple[str, ...]]
) -> None:
    """A canonical name parses into its parts, and the parts give back the same string."""
    check_intent("docs.read", resource, "", {})
    parsed = parse_resource(resource)
    assert (parsed.scheme, parsed.authority, parsed.segments) == parts
    assert str(parsed) == resource
    assert parsed.as_input() == {
        "scheme": parts[0],
        "authority": parts[1],
        "segments": list(parts[2]),
    }


def test_limits_come_before_the_grammar() -> None:
    """Empty, oversized and control-character resources stay invalid_intent (docs/api.md)."""
    for resource in ("", "docs://" + "a" * 2042, "docs://a\x00b"):
        with pytest.raises(InvalidArgument) as err:
            check_intent("docs.read", resource, "", {})
        assert err.value.reason is Reason.INVALID_INTENT


def test_covers_is_segment_aware() -> None:
    """infra://prod covers itself and what is under it, never infra://production."""
    prod = parse_resource("infra://prod")
    assert prod.covers(parse_resource("infra://prod"))
    assert prod.covers(parse_resource("infra://prod/web/1"))
    assert not prod.covers(parse_resource("infra://production/web"))
    assert not parse_resource("infra://prod/web").covers(prod)
    assert not prod.covers(parse_resource("docs://prod"))


@pytest.mark.parametrize(
    "label",
    [
        "infra://staging/",
        "infra://staging",
        "infra://",
        "docs://, tickets://t-1,infra://staging/web/",
        "",
        " , ",
        "docs://handbook/*",
    ],
)
def test_resources_label_accepts_canonical_prefixes(label: str) -> None:
    """A `resources` label is comma-separated `scheme://` or canonical names, one trailing /."""
    check_task_fields("goal", {"resources": label, "purpose": "anything Goes"})
    assert parse_prefix("infra://") == "infra"


@pytest.mark.parametrize(
    "label",
    [
        "infra://STAGING/",
        "infra://staging/../prod",
        "infra://staging//",
        "docs://, infra://%70rod",
        "infra:",
        "infra://staging/web?x",
        "INFRA://",
        "docs://*",
    ],
)
def test_resources_label_refuses_other_spellings(label: str) -> None:
    """A task scope in a second spelling is refused at BeginTask with invalid_resource."""
    with pytest.raises(InvalidArgument) as err:
        check_task_fields("goal", {"resources": label})
    assert err.value.reason is Reason.INVALID_RESOURCE
    assert err.value.message.startswith("label resources ")

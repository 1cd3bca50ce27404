"""Resource names: one spelling for one thing (docs/api.md, "Resource names").

A resource is `scheme://authority[/segment]...`. Policy decides on it and the token names it
(`authorization_details[].locations`), so two spellings of one resource would let an agent
ask for `infra://PROD/web` where the policy guards `infra://prod/web`. RFC 3986 §6.2.2 lists
the ways two URI strings can name the same thing (case, percent-encoding, dot segments); each
of them is refused here, never rewritten: the token must name exactly what the policy saw.
Pure functions; errors carry the reason code `invalid_resource`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument, Reason

# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ). Schemes are
# case-insensitive (§6.2.2.1), so only the lower-case spelling is accepted.
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*")
# RFC 3986 §3.2.2 reg-name, narrowed to one spelling: lower case (§6.2.2.1: hosts are
# case-insensitive), dot-separated non-empty labels (a trailing dot is the same DNS name), no
# percent-escapes. No userinfo `@` (§3.2.1), no `:port` (§3.2.3, §6.2.3: `prod:443`, `prod:`
# and `prod` can be one server), no IP literal `[...]`.
AUTHORITY_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# RFC 3986 §3.3 pchar = unreserved / pct-encoded / sub-delims / ":" / "@". Path segments are
# case-sensitive (§6.2.2.1), so both cases are letters of their own.
_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2})+")
# A percent-escape is the only spelling of a character that cannot appear raw in a segment.
# Escapes of unreserved characters (§6.2.2.2: `%70` is `p`) and of anything allowed raw
# (`%21` vs `!`, which many servers decode alike) are second spellings. `%2F` is refused
# because servers disagree on whether it splits a segment (the classic encoded-slash
# traversal), `%5C` because some treat `\` as `/`. Controls and non-ASCII octets are never
# part of a resource name, escaped or not.
_ESCAPABLE = frozenset(' "#%<>?[]^`{|}')
_ESCAPE_RE = re.compile(r"%(..)")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LOWER_ESCAPE_RE = re.compile(r"%(?:[a-f][0-9A-Fa-f]|[0-9A-F][a-f])")


@dataclass(frozen=True, slots=True)
class ResourceParts:
    """A resource name taken apart; `str()` gives back exactly the string it came from."""

    scheme: str
    """The domain: `infra` in `infra://prod/web`."""
    authority: str
    """`prod` in `infra://prod/web`."""
    segments: tuple[str, ...]
    """`("web",)` in `infra://prod/web`; empty for the bare authority."""

    def __str__(self) -> str:
        return "/".join((f"{self.scheme}://{self.authority}", *self.segments))

    def as_input(self) -> dict[str, Any]:
        """The policy input form: `input.intent.resource_parts`."""
        return {
            "scheme": self.scheme,
            "authority": self.authority,
            "segments": list(self.segments),
        }

    def covers(self, other: ResourceParts) -> bool:
        """Segment-aware prefix: `infra://prod` covers itself and `infra://prod/...`, never
        `infra://production`."""
        n = len(self.segments)
        return (
            self.scheme == other.scheme
            and self.authority == other.authority
            and other.segments[:n] == self.segments
        )


def _refuse(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {why}", Reason.INVALID_RESOURCE)


def segment_problem(segment: str) -> str | None:
    """Why a path segment is not in its one spelling (None when it is); also the egress
    proxy's rule for the request paths it forwards."""
    if segment == "":
        # `a//b` and a trailing `a/` are other spellings of `a/b` and `a` to many servers.
        return "has an empty path segment (// or a trailing /)"
    if segment in (".", ".."):
        return "has a dot segment (RFC 3986 §5.2.4 removes . and ..)"
    if _BAD_ESCAPE_RE.search(segment):
        return "has a % that does not start an escape %XX"
    if _LOWER_ESCAPE_RE.search(segment):
        return "has a lower-case percent-escape (RFC 3986 §6.2.2.1: use upper-case hex)"
    if not _SEGMENT_RE.fullmatch(segment):
        return "has a character that is not allowed in a path segment"
    for hex_pair in _ESCAPE_RE.findall(segment):
        problem = _escape_problem(chr(int(hex_pair, 16)))
        if problem:
            return f"has %{hex_pair}, {problem}"
    return None


def _escape_problem(char: str) -> str | None:
    if char in _ESCAPABLE:
        return None
    if char in "/\\":
        return "an escaped / or \\ (servers disagree on whether it splits a segment)"
    if not (char.isascii() and char.isprintable()):
        return "an escaped control or non-ASCII octet"
    return (
        f"a second spelling of {char!r}: write it unescaped (RFC 3986 §6.2.2.2; only "
        'characters that cannot appear raw may be escaped: space and "#%<>?[]^`{|})'
    )


def parse_resource(resource: str, field: str = "intent.resource") -> ResourceParts:
    """The parts of a canonical resource name; `invalid_resource` for anything else."""
    if not resource.isascii():
        raise _refuse(field, "is not ASCII (Unicode look-alikes have no place in it)")
    if "\\" in resource:
        raise _refuse(field, "contains a backslash (some servers read it as /)")
    if "?" in resource or "#" in resource:
        raise _refuse(field, "has a query or fragment (? or #); escape them as %3F or %23")
    scheme, sep, rest = resource.partition("://")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        if sep and _SCHEME_RE.fullmatch(scheme.lower()):
            raise _refuse(field, "has an upper-case scheme (RFC 3986 §6.2.2.1)")
        raise _refuse(field, "must be scheme://authority/path (e.g. payments://orders/42)")
    authority, *segments = rest.split("/")
    if not AUTHORITY_RE.fullmatch(authority):
        raise _refuse(field, _authority_problem(authority))
    for segment in segments:
        problem = segment_problem(segment)
        if problem:
            raise _refuse(field, problem)
    return ResourceParts(scheme, authority, tuple(segments))


def _authority_problem(authority: str) -> str:
    if authority == "":
        return "has an empty authority (scheme://authority is required)"
    if AUTHORITY_RE.fullmatch(authority.lower()):
        return "has an upper-case authority (RFC 3986 §6.2.2.1)"
    if "@" in authority:
        return "has userinfo (@) in its authority (RFC 3986 §3.2.1)"
    if ":" in authority:
        return "has a port (:) in its authority (RFC 3986 §3.2.3)"
    if "%" in authority:
        return "has a percent-escape in its authority"
    return "has an authority that is not dot-separated a-z 0-9 _ - labels"


def parse_prefix(prefix: str, field: str = "label resources") -> ResourceParts | str:
    """A resource prefix of a task's `resources` label: `scheme://` (the whole domain: the
    scheme is returned) or a canonical resource name, optionally with one trailing `/`,
    which covers the same resources as without it."""
    scheme, sep, rest = prefix.partition("://")
    if sep and rest == "" and _SCHEME_RE.fullmatch(scheme):
        return scheme
    trimmed = prefix[:-1] if prefix.endswith("/") and not prefix.endswith("://") else prefix
    return parse_resource(trimmed, field)


def check_resource_label(label: str, field: str = "label resources") -> None:
    """The `resources` label: comma-separated prefixes (spaces around them and empty items
    are ignored, so `""` admits nothing); each prefix as in `parse_prefix`."""
    for item in label.split(","):
        item = item.strip()
        if item:
            parse_prefix(item, field)

"""Which requests a grant covers: request paths and resources in one spelling, and the
policy's mapping from a grant's (action, resource) to HTTP methods and a path.

A resource `https-api://<upstream>/<s1>/…/<sn>` names the upstream and the path
`/<s1>/…/<sn>` under its base URL. The agent addresses `/<upstream>/<s1>/…` on the proxy.
Both are read segment by segment and refused, never rewritten, in any spelling that could
name the same thing differently (RFC 3986 §6.2.2): an empty or dot segment (`//`, `/./`,
`/../`, §5.2.4), a percent-escape of a character that may appear raw (§6.2.2.2: `%74` is
`t`), a lower-case escape (§6.2.2.1), an escaped `/` or `\\` (servers disagree on whether it
splits a segment). So a grant on `/tickets/42` can never be stretched to `/tickets/42/../43`
or `/tickets/%34%32`. These are the rules of the sidecar's canonical resource names
(`sidecar/resources.py`, the one parser of them), applied to the proxy's request path too.

The mapping itself is the policy's (`data.jit.egress_route` in rego/jit/egress.rego), asked
once per grant and kept in memory while the grant lives.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._http1 import Http1Pool, HttpError
from ..errors import InvalidArgument, PolicyResultInvalid, PolicyUnavailable
from ..resources import AUTHORITY_RE, ResourceParts, segment_problem
from ..resources import parse_resource as parse_resource_name

SCHEME = "https-api"
#: An upstream's name is a resource authority: lower-case, dot-separated labels.
UPSTREAM_NAME = AUTHORITY_RE
_METHOD = re.compile(r"[A-Z]{1,16}")
MAX_SEGMENTS = 64


class PathRefused(ValueError):
    """A request path or resource that is not in canonical form; `str()` says why."""


def check_segment(segment: str) -> None:
    """Refuse a path segment that has another spelling: the rule of resource names
    (`sidecar.resources.segment_problem`)."""
    problem = segment_problem(segment)
    if problem:
        raise PathRefused(f"the path {problem}")


@dataclass(frozen=True, slots=True)
class Target:
    """A request on the proxy, taken apart."""

    upstream: str
    segments: tuple[str, ...]
    query: str
    """The raw query string, forwarded unchanged ('' when none)."""


def parse_target(raw: str) -> Target:
    """`/<upstream>/<segment>…[?query]` as sent on the request line (not decoded)."""
    if "#" in raw:
        raise PathRefused("a fragment (#) in the request target")
    path, _, query = raw.partition("?")
    if not path.startswith("/"):
        raise PathRefused("the request target must be an absolute path (origin-form)")
    upstream, *segments = path[1:].split("/")
    if not UPSTREAM_NAME.fullmatch(upstream):
        raise PathRefused("the first segment must name an upstream (lower-case)")
    if len(segments) > MAX_SEGMENTS:
        raise PathRefused(f"more than {MAX_SEGMENTS} path segments")
    if segments == [""]:
        segments = []  # /<upstream>/ is the upstream's base path, as /<upstream> is
    for segment in segments:
        check_segment(segment)
    return Target(upstream, tuple(segments), query)


def parse_resource(resource: str) -> ResourceParts:
    """An `https-api://<upstream>/<segment>…` resource, by the sidecar's one parser of
    resource names (`sidecar.resources`)."""
    try:
        parts = parse_resource_name(resource, "resource")
    except InvalidArgument as err:
        raise PathRefused(err.message) from err
    if parts.scheme != SCHEME:
        raise PathRefused(f"not an {SCHEME}:// resource")
    return parts


@dataclass(frozen=True, slots=True)
class Route:
    """What one grant lets through the proxy."""

    upstream: str
    methods: frozenset[str]
    segments: tuple[str, ...]
    subtree: bool
    """True: the path and every path under it (segment-wise); False: exactly the path."""

    def covers(self, method: str, segments: Sequence[str]) -> bool:
        if method not in self.methods:
            return False
        n = len(self.segments)
        if self.subtree:
            return tuple(segments[:n]) == self.segments
        return tuple(segments) == self.segments

    def describe(self) -> str:
        path = "/" + "/".join(self.segments) + ("/…" if self.subtree else "")
        return f"{'|'.join(sorted(self.methods))} {path}"


class RouteSource(Protocol):
    """The policy's answer for one granted (action, resource)."""

    async def route(self, action: str, resource: str) -> Route | None:
        """None when the policy maps it to nothing (every request is then refused).
        Raises PolicyUnavailable / PolicyResultInvalid when the policy cannot say."""
        ...

    async def aclose(self) -> None: ...


class OpaRoutes:
    """`RouteSource` asking OPA's Data API for `data.jit.egress_route`."""

    def __init__(self, url: str, path: str, timeout: float) -> None:
        self._pool = Http1Pool(url)
        self._path = path
        self._timeout = timeout

    async def route(self, action: str, resource: str) -> Route | None:
        try:
            parts = parse_resource(resource)
        except PathRefused:
            return None
        body = json.dumps(
            {"input": {"action": action, "resource": resource, "resource_parts": parts.as_input()}}
        ).encode()
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.request("POST", self._path, body)
        except TimeoutError as err:
            raise PolicyUnavailable("OPA gave no egress route in time", "timeout") from err
        except HttpError as err:
            raise PolicyUnavailable(f"OPA unreachable: {err}", "unreachable") from err
        if response.status >= 500:
            raise PolicyUnavailable(f"OPA answered HTTP {response.status}", "http_5xx")
        if response.status != 200:
            raise PolicyResultInvalid(f"OPA answered HTTP {response.status}", "http_4xx")
        try:
            document = json.loads(response.body)
        except ValueError as err:
            raise PolicyResultInvalid("OPA answered invalid JSON", "bad_json") from err
        if not isinstance(document, dict):
            raise PolicyResultInvalid("OPA answered a non-object", "shape")
        if "result" not in document:
            return None  # undefined: no route for this grant
        return parse_route(document["result"], parts)

    async def aclose(self) -> None:
        await self._pool.aclose()


def parse_route(result: Any, parts: ResourceParts) -> Route:
    """Type-check the policy's route as strictly as a decision; it may not reach beyond the
    granted resource (another upstream, other segments)."""
    if not isinstance(result, dict) or set(result) != {
        "upstream",
        "methods",
        "segments",
        "subtree",
    }:
        raise PolicyResultInvalid(
            "egress_route must be {upstream, methods, segments, subtree}", "shape"
        )
    methods, segments, subtree = result["methods"], result["segments"], result["subtree"]
    if (
        result["upstream"] != parts.authority
        or not isinstance(methods, list)
        or not methods
        or not all(isinstance(m, str) and _METHOD.fullmatch(m) for m in methods)
        or not isinstance(segments, list)
        or tuple(segments) != parts.segments
        or not isinstance(subtree, bool)
    ):
        raise PolicyResultInvalid("egress_route does not fit the granted resource", "shape")
    return Route(parts.authority, frozenset(methods), parts.segments, subtree)

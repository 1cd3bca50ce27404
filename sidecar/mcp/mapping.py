"""How an MCP tool call becomes a jit-sidecar intent: shared by the client wrapper (which asks
for the grant) and the server guard (which checks the token covers the call), so both derive
the same action and resource from the same call.

Default, for tool `<tool>` on server `<server>` (docs/mcp.md):

    action    mcp.<server>.<tool>
    resource  mcp://<server>/tools/<tool>
    context   the tool's `context_arguments`, copied from the call (none by default)

Everything else an MCP session does (initialize, tools/list, ping, the GET stream, DELETE) is
the discovery intent `mcp.<server>.list` on `mcp://<server>/tools`.

A `ToolRule` overrides this per tool: another action (still `mcp.<server>.<name>`, so the
packaged policy keeps it on its own server), arguments bound into the resource
(`mcp://bank/tools/transfer_funds/to_account/ACME-7`, so the token names them and the server
refuses the same token for other values), and arguments passed to the policy as context
(`amount`, for approval above an amount).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Server and tool names: lower case, so resources are canonical without normalising
# (RFC 3986 §6.2.2.1: scheme and host are case-insensitive; we simply refuse upper case).
# Servers take no dots: the action `mcp.<server>.<tool>` must split unambiguously.
SERVER_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
TOOL_RE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,127}")
# A bound argument's value becomes one path segment: RFC 3986 §2.3 unreserved characters only
# (nothing to percent-encode), and never the dot segments "." or ".." (§5.2.4).
SEGMENT_RE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}")
DISCOVERY_VERB = "list"
MAX_CONTEXT_BYTES = 4096


class ToolMappingError(ValueError):
    """The call cannot be expressed as an intent (bad name, missing or non-canonical bound
    argument); nothing was requested and nothing is sent."""


@dataclass(frozen=True, slots=True)
class ToolRule:
    """Per-tool override of the default mapping."""

    verb: str | None = None
    """Last part of the action instead of the tool name (`mcp.<server>.<verb>`): lets a tool
    named `wire` be classified as `transfer_funds` by the catalog."""
    bound_arguments: tuple[str, ...] = ()
    """Arguments named in the resource, in this order: `.../tools/<tool>/<arg>/<value>`."""
    context_arguments: tuple[str, ...] = ()
    """Arguments copied into `intent.context` for the policy (e.g. `amount`)."""


@dataclass(frozen=True, slots=True)
class ToolIntent:
    """The intent one MCP request needs a grant for."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    tool: str | None = None
    """The tool called; None for the discovery intent."""


def _check_name(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        raise ToolMappingError(f"{what} {str(value)[:64]!r} must match {pattern.pattern}")
    return value


def _segment(tool: str, name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ToolMappingError(f"{tool}: bound argument {name!r} must be a string or integer")
    text = str(value)
    if not SEGMENT_RE.fullmatch(text) or text in (".", ".."):
        raise ToolMappingError(
            f"{tool}: bound argument {name!r} must be 1-128 unreserved characters "
            "(A-Z a-z 0-9 - . _ ~), not a dot segment"
        )
    return text


class ToolMap:
    """The mapping for one MCP server: `intent(tool, arguments)` and `discovery()`."""

    def __init__(self, server: str, rules: Mapping[str, ToolRule] | None = None) -> None:
        self.server = _check_name(server, SERVER_RE, "MCP server name")
        self.rules = dict(rules or {})
        for tool, rule in self.rules.items():
            _check_name(tool, TOOL_RE, "tool name")
            if rule.verb is not None:
                _check_name(rule.verb, TOOL_RE, f"{tool}: verb")

    def intent(self, tool: str, arguments: Mapping[str, Any] | None = None) -> ToolIntent:
        """The intent for `tools/call` of `tool` with `arguments`; ToolMappingError when the
        call cannot be named canonically."""
        _check_name(tool, TOOL_RE, "tool name")
        args = arguments or {}
        rule = self.rules.get(tool, ToolRule())
        resource = f"mcp://{self.server}/tools/{tool}"
        for name in rule.bound_arguments:
            if name not in args:
                raise ToolMappingError(f"{tool}: bound argument {name!r} is missing")
            resource += f"/{_check_name(name, TOOL_RE, 'argument name')}/"
            resource += _segment(tool, name, args[name])
        context = {name: args[name] for name in rule.context_arguments if name in args}
        try:
            size = len(json.dumps(context, separators=(",", ":"), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ToolMappingError(f"{tool}: context arguments are not plain JSON") from err
        if size > MAX_CONTEXT_BYTES:
            raise ToolMappingError(f"{tool}: context arguments are {size} bytes, over 4 KiB")
        verb = rule.verb or tool
        return ToolIntent(f"mcp.{self.server}.{verb}", resource, context, tool)

    def discovery(self) -> ToolIntent:
        """The intent for everything but `tools/call`: initialize, tools/list, ping, ...;
        classified by the catalog's `*.list` (standing)."""
        return ToolIntent(f"mcp.{self.server}.{DISCOVERY_VERB}", f"mcp://{self.server}/tools")

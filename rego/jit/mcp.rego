# MCP tools (docs/mcp.md). A tool call is the intent mcp.<server>.<tool> on
# mcp://<server>/tools/<tool>[/<argument>/<value>]...; everything else an MCP session does is
# mcp.<server>.list on mcp://<server>/tools. The catalog classifies tools by their verb like
# any action (*.search standing, *.send_email JIT, *.transfer_funds approval). What is
# MCP-specific lives here: the servers known to data.jit.mcp_servers, the shape of their
# resources, and the audience, which is each server's canonical URI (MCP authorization spec,
# "Token Audience Binding"; RFC 8707 §2).
package jit

# The path segments after mcp://, compared as segments, never as string prefixes.
_mcp_segments := split(substring(input.intent.resource, count("mcp://"), -1), "/") if _domain == "mcp"

_mcp_server_name := _mcp_segments[0]

_mcp_server := data.jit.mcp_servers[_mcp_server_name]

_audience := audience if {
	_domain == "mcp"
	audience := _mcp_server.audience
	is_string(audience)
	regex.match(`^https?://[a-z0-9.-]+(:[0-9]+)?(/[^?#]*)?$`, audience)
}

# mcp://<server>/tools (the session) or mcp://<server>/tools/<tool>, optionally followed by
# <argument>/<value> pairs; no empty segment anywhere.
_mcp_shape_valid if {
	count(_mcp_segments) == 2
	_mcp_segments[0] != ""
	_mcp_segments[1] == "tools"
}

_mcp_shape_valid if {
	count(_mcp_segments) >= 3
	count(_mcp_segments) % 2 == 1
	_mcp_segments[1] == "tools"
	every segment in _mcp_segments {
		segment != ""
	}
}

# The action names the same server: mcp.<server>.<verb>; the session intent is exactly
# mcp.<server>.list.
_mcp_action_valid if {
	count(_action_parts) >= 3
	_action_parts[1] == _mcp_server_name
	count(_mcp_segments) > 2
}

_mcp_action_valid if {
	input.intent.action == concat(".", ["mcp", _mcp_server_name, "list"])
	count(_mcp_segments) == 2
}

# METADATA
# title: unknown MCP server
# description: An mcp:// resource must name a server in data.jit.mcp_servers that has a valid audience URI.
# scope: rule
# custom:
#   reason_code: mcp_unknown_server
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	_domain == "mcp"
	not _audience
	msg := sprintf("%s names no MCP server known to data.jit.mcp_servers", [_short(input.intent.resource)])
}

# METADATA
# title: malformed MCP resource
# description: MCP resources are mcp://<server>/tools or mcp://<server>/tools/<tool>[/<argument>/<value>]...
# scope: rule
# custom:
#   reason_code: mcp_resource_invalid
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	_domain == "mcp"
	not _mcp_shape_valid
	msg := sprintf("%s is not mcp://<server>/tools[/<tool>...]", [_short(input.intent.resource)])
}

# METADATA
# title: MCP action and server disagree
# description: An MCP tool action is mcp.<server>.<verb> for the server its resource names.
# scope: rule
# custom:
#   reason_code: mcp_action_mismatch
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	_domain == "mcp"
	_mcp_shape_valid
	not _mcp_action_valid
	msg := sprintf("%s does not act on %s", [input.intent.action, _short(input.intent.resource)])
}

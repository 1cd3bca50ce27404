# MCP tools: classification by risk, per-server audiences, and the shape of MCP intents.
package jit_test

import data.jit

_crm := "http://127.0.0.1:8931/mcp"

_mail := "http://127.0.0.1:8932/mcp"

_bank := "http://127.0.0.1:8933/mcp"

_tool(action, resource, justification) := _input(
	_dev,
	{"action": action, "resource": resource, "justification": justification},
	{},
)

test_every_mcp_server_audience_is_an_http_uri if {
	every _, server in jit.mcp_servers {
		regex.match(`^https?://`, server.audience)
	}
}

test_search_tool_is_standing_with_the_server_uri_as_audience if {
	decision := jit.decision with input as _tool("mcp.crm.search", "mcp://crm/tools/search", "")
	decision == _standing(_crm, "mcp.crm.search", [_standing_reason("mcp.crm.search", "read", "mcp", 900)])
}

test_session_intent_is_standing if {
	decision := jit.decision with input as _tool("mcp.mail.list", "mcp://mail/tools", "")
	decision == _standing(_mail, "mcp.mail.list", [_standing_reason("mcp.mail.list", "read", "mcp", 900)])
}

test_send_email_tool_is_jit if {
	decision := jit.decision with input as _tool("mcp.mail.send_email", "mcp://mail/tools/send_email", "reply to ticket 7")
	decision == _jit(_mail, "mcp.mail.send_email", [_jit_reason("mcp.mail.send_email", "write")])
}

test_transfer_funds_tool_needs_approval if {
	decision := jit.decision with input as _tool(
		"mcp.bank.transfer_funds",
		"mcp://bank/tools/transfer_funds/to_account/ACME-7",
		"pay invoice 42 of ACME as agreed in ticket 7",
	)
	decision == _approval(_bank, "mcp.bank.transfer_funds", [
		_approval_reason("mcp.bank.transfer_funds", "funds_transfer"),
	])
}

test_unknown_tool_verb_is_denied if {
	decision := jit.decision with input as _tool("mcp.crm.drop_tables", "mcp://crm/tools/drop_tables", "cleanup")
	decision == _denied(["unknown_action: mcp.crm.drop_tables is not in the action catalog"])
}

test_unknown_server_is_denied if {
	decision := jit.decision with input as _tool("mcp.evil.search", "mcp://evil/tools/search", "")
	decision == _denied(["mcp_unknown_server: mcp://evil/tools/search names no MCP server known to data.jit.mcp_servers"])
}

test_server_with_a_malformed_audience_is_unknown if {
	decision := jit.decision with input as _tool("mcp.crm.search", "mcp://crm/tools/search", "")
		with jit.mcp_servers.crm as {"audience": "crm"}
	decision == _denied(["mcp_unknown_server: mcp://crm/tools/search names no MCP server known to data.jit.mcp_servers"])
}

test_action_for_another_server_is_denied if {
	decision := jit.decision with input as _tool("mcp.bank.search", "mcp://crm/tools/search", "")
	decision == _denied(["mcp_action_mismatch: mcp.bank.search does not act on mcp://crm/tools/search"])
}

test_session_resource_takes_only_the_list_action if {
	decision := jit.decision with input as _tool("mcp.crm.search", "mcp://crm/tools", "")
	decision == _denied(["mcp_action_mismatch: mcp.crm.search does not act on mcp://crm/tools"])
}

test_malformed_mcp_resources_are_denied if {
	every resource in [
		"mcp://crm",
		"mcp://crm/prompts/search",
		"mcp://crm/tools/search/to_account",
	] {
		decision := jit.decision with input as _tool("mcp.crm.search", resource, "")
		_denied_by_mcp_rule(decision)
	}
}

# Spellings that are not canonical never reach the policy (the sidecar refuses them with
# invalid_resource); should one arrive anyway, its parts do not match and it is denied.
test_non_canonical_mcp_resources_are_denied if {
	every resource in ["mcp://crm/tools//search", "mcp:///tools/search"] {
		decision := jit.decision with input as _tool("mcp.crm.search", resource, "")
		not decision.allow
	}
}

_denied_by_mcp_rule(decision) if {
	not decision.allow
	some reason in decision.reasons
	startswith(reason, "mcp_")
}

test_tool_renamed_by_verb_is_classified_by_the_verb if {
	decision := jit.decision with input as _tool(
		"mcp.bank.transfer_funds",
		"mcp://bank/tools/wire",
		"pay invoice 42 of ACME as agreed in ticket 7",
	)
	decision.allow
	decision.approval_required
	decision.audience == _bank
}

test_mcp_outside_the_agents_domains_is_denied if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "mcp.crm.search", "resource": "mcp://crm/tools/search", "justification": ""},
		{},
	)
	decision == _denied(["cross_domain: mcp is not among this agent's domains"])
}

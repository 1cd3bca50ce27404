"""sidecar.mcp.mapping: the tool call → intent mapping both the client and the server use."""

from __future__ import annotations

import pytest

from sidecar.mcp import ToolMap, ToolMappingError, ToolRule
from sidecar.validation import check_intent

RULES = {
    "transfer_funds": ToolRule(bound_arguments=("to_account",), context_arguments=("amount",)),
    "wire": ToolRule(verb="transfer_funds"),
}


def test_default_mapping_names_server_and_tool() -> None:
    """mcp.<server>.<tool> on mcp://<server>/tools/<tool>, no context by default."""
    intent = ToolMap("crm").intent("search", {"query": "ACME"})
    assert (intent.action, intent.resource, dict(intent.context), intent.tool) == (
        "mcp.crm.search",
        "mcp://crm/tools/search",
        {},
        "search",
    )


def test_discovery_intent_is_list_on_the_tools_collection() -> None:
    """Everything but tools/call is mcp.<server>.list on mcp://<server>/tools."""
    intent = ToolMap("crm").discovery()
    assert (intent.action, intent.resource, intent.tool) == (
        "mcp.crm.list",
        "mcp://crm/tools",
        None,
    )


def test_rules_bind_arguments_into_the_resource_and_copy_context() -> None:
    """Bound arguments become <name>/<value> segments; context arguments go to the policy."""
    intent = ToolMap("bank", RULES).intent("transfer_funds", {"to_account": "ACME-7", "amount": 5})
    assert intent.resource == "mcp://bank/tools/transfer_funds/to_account/ACME-7"
    assert dict(intent.context) == {"amount": 5}
    assert intent.action == "mcp.bank.transfer_funds"


def test_verb_override_changes_only_the_action() -> None:
    """A renamed verb is classified differently; the resource still names the real tool."""
    intent = ToolMap("bank", RULES).intent("wire", {})
    assert (intent.action, intent.resource) == ("mcp.bank.transfer_funds", "mcp://bank/tools/wire")


def test_every_mapped_intent_passes_the_sidecars_input_checks() -> None:
    """What the mapping produces is valid input for RequestGrant."""
    tools = ToolMap("bank", RULES)
    for intent in (
        tools.discovery(),
        tools.intent("search", {}),
        tools.intent("transfer_funds", {"to_account": "a.b~c_d-9", "amount": 1.5}),
    ):
        check_intent(intent.action, intent.resource, "why", intent.context)


@pytest.mark.parametrize(
    ("server", "tool", "arguments"),
    [
        ("CRM", "search", {}),
        ("crm.eu", "search", {}),
        ("crm", "Search", {}),
        ("crm", "../admin", {}),
        ("crm", "..", {}),
        ("crm", "", {}),
        ("bank", "transfer_funds", {"amount": 1}),
        ("bank", "transfer_funds", {"to_account": "..", "amount": 1}),
        ("bank", "transfer_funds", {"to_account": "a/b", "amount": 1}),
        ("bank", "transfer_funds", {"to_account": "%41", "amount": 1}),
        ("bank", "transfer_funds", {"to_account": True, "amount": 1}),
        ("bank", "transfer_funds", {"to_account": "x", "amount": float("nan")}),
    ],
)
def test_calls_that_cannot_be_named_canonically_are_refused(
    server: str, tool: str, arguments: dict[str, object]
) -> None:
    """Upper case, dots in server names, dot segments, slashes, escapes, missing or
    non-scalar bound arguments and non-JSON context raise ToolMappingError."""
    with pytest.raises(ToolMappingError) as raised:
        ToolMap(server, RULES).intent(tool, arguments)
    assert str(raised.value)


def test_oversized_context_is_refused() -> None:
    """Context arguments are bounded (4 KiB), below the sidecar's own context limit."""
    tools = ToolMap("bank", {"pay": ToolRule(context_arguments=("memo",))})
    with pytest.raises(ToolMappingError) as raised:
        tools.intent("pay", {"memo": "x" * 5000})
    assert "4 KiB" in str(raised.value)

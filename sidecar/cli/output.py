"""How commands print: a line for people, or JSON with `--json`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format


def show(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as JSON when the command has `--json`, else `text`."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def message_dict(message: Any) -> dict[str, Any]:
    """A protobuf response as the dict `--json` prints (field names as in the .proto)."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out

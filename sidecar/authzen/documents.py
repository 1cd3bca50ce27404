"""AuthZEN documents at the door: the JSON body read and bounded, each Access Evaluation
request checked (AuthZEN §5, §6.1, §7.1, §10.1), and the canonical JSON and clipped strings
the rest of the package writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from .errors import BadRequest, BodyTimeout

MAX_BODY_BYTES = 256 * 1024
MAX_EVALUATIONS = 256
MAX_STRING = 2048
MAX_REQUEST_ID = 256
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # RFC 8259 §6: NaN and Infinity are not numbers


async def read_json(request: web.Request, within: float) -> dict[str, Any]:
    """The body as a JSON object (AuthZEN §10.1: `application/json`, an object at the top),
    arrived within `within` seconds (the listener's `http_body_timeout`)."""
    if request.content_type != "application/json":
        raise BadRequest("content_type", "the body must be application/json")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest("body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            while chunk := await request.content.read(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise BadRequest("body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    except TimeoutError as err:
        raise BodyTimeout() from err
    return decode_json(body)


def decode_json(body: bytes | bytearray) -> dict[str, Any]:
    """A body (at most MAX_BODY_BYTES, said to be application/json) as a JSON object."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as err:
        raise BadRequest("not_utf8", "the body is not UTF-8 (RFC 8259 §8.1)") from err
    except (ValueError, RecursionError) as err:
        raise BadRequest("bad_json", "the body is not valid JSON") from err
    if not isinstance(document, dict):
        raise BadRequest("bad_json", "the body must be a JSON object")
    return document


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("invalid_request", f"`{where}` must be a non-empty string")
    if len(value) > MAX_STRING:
        raise BadRequest("invalid_request", f"`{where}` is longer than {MAX_STRING} characters")
    return value


def json_object(value: Any, where: str) -> dict[str, Any]:
    """`value` if it is a JSON object, else a BadRequest naming the member `where`."""
    if not isinstance(value, dict):
        raise BadRequest("invalid_request", f"`{where}` must be an object")
    return value


def _entity(value: Any, where: str, keys: Sequence[str]) -> dict[str, Any]:
    """A Subject, Resource (`type`, `id`) or Action (`name`), §5.1-§5.3."""
    entity = json_object(value, where)
    for key in keys:
        if key not in entity:
            raise BadRequest("invalid_request", f"`{where}.{key}` is required")
        _string(entity[key], f"{where}.{key}")
    if "properties" in entity:
        json_object(entity["properties"], f"{where}.properties")
    return entity


ENTITIES = (("subject", ("type", "id")), ("action", ("name",)), ("resource", ("type", "id")))


def parse_evaluation(document: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """One Access Evaluation request (§6.1), checked; unknown members are left out (§10.1.1)."""
    request: dict[str, Any] = {}
    for name, keys in ENTITIES:
        if name not in document:
            raise BadRequest("invalid_request", f"`{where}{name}` is required")
        request[name] = _entity(document[name], where + name, keys)
    if "context" in document:
        request["context"] = json_object(document["context"], where + "context")
    return request


def parse_evaluations(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """The items of an Access Evaluations request (§7.1), defaults applied (§7.1.1), and the
    semantic (§7.1.2.1). Items are None when `evaluations` is absent or empty: the request is
    then a single evaluation."""
    items = document.get("evaluations")
    options = json_object(document.get("options", {}), "options")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in SEMANTICS:
        raise BadRequest(
            "invalid_request",
            "`options.evaluations_semantic` must be one of " + ", ".join(SEMANTICS),
        )
    if items is None or items == []:
        return None, semantic
    if not isinstance(items, list):
        raise BadRequest("invalid_request", "`evaluations` must be an array")
    if len(items) > MAX_EVALUATIONS:
        raise BadRequest("too_many_evaluations", f"at most {MAX_EVALUATIONS} evaluations")
    defaults = {
        k: document[k] for k in ("subject", "action", "resource", "context") if k in document
    }
    for name in defaults:
        json_object(defaults[name], name)  # a default may be partial: items complete it
    parsed = []
    for i, item in enumerate(items):
        merged = {**defaults, **json_object(item, f"evaluations[{i}]")}
        parsed.append(parse_evaluation(merged, f"evaluations[{i}]."))
    return parsed, semantic


def request_id(request: web.Request) -> str | None:
    """AuthZEN §10.1.3: the PEP's `X-Request-ID`, echoed on the response."""
    value = request.headers.get("X-Request-ID")
    if value is not None and not valid_request_id(value):
        raise BadRequest(
            "invalid_request_id",
            f"X-Request-ID must be at most {MAX_REQUEST_ID} printable characters",
        )
    return value


def valid_request_id(value: str) -> bool:
    """An X-Request-ID the sidecar echoes (§10.1.3) and audits."""
    return len(value) <= MAX_REQUEST_ID and value.isprintable()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
compact = json.JSONEncoder(separators=(",", ":")).encode
"""`json.dumps(value, separators=(",", ":"))` without building an encoder per call."""


def canonical(value: Any) -> bytes:
    """`value` as compact, key-sorted ASCII JSON: what digests and MACs cover."""
    return _CANONICAL(value).encode()


def clip(value: str, limit: int = 256) -> str:
    """`value` cut to `limit` characters (and marked so) before it is audited or echoed."""
    return value if len(value) <= limit else value[:limit] + "…"

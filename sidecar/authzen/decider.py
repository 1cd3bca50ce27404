"""OPA as the AuthZEN decider: each request goes to OPA verbatim as the input at
`--authzen-decision-path`, and the answer must be an AuthZEN Decision (§5.5) or the request
is denied with the cause in its context (fail closed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .._http1 import Http1Pool, HttpError
from .documents import compact


class OpaDecider:
    """Asks OPA for AuthZEN decisions: one Data API call per evaluation, and one ad-hoc query
    for a whole batch (`with input as` per item), so a batch costs one round trip. Answers
    are raw JSON values, checked by `check_decision`; None means no usable answer."""

    def __init__(self, url: str, path: str, timeout: float) -> None:
        self._pool = Http1Pool(url)
        self._path = "/v1/data/" + path
        self._ref = "data." + path.replace("/", ".")
        self._timeout = timeout

    async def _post(self, path: str, document: Any) -> tuple[int, Any]:
        body = compact(document).encode()
        async with asyncio.timeout(self._timeout):
            response = await self._pool.request("POST", path, body)
        try:
            return response.status, json.loads(response.body)
        except (ValueError, RecursionError):
            return response.status, None

    async def decide(self, policy_input: dict[str, Any]) -> tuple[Any, str]:
        """(result, cause): result None when there is none, cause says why."""
        try:
            status, answer = await self._post(self._path, {"input": policy_input})
        except TimeoutError:
            return None, "timeout"
        except HttpError:
            return None, "unreachable"
        if status != 200:
            return None, "http_5xx" if status >= 500 else "http_4xx"
        if not isinstance(answer, dict):
            return None, "bad_json"
        if "result" not in answer:
            return None, "undefined"
        return answer["result"], ""

    async def decide_many(self, inputs: list[dict[str, Any]]) -> list[tuple[Any, str]]:
        query = (
            f"x := {{i: r | some i, item in input.evaluations; r := {self._ref} "
            "with input as item}"
        )
        try:
            status, answer = await self._post(
                "/v1/query", {"query": query, "input": {"evaluations": inputs}}
            )
        except TimeoutError:
            return [(None, "timeout")] * len(inputs)
        except HttpError:
            return [(None, "unreachable")] * len(inputs)
        if status != 200:
            # Ad-hoc queries refused (an OPA authorization policy), or one item's evaluation
            # failed the whole query: one call per item, so each gets its own answer.
            return list(await asyncio.gather(*(self.decide(i) for i in inputs)))
        try:
            results = answer["result"][0]["x"]
        except (TypeError, KeyError, IndexError):
            results = None
        if not isinstance(results, dict):
            return [(None, "bad_json")] * len(inputs)
        return [
            (results[str(i)], "") if str(i) in results else (None, "undefined")
            for i in range(len(inputs))
        ]

    async def aclose(self) -> None:
        await self._pool.aclose()


def check_decision(result: Any, cause: str) -> tuple[dict[str, Any], str]:
    """The policy's answer as an AuthZEN Decision (§5.5), or a fail-closed denial whose
    context says why; the second value is the error cause ('' when the answer was usable)."""
    if result is None:
        return _failed(cause or "undefined"), cause or "undefined"
    if not isinstance(result, dict) or not isinstance(result.get("decision"), bool):
        return _failed("shape"), "shape"
    decision: dict[str, Any] = {"decision": result["decision"]}
    if "context" in result:
        if not isinstance(result["context"], dict):
            return _failed("shape"), "shape"
        decision["context"] = result["context"]
    return decision, ""


def _failed(cause: str) -> dict[str, Any]:
    return {
        "decision": False,
        "context": {"reason": "policy_error", "cause": cause},
    }

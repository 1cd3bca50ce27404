"""`@requires`: a function becomes a "tool" that asks for its grant before it runs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from ._async import AsyncTaskHandle
from ._base import _current_task
from ._errors import NoActiveTask
from ._sync import TaskHandle


def current_task() -> TaskHandle | AsyncTaskHandle | None:
    """The innermost task opened with `with client.task(...)` in this context, if any."""
    handle = _current_task.get()
    return cast(TaskHandle | AsyncTaskHandle | None, handle)


R = TypeVar("R")


def _evaluate(value: Any, arguments: Mapping[str, Any]) -> Any:
    return value(**arguments) if callable(value) else value


def requires(
    action: str,
    resource: str | Callable[..., str],
    *,
    justification: str | Callable[..., str] = "",
    ttl: int | None = None,
    context: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None = None,
    wait_for_approval: float | None = None,
    inject: str = "grant",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Make a function a "tool" that asks for its grant before it runs.

        @requires("tickets.update", lambda ticket_id, **_: f"tickets://{ticket_id}",
                  justification=lambda ticket_id, reason, **_: reason)
        def close_ticket(ticket_id: str, reason: str, *, grant: Grant) -> dict: ...

        with jit.task(goal="triage") as task:
            close_ticket("T-1001", "customer confirmed the fix")

    `resource`, `justification` and `context` may be callables; they receive the tool's
    arguments by name (defaults applied). The grant is passed as the keyword argument named
    `inject` when the function has such a parameter, and that parameter is hidden from the
    tool's visible signature (agent frameworks build schemas from it). The tool must run
    inside `with client.task(...)` (or `async with` for `async def` tools); otherwise it
    raises NoActiveTask. A denial raises AccessDenied and the function does not run.
    """

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(func)
        takes_grant = inject in signature.parameters
        visible = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != inject]
        )

        def intent(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = visible.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            return {
                "action": action,
                "resource": _evaluate(resource, arguments),
                "justification": _evaluate(justification, arguments),
                "ttl": ttl,
                "context": _evaluate(context, arguments),
                "wait_for_approval": wait_for_approval,
            }

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_tool(*args: Any, **kwargs: Any) -> Any:
                handle = current_task()
                if handle is None:
                    raise NoActiveTask(f"{func.__name__} needs an open task (async with)")
                wanted = intent(args, kwargs)
                if isinstance(handle, AsyncTaskHandle):
                    grant = await handle.grant(
                        wanted.pop("action"), wanted.pop("resource"), **wanted
                    )
                else:
                    grant = handle.grant(wanted.pop("action"), wanted.pop("resource"), **wanted)
                if takes_grant:
                    kwargs[inject] = grant
                return await cast(Callable[..., Awaitable[Any]], func)(*args, **kwargs)

            async_tool.__signature__ = visible  # type: ignore[attr-defined]
            return cast(Callable[..., R], async_tool)

        @functools.wraps(func)
        def tool(*args: Any, **kwargs: Any) -> R:
            handle = current_task()
            if handle is None:
                raise NoActiveTask(f"{func.__name__} needs an open task (with client.task(...))")
            if not isinstance(handle, TaskHandle):
                raise NoActiveTask(
                    f"{func.__name__} is synchronous but the open task is an asyncio one; "
                    "make the tool `async def`"
                )
            wanted = intent(args, kwargs)
            grant = handle.grant(wanted.pop("action"), wanted.pop("resource"), **wanted)
            if takes_grant:
                kwargs[inject] = grant
            return func(*args, **kwargs)

        tool.__signature__ = visible  # type: ignore[attr-defined]
        return tool

    return decorate

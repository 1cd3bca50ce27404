"""Admission of raw request bytes, before a servicer sees them.

gRPC core answers an undecodable request with a bare INTERNAL ("Exception deserializing
request!") and an oversized one with a bare RESOURCE_EXHAUSTED, neither carrying the
`ErrorInfo` reason every other refusal has, and neither counted. This interceptor decodes
`jit.v1` requests itself so both become ordinary refusals: INVALID_ARGUMENT
`invalid_argument` and RESOURCE_EXHAUSTED `message_too_large`, counted in
`jit_rejected_requests_total{reason}` and logged like the rest (through `CallGuard`).

gRPC core keeps a hard receive limit of twice `max_message_bytes` (see `core_receive_limit`)
so nothing larger is ever buffered; a message beyond that still gets core's bare
RESOURCE_EXHAUSTED (docs/security.md, "Resource limits").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import InvalidArgument, Reason, ResourceExhausted, SidecarError
from .metrics import Metrics
from .service import CallGuard

#: Services whose requests are admitted here (health and reflection keep gRPC's own path).
GUARDED_PREFIXES = ("/jit.v1.",)


def core_receive_limit(max_message_bytes: int) -> int:
    """gRPC core's own receive limit: above ours, so we can answer with a reason code."""
    return 2 * max_message_bytes


@dataclass(frozen=True, slots=True)
class _Refused:
    """Stands in for a request that could not be admitted."""

    error: SidecarError


def method_label(full_method: str) -> str:
    """`/jit.v1.AccessService/RequestGrant` → `RequestGrant` (`Admin.X` for AdminService)."""
    service, _, method = full_method.rpartition("/")
    return f"Admin.{method}" if service.endswith("AdminService") else method


class RequestAdmission(grpc.aio.ServerInterceptor):
    """Decode `jit.v1` requests with a size limit; refusals carry a reason code."""

    def __init__(self, metrics: Metrics, guard: CallGuard, max_message_bytes: int) -> None:
        self._metrics = metrics
        self._guard = guard
        self._limit = max_message_bytes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if (
            handler is None
            or handler.unary_unary is None
            or handler.request_deserializer is None
            or not method.startswith(GUARDED_PREFIXES)
        ):
            return handler
        decode = handler.request_deserializer
        inner = handler.unary_unary
        limit = self._limit
        label = method_label(method)

        def deserialize(raw: bytes) -> Any:
            if len(raw) > limit:
                return _Refused(
                    ResourceExhausted(
                        f"the request is {len(raw)} bytes; the limit is {limit}",
                        Reason.MESSAGE_TOO_LARGE,
                    )
                )
            try:
                return decode(raw)
            except Exception:  # protobuf's DecodeError, or anything a broken message raises
                return _Refused(InvalidArgument(f"the request is not a valid {label} message"))

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                err = request.error
                self._metrics.rejected.labels(reason=err.reason.value).inc()

                async def refuse() -> Any:
                    raise err

                return await self._guard.run(label, context, refuse)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

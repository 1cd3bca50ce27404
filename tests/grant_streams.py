"""GrantStream over a real socket, for tests: a raw stream the test drives message by
message, and the pieces of its messages."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from tests.harness import SidecarProcess


def stream_intent(action: str, resource: str, justification: str = "", ttl: int = 0) -> Any:
    return pb.GrantStreamIntent(
        intent=pb.Intent(action=action, resource=resource, justification=justification),
        ttl_seconds=ttl,
    )


def status_reason(status: Any) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


class RawStream:
    """A GrantStream over the real socket, with the test in control of sending and reading."""

    def __init__(
        self, sidecar: SidecarProcess, metadata: Sequence[tuple[str, str]] | None = None
    ) -> None:
        """`metadata`: the caller's identity (none: the dev identity of the socket)."""
        self.channel = grpc.insecure_channel(f"unix:{sidecar.socket}")
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stub = pb_grpc.AccessServiceStub(self.channel)
        self.answers: Iterator[pb.GrantStreamResponse] = stub.GrantStream(
            iter(self.outbox.get, None), metadata=metadata
        )

    def send(self, **fields: Any) -> None:
        self.outbox.put(pb.GrantStreamRequest(**fields))

    def read(self) -> pb.GrantStreamResponse:
        return next(self.answers)

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()

"""A gRPC server answering AccessService like a sidecar from before GrantStream: every
unary call is forwarded to a real sidecar, GrantStream is UNIMPLEMENTED (the generated
servicer's default). Stands for an older sidecar, which a test cannot start on demand."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc

UNARY = [
    m.name
    for m in pb.DESCRIPTOR.services_by_name["AccessService"].methods
    if not (m.client_streaming or m.server_streaming)
]


class NoStreamProxy:
    def __init__(self, upstream: Path, socket: Path) -> None:
        self.socket = socket
        self._channel = grpc.insecure_channel(f"unix:{upstream}")
        stub = pb_grpc.AccessServiceStub(self._channel)
        servicer = pb_grpc.AccessServiceServicer()
        for name in UNARY:
            setattr(servicer, name, self._forward(getattr(stub, name)))
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_AccessServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"unix:{socket}")

    @staticmethod
    def _forward(method: Any) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(request, metadata=context.invocation_metadata())
            except grpc.RpcError as err:
                context.abort(err.code(), err.details())

        return call

    def __enter__(self) -> NoStreamProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)
        self._channel.close()

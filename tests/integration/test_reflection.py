"""gRPC server reflection on the agent and admin sockets, under both grpc.reflection.v1 and
v1alpha: a real sidecar process, real Unix sockets, raw reflection calls as grpcurl makes."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.harness import SidecarProcess

pytestmark = pytest.mark.integration

VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")


def ask(
    socket_path: str, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One ServerReflectionInfo exchange (v1 and v1alpha share the wire format)."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        call = channel.stream_stream(
            f"/{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (response,) = list(call(iter([request]), timeout=10))
    return response


@pytest.mark.parametrize("version", VERSIONS)
def test_reflection_lists_and_describes_services(sidecar: SidecarProcess, version: str) -> None:
    """Both reflection versions list the agent socket's services (both reflection services
    among them) and describe AccessService and grpc.reflection.v1 itself."""
    listed = ask(
        str(sidecar.socket), version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in listed.list_services_response.service}
    described = {}
    for symbol in ("jit.v1.AccessService", "grpc.reflection.v1.ServerReflection"):
        answer = ask(
            str(sidecar.socket),
            version,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answer.file_descriptor_response.file_descriptor_proto
        ]
        described[symbol] = {f.package for f in files}
    assert names == {
        "jit.v1.AccessService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert "jit.v1" in described["jit.v1.AccessService"]
    assert "grpc.reflection.v1" in described["grpc.reflection.v1.ServerReflection"]


def test_admin_socket_serves_reflection_v1(sidecar: SidecarProcess) -> None:
    """The admin socket lists AdminService through grpc.reflection.v1 too."""
    listed = ask(
        str(sidecar.admin_socket),
        "grpc.reflection.v1",
        reflection_pb2.ServerReflectionRequest(list_services=""),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert "jit.v1.AdminService" in names
    assert "jit.v1.AccessService" not in names

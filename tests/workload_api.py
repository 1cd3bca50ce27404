"""A SPIFFE Workload API endpoint for tests (gRPC on a Unix socket, the `spiffe` package's
own protobuf definitions) serving JWT bundles and JWT-SVIDs the tests mint. It pushes bundle
rotations on demand, which a real SPIRE agent cannot do on demand; `make test-spire` runs the
same flows against a real SPIRE server and agent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.identity_kit import TrustDomain


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, socket: Path, domain: TrustDomain, workload_path: str) -> None:
        self.socket = socket
        self.domain = domain
        self.workload_path = workload_path
        self._changed = threading.Condition()
        self._version = 0
        self._stopping = False
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def _check(self, context: grpc.ServicerContext) -> bool:
        metadata = dict(context.invocation_metadata())
        if metadata.get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
            return False
        return True

    def rotate(self, domain: TrustDomain) -> None:
        with self._changed:
            self.domain = domain
            self._version += 1
            self._changed.notify_all()

    def _bundles(self) -> workload_pb2.JWTBundlesResponse:
        import json

        return workload_pb2.JWTBundlesResponse(
            bundles={self.domain.name: json.dumps(self.domain.bundle()).encode()}
        )

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if not self._check(context):
            return
        seen = -1
        while context.is_active():
            with self._changed:
                if seen == self._version:
                    self._changed.wait(0.2)
                if self._stopping:
                    return
                if seen == self._version:
                    continue
                seen = self._version
                response = self._bundles()
            yield response

    def FetchJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self._check(context):
            return None
        token = self.domain.svid(self.workload_path, aud=list(request.audience), ttl=120)
        return workload_pb2.JWTSVIDResponse(
            svids=[
                workload_pb2.JWTSVID(
                    spiffe_id=f"spiffe://{self.domain.name}/{self.workload_path}", svid=token
                )
            ]
        )

    def start(self) -> WorkloadApi:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{self.socket}")
        self._server.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None

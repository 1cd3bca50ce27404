"""Whether OPA answers: the readiness the sidecar reports (/readyz, gRPC health) and the probe
loop that keeps it current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from .cache import DecisionCache
from .config import Config
from .errors import PolicyError
from .policy import PolicyEngine

log = logging.getLogger("jit_sidecar.server")
POLICY_PROBE_INTERVAL = 1.0
REVISION_CHECK_INTERVAL = 5.0


@dataclass(slots=True, eq=False)
class PolicyHealth:
    """Whether OPA answers: reported by /readyz and grpc.health.v1, kept current by probes
    and by the engine when a decision fails for lack of OPA."""

    config: Config
    policy: PolicyEngine
    cache: DecisionCache
    servicer: health_aio.HealthServicer = field(default_factory=health_aio.HealthServicer)
    ok: bool = False
    detail: str = "not checked yet"
    _reported: bool = False

    async def probe(self) -> None:
        """One probe of OPA, and of its policy revision when it answers."""
        ok = await self.policy.healthy()
        if ok != self.ok or not self._reported:
            await self.set(ok, "ok" if ok else f"OPA at {self.config.opa_url} is unreachable")
        if ok:
            revision = await self.policy.revision()
            if revision and self.cache.set_revision(revision):
                log.info("policy revision %s; decision cache cleared", revision[:12])

    async def set(self, ok: bool, detail: str) -> None:
        # The first result is logged too: an OPA unreachable at start-up is an error
        # worth a line naming its URL, not silence after "serving".
        changed = ok != self.ok or not self._reported
        self._reported = True
        self.ok = ok
        self.detail = detail
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.servicer.set("", status)
        await self.servicer.set("jit.v1.AccessService", status)
        if changed:
            (log.info if ok else log.error)("policy engine %s", "reachable" if ok else detail)

    def policy_failed(self, err: PolicyError) -> None:
        """The engine's hook: a decision failed for lack of OPA."""
        asyncio.get_running_loop().create_task(self.set(False, err.message))

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every POLICY_PROBE_INTERVAL (the revision every REVISION_CHECK_INTERVAL)."""
        loop = asyncio.get_running_loop()
        last_revision_check = loop.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLICY_PROBE_INTERVAL)
            if stop.is_set():
                return
            try:
                ok = await self.policy.healthy()
                if ok != self.ok:
                    await self.set(
                        ok, "ok" if ok else f"OPA at {self.config.opa_url} is unreachable"
                    )
                if ok and loop.time() - last_revision_check >= REVISION_CHECK_INTERVAL:
                    last_revision_check = loop.time()
                    revision = await self.policy.revision()
                    if revision and self.cache.set_revision(revision):
                        log.info("policy revision changed; decision cache cleared")
            except Exception:
                log.exception("policy probe failed")

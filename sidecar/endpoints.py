"""The engine seen through `sidecar.http.Endpoints`: all the HTTP app may ask of the sidecar
(introspect, revoke, JWKS, readiness, metrics exposition)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .engine import Engine
from .health import PolicyHealth
from .store import Store


class EngineEndpoints:
    """The engine seen through sidecar.http.Endpoints: all the HTTP app may ask."""

    def __init__(
        self,
        engine: Engine,
        health: PolicyHealth,
        store: Store,
        checks: Mapping[str, Callable[[], str]],
        registry: CollectorRegistry,
    ) -> None:
        self._engine = engine
        self._health = health
        self._store = store
        self._registry = registry
        self._checks = checks

    async def introspect(self, token: str) -> Mapping[str, Any] | None:
        result = await self._engine.introspect(token, with_reason=False)
        return result.claims if result.active and result.grant is not None else None

    async def revoke(self, token: str) -> str | None:
        result = await self._engine.introspect(token, with_reason=False)
        if not result.active or result.grant is None:
            return None
        grant_id = result.grant.grant_id
        await self._engine.revoke_grant(None, grant_id, "RFC 7009 revocation")
        return grant_id

    def jwks(self) -> bytes:
        return self._engine.keys.jwks_json(self._engine.clock.now())

    def readiness(self) -> dict[str, str]:
        journal = self._engine.journal
        checks = {
            "policy": "ok" if self._health.ok else self._health.detail,
            "store": "ok"
            if (journal.store_healthy and self._store.check_writable())
            else "not writable",
            "audit": "ok" if journal.audit_healthy else "not writable",
            "signing_key": "ok" if self._engine.keys.current is not None else "missing",
        }
        checks.update({name: check() for name, check in self._checks.items()})
        return checks

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

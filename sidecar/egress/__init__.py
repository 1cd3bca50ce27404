"""Secretless HTTP egress: the agent calls an upstream API through the sidecar with its JIT
token; the sidecar checks the grant on every request and adds the upstream's credential,
which the agent never holds (docs/brokers.md, "Secretless HTTP egress").

- `settings.py`: the `--egress-config` file (listener, upstreams, how to inject);
- `grants.py`: the one thing the proxy needs from the sidecar (`GrantLookup`);
- `routes.py`: canonical paths and the policy's (action, resource) → (methods, path) route;
- `hygiene.py`: hop-by-hop fields, smuggling refusals, the agent's credential stripped, an
  echoed secret masked;
- `proxy.py`: the aiohttp listener and client that put it together.

Credentials come from brokers (`sidecar.brokers.static`, `sidecar.brokers.oauth2`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..clock import Clock
from ..metrics import Metrics
from .grants import ActiveGrant, EngineGrants, GrantLookup
from .proxy import AuditSink, EgressProxy
from .routes import OpaRoutes, Route, RouteSource
from .settings import EgressSettings, build_broker, load_egress_settings

if TYPE_CHECKING:
    from ..engine import Engine, GrantEndListeners

__all__ = [
    "ActiveGrant",
    "AuditSink",
    "EgressProxy",
    "EgressSettings",
    "EngineGrants",
    "GrantLookup",
    "OpaRoutes",
    "Route",
    "RouteSource",
    "create_egress",
    "load_egress_settings",
]


def create_egress(
    settings: EgressSettings,
    engine: Engine,
    *,
    grant_end: GrantEndListeners,
    opa_url: str,
    metrics: Metrics,
    clock: Clock,
    env: Mapping[str, str],
) -> EgressProxy:
    """The proxy over this sidecar's engine: grants from its memory, routes from its OPA,
    usage records into its journal. `grant_end` is the registry the engine was built with."""
    return EgressProxy(
        settings,
        grants=EngineGrants(engine, grant_end),
        routes=OpaRoutes(opa_url, settings.route_path, settings.route_timeout),
        brokers={
            name: build_broker(upstream, env, settings.secret_poll_interval)
            for name, upstream in settings.upstreams.items()
        },
        metrics=metrics,
        audit=engine.journal,
        clock=clock,
    )

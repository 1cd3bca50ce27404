"""The egress configuration: a TOML file named by `--egress-config` (docs/brokers.md,
"Secretless HTTP egress"), read once at start-up.

```toml
listen = "127.0.0.1:9480"            # or "unix:/run/jit/egress.sock"
[upstreams.ticket-api]
url = "https://tickets.internal:8443/api"
ca_file = "/etc/jit/tickets-ca.pem"  # trust for the upstream (default: the system's)
inject = "header"                    # a static secret in a header ...
header = "X-Api-Key"
format = "{secret}"                  # e.g. "Bearer {secret}"
secret_file = "/run/secrets/ticket-api"   # or secret_env = "TICKET_API_KEY"
[upstreams.crm]
url = "https://crm.internal/v2"
inject = "oauth2"                    # ... or an OAuth2 client-credentials token
token_url = "https://idp.internal/oauth2/token"
client_id = "jit-sidecar"
client_secret_file = "/run/secrets/crm-client"
scope = "tickets"
```

Secret values are never part of the settings: only where to read them. The brokers that
read them are built here (`build_broker`), so a future backend (Vault, OpenBao) is one more
`inject` kind.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..brokers import BrokerUnavailable
from ..brokers.oauth2 import ClientCredentials, OAuth2Broker
from ..brokers.sources import EnvSecret, SecretFile, SecretSource
from ..brokers.static import StaticBroker
from ..errors import ConfigError
from .routes import UPSTREAM_NAME

DEFAULT_ROUTE_PATH = "/v1/data/jit/egress_route"
_TOP_KEYS = frozenset(
    {"listen", "route_path", "route_timeout", "secret_poll_interval", "upstreams"}
)
_UPSTREAM_KEYS = frozenset(
    {
        "url",
        "ca_file",
        "timeout",
        "connect_timeout",
        "inject",
        "header",
        "format",
        "secret_file",
        "secret_env",
        "token_url",
        "client_id",
        "client_secret_file",
        "client_secret_env",
        "scope",
    }
)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str
    url: str
    """Base URL; the agent's path is appended to it."""
    inject: str
    """`header` (static secret) or `oauth2` (client credentials)."""
    header: str = "Authorization"
    format: str = "Bearer {secret}"
    ca_file: Path | None = None
    timeout: float = 30.0
    """Seconds the upstream may stay silent while answering (per read)."""
    connect_timeout: float = 5.0
    secret_file: Path | None = None
    secret_env: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret_file: Path | None = None
    client_secret_env: str = ""
    scope: str = ""


@dataclass(frozen=True, slots=True)
class EgressSettings:
    listen: str
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    route_path: str = DEFAULT_ROUTE_PATH
    route_timeout: float = 0.25
    secret_poll_interval: float = 1.0

    @property
    def unix_path(self) -> Path | None:
        return Path(self.listen[5:]) if self.listen.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"egress listen must be HOST:PORT or unix:PATH, got {self.listen!r}")
        return host.strip("[]"), int(port)


def load_egress_settings(path: Path) -> EgressSettings:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read egress config {path}: {err}") from err
    return parse_egress_settings(document, str(path))


def parse_egress_settings(document: Mapping[str, Any], source: str) -> EgressSettings:
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown egress setting(s) {sorted(unknown)}")
    listen = document.get("listen")
    if not isinstance(listen, str) or not listen:
        raise ConfigError(f"{source}: listen must be HOST:PORT or unix:PATH")
    upstreams_doc = document.get("upstreams", {})
    if not isinstance(upstreams_doc, dict) or not upstreams_doc:
        raise ConfigError(f"{source}: at least one [upstreams.NAME] table is required")
    upstreams = {
        name: _upstream(name, spec, source) for name, spec in sorted(upstreams_doc.items())
    }
    try:
        settings = EgressSettings(
            listen=listen,
            upstreams=upstreams,
            route_path=str(document.get("route_path", DEFAULT_ROUTE_PATH)),
            route_timeout=float(document.get("route_timeout", 0.25)),
            secret_poll_interval=float(document.get("secret_poll_interval", 1.0)),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from err
    if settings.unix_path is None:
        host, _ = settings.host_port
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            # Whoever reaches the listener can spend the agents' grants' upstream access
            # with a stolen token: keep it on the agent's host.
            raise ConfigError(f"{source}: egress listen must be on loopback or a Unix socket")
    return settings


def _upstream(name: str, spec: Any, source: str) -> UpstreamSettings:
    where = f"{source}: upstreams.{name}"
    if not UPSTREAM_NAME.fullmatch(name):
        raise ConfigError(f"{where}: the name must be lower-case dot-separated labels")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(spec) - _UPSTREAM_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
    values: dict[str, Any] = {"name": name}
    for key, raw in spec.items():
        if key.endswith("_file"):
            values[key] = Path(str(raw))
        elif key.endswith("timeout"):
            values[key] = float(raw)
        else:
            values[key] = str(raw)
    try:
        upstream = UpstreamSettings(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    url = urlsplit(upstream.url)
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        raise ConfigError(f"{where}: url must be https://host[:port][/base] (no query)")
    if url.scheme == "http" and not _loopback_host(url.hostname):
        raise ConfigError(f"{where}: plain http is only for loopback upstreams; use https")
    if upstream.inject not in ("header", "oauth2"):
        raise ConfigError(f"{where}: inject must be header or oauth2")
    if "{secret}" not in upstream.format or any(c in upstream.format for c in "\r\n"):
        raise ConfigError(f"{where}: format must contain {{secret}} and no line break")
    if upstream.inject == "header" and bool(upstream.secret_file) == bool(upstream.secret_env):
        raise ConfigError(f"{where}: set exactly one of secret_file and secret_env")
    if upstream.inject == "oauth2" and (
        not upstream.token_url
        or not upstream.client_id
        or bool(upstream.client_secret_file) == bool(upstream.client_secret_env)
    ):
        raise ConfigError(
            f"{where}: oauth2 needs token_url, client_id and one of client_secret_file, "
            "client_secret_env"
        )
    return upstream


def _loopback_host(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ssl_context(upstream: UpstreamSettings) -> ssl.SSLContext:
    """Verification on (hostname and chain), trusting `ca_file` when set."""
    context = ssl.create_default_context(
        cafile=str(upstream.ca_file) if upstream.ca_file is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def secret_source(
    path: Path | None, env_name: str, env: Mapping[str, str], *, broker: str, poll: float
) -> SecretSource:
    """The source, read once now: a secret missing at start-up is a configuration error,
    not a failure of the first request."""
    try:
        source: SecretSource = (
            SecretFile(path, broker=broker, poll_interval=poll)
            if path is not None
            else EnvSecret(env_name, env, broker=broker)
        )
        source.current()
    except BrokerUnavailable as err:
        raise ConfigError(err.message) from None
    return source


def build_broker(
    upstream: UpstreamSettings, env: Mapping[str, str], poll: float
) -> StaticBroker | OAuth2Broker:
    """The broker that supplies this upstream's credential."""
    if upstream.inject == "header":
        return StaticBroker(
            upstream.name,
            secret_source(
                upstream.secret_file, upstream.secret_env, env, broker="static", poll=poll
            ),
        )
    token_url = urlsplit(upstream.token_url)
    return OAuth2Broker(
        upstream.name,
        ClientCredentials(
            token_url=upstream.token_url,
            client_id=upstream.client_id,
            client_secret=secret_source(
                upstream.client_secret_file,
                upstream.client_secret_env,
                env,
                broker="oauth2",
                poll=poll,
            ),
            scope=upstream.scope,
            ssl=ssl_context(upstream) if token_url.scheme == "https" else None,
        ),
    )

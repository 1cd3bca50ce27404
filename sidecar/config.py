"""Configuration: one frozen object, built once at start-up.

Sources, lowest precedence first: defaults, an optional TOML file (`--config`), environment
variables `JIT_SIDECAR_<NAME>`, command-line flags `--<name>`. Nothing else in the package
reads `os.environ`. docs/configuration.md is generated from the field metadata below
(`python -m sidecar.config --markdown`), and a test keeps the two in sync.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "JIT_SIDECAR_"
IDENTITY_MODES = ("dev", "jwt-svid", "oidc")
SIGNING_ALGS = ("EdDSA", "ES256")
ED25519_ALG_NAMES = ("EdDSA", "Ed25519")
DURABILITY = ("fsync", "flush")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("uvloop", "asyncio")


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback IP address (a name other than localhost is not trusted to be)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _octal(value: str) -> int:
    return int(value, 8)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _mapping(values: Sequence[str] | Mapping[str, str] | str) -> dict[str, str]:
    """`DOMAIN=VALUE` items (repeated flag, comma-separated env var, or a TOML table)."""
    if isinstance(values, Mapping):
        return {str(k): str(v) for k, v in values.items()}
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _list(values: Sequence[str] | str) -> tuple[str, ...]:
    """Comma-separated items, from one string or each of several (repeated flag, TOML)."""
    if isinstance(values, str):
        values = [values]
    return tuple(v.strip() for item in values for v in str(item).split(",") if v.strip())


def _opt(
    help: str,
    *,
    parse: Callable[[Any], Any] = str,
    choices: Sequence[str] | None = None,
    repeat: bool = False,
    metavar: str | None = None,
    env_only: bool = False,
) -> dict[str, Any]:
    """`env_only`: a secret, read from the environment only: no flag (visible in `ps`) and
    no key of the TOML file."""
    return {
        "help": help,
        "parse": parse,
        "choices": choices,
        "repeat": repeat,
        "metavar": metavar,
        "env_only": env_only,
    }


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `jit-sidecar serve` can be told. See docs/configuration.md."""

    # --- listeners
    socket: Path = field(
        default=Path("var/sidecar.sock"),
        metadata=_opt("Unix socket agents call (gRPC jit.v1.AccessService).", parse=Path),
    )
    socket_mode: int = field(
        default=0o660,
        metadata=_opt("File mode of the agent socket (octal).", parse=_octal, metavar="MODE"),
    )
    admin_socket: Path = field(
        default=Path("var/admin.sock"),
        metadata=_opt(
            "Unix socket for operators (jit.v1.AdminService); mode 0600, agents must not reach it.",
            parse=Path,
        ),
    )
    http_addr: str = field(
        default="127.0.0.1:9464",
        metadata=_opt(
            "HOST:PORT of the HTTP listener (/metrics, /healthz, /readyz, JWKS, /introspect, "
            "/revoke); empty disables it.",
        ),
    )
    http_token_file: Path | None = field(
        default=None,
        metadata=_opt(
            "File holding the bearer credential /introspect and /revoke require (RFC 7662 "
            "§2.1, RFC 7009 §2.1). Without it they answer 401 to every caller, unless "
            "http_allow_anonymous_loopback is set.",
            parse=_optional_path,
        ),
    )
    http_allow_anonymous_loopback: bool = field(
        default=False,
        metadata=_opt(
            "Serve /introspect and /revoke without a credential to every local user (a "
            "laptop); refused beyond loopback and together with http_token_file.",
            parse=_bool,
        ),
    )
    http_header_timeout: float = field(
        default=10.0,
        metadata=_opt(
            "Seconds an HTTP connection gets to send a complete request head, from when it "
            "opens or from the previous response (also the keep-alive idle limit).",
            parse=float,
        ),
    )
    http_body_timeout: float = field(
        default=10.0,
        metadata=_opt(
            "Seconds a request body (/introspect, /revoke, AuthZEN, Shared Signals) gets to "
            "arrive (then 408).",
            parse=float,
        ),
    )
    http_max_connections: int = field(
        default=128,
        metadata=_opt(
            "HTTP connections open at once; one more is answered 503 and closed. Lowered to "
            "a quarter of the open-file limit when that is smaller, so the agents' socket, "
            "the store and the audit log keep their file descriptors. A Shared Signals poll "
            "holds one, busy, for up to 5 s.",
            parse=int,
        ),
    )
    ssf_state: Path | None = field(
        default=None,
        metadata=_opt(
            "SQLite file of the Shared Signals transmitter (streams and undelivered events); "
            "default: ssf.db next to the local SQLite state.",
            parse=_optional_path,
        ),
    )
    # --- policy
    opa_url: str = field(
        default="http://127.0.0.1:8181",
        metadata=_opt("OPA server: http://HOST:PORT or unix:///path/to/opa.sock."),
    )
    opa_decision_path: str = field(
        default="/v1/data/jit/decision",
        metadata=_opt("OPA Data API path of the decision document."),
    )
    authzen_decision_path: str = field(
        default="jit/authzen/decision",
        metadata=_opt(
            "OPA document (slash-separated, under /v1/data) that decides AuthZEN requests "
            "(docs/authzen.md).",
        ),
    )
    opa_timeout: float = field(
        default=0.25,
        metadata=_opt("Seconds to wait for one OPA decision before failing closed.", parse=float),
    )
    # --- state, audit, keys
    state: str = field(
        default="sqlite:var/state.db",
        metadata=_opt(
            "Where tasks and grants persist: sqlite:PATH, or redis://[USER:PASSWORD@]HOST:PORT "
            "(rediss:// for TLS) to share revocations, the kill switch and public keys with a "
            "fleet of sidecars (local state then lives in local_state; see docs/scale-out.md)."
        ),
    )
    audit_log: Path = field(
        default=Path("var/audit.jsonl"),
        metadata=_opt("Append-only, hash-chained JSON Lines audit log.", parse=Path),
    )
    durability: str = field(
        default="fsync",
        metadata=_opt(
            "fsync: a grant's audit record is on disk (one fsync shared by concurrent requests) "
            "before its token is returned; flush: written to the OS only (survives a process "
            "crash, not a power loss).",
            choices=DURABILITY,
        ),
    )
    audit_rotate_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=_opt(
            "Rotate the audit log when it reaches this size (0: never). The new file's first "
            "record chains to the last hash of the rotated one.",
            parse=int,
        ),
    )
    audit_checkpoint_interval: float = field(
        default=10.0,
        metadata=_opt(
            "Seconds between signed checkpoints of the audit log's end (written only when it "
            "grew, and at shutdown) in <audit_log>.checkpoint; `audit verify` detects records "
            "removed before the newest one.",
            parse=float,
        ),
    )
    signing_key: Path | None = field(
        default=None,
        metadata=_opt(
            "PEM private key (Ed25519 or P-256) that signs tokens. In dev mode a key is "
            "generated at var/signing-key.pem (mode 0600) when missing.",
            parse=_optional_path,
        ),
    )
    signing_alg: str = field(
        default="EdDSA",
        metadata=_opt("Token signature algorithm for generated keys.", choices=SIGNING_ALGS),
    )
    ed25519_alg: str = field(
        default="EdDSA",
        metadata=_opt(
            "JWS `alg` that tokens signed with an Ed25519 key carry (header and JWKS): `EdDSA` "
            "(RFC 8037, known to every JOSE library) or its fully specified name `Ed25519` (RFC "
            "9864; use it once every resource server's verifier accepts it). The signature is "
            "the same; sidecar.verify accepts both.",
            choices=ED25519_ALG_NAMES,
        ),
    )
    issuer: str = field(
        default="https://jit-sidecar.local",
        metadata=_opt("`iss` of every token; resource servers match it exactly."),
    )
    # --- fleet (shared state on Redis; see docs/scale-out.md)
    local_state: str = field(
        default="sqlite:var/state.db",
        metadata=_opt(
            "With a redis:// state: this sidecar's own SQLite store (tasks, grants, approvals "
            "and the outbox of changes not yet in Redis)."
        ),
    )
    redis_password_file: Path | None = field(
        default=None,
        metadata=_opt(
            "File holding the Redis password (used when the state URL carries none).",
            parse=_optional_path,
        ),
    )
    redis_ca_file: Path | None = field(
        default=None,
        metadata=_opt(
            "CA bundle (PEM) that verifies Redis' TLS certificate with rediss:// (default: the "
            "system store).",
            parse=_optional_path,
        ),
    )
    redis_cluster: bool = field(
        default=False,
        metadata=_opt(
            "The state URL names one node of a Redis Cluster (keys are hash-tagged per task).",
            parse=_bool,
        ),
    )
    redis_prefix: str = field(
        default="jit",
        metadata=_opt(
            "Prefix of every Redis key; fleets sharing one Redis use different prefixes."
        ),
    )
    redis_timeout: float = field(
        default=0.5,
        metadata=_opt(
            "Seconds to wait for Redis on the write path before treating it as unavailable.",
            parse=float,
        ),
    )
    redis_stream_retention: float = field(
        default=300.0,
        metadata=_opt(
            "Seconds revocation events stay in the Redis stream; a sidecar disconnected for "
            "longer resynchronises from the revocation index instead.",
            parse=float,
        ),
    )
    fleet_stale_after: float = field(
        default=2.0,
        metadata=_opt(
            "Seconds without confirmed contact with Redis after which the revocation view is "
            "stale: introspection answers inactive (fail closed) and /readyz fails.",
            parse=float,
        ),
    )
    fleet_id: str = field(
        default="",
        metadata=_opt(
            "This sidecar's name in the fleet (audit records of revocations made elsewhere "
            "name their origin); default: host name plus a hash of the audit log path."
        ),
    )
    # --- identity
    identity: str = field(
        default="",
        metadata=_opt(
            "How callers are identified: dev (trusts every local caller; local testing only), "
            "jwt-svid or oidc. Required by `serve`.",
            choices=IDENTITY_MODES,
        ),
    )
    dev_subject: str = field(
        default="spiffe://jit.local/agent/dev",
        metadata=_opt("The identity every caller gets in dev mode."),
    )
    trust_bundle: dict[str, str] = field(
        default_factory=dict,
        metadata=_opt(
            "DOMAIN=PATH of a JWKS trust bundle per SPIFFE trust domain (repeatable).",
            parse=_mapping,
            repeat=True,
            metavar="DOMAIN=PATH",
        ),
    )
    audience: str = field(
        default="jit-sidecar",
        metadata=_opt("Audience caller identity tokens must be issued for."),
    )
    identity_leeway: int = field(
        default=10,
        metadata=_opt(
            "Clock skew in seconds tolerated on identity tokens' exp, nbf and iat.", parse=int
        ),
    )
    trust_domains: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "jwt-svid: SPIFFE trust domains callers may belong to (comma-separated or "
            "repeated); empty allows every domain that has a bundle.",
            parse=_list,
            repeat=True,
            metavar="DOMAIN",
        ),
    )
    trust_bundle_refresh: float = field(
        default=2.0,
        metadata=_opt("Seconds between checks of the trust bundle files for changes.", parse=float),
    )
    spiffe_endpoint_socket: str = field(
        default="",
        metadata=_opt(
            "jwt-svid: SPIFFE Workload API address (unix:///path/agent.sock) to fetch and watch "
            "JWT bundles from; the standard SPIFFE_ENDPOINT_SOCKET variable is honoured too.",
        ),
    )
    oidc_issuer: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "oidc: issuers whose ID tokens are accepted (exact match; comma-separated or "
            "repeated).",
            parse=_list,
            repeat=True,
            metavar="URL",
        ),
    )
    oidc_subject_map: dict[str, str] = field(
        default_factory=dict,
        metadata=_opt(
            "oidc: PATTERN=TEMPLATE rules mapping a token's sub to the agent identity, first "
            "match wins, e.g. `system:serviceaccount:{ns}:{sa}="
            "spiffe://cluster.local/ns/{ns}/sa/{sa}` (repeatable).",
            parse=_mapping,
            repeat=True,
            metavar="PATTERN=TEMPLATE",
        ),
    )
    oidc_ca_file: Path | None = field(
        default=None,
        metadata=_opt(
            "oidc: CA bundle (PEM) that verifies the issuers' TLS certificates (e.g. the "
            "Kubernetes API server's ca.crt); default: the system store.",
            parse=_optional_path,
        ),
    )
    oidc_fetch_token_file: Path | None = field(
        default=None,
        metadata=_opt(
            "oidc: file with a bearer token sent when fetching discovery documents and JWKS "
            "(re-read on every fetch), e.g. the sidecar's own service-account token.",
            parse=_optional_path,
        ),
    )
    oidc_refresh: float = field(
        default=300.0,
        metadata=_opt(
            "oidc: seconds between background refreshes of each issuer's keys.", parse=float
        ),
    )
    oidc_keys_max_age: float = field(
        default=3600.0,
        metadata=_opt(
            "oidc: seconds fetched keys stay usable while the issuer is unreachable; after "
            "that, its tokens are refused (fail closed).",
            parse=float,
        ),
    )
    # --- limits
    max_ttl: int = field(
        default=900,
        metadata=_opt("Global maximum token lifetime in seconds.", parse=int),
    )
    max_ttl_jit: int = field(
        default=300,
        metadata=_opt("Maximum token lifetime of JIT-tier grants in seconds.", parse=int),
    )
    max_requested_ttl: int = field(
        default=86400,
        metadata=_opt(
            "Requested TTLs above max_ttl are clamped; above this they are rejected as absurd "
            "(invalid_ttl).",
            parse=int,
        ),
    )
    default_task_duration: int = field(
        default=600,
        metadata=_opt("Task lifetime in seconds when BeginTask asks for 0.", parse=int),
    )
    max_task_duration: int = field(
        default=86400,
        metadata=_opt("Longest task lifetime a caller may ask for, in seconds.", parse=int),
    )
    heartbeat_interval: int = field(
        default=5,
        metadata=_opt("Seconds between the heartbeats an agent must send.", parse=int),
    )
    heartbeat_misses: int = field(
        default=3,
        metadata=_opt(
            "Missed heartbeat intervals after which a task counts as crashed.", parse=int
        ),
    )
    max_grants_per_task: int = field(
        default=1000,
        metadata=_opt("Grants one task may hold at once (active ones).", parse=int),
    )
    max_tasks_per_identity: int = field(
        default=100,
        metadata=_opt("Active tasks one identity may hold at once.", parse=int),
    )
    max_open_approvals_per_task: int = field(
        default=10,
        metadata=_opt(
            "Approval requests one task may have open at once (pending, or approved and not "
            "yet collected); each one is kept, audited and sent to the approval webhook.",
            parse=int,
        ),
    )
    max_concurrent_rpcs: int = field(
        default=256,
        metadata=_opt("RPCs served at once; more get RESOURCE_EXHAUSTED.", parse=int),
    )
    max_rpcs_per_identity: int = field(
        default=64,
        metadata=_opt(
            "RPCs one caller identity may have in flight at once; more get RESOURCE_EXHAUSTED "
            "too_many_requests, so one noisy agent cannot take every slot of "
            "max_concurrent_rpcs.",
            parse=int,
        ),
    )
    max_message_bytes: int = field(
        default=64 * 1024,
        metadata=_opt("Largest gRPC message accepted or sent.", parse=int),
    )
    rpc_timeout: float = field(
        default=10.0,
        metadata=_opt("Server-side cap on one call's duration, in seconds.", parse=float),
    )
    shutdown_grace: float = field(
        default=10.0,
        metadata=_opt("Seconds in-flight calls get to finish on SIGTERM.", parse=float),
    )
    sweep_interval: float = field(
        default=1.0,
        metadata=_opt(
            "Longest sleep of the expiry sweeper, in seconds (it wakes earlier when something "
            "is due).",
            parse=float,
        ),
    )
    # --- human approval
    approval_ttl: int = field(
        default=600,
        metadata=_opt(
            "Seconds an approval request stays open (and an approval collectable).", parse=int
        ),
    )
    approval_webhook_url: str = field(
        default="",
        metadata=_opt("URL that receives a JSON POST for every new approval request."),
    )
    approval_webhook_secret_file: Path | None = field(
        default=None,
        metadata=_opt(
            "File with the HMAC-SHA256 key for the webhook's X-JIT-Signature header.",
            parse=_optional_path,
        ),
    )
    decision_cache_size: int = field(
        default=10_000,
        metadata=_opt("Entries in the standing-decision cache (LRU).", parse=int),
    )
    event_loop: str = field(
        default="uvloop",
        metadata=_opt(
            "Event loop of `serve`: uvloop (less CPU per grant, see docs/performance.md) or "
            "asyncio (the standard library's).",
            choices=EVENT_LOOPS,
        ),
    )
    # --- brokers
    egress_config: Path | None = field(
        default=None,
        metadata=_opt(
            "TOML file configuring the secretless HTTP egress proxy (listener, upstreams, "
            "credential injection; docs/brokers.md); unset disables it.",
            parse=_optional_path,
        ),
    )
    egress_env: Mapping[str, str] = field(
        default_factory=dict, repr=False, compare=False, metadata={"internal": True}
    )
    """Not a setting: the environment variables the egress file names as secret sources
    (`secret_env`, `client_secret_env`), taken by `load` from the environment it reads, so
    that nothing else reads it."""
    # --- logging
    log_level: str = field(default="info", metadata=_opt("Log level.", choices=LOG_LEVELS))
    log_format: str = field(
        default="json",
        metadata=_opt(
            "json: one object per line on stderr; text: for people.", choices=LOG_FORMATS
        ),
    )
    # --- credential brokers (docs/brokers.md)
    broker_postgres_dsn_file: Path | None = field(
        default=None,
        metadata=_opt(
            "File holding the libpq connection string of the PostgreSQL broker's admin login "
            "(CREATEROLE; GRANT OPTION or ownership on the tables it hands out). Setting it, or "
            "the environment variable below, enables the postgres broker.",
            parse=_optional_path,
        ),
    )
    broker_postgres_dsn: str = field(
        default="",
        repr=False,
        metadata=_opt(
            "The same connection string, from the environment only (a secret is never a flag "
            "or a file setting); exclusive with broker_postgres_dsn_file.",
            env_only=True,
        ),
    )
    broker_postgres_agent_host: str = field(
        default="",
        metadata=_opt(
            "Host agents connect to with a brokered login (default: the admin DSN's host)."
        ),
    )
    broker_postgres_agent_port: int = field(
        default=0,
        metadata=_opt("Port agents connect to (0: the admin DSN's port).", parse=int),
    )
    broker_postgres_databases: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "Databases the postgres broker may grant on (default: any the admin login reaches).",
            parse=_list,
            repeat=True,
        ),
    )
    broker_postgres_connection_limit: int = field(
        default=2,
        metadata=_opt("CONNECTION LIMIT of every brokered login.", parse=int),
    )
    broker_postgres_statement_timeout_ms: int = field(
        default=30_000,
        metadata=_opt("statement_timeout pinned on every brokered login.", parse=int),
    )
    broker_retry_max: float = field(
        default=15.0,
        metadata=_opt(
            "Longest wait (seconds) between retries of a broker revocation that failed "
            "(exponential backoff from 0.25 s).",
            parse=float,
        ),
    )
    # --- delegation (issue 21, docs/delegation.md)
    principal_issuer: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "Issuers whose OIDC ID or access tokens BeginTask accepts as a subject token (the "
            "person a task acts for; exact match; comma-separated or repeated). Empty: only "
            "access tokens this sidecar issued to a task with a principal are accepted.",
            parse=_list,
            repeat=True,
            metavar="URL",
        ),
    )
    principal_audience: str = field(
        default="jit-sidecar",
        metadata=_opt("Audience a subject token (a person's token) must be issued for."),
    )
    principal_leeway: int = field(
        default=10,
        metadata=_opt(
            "Clock skew in seconds tolerated on subject tokens' exp, nbf and iat (0-60).",
            parse=int,
        ),
    )
    principal_claims: tuple[str, ...] = field(
        default=("email", "name", "groups"),
        metadata=_opt(
            "Claims of a subject token recorded in the task and shown to the policy as "
            "input.principal.claims (an allow-list; comma-separated or repeated).",
            parse=_list,
            repeat=True,
            metavar="CLAIM",
        ),
    )
    # --- streaming (GrantStream, issue 24)
    opa_batch_path: str = field(
        default="/v1/data/jit/batch_decisions",
        metadata=_opt(
            "OPA Data API path deciding several intents in one evaluation (GrantStream); "
            "empty, or a policy without it, decides them one call each."
        ),
    )

    # ------------------------------------------------------------------ derived views
    @property
    def sqlite_path(self) -> Path:
        kind, _, rest = self.state.partition(":")
        if kind != "sqlite" or not rest:
            raise ConfigError(f"state must be sqlite:PATH, got {self.state!r}")
        return Path(rest)

    @property
    def http_host_port(self) -> tuple[str, int] | None:
        if not self.http_addr:
            return None
        host, sep, port = self.http_addr.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"http_addr must be HOST:PORT, got {self.http_addr!r}")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104

    @property
    def http_is_loopback(self) -> bool:
        hp = self.http_host_port
        return hp is None or is_loopback_host(hp[0])

    def validate(self, *, serving: bool = True) -> Config:
        """Raise ConfigError naming the first setting that cannot work."""
        problems: list[str] = []
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not (f.name == "identity" and not serving):
                problems.append(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        positive = (
            "max_ttl",
            "max_ttl_jit",
            "max_requested_ttl",
            "default_task_duration",
            "max_task_duration",
            "heartbeat_interval",
            "heartbeat_misses",
            "max_grants_per_task",
            "max_tasks_per_identity",
            "max_open_approvals_per_task",
            "max_concurrent_rpcs",
            "max_rpcs_per_identity",
            "max_message_bytes",
            "approval_ttl",
            "decision_cache_size",
            "http_max_connections",
        )
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in (
            "opa_timeout",
            "rpc_timeout",
            "sweep_interval",
            "http_header_timeout",
            "http_body_timeout",
            "audit_checkpoint_interval",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be greater than 0")
        if self.audit_rotate_bytes < 0:
            problems.append("audit_rotate_bytes must not be negative")
        if self.shutdown_grace < 0:
            problems.append("shutdown_grace must not be negative")
        if self.max_requested_ttl < self.max_ttl:
            problems.append("max_requested_ttl must be at least max_ttl")
        if self.default_task_duration > self.max_task_duration:
            problems.append("default_task_duration must not exceed max_task_duration")
        if not 0 <= self.socket_mode <= 0o777:
            problems.append("socket_mode must be an octal file mode such as 660")
        if not self.opa_url.startswith(("http://", "https://", "unix://")):
            problems.append("opa_url must start with http://, https:// or unix://")
        if not self.opa_decision_path.startswith("/v1/data/"):
            problems.append("opa_decision_path must be an OPA Data API path (/v1/data/...)")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(/[a-z_][a-z0-9_]*)*", self.authzen_decision_path):
            problems.append(
                "authzen_decision_path must be slash-separated Rego identifiers, e.g. "
                "jit/authzen/decision"
            )
        if self.opa_batch_path and not self.opa_batch_path.startswith("/v1/data/"):
            problems.append("opa_batch_path must be empty or an OPA Data API path (/v1/data/...)")
        try:
            self.http_host_port  # noqa: B018
        except ConfigError as err:
            problems.append(err.message)
        if not self.shared_state and (
            not self.state.startswith("sqlite:") or not self.state.partition(":")[2]
        ):
            problems.append(
                "state must be sqlite:PATH or redis://HOST:PORT (rediss:// for TLS), "
                f"got {self.state!r}"
            )
        if self.shared_state:
            problems.extend(self._fleet_problems())
        if serving and self.identity == "dev" and not self.http_is_loopback:
            problems.append(
                "dev identity trusts every local caller; it is refused while http_addr is "
                "bound beyond loopback"
            )
        if serving and self.identity == "dev" and self.socket_mode & 0o007:
            problems.append(
                "dev identity trusts every caller of the socket; it is refused while "
                "socket_mode lets every local user connect (use 660 or stricter)"
            )
        if serving:
            problems.extend(self._identity_problems())
        problems.extend(self._principal_problems())
        if serving and not self.http_is_loopback and self.http_token_file is None:
            problems.append(
                "http_addr is bound beyond loopback: set http_token_file so /introspect and "
                "/revoke require a bearer credential"
            )
        if self.http_allow_anonymous_loopback and not self.http_is_loopback:
            problems.append(
                "http_allow_anonymous_loopback is refused while http_addr is bound beyond loopback"
            )
        if self.http_allow_anonymous_loopback and self.http_token_file is not None:
            problems.append("set either http_token_file or http_allow_anonymous_loopback, not both")
        problems.extend(self._broker_problems())
        if self.approval_webhook_url and not self.approval_webhook_url.startswith(
            ("http://", "https://")
        ):
            problems.append("approval_webhook_url must be an http:// or https:// URL")
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def _identity_problems(self) -> list[str]:
        problems: list[str] = []
        if self.identity_leeway < 0 or self.identity_leeway > 300:
            problems.append("identity_leeway must be between 0 and 300 seconds")
        for name in ("trust_bundle_refresh", "oidc_refresh", "oidc_keys_max_age"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be greater than 0")
        if self.oidc_keys_max_age < self.oidc_refresh:
            problems.append("oidc_keys_max_age must be at least oidc_refresh")
        if self.identity == "jwt-svid":
            if not self.trust_bundle and not self.spiffe_endpoint_socket:
                problems.append(
                    "identity jwt-svid needs trust bundles: set trust_bundle DOMAIN=PATH or "
                    "spiffe_endpoint_socket (SPIFFE_ENDPOINT_SOCKET)"
                )
            if self.trust_domains and self.trust_bundle and not self.spiffe_endpoint_socket:
                unknown = sorted(set(self.trust_domains) - set(self.trust_bundle))
                if unknown:
                    problems.append("trust_domains without a trust_bundle: " + ", ".join(unknown))
        if self.identity == "oidc":
            if not self.oidc_issuer:
                problems.append("identity oidc needs at least one oidc_issuer")
            if not self.oidc_subject_map:
                problems.append(
                    "identity oidc needs oidc_subject_map rules (PATTERN=TEMPLATE) mapping the "
                    "token subject to an agent identity"
                )
            if self.issuer in self.oidc_issuer:
                problems.append(
                    "oidc_issuer must not list this sidecar's own issuer: its access tokens "
                    "are never a caller identity"
                )
            for iss in self.oidc_issuer:
                if not iss.startswith("https://") and not _loopback_url(iss):
                    problems.append(f"oidc_issuer {iss!r} must be an https:// URL")
        return problems

    def _broker_problems(self) -> list[str]:
        problems: list[str] = []
        if self.broker_postgres_dsn and self.broker_postgres_dsn_file is not None:
            problems.append(
                "set either broker_postgres_dsn_file or JIT_SIDECAR_BROKER_POSTGRES_DSN, not both"
            )
        if not 0 <= self.broker_postgres_agent_port <= 65535:
            problems.append("broker_postgres_agent_port must be a TCP port (0: the admin DSN's)")
        for name in ("broker_postgres_connection_limit", "broker_postgres_statement_timeout_ms"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.broker_retry_max <= 0:
            problems.append("broker_retry_max must be greater than 0")
        return problems

    def _principal_problems(self) -> list[str]:
        problems: list[str] = []
        if not 0 <= self.principal_leeway <= 60:
            problems.append("principal_leeway must be between 0 and 60 seconds")
        if self.principal_issuer and not self.principal_audience:
            problems.append("principal_issuer needs a principal_audience")
        if self.issuer in self.principal_issuer:
            problems.append(
                "principal_issuer must not list this sidecar's own issuer: its tokens are "
                "accepted as subject tokens without it"
            )
        for iss in self.principal_issuer:
            if not iss.startswith("https://") and not _loopback_url(iss):
                problems.append(f"principal_issuer {iss!r} must be an https:// URL")
        if set(self.principal_issuer) & set(self.oidc_issuer) and (
            self.principal_audience == self.audience
        ):
            # Otherwise an agent's own identity token would pass for a person's.
            problems.append(
                "an issuer in both oidc_issuer and principal_issuer needs a principal_audience "
                "other than audience"
            )
        return problems

    def _fleet_problems(self) -> list[str]:
        problems: list[str] = []
        if not self.local_state.startswith("sqlite:") or not self.local_state.partition(":")[2]:
            problems.append(f"local_state must be sqlite:PATH, got {self.local_state!r}")
        if not REDIS_PREFIX_RE.fullmatch(self.redis_prefix):
            problems.append("redis_prefix must be 1-32 letters, digits, '.', '_' or '-'")
        for name in ("redis_timeout", "redis_stream_retention", "fleet_stale_after"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be greater than 0")
        if len(self.fleet_id) > 128 or any(ord(c) < 33 for c in self.fleet_id):
            problems.append("fleet_id must be at most 128 printable characters without spaces")
        return problems

    @property
    def ssf_path(self) -> Path:
        """Where the Shared Signals transmitter keeps its streams and queue."""
        if self.ssf_state is not None:
            return self.ssf_state
        local = self.local_state if self.shared_state else self.state
        return Path(local.partition(":")[2]).parent / "ssf.db"

    @property
    def shared_state(self) -> bool:
        """True when state is shared with a fleet through Redis."""
        return self.state.startswith(REDIS_SCHEMES)


def _loopback_url(url: str) -> bool:
    """http://127.0.0.1:PORT and friends: plain HTTP is tolerated only on loopback (tests)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


REDIS_SCHEMES = ("redis://", "rediss://")
REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")


def setting_fields() -> tuple[Field[Any], ...]:
    """The fields of Config that are settings (flags, environment variables, file keys)."""
    return tuple(f for f in fields(Config) if not f.metadata.get("internal"))


_FIELDS = {f.name: f for f in setting_fields()}
#: Standard variable of the SPIFFE Workload API; honoured below JIT_SIDECAR_SPIFFE_ENDPOINT_SOCKET.
SPIFFE_ENDPOINT_SOCKET = "SPIFFE_ENDPOINT_SOCKET"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse(name: str, raw: Any, source: str) -> Any:
    f = _FIELDS[name]
    parse = f.metadata["parse"]
    try:
        if isinstance(raw, str) or f.metadata["repeat"]:
            return parse(raw)
        if isinstance(raw, bool | int | float) and parse in (int, float, _bool):
            return parse(raw)
        if parse is _octal and isinstance(raw, int):
            return _octal(str(raw))
        return parse(str(raw))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: bad value for {name}: {err}") from err


def load(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    serving: bool = True,
) -> Config:
    """Build the Config: defaults < TOML file < environment < explicit overrides."""
    values: dict[str, Any] = {}
    env = env if env is not None else {}
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        try:
            document = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read config file {config_file}: {err}") from err
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            if _FIELDS[name].metadata["env_only"]:
                raise ConfigError(f"{config_file}: {key} is a secret: set {env_name(name)}")
            values[name] = _parse(name, raw, str(config_file))
    if env.get(SPIFFE_ENDPOINT_SOCKET) and "spiffe_endpoint_socket" not in values:
        values["spiffe_endpoint_socket"] = env[SPIFFE_ENDPOINT_SOCKET]
    for name in _FIELDS:
        raw = env.get(env_name(name))
        if raw is not None:
            values[name] = _parse(name, raw, env_name(name))
    for name, raw in (overrides or {}).items():
        if raw is None or (isinstance(raw, list) and not raw):
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        if _FIELDS[name].metadata["env_only"]:
            raise ConfigError(f"{name} is a secret: set {env_name(name)}, never a flag")
        values[name] = _parse(name, raw, flag_name(name))
    egress_config = values.get("egress_config")
    if egress_config is not None:
        values["egress_env"] = _egress_env(egress_config, env)
    return replace(Config(), **values).validate(serving=serving)


def _egress_env(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` that the egress file names as secret sources. The file itself
    is checked when the proxy is built (sidecar/egress/settings.py): one it cannot read here
    names nothing, and its loader reports it."""
    try:
        upstreams = tomllib.loads(path.read_text()).get("upstreams")
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    names = {
        spec.get(key)
        for spec in (upstreams.values() if isinstance(upstreams, dict) else ())
        if isinstance(spec, dict)
        for key in ("secret_env", "client_secret_env")
    }
    return {name: env[name] for name in names if isinstance(name, str) and name in env}


def markdown_reference() -> str:
    """The configuration reference in docs/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `sidecar/config.py` by `python -m sidecar.config --markdown`; a test "
        "keeps it in sync.",
        "",
        "Each setting is a flag of `jit-sidecar serve`, an environment variable and a key of "
        "the optional TOML file given with `--config FILE` (or `JIT_SIDECAR_CONFIG`). "
        "Precedence: flag > environment > file > default.",
        "",
        "| flag | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in setting_fields():
        if f.default is not MISSING:
            default: Any = f.default
        else:
            default = f.default_factory()  # type: ignore[operator]
        if f.metadata["parse"] is _octal:
            shown = f"{default:o}"
        elif default in (None, "", {}):
            shown = "(none)"
        else:
            shown = str(default)
        meaning = f.metadata["help"]
        if f.metadata["choices"]:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        if f.metadata["repeat"]:
            meaning += " Repeatable."
        flag = "(environment only)" if f.metadata["env_only"] else f"`{flag_name(f.name)}`"
        lines.append(f"| {flag} | `{env_name(f.name)}` | `{shown}` | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown_reference())
    else:
        sys.exit("usage: python -m sidecar.config --markdown")

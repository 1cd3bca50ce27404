"""The composition root and the listeners of one sidecar.

`build_app(config)` wires every part from the Config, in one readable sequence, and starts
nothing. Then, each on its own:
- `start_app(app)` loads trust material, starts the journal, records the signing key in use,
  starts the Shared Signals transmitter, ends what expired while the sidecar was down, joins
  the fleet and probes OPA;
- `start_agent_listener(app)` and `start_admin_listener(app)` serve gRPC on the agent and
  admin sockets; `open_http_listener(app, fd_limit)` binds the HTTP listener
  (sidecar/http.py) and its `start()` serves it; it sees the sidecar only through
  `EngineEndpoints`; with `--egress-config`, `app.egress` is the secretless HTTP egress
  proxy (sidecar/egress/), served after the admin listener.
`Sidecar(app)` starts and stops all of them with the background loops (sweeper, OPA probe);
`serve(config)` runs one until SIGTERM/SIGINT and reloads the key file on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import __version__, reflection
from ._proto.jit.v1 import access_pb2, access_pb2_grpc, admin_pb2, admin_pb2_grpc
from .admission import RequestAdmission, core_receive_limit
from .approvals import WebhookNotifier
from .audit import AuditFile
from .authzen import AuthzenService, OpaDecider
from .brokers.configured import configured_brokers
from .cache import DecisionCache
from .checkpoints import Checkpointer
from .clock import Clock, SystemClock
from .config import Config
from .egress import EgressProxy, create_egress, load_egress_settings
from .endpoints import EngineEndpoints
from .engine import Engine, EngineMetrics, GrantEndListeners, engine_settings
from .engine.credentials import Credentials
from .engine.delegation import TaskPrincipals
from .errors import ConfigError
from .fleet import Fleet, FleetHooks
from .grant_stream import GrantStreamHandler
from .health import PolicyHealth
from .http import HttpListener, create_app
from .identity import Authenticator, ManagedAuthenticator, create_authenticator
from .journal import Journal
from .keyfile import DEV_KEY_PATH, SigningKeyFile
from .metrics import Metrics
from .oidc import HttpKeyFetcher, OidcKeys
from .policy import OpaClient, PolicyEngine
from .principals import PrincipalVerifier, person_rules
from .service import AccessService, AdminService, CallGuard
from .ssf.queue import EventQueue
from .ssf.transmitter import Transmitter
from .store import Store, open_store
from .token_exchange import TokenExchangeEndpoint
from .tokens import (
    KeyRing,
    SigningKey,
    load_or_create_key,
)

log = logging.getLogger("jit_sidecar.server")
MAX_METADATA_BYTES = 16 * 1024
#: The HTTP listener may use at most this share of the open-file limit.
HTTP_FD_SHARE = 4


def prepare_socket_path(path: Path) -> None:
    """Create the parent directory (0750) and remove a stale socket, safely.

    Refuses to replace anything that is not a socket, and a socket another process is still
    serving on.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o750)
        parent.chmod(0o750)
    st = parent.stat()
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{parent} is world-writable; refusing to put a socket there")
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(existing.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: nobody listens
        return
    except OSError as err:
        raise ConfigError(f"cannot probe existing socket {path}: {err}") from err
    finally:
        probe.close()
    raise ConfigError(f"another process is serving on {path}")


def grpc_options(config: Config) -> list[tuple[str, int]]:
    return [
        # Above our own limit, which RequestAdmission enforces with a reason code.
        ("grpc.max_receive_message_length", core_receive_limit(config.max_message_bytes)),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_rpcs),
        # One deterministic metadata limit (gRPC's default refuses 8-16 KiB at random).
        # Identity tokens are at most 8 KiB; larger metadata gets core's RESOURCE_EXHAUSTED.
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_idle_ms", 15 * 60_000),
    ]


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the (new) soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit from %d: %s", soft, err)
    return soft


# ====================================================================== composition root
@dataclass(frozen=True, slots=True, eq=False)
class App:
    """One sidecar, wired and not started."""

    config: Config
    clock: Clock
    metrics: Metrics
    policy: PolicyEngine
    health: PolicyHealth
    store: Store
    journal: Journal
    keys: KeyRing
    stored_key: dict[str, str] | None
    """The public key the store last saw signing (recorded as a rotation if it changed)."""
    authenticator: Authenticator
    engine: Engine
    key_file: SigningKeyFile
    fleet: Fleet | None
    checks: dict[str, Callable[[], str]]
    """Extra /readyz checks by name (`fleet` when state is shared with a fleet)."""
    guard: CallGuard
    admission: RequestAdmission
    http_credential: str | None
    checkpoints: Checkpointer
    """Signs the audit log's head at intervals and at shutdown (docs/security.md)."""
    egress: EgressProxy | None
    """The secretless HTTP egress proxy, when `--egress-config` is set (docs/brokers.md)."""
    transmitter: Transmitter | None
    """The Shared Signals transmitter, on the HTTP listener (None without one;
    docs/shared-signals.md)."""
    grant_stream: GrantStreamHandler
    """Serves AccessService.GrantStream (issue 24); ends open streams at shutdown."""


def build_app(
    config: Config,
    *,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    policy: PolicyEngine | None = None,
    authenticator: Authenticator | None = None,
    store: Store | None = None,
) -> App:
    """Wire a sidecar from its Config; open files and state, start nothing.

    The keyword arguments replace a part (tests, benchmarks)."""
    cfg = config
    clock = clock or SystemClock()
    metrics = metrics or Metrics()
    policy = policy or OpaClient(
        cfg.opa_url, cfg.opa_decision_path, cfg.opa_timeout, batch_path=cfg.opa_batch_path
    )
    key = _signing_key(cfg)
    http_credential = _http_credential(cfg)
    notifier = _approval_notifier(cfg, clock)
    cache = DecisionCache(cfg.decision_cache_size)
    health = PolicyHealth(cfg, policy, cache)
    # The fleet first: the engine consults it (FleetGate) and it is started with the
    # engine's hooks in start_app (docs/architecture.md, "Fleet and Redis").
    fleet = Fleet.open(cfg, metrics) if cfg.shared_state and store is None else None
    store = store or (fleet.store if fleet else open_store(cfg.state))
    audit = AuditFile(
        cfg.audit_log, fsync=cfg.durability == "fsync", rotate_bytes=cfg.audit_rotate_bytes
    )
    if audit.recovered_torn:
        log.warning("dropped a torn (never acknowledged) record at the end of %s", cfg.audit_log)
    task_principals = TaskPrincipals()  # the person of each task, stamped on its records
    journal = Journal(
        audit,
        store,
        on_audit_error=metrics.audit_write_errors.inc,
        on_batch=lambda n, seconds: metrics.journal_batch.observe(seconds),
        stamp=task_principals.stamp,
    )
    journal.replay()
    snapshot = store.load()
    keys = KeyRing(key, snapshot.retired_keys)
    brokers = configured_brokers(cfg)
    credentials = (
        Credentials(
            brokers, journal=journal, metrics=metrics, clock=clock, retry_max=cfg.broker_retry_max
        )
        if brokers
        else None
    )
    # Created once the key ring exists: tokens our own keys signed are never an identity.
    authenticator = authenticator or create_authenticator(
        cfg, own_kids=lambda: [p.jwk["kid"] for p in keys.published(clock.now())], clock=clock
    )
    # Told of each grant's end by the engine; the egress proxy subscribes (built below).
    grant_end = GrantEndListeners()
    # Shared Signals ride on the HTTP listener (docs/shared-signals.md); the engine tells
    # the transmitter of every end of access.
    transmitter = (
        Transmitter(
            issuer=cfg.issuer,
            keys=keys,
            queue=EventQueue(cfg.ssf_path),
            metrics=metrics,
            clock=clock,
            record=journal.commit,
        )
        if cfg.http_host_port is not None
        else None
    )
    engine = Engine(
        engine_settings(cfg),
        policy=policy,
        keys=keys,
        store=store,
        journal=journal,
        metrics=EngineMetrics(metrics),
        clock=clock,
        cache=cache,
        notifier=notifier,
        fleet=fleet,
        on_policy_unavailable=health.policy_failed,
        grant_end=grant_end,
        credentials=credentials,
        on_access_ended=transmitter.access_ended if transmitter is not None else None,
        principals=_principal_verifier(cfg, clock),
        task_principals=task_principals,
    )
    engine.restore(snapshot)
    if fleet is not None:
        keys.fleet_jwks = fleet.jwks  # other sidecars' public keys, in our JWKS too
    checks: dict[str, Callable[[], str]] = {"fleet": fleet.readiness} if fleet else {}
    guard = CallGuard(
        metrics,
        cfg.max_concurrent_rpcs,
        cfg.rpc_timeout,
        max_per_identity=cfg.max_rpcs_per_identity,
    )
    return App(
        config=cfg,
        clock=clock,
        metrics=metrics,
        policy=policy,
        health=health,
        store=store,
        journal=journal,
        keys=keys,
        stored_key=snapshot.current_key,
        authenticator=authenticator,
        engine=engine,
        key_file=SigningKeyFile(cfg, metrics, engine),
        fleet=fleet,
        checks=checks,
        guard=guard,
        admission=RequestAdmission(metrics, guard, cfg.max_message_bytes),
        http_credential=http_credential,
        checkpoints=Checkpointer(
            audit,
            lambda: keys.current,
            interval=cfg.audit_checkpoint_interval,
            issuer=cfg.issuer,
            clock=clock,
        ),
        egress=create_egress(
            load_egress_settings(cfg.egress_config),
            engine,
            grant_end=grant_end,
            opa_url=cfg.opa_url,
            metrics=metrics,
            clock=clock,
            env=cfg.egress_env,
        )
        if cfg.egress_config is not None
        else None,
        transmitter=transmitter,
        grant_stream=GrantStreamHandler(
            engine, authenticator, guard, metrics, cfg.max_message_bytes
        ),
    )


def _principal_verifier(cfg: Config, clock: Clock) -> PrincipalVerifier | None:
    """Verifies people's subject tokens from `principal_issuer` (docs/delegation.md)."""
    if not cfg.principal_issuer:
        return None
    fetcher = HttpKeyFetcher(ca_file=cfg.oidc_ca_file, token_file=cfg.oidc_fetch_token_file)
    keys = OidcKeys(
        cfg.principal_issuer, fetcher, refresh=cfg.oidc_refresh, max_age=cfg.oidc_keys_max_age
    )
    return PrincipalVerifier(
        keys,
        person_rules(cfg.principal_audience, cfg.principal_leeway, cfg.issuer),
        claims=cfg.principal_claims,
        clock=clock,
        on_close=fetcher.close,
    )


def _signing_key(cfg: Config) -> SigningKey:
    if cfg.signing_key is None and cfg.identity != "dev":
        raise ConfigError("--signing-key is required outside dev mode")
    path = cfg.signing_key or DEV_KEY_PATH
    key, generated = load_or_create_key(
        path, cfg.signing_alg, create=cfg.identity == "dev", ed25519_alg=cfg.ed25519_alg
    )
    if generated:
        log.warning("generated a dev signing key at %s (mode 0600)", path, extra={"kid": key.kid})
    return key


def _http_credential(cfg: Config) -> str | None:
    if cfg.http_token_file is None:
        return None
    try:
        credential = cfg.http_token_file.read_text().strip()
    except OSError as err:
        raise ConfigError(
            f"cannot read http_token_file {cfg.http_token_file}: {err.strerror}"
        ) from err
    if len(credential) < 16:
        raise ConfigError("http_token_file must hold at least 16 characters")
    return credential


def _approval_notifier(cfg: Config, clock: Clock) -> WebhookNotifier | None:
    if not cfg.approval_webhook_url:
        return None
    secret = None
    if cfg.approval_webhook_secret_file is not None:
        try:
            secret = cfg.approval_webhook_secret_file.read_bytes().strip()
        except OSError as err:
            raise ConfigError(f"cannot read approval_webhook_secret_file: {err.strerror}") from err
    return WebhookNotifier(cfg.approval_webhook_url, secret, clock=clock)


# ====================================================================== starting
async def start_app(app: App) -> None:
    """Everything but the listeners: trust material, journal, key record, the Shared Signals
    transmitter, catch-up sweep, the fleet, the first OPA probe."""
    auth = app.authenticator
    if isinstance(auth, ManagedAuthenticator):
        await auth.start()  # loads trust bundles / issuer keys; starts their refresh
    if app.engine.principals is not None:
        await app.engine.principals.start()  # principal issuers' keys (docs/delegation.md)
    await app.checkpoints.start()  # refuses a log shorter than its last checkpoint
    app.journal.start()
    await app.engine.record_key_in_use(app.stored_key)
    if app.transmitter is not None:
        await app.transmitter.start()  # resumes pushing what a previous run queued
    recovered = await app.engine.sweep()
    if recovered:
        log.warning(
            "ended %d grants whose time passed while the sidecar was down",
            recovered,
            extra={"count": recovered},
        )
    if app.fleet is not None:
        engine = app.engine
        await app.fleet.start(
            FleetHooks(
                owns=app.keys.owns,
                published=app.keys.published,
                covers=lambda rev: any(engine.fleet_targets(rev)),
                end=engine.apply_fleet_revocation,
            )
        )
    await app.health.probe()


def _bind(server: grpc.aio.Server, path: Path, mode: int) -> None:
    prepare_socket_path(path)
    server.add_insecure_port(f"unix:{path.resolve()}")
    os.chmod(path, mode)


async def start_agent_listener(app: App) -> grpc.aio.Server:
    """AccessService, health and reflection on the agent socket."""
    server = grpc.aio.server(
        options=grpc_options(app.config),
        maximum_concurrent_rpcs=app.config.max_concurrent_rpcs * 2,
        interceptors=[app.admission],
    )
    access_pb2_grpc.add_AccessServiceServicer_to_server(
        AccessService(app.engine, app.authenticator, app.guard, app.grant_stream), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(app.health.servicer, server)
    reflection.enable(
        server,
        (
            access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ),
    )
    _bind(server, app.config.socket, app.config.socket_mode)
    await server.start()
    return server


async def start_admin_listener(app: App) -> grpc.aio.Server:
    """AdminService and reflection on the admin socket (0600)."""
    server = grpc.aio.server(options=grpc_options(app.config), interceptors=[app.admission])
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminService(app.engine, app.guard, app.key_file.rotate, app.config.audit_log), server
    )
    reflection.enable(server, (admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,))
    _bind(server, app.config.admin_socket, 0o600)
    await server.start()
    return server


def open_http_listener(app: App, fd_limit: int) -> HttpListener | None:
    """The HTTP listener, bound (`await listener.start()` serves), or None when http_addr is
    empty. Its connection cap stays below 1/HTTP_FD_SHARE of `fd_limit`, leaving the rest to
    gRPC, the store and the audit log."""
    cfg = app.config
    hp = cfg.http_host_port
    if hp is None:
        return None
    cap = min(cfg.http_max_connections, max(1, fd_limit // HTTP_FD_SHARE))
    if cap < cfg.http_max_connections:
        log.warning(
            "open-file limit %d: the HTTP listener takes at most %d connections "
            "(http_max_connections %d)",
            fd_limit,
            cap,
            cfg.http_max_connections,
        )
    if app.http_credential is None and not cfg.http_allow_anonymous_loopback:
        log.warning(
            "no http_token_file: /introspect and /revoke answer 401 to every caller "
            "(set http_token_file, or http_allow_anonymous_loopback on a laptop)"
        )
    endpoints = EngineEndpoints(app.engine, app.health, app.store, app.checks, app.metrics.registry)
    listener = HttpListener(
        create_app(
            endpoints,
            credential=app.http_credential,
            anonymous=cfg.http_allow_anonymous_loopback,
            body_timeout=cfg.http_body_timeout,
            authzen=AuthzenService(
                app.engine,
                OpaDecider(cfg.opa_url, cfg.authzen_decision_path, cfg.opa_timeout),
                app.metrics,
                body_timeout=cfg.http_body_timeout,
            ),
            transmitter=app.transmitter,
            exchange=TokenExchangeEndpoint(app.engine.exchange_token, app.authenticator).handle,
        ),
        max_connections=cap,
        header_timeout=cfg.http_header_timeout,
    )
    listener.bind(*hp)
    return listener


# ====================================================================== running
class Sidecar:
    """A built App with its listeners and background loops."""

    def __init__(self, app: App, *, fd_limit: int | None = None) -> None:
        self.app = app
        self._fd_limit = fd_limit or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self.http: HttpListener | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def start(self) -> None:
        """Start everything; on a failure, stop what started and raise."""
        app = self.app
        try:
            # The HTTP port is taken first (a port in use is the likeliest failure) and
            # served last: once /healthz answers, the sockets answer too.
            self.http = open_http_listener(app, self._fd_limit)
            await start_app(app)
            self._grpc = await start_agent_listener(app)
            self._admin = await start_admin_listener(app)
            if app.egress is not None:
                await app.egress.start()
            if self.http is not None:
                await self.http.start()
        except BaseException:
            await self.stop(grace=0)
            raise
        self._tasks = [
            asyncio.create_task(app.engine.run_sweeper(self._stop), name="sweeper"),
            asyncio.create_task(app.health.run(self._stop), name="policy-probe"),
        ]
        if app.engine.credentials is not None:  # the durable broker revocation queue
            self._tasks.append(
                asyncio.create_task(
                    app.engine.credentials.run(self._stop, app.engine.live.grants),
                    name="broker-revocations",
                )
            )
        cfg = app.config
        log.info(
            "jit-sidecar %s serving on %s (admin %s, http %s, identity %s)",
            __version__,
            cfg.socket,
            cfg.admin_socket,
            cfg.http_addr or "off",
            cfg.identity,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish (up to `grace`), flush, clean up."""
        app = self.app
        grace = app.config.shutdown_grace if grace is None else grace
        app.guard.draining = True
        app.grant_stream.end_all()  # streams never end on their own: not a crash, a drain
        await app.health.servicer.enter_graceful_shutdown()
        servers = [s for s in (self._grpc, self._admin) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        if app.engine.credentials is not None and self._tasks:
            # Revocations the last calls queued (a task completed just before SIGTERM):
            # finish them now if the downstream system allows, else the next start does.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(grace, 5.0)):
                    await app.engine.credentials.drained()
            if app.engine.credentials.pending:
                log.warning(
                    "%d broker revocations left for the next start",
                    app.engine.credentials.pending,
                )
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.http is not None:
            await self.http.close()
        if app.egress is not None:
            await app.egress.stop()  # before the journal closes: it records usage
        if app.transmitter is not None:
            await app.transmitter.stop()
        if app.fleet is not None:
            await app.fleet.stop()
        await asyncio.to_thread(app.journal.close)
        await app.checkpoints.stop()  # after the journal's last batch: covers it all
        app.store.close()
        await app.policy.aclose()
        if app.engine.credentials is not None:
            await app.engine.credentials.aclose()
        if app.engine.notifier is not None:
            await app.engine.notifier.aclose()
        if isinstance(app.authenticator, ManagedAuthenticator):
            await app.authenticator.close()
        if app.engine.principals is not None:
            await app.engine.principals.close()
        # Only the sockets this process bound: a start refused because another sidecar
        # serves on a path must leave that sidecar's socket alone.
        for path, server in (
            (app.config.socket, self._grpc),
            (app.config.admin_socket, self._admin),
        ):
            if server is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        log.info("jit-sidecar stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    fd_limit = raise_fd_limit()
    sidecar = Sidecar(build_app(config), fd_limit=fd_limit)
    await sidecar.start()
    # Start-up objects (modules, servers, config) live as long as the process: keep them
    # out of every later full collection, which pauses the event loop (halves the pause
    # with 100k grants, docs/performance.md). Collect first so no garbage is frozen.
    gc.collect()
    gc.freeze()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(sidecar.app.key_file.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stopping.wait()
    log.info("signal received; draining (grace %.0f s)", config.shutdown_grace)
    await sidecar.stop()

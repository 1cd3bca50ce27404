"""Assembles and runs one sidecar: sockets, gRPC servers, HTTP listener, background loops.

`Sidecar(config)` builds everything; `await sidecar.start()` opens state, replays the audit
log, binds the sockets and starts serving; `await sidecar.stop()` drains in-flight calls,
flushes the journal and removes the sockets. `serve(config)` runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from . import __version__
from ._proto.jit.v1 import access_pb2, access_pb2_grpc, admin_pb2, admin_pb2_grpc
from .admission import RequestAdmission, core_receive_limit
from .approvals import WebhookNotifier
from .audit import AuditFile
from .cache import DecisionCache
from .checkpoints import Checkpointer
from .clock import Clock, SystemClock
from .config import Config
from .engine import Engine
from .errors import ConfigError, FailedPrecondition, PolicyError, Reason
from .fleet import Fleet, FleetHooks
from .http import Readiness, create_app
from .identity import Authenticator, ManagedAuthenticator, create_authenticator
from .journal import Journal
from .metrics import Metrics
from .policy import OpaClient, PolicyEngine
from .service import AccessService, AdminService, CallGuard
from .store import Store, open_store
from .tokens import (
    KeyRing,
    SigningKey,
    generate_private_key,
    load_or_create_key,
    write_private_key,
)

log = logging.getLogger("jit_sidecar.server")
DEV_KEY_PATH = Path("var/signing-key.pem")
POLICY_PROBE_INTERVAL = 1.0
REVISION_CHECK_INTERVAL = 5.0
MAX_METADATA_BYTES = 16 * 1024


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


class Sidecar:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        policy: PolicyEngine | None = None,
        authenticator: Authenticator | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.policy = policy or OpaClient(
            config.opa_url, config.opa_decision_path, config.opa_timeout
        )
        self._authenticator = authenticator
        self._store = store
        self.readiness = Readiness()
        self.health = health_aio.HealthServicer()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.engine: Engine | None = None
        self.fleet: Fleet | None = None
        self.guard = CallGuard(
            self.metrics,
            config.max_concurrent_rpcs,
            config.rpc_timeout,
            max_per_identity=config.max_rpcs_per_identity,
        )
        self._admission = RequestAdmission(self.metrics, self.guard, config.max_message_bytes)
        self.http_port: int | None = None
        self._managed_auth: ManagedAuthenticator | None = None
        self._checkpoints: Checkpointer | None = None

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        cfg = self.config
        key_path = cfg.signing_key or DEV_KEY_PATH
        if cfg.signing_key is None and cfg.identity != "dev":
            raise ConfigError("--signing-key is required outside dev mode")
        key, generated = load_or_create_key(key_path, cfg.signing_alg, create=cfg.identity == "dev")
        if generated:
            log.warning(
                "generated a dev signing key at %s (mode 0600)", key_path, extra={"kid": key.kid}
            )
        if cfg.shared_state and self._store is None:
            self.fleet = Fleet.open(cfg, self.metrics)  # docs/scale-out.md
        store = self._store or (self.fleet.store if self.fleet else open_store(cfg.state))
        audit = AuditFile(
            cfg.audit_log, fsync=cfg.durability == "fsync", rotate_bytes=cfg.audit_rotate_bytes
        )
        if audit.recovered_torn:
            log.warning(
                "dropped a torn (never acknowledged) record at the end of %s", cfg.audit_log
            )
        journal = Journal(
            audit,
            store,
            on_audit_error=self.metrics.audit_write_errors.inc,
            on_batch=lambda n, seconds: self.metrics.journal_batch.observe(seconds),
        )
        journal.replay()
        snapshot = store.load()
        keys = KeyRing(key, snapshot.retired_keys)
        # Created once the key ring exists: tokens our own keys signed are never an identity.
        auth = self._authenticator or create_authenticator(
            cfg,
            own_kids=lambda: [p.jwk["kid"] for p in keys.published(self.clock.now())],
            clock=self.clock,
        )
        if isinstance(auth, ManagedAuthenticator):
            await auth.start()  # loads trust bundles / issuer keys; starts their refresh
        self._managed_auth = auth if isinstance(auth, ManagedAuthenticator) else None
        self.engine = engine = Engine(
            cfg,
            policy=self.policy,
            keys=keys,
            store=store,
            journal=journal,
            metrics=self.metrics,
            clock=self.clock,
            cache=DecisionCache(cfg.decision_cache_size),
        )
        engine.restore(snapshot)
        engine.on_policy_unavailable = self._policy_failed
        if cfg.approval_webhook_url:
            secret = None
            if cfg.approval_webhook_secret_file is not None:
                try:
                    secret = cfg.approval_webhook_secret_file.read_bytes().strip()
                except OSError as err:
                    raise ConfigError(
                        f"cannot read approval_webhook_secret_file: {err.strerror}"
                    ) from err
            engine.notifier = WebhookNotifier(cfg.approval_webhook_url, secret)
        self._checkpoints = Checkpointer(
            audit,
            lambda: engine.keys.current,
            interval=cfg.audit_checkpoint_interval,
            issuer=cfg.issuer,
            clock=self.clock,
        )
        await self._checkpoints.start()  # refuses a log shorter than its last checkpoint
        journal.start()
        await engine.record_key_in_use(snapshot.current_key)
        recovered = await engine.sweep()
        if recovered:
            log.warning(
                "ended %d grants whose time passed while the sidecar was down",
                recovered,
                extra={"count": recovered},
            )
        if self.fleet is not None:
            engine.fleet = self.fleet
            keys.fleet_jwks = self.fleet.jwks  # other sidecars' public keys, in our JWKS too
            self.readiness.extra["fleet"] = self.fleet.readiness
            await self.fleet.start(
                FleetHooks(
                    owns=keys.owns,
                    published=keys.published,
                    covers=lambda rev: any(engine.fleet_targets(rev)),
                    end=engine.apply_fleet_revocation,
                )
            )
        await self._probe_policy()

        self._grpc = grpc.aio.server(
            options=grpc_options(cfg),
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs * 2,
            interceptors=[self._admission],
        )
        access_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessService(engine, auth, self.guard), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (
                access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._grpc,
        )
        self._bind(self._grpc, cfg.socket, cfg.socket_mode)

        self._admin = grpc.aio.server(options=grpc_options(cfg), interceptors=[self._admission])
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(engine, self.guard, self.rotate_signing_key, cfg.audit_log),
            self._admin,
        )
        reflection.enable_server_reflection(
            (
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._admin,
        )
        self._bind(self._admin, cfg.admin_socket, 0o600)

        await self._grpc.start()
        await self._admin.start()
        await self._start_http(engine, store)
        self._tasks = [
            asyncio.create_task(engine.run_sweeper(self._stop), name="sweeper"),
            asyncio.create_task(self._policy_probe_loop(), name="policy-probe"),
        ]
        log.info(
            "jit-sidecar %s serving on %s (admin %s, http %s, identity %s)",
            __version__,
            cfg.socket,
            cfg.admin_socket,
            cfg.http_addr or "off",
            cfg.identity,
        )

    def _bind(self, server: grpc.aio.Server, path: Path, mode: int) -> None:
        prepare_socket_path(path)
        server.add_insecure_port(f"unix:{path.resolve()}")
        os.chmod(path, mode)

    async def _start_http(self, engine: Engine, store: Store) -> None:
        hp = self.config.http_host_port
        if hp is None:
            return
        credential = None
        if self.config.http_token_file is not None:
            try:
                credential = self.config.http_token_file.read_text().strip()
            except OSError as err:
                raise ConfigError(
                    f"cannot read http_token_file {self.config.http_token_file}: {err.strerror}"
                ) from err
            if len(credential) < 16:
                raise ConfigError("http_token_file must hold at least 16 characters")
        app = create_app(
            engine, self.readiness, credential=credential, store_writable=store.check_writable
        )
        self._http = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._http.setup()
        site = web.TCPSite(self._http, hp[0], hp[1], reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None)  # the bound port, when 0 was asked
        if sockets:
            self.http_port = sockets[0].getsockname()[1]

    # ------------------------------------------------------------------ keys
    async def rotate_signing_key(self, reload_from_file: bool) -> tuple[str, str, float]:
        """Generate a new key into the key file (or reload the file, e.g. after a Secret
        update) and make it current. On any failure the current key stays in use.

        Returns (new kid, previous kid, when the previous key leaves the JWKS).
        """
        assert self.engine is not None
        path = self.config.signing_key or DEV_KEY_PATH
        try:
            if reload_from_file:
                key, _ = await asyncio.to_thread(
                    load_or_create_key, path, self.config.signing_alg, create=False
                )
            else:
                key = SigningKey.from_private_key(generate_private_key(self.config.signing_alg))
                await asyncio.to_thread(write_private_key, path, key.private_key)
        except (ConfigError, OSError) as err:
            self.metrics.key_rotation_errors.inc()
            message = err.message if isinstance(err, ConfigError) else str(err)
            log.error(
                "signing key rotation failed; the current key stays in use: %s",
                message,
                extra={"kid": self.engine.keys.current.kid, "reason": "key_unavailable"},
            )
            raise FailedPrecondition(
                f"key rotation failed, current key kept: {message}", Reason.SIGNING_UNAVAILABLE
            ) from err
        previous, retire_at = await self.engine.rotate_key(key)
        return key.kid, previous, retire_at

    async def _reload_key_on_sighup(self) -> None:
        with contextlib.suppress(FailedPrecondition):
            await self.rotate_signing_key(reload_from_file=True)

    # ------------------------------------------------------------------ probes
    async def _probe_policy(self) -> None:
        ok = await self.policy.healthy()
        detail = "ok" if ok else f"OPA at {self.config.opa_url} is unreachable"
        await self._set_policy_health(ok, detail)
        if ok and self.engine is not None:
            revision = await self.policy.revision()
            if revision and self.engine.cache.set_revision(revision):
                log.info("policy revision %s; decision cache cleared", revision[:12])

    async def _set_policy_health(self, ok: bool, detail: str) -> None:
        changed = ok != self.readiness.policy_ok
        self.readiness.policy_ok = ok
        self.readiness.policy_detail = detail
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set("jit.v1.AccessService", status)
        if changed:
            (log.info if ok else log.error)("policy engine %s", "reachable" if ok else detail)

    def _policy_failed(self, err: PolicyError) -> None:
        """Called by the engine when a decision failed for lack of OPA."""
        asyncio.get_running_loop().create_task(self._set_policy_health(False, err.message))

    async def _policy_probe_loop(self) -> None:
        last_revision_check = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLICY_PROBE_INTERVAL)
            if self._stop.is_set():
                return
            try:
                ok = await self.policy.healthy()
                if ok != self.readiness.policy_ok:
                    await self._set_policy_health(
                        ok, "ok" if ok else f"OPA at {self.config.opa_url} is unreachable"
                    )
                if (
                    ok
                    and self.engine
                    and loop.time() - last_revision_check >= (REVISION_CHECK_INTERVAL)
                ):
                    last_revision_check = loop.time()
                    revision = await self.policy.revision()
                    if revision and self.engine.cache.set_revision(revision):
                        log.info("policy revision changed; decision cache cleared")
            except Exception:
                log.exception("policy probe failed")

    # ------------------------------------------------------------------ stop
    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish (up to `grace`), flush, clean up."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.guard.draining = True
        await self.health.enter_graceful_shutdown()
        servers = [s for s in (self._grpc, self._admin) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.cleanup()
        if self.fleet is not None:
            await self.fleet.stop()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.journal.close)
            if self._checkpoints is not None:
                await self._checkpoints.stop()  # after the journal's last batch: covers it all
            self.engine.store.close()
        await self.policy.aclose()
        if self.engine is not None and self.engine.notifier is not None:
            await self.engine.notifier.aclose()
        if self._managed_auth is not None:
            await self._managed_auth.close()
        for path in (self.config.socket, self.config.admin_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("jit-sidecar stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    sidecar = Sidecar(config)
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
        task = loop.create_task(sidecar._reload_key_on_sighup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stopping.wait()
    log.info("signal received; draining (grace %.0f s)", config.shutdown_grace)
    await sidecar.stop()

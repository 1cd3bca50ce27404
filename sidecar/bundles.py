"""SPIFFE trust bundles: the JWT authorities of each trust domain, kept fresh off the hot path.

Two sources, usable together (a file wins over the Workload API for the same domain):

- `--trust-bundle DOMAIN=PATH`: a JWKS file per trust domain (SPIFFE bundle format: members
  with `use: jwt-svid` or no `use`; `x509-svid` members are ignored). Each file is checked for
  changes every `trust_bundle_refresh` seconds in a worker thread; a changed file that does not
  parse is logged and the last good keys stay in force.
- the SPIFFE Workload API (`SPIFFE_ENDPOINT_SOCKET`, through the `spiffe` package): JWT
  bundles of the agent's own and federated trust domains, streamed on every change.

Readers on the event loop see an immutable snapshot replaced in one assignment, plus a
`generation` number that changes with every swap (the verified-token cache keys on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import ConfigError
from .jws import MIN_RSA_BITS, PublicKey, VerifyKey, algorithms_for, is_valid_kid, parse_jwks

log = logging.getLogger("jit_sidecar.identity")

#: `use` values of a SPIFFE bundle member that authenticate JWT-SVIDs.
JWT_SVID_USES = (None, "jwt-svid")
_MAX_BUNDLE_BYTES = 1 << 20

DomainKeys = Mapping[str, VerifyKey]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    generation: int
    domains: Mapping[str, DomainKeys]


class TrustBundles:
    """The current JWT authorities per trust domain; written by watchers, read by verifiers."""

    def __init__(self) -> None:
        self._files: dict[str, DomainKeys] = {}
        self._workload: dict[str, DomainKeys] = {}
        self._lock = threading.Lock()
        self._snapshot = _Snapshot(0, {})

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    def keys(self, domain: str) -> DomainKeys | None:
        """The authorities of `domain`, or None when it has no bundle."""
        return self._snapshot.domains.get(domain)

    def domains(self) -> frozenset[str]:
        return frozenset(self._snapshot.domains)

    def set_file_bundle(self, domain: str, keys: DomainKeys) -> None:
        with self._lock:
            self._files[domain] = dict(keys)
            self._publish()

    def set_workload_bundles(self, bundles: Mapping[str, DomainKeys]) -> None:
        with self._lock:
            self._workload = {d: dict(k) for d, k in bundles.items()}
            self._publish()

    def _publish(self) -> None:
        merged = {**self._workload, **self._files}
        self._snapshot = _Snapshot(self._snapshot.generation + 1, merged)


def load_bundle_file(path: Path) -> dict[str, VerifyKey]:
    """The JWT authorities of a JWKS bundle file; raises ValueError or OSError."""
    with path.open("rb") as fh:
        data = fh.read(_MAX_BUNDLE_BYTES + 1)
    if len(data) > _MAX_BUNDLE_BYTES:
        raise ValueError(f"larger than {_MAX_BUNDLE_BYTES} bytes")
    keys, problems = parse_jwks(data, uses=JWT_SVID_USES)
    for problem in problems:
        log.warning("trust bundle %s: skipped %s", path, problem, extra={"path": str(path)})
    return keys


def _file_stamp(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class BundleFileWatcher:
    """Loads each DOMAIN=PATH bundle at start (fatal when unusable), then reloads on change."""

    def __init__(self, bundles: TrustBundles, files: Mapping[str, str], interval: float) -> None:
        self._bundles = bundles
        self._files = {domain: Path(path) for domain, path in files.items()}
        self._interval = interval
        self._stamps: dict[str, tuple[int, int, int, int] | None] = {}

    def load_all(self) -> None:
        """Synchronous first load (start-up); a missing or invalid file is a ConfigError."""
        for domain, path in self._files.items():
            try:
                stamp = _file_stamp(path)
                keys = load_bundle_file(path)
            except (OSError, ValueError) as err:
                raise ConfigError(f"trust bundle for {domain} ({path}) is unusable: {err}") from err
            self._stamps[domain] = stamp
            self._bundles.set_file_bundle(domain, keys)
            log.info(
                "trust bundle for %s loaded from %s (%d JWT authorities)",
                domain,
                path,
                len(keys),
                extra={"path": str(path), "count": len(keys)},
            )

    def check_once(self) -> None:
        """Reload every file whose inode, size or times changed (runs in a worker thread)."""
        for domain, path in self._files.items():
            try:
                stamp: tuple[int, int, int, int] | None = _file_stamp(path)
            except OSError:
                stamp = None
            if stamp == self._stamps.get(domain):
                continue
            self._stamps[domain] = stamp
            if stamp is None:
                log.error(
                    "trust bundle for %s disappeared from %s; keeping the last loaded keys",
                    domain,
                    path,
                    extra={"path": str(path), "cause": "bundle_missing"},
                )
                continue
            try:
                keys = load_bundle_file(path)
            except (OSError, ValueError) as err:
                log.error(
                    "trust bundle for %s at %s is unusable (%s); keeping the last loaded keys",
                    domain,
                    path,
                    err,
                    extra={"path": str(path), "cause": "bundle_invalid"},
                )
                continue
            self._bundles.set_file_bundle(domain, keys)
            log.info(
                "trust bundle for %s reloaded from %s (%d JWT authorities)",
                domain,
                path,
                len(keys),
                extra={"path": str(path), "count": len(keys)},
            )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(self.check_once)
            except Exception:
                log.exception("trust bundle check failed")


def _keys_from_authorities(domain: str, authorities: Mapping[str, Any]) -> dict[str, VerifyKey]:
    out: dict[str, VerifyKey] = {}
    for kid, key in authorities.items():
        if not is_valid_kid(kid):
            log.warning("workload API bundle of %s: skipped a key with an unusable kid", domain)
            continue
        if not isinstance(
            key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            log.warning(
                "workload API bundle of %s: skipped key %s of an unsupported type", domain, kid
            )
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            log.warning("workload API bundle of %s: skipped short RSA key %s", domain, kid)
            continue
        public: PublicKey = key
        out[kid] = VerifyKey(kid, public, algorithms_for(public))
    return out


class WorkloadApiWatcher:
    """Streams JWT bundles from the SPIFFE Workload API (a SPIRE agent) into TrustBundles.

    The `spiffe` client runs its stream in its own thread and reconnects with backoff; until
    the first bundle set arrives, every JWT-SVID is refused (fail closed).
    """

    def __init__(self, bundles: TrustBundles, endpoint: str, *, retry: float = 2.0) -> None:
        self._bundles = bundles
        self._endpoint = endpoint
        self._retry = retry
        self._client: Any = None
        self._cancel: Any = None
        self._last: dict[str, DomainKeys] = {}
        self._broken = threading.Event()
        self.updates = 0

    def _on_bundles(self, bundle_set: Any) -> None:
        domains: dict[str, DomainKeys] = {}
        for bundle in bundle_set.bundles:
            domain = bundle.trust_domain.name
            domains[domain] = _keys_from_authorities(domain, bundle.jwt_authorities)
        if self.updates and domains == self._last:
            return  # the stream repeats what the first fetch gave
        self._last = domains
        self._bundles.set_workload_bundles(domains)
        self.updates += 1
        log.info(
            "JWT bundles from the Workload API: %s",
            ", ".join(f"{d} ({len(k)} keys)" for d, k in sorted(domains.items())) or "none",
            extra={"count": len(domains)},
        )

    def _on_error(self, err: Exception) -> None:
        # The spiffe client gives up on errors it does not retry itself; reconnect from run().
        log.error(
            "SPIFFE Workload API stream failed: %s; keeping the last bundles and reconnecting",
            err,
            extra={"cause": "workload_api_error"},
        )
        self._broken.set()

    def _connect(self) -> None:
        from spiffe import WorkloadApiClient

        client = WorkloadApiClient(self._endpoint)
        try:
            self._on_bundles(client.fetch_jwt_bundles(timeout=5.0))
        except Exception:
            client.close()
            raise
        self._client = client
        self._cancel = client.stream_jwt_bundles(self._on_bundles, self._on_error)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (retrying until it works) and let the stream thread deliver updates;
        reconnect whenever the stream gives up."""
        while not stop.is_set():
            if self._client is None:
                try:
                    await asyncio.to_thread(self._connect)
                except Exception as err:
                    log.error(
                        "cannot fetch JWT bundles from the Workload API at %s: %s; retrying",
                        self._endpoint,
                        err,
                        extra={"cause": "workload_api_unavailable"},
                    )
            elif self._broken.is_set():
                self.close()
                self._broken.clear()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry)
        self.close()

    def close(self) -> None:
        if self._cancel is not None:
            with contextlib.suppress(Exception):
                self._cancel.cancel()
            self._cancel = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

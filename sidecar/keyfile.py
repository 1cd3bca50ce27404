"""The signing key kept in the key file: rotation (AdminService `RotateSigningKey`, `jit-sidecar
keys rotate`) and the reload on SIGHUP; a failure keeps the current key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from .config import Config
from .engine import Engine
from .errors import ConfigError, FailedPrecondition, Reason
from .metrics import Metrics
from .tokens import (
    SigningKey,
    generate_private_key,
    load_or_create_key,
    write_private_key,
)

log = logging.getLogger("jit_sidecar.server")
DEV_KEY_PATH = Path("var/signing-key.pem")


class SigningKeyFile:
    """Rotation of the signing key kept in the key file (AdminService, SIGHUP)."""

    def __init__(self, config: Config, metrics: Metrics, engine: Engine) -> None:
        self._config = config
        self._metrics = metrics
        self._engine = engine
        self.path = config.signing_key or DEV_KEY_PATH

    async def rotate(self, reload_from_file: bool) -> tuple[str, str, float]:
        """Generate a new key into the key file (or reload the file, e.g. after a Secret
        update) and make it current. On any failure the current key stays in use.

        Returns (new kid, previous kid, when the previous key leaves the JWKS).
        """
        alg = self._config.signing_alg
        try:
            if reload_from_file:
                key, _ = await asyncio.to_thread(
                    load_or_create_key,
                    self.path,
                    alg,
                    create=False,
                    ed25519_alg=self._config.ed25519_alg,
                )
            else:
                key = SigningKey.from_private_key(
                    generate_private_key(alg), ed25519_alg=self._config.ed25519_alg
                )
                await asyncio.to_thread(write_private_key, self.path, key.private_key)
        except (ConfigError, OSError) as err:
            self._metrics.key_rotation_errors.inc()
            message = err.message if isinstance(err, ConfigError) else str(err)
            log.error(
                "signing key rotation failed; the current key stays in use: %s",
                message,
                extra={"kid": self._engine.keys.current.kid, "reason": "key_unavailable"},
            )
            raise FailedPrecondition(
                f"key rotation failed, current key kept: {message}", Reason.SIGNING_UNAVAILABLE
            ) from err
        previous, retire_at = await self._engine.rotate_key(key)
        return key.kid, previous, retire_at

    async def reload(self) -> None:
        """SIGHUP: reload the key file; a failure is logged and counted, never fatal."""
        with contextlib.suppress(FailedPrecondition):
            await self.rotate(reload_from_file=True)

"""Where a broker's own secrets come from: a file (re-read when it changes) or a value taken
from the environment at start-up.

A file is the form secrets managers deliver (Kubernetes secret volumes, Vault Agent and
OpenBao Agent templates, systemd credentials): they replace it whole when the secret rotates.
`SecretFile` notices by polling its (inode, size, mtime) at most once per `poll_interval`,
with no inotify and no restart. Nothing here logs or returns a secret except `current()`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from .base import BrokerUnavailable

#: A secret longer than this is a configuration mistake (a whole key file, a binary).
MAX_SECRET_BYTES = 16 * 1024


class SecretSource(Protocol):
    """One secret value, possibly rotating."""

    @property
    def origin(self) -> str:
        """Where the secret comes from (`file:/path`, `env:NAME`): never the secret."""
        ...

    def current(self) -> str:
        """The secret as it is now. Raises `BrokerUnavailable` when it cannot be read."""
        ...


@functools.lru_cache(maxsize=64)
def secret_id(secret: str) -> str:
    """A non-secret name for one secret value (the first 16 hex digits of its SHA-256), so
    that audit records and leases can say which version was used."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _checked(raw: str, origin: str, broker: str) -> str:
    value = raw.strip()
    if not value:
        raise BrokerUnavailable(broker, f"{origin} is empty", "secret_unreadable")
    if len(value.encode()) > MAX_SECRET_BYTES or any(c in value for c in "\r\n\0"):
        # A header value with CR/LF would split the request (RFC 9110 §5.5).
        raise BrokerUnavailable(
            broker, f"{origin} is not one line of at most 16 KiB", "secret_unreadable"
        )
    return value


class SecretFile:
    """A secret kept in a file, re-read when the file changes (rotation without restart)."""

    def __init__(
        self,
        path: Path,
        *,
        broker: str,
        poll_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._broker = broker
        self._poll = poll_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self._checked_at = float("-inf")

    @property
    def origin(self) -> str:
        return f"file:{self.path}"

    def current(self) -> str:
        now = self._monotonic()
        if self._value and now - self._checked_at < self._poll:
            return self._value
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp != self._stamp or not self._value:
                    self._value = _checked(self.path.read_text(), self.origin, self._broker)
                    self._stamp = stamp
            except OSError as err:
                # Keep serving nothing rather than a secret we can no longer vouch for.
                self._value = ""
                self._stamp = None
                raise BrokerUnavailable(
                    self._broker, f"cannot read {self.origin}: {err.strerror}", "secret_unreadable"
                ) from err
            self._checked_at = now
            return self._value


class EnvSecret:
    """A secret from an environment variable, read once at start-up (the environment of a
    running process cannot change from outside, so it cannot rotate: use a file for that)."""

    def __init__(self, name: str, env: Mapping[str, str], *, broker: str) -> None:
        self._name = name
        raw = env.get(name)
        if raw is None:
            raise BrokerUnavailable(broker, f"{self.origin} is not set", "secret_unreadable")
        self._value = _checked(raw, self.origin, broker)

    @property
    def origin(self) -> str:
        return f"env:{self._name}"

    def current(self) -> str:
        return self._value

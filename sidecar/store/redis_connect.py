"""Connections to the fleet's Redis, from the configuration: single server or Cluster, TLS
(`rediss://`, with `redis_ca_file`), and the password from `redis_password_file`.

Every Redis client of the sidecar is made here, so every one gets the same TLS, auth and
timeout settings, and every failure it can raise is in `REDIS_ERRORS`.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from ..config import Config
from ..errors import ConfigError

REDIS_ERRORS = (RedisError, RedisClusterException, OSError)
"""What an unreachable, failing-over or misbehaving Redis raises."""


def redis_password(config: Config) -> str | None:
    if config.redis_password_file is None:
        return None
    try:
        return config.redis_password_file.read_text().strip() or None
    except OSError as err:
        raise ConfigError(f"cannot read redis_password_file: {err.strerror}") from err


def _options(config: Config, timeout: float, connect_timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": True,
        "password": redis_password(config),
    }
    if config.redis_ca_file is not None and config.state.startswith("rediss://"):
        options["ssl_ca_certs"] = str(config.redis_ca_file)
    return options


def connect_sync(config: Config, timeout: float) -> Any:
    """A thread-safe (pooled) client; one quick retry (a pooled connection may be stale)."""
    kwargs = _options(config, timeout, timeout)
    if config.redis_cluster:
        return redis.cluster.RedisCluster.from_url(
            config.state, cluster_error_retry_attempts=1, **kwargs
        )
    return redis.Redis.from_url(config.state, retry=Retry(NoBackoff(), 1), **kwargs)


def connect_async(config: Config, timeout: float) -> Any:
    """An asyncio client for the fleet reader; no retry (the reader retries, with backoff)."""
    kwargs = _options(config, timeout, min(timeout, 2.0))
    if config.redis_cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            config.state, cluster_error_retry_attempts=1, **kwargs
        )
    return redis.asyncio.Redis.from_url(config.state, retry=AsyncRetry(NoBackoff(), 0), **kwargs)


def redacted(url: str) -> str:
    """The state URL without its password, for logs and /readyz."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = creds.partition(":")
    hidden = f"{user}:***" if colon and user else (user or "***")
    return f"{scheme}{sep}{hidden}@{host}"

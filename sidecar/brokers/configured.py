"""The brokers a Config enables (docs/brokers.md, "Configuration").

A broker's secret (the PostgreSQL admin connection string) comes from a file or the
environment only, is never echoed in an error, and never reaches a log or the audit log.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from .base import Broker


def configured_brokers(cfg: Config) -> dict[str, Broker]:
    """Every broker the configuration enables, by name; empty when none is."""
    brokers: dict[str, Broker] = {}
    dsn = cfg.broker_postgres_dsn or _read_secret(cfg.broker_postgres_dsn_file)
    if dsn:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        from .postgres import PostgresBroker, PostgresSettings

        try:
            conninfo_to_dict(dsn)
        except ProgrammingError as err:
            # libpq's message may quote the string: never repeat it.
            raise ConfigError(
                "the postgres broker's admin DSN is not a libpq connection string"
            ) from err
        broker = PostgresBroker(
            PostgresSettings(
                admin_dsn=dsn,
                agent_host=cfg.broker_postgres_agent_host,
                agent_port=cfg.broker_postgres_agent_port,
                connection_limit=cfg.broker_postgres_connection_limit,
                statement_timeout_ms=cfg.broker_postgres_statement_timeout_ms,
                databases=frozenset(cfg.broker_postgres_databases),
            )
        )
        brokers[broker.name] = broker
    return brokers


def _read_secret(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read broker_postgres_dsn_file {path}: {err.strerror}") from err
    if not value:
        raise ConfigError(f"broker_postgres_dsn_file {path} is empty")
    return value

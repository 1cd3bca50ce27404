"""PostgreSQL broker: one login role per grant, dropped with its sessions when access ends.

`issue` creates, in one transaction (PostgreSQL DDL is transactional, so a failure leaves
nothing behind):

    CREATE ROLE jit_<grant> LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
        NOBYPASSRLS CONNECTION LIMIT n VALID UNTIL <exp> PASSWORD '<SCRAM verifier>'
    ALTER ROLE … SET search_path / statement_timeout / idle_in_transaction_session_timeout
    GRANT CONNECT ON DATABASE d; GRANT USAGE ON SCHEMA s; GRANT <privileges> ON TABLE s.t

and nothing else. The password is random and reaches the server only as a SCRAM-SHA-256
verifier computed client-side (libpq's PQencryptPasswordConn), so it appears in no server log.
`revoke` sets NOLOGIN (no new session from now on), terminates every session of the role and
waits for them to end (polling `pg_stat_activity`), then
`DROP OWNED BY` (every privilege in the database and on shared objects) and `DROP ROLE`.
Both are idempotent. Roles carry a comment naming their grant and database, so `orphans` can
find and drop the ones a crash left unrecorded (docs/brokers.md).

psycopg 3 rather than asyncpg: its `sql` module composes identifiers and literals for DDL
(which takes no bind parameters) safely, and it exposes libpq's password encryption.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .base import (
    BrokerUnavailable,
    CredentialSpec,
    CredentialSpecInvalid,
    IssuedCredential,
    Lease,
    LeaseRequest,
)

NAME = "postgres"
#: Privileges a decision may grant. Table-level only: no TRUNCATE, REFERENCES or TRIGGER,
#: which reach beyond reading and changing rows.
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
#: Unquoted PostgreSQL identifiers in their folded (lower-case) form: one spelling each.
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SPEC_KEYS = frozenset({"broker", "database", "privileges", "tables"})
MAX_TABLES = 16
_COMMENT = re.compile(r"jit-sidecar grant=(?P<grant>[A-Za-z0-9_-]+) database=(?P<db>[a-z0-9_]+)")


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """How the broker reaches the server (docs/brokers.md, "PostgreSQL")."""

    admin_dsn: str = field(repr=False)
    """libpq connection string of the admin login (CREATEROLE, and GRANT OPTION or ownership
    on the tables it hands out). A secret: read from a file or the environment only."""
    role_prefix: str = "jit_"
    agent_host: str = ""
    """Host the agents connect to; the admin DSN's host when empty."""
    agent_port: int = 0
    """Port the agents connect to; the admin DSN's port when 0."""
    connection_limit: int = 2
    statement_timeout_ms: int = 30_000
    idle_in_transaction_timeout_ms: int = 60_000
    connect_timeout_seconds: int = 3
    terminate_wait_ms: int = 2_000
    """How long revoke waits for each terminated session to exit."""
    databases: frozenset[str] = frozenset()
    """Databases the broker may grant on; empty means any the admin login can reach."""


def role_name(prefix: str, grant_id: str) -> str:
    """A role name derived from the grant id: lower-case hex, so one spelling, ≤ 63 bytes."""
    raw = base64.urlsafe_b64decode(grant_id + "=" * (-len(grant_id) % 4))
    return f"{prefix}{raw.hex()}"


class PostgresBroker:
    """The `postgres` broker (see module docstring)."""

    def __init__(self, settings: PostgresSettings) -> None:
        if not _IDENT.fullmatch(settings.role_prefix.rstrip("_") + "_"):
            raise ValueError("role_prefix must be a lower-case identifier prefix")
        self._settings = settings
        self._connections: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        admin = conninfo_to_dict(settings.admin_dsn)
        self._maintenance_db = str(admin.get("dbname") or "postgres")
        self._agent_host = settings.agent_host or str(admin.get("host") or "127.0.0.1")
        self._agent_port = settings.agent_port or int(admin.get("port") or 5432)

    @property
    def name(self) -> str:
        return NAME

    # ------------------------------------------------------------------ decision contract
    def parse(self, spec: Mapping[str, Any], *, resource: str) -> CredentialSpec:
        """`{"broker": "postgres", "database": "crm", "privileges": ["SELECT"],
        "tables": ["public.tickets"]}`, covered by the intent's resource when that is a
        `postgres://` URI (the credential may never reach beyond what the policy saw)."""
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise CredentialSpecInvalid(f"unknown member(s) {sorted(unknown)}")
        database = spec.get("database")
        if not isinstance(database, str) or not _IDENT.fullmatch(database):
            raise CredentialSpecInvalid("database must be a lower-case identifier")
        if self._settings.databases and database not in self._settings.databases:
            raise CredentialSpecInvalid(f"database {database} is not brokered here")
        privileges = _string_list(spec.get("privileges"), "privileges")
        for privilege in privileges:
            if privilege not in PRIVILEGES:
                raise CredentialSpecInvalid(f"privilege {privilege!r} is not one of {PRIVILEGES}")
        tables = _string_list(spec.get("tables"), "tables")
        if len(tables) > MAX_TABLES:
            raise CredentialSpecInvalid(f"at most {MAX_TABLES} tables")
        for table in tables:
            schema, dot, name = table.partition(".")
            if not dot or not _IDENT.fullmatch(schema) or not _IDENT.fullmatch(name):
                raise CredentialSpecInvalid(f"table {table!r} is not schema.table")
        _check_covered(resource, database, tables)
        return CredentialSpec(
            NAME, {"database": database, "privileges": privileges, "tables": tables}
        )

    # ------------------------------------------------------------------ issue
    async def issue(self, request: LeaseRequest, spec: CredentialSpec) -> IssuedCredential:
        database = str(spec.params["database"])
        privileges: tuple[str, ...] = tuple(spec.params["privileges"])
        tables: tuple[str, ...] = tuple(spec.params["tables"])
        role = role_name(self._settings.role_prefix, request.grant_id)
        password = secrets.token_urlsafe(32)
        valid_until = datetime.fromtimestamp(request.expires_at, UTC)
        async with self._admin(database) as conn:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            ident = sql.Identifier(role)
            statements = [
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                    "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} VALID UNTIL {} PASSWORD {}"
                ).format(
                    ident,
                    sql.Literal(self._settings.connection_limit),
                    sql.Literal(valid_until.isoformat()),
                    sql.Literal(verifier),
                ),
                # Membership lets this admin terminate the role's sessions on revoke without
                # pg_signal_backend, which could signal every non-superuser backend.
                sql.SQL("GRANT {} TO CURRENT_USER").format(ident),
                sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    ident,
                    sql.Literal(f"jit-sidecar grant={request.grant_id} database={database}"),
                ),
                # pg_catalog first: nothing the role can see may shadow a built-in.
                sql.SQL("ALTER ROLE {} SET search_path = pg_catalog, {}").format(
                    ident, sql.SQL(", ").join(sql.Identifier(s) for s in _schemas(tables))
                ),
                sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                    ident, sql.Literal(self._settings.statement_timeout_ms)
                ),
                sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
                    ident, sql.Literal(self._settings.idle_in_transaction_timeout_ms)
                ),
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(database), ident
                ),
            ]
            statements += [
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s), ident)
                for s in _schemas(tables)
            ]
            statements += [
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                    sql.Identifier(*table.split(".", 1)),
                    ident,
                )
                for table in tables
            ]
            try:
                await self._refuse_public_write(conn, tables)
                # One round trip: statements sent together in one simple query run as one
                # implicit transaction (PostgreSQL docs, protocol-flow "Multiple Statements
                # in a Simple Query"), so a failure still leaves no half-made role.
                await conn.execute(sql.SQL("; ").join(statements))
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as err:
                raise BrokerUnavailable(NAME, _first_line(err), "no_table") from err
        dsn = make_conninfo(
            host=self._agent_host,
            port=str(self._agent_port),
            dbname=database,
            user=role,
            password=password,
        )
        lease = Lease(
            broker=NAME,
            handle=role,
            grant_id=request.grant_id,
            expires_at=request.expires_at,
            details={
                "database": database,
                "privileges": ",".join(privileges),
                "tables": ",".join(tables),
            },
        )
        secret = {"dsn": dsn, "username": role, "password": password}
        return IssuedCredential(lease, secret)

    async def _refuse_public_write(
        self, conn: psycopg.AsyncConnection[Any], tables: tuple[str, ...]
    ) -> None:
        """Every role inherits what PUBLIC holds: a read-only credential on a table PUBLIC may
        write would be a write credential. Refuse to issue rather than over-grant."""
        cursor = await conn.execute(
            "SELECT c.oid::regclass::text, a.privilege_type FROM pg_class c, "
            "LATERAL aclexplode(c.relacl) a WHERE a.grantee = 0 "
            "AND a.privilege_type = ANY(%s) AND c.oid = ANY(%s::regclass[])",
            (list(WRITE_PRIVILEGES), [_regclass(t) for t in tables]),
        )
        rows = await cursor.fetchall()
        if rows:
            found = ", ".join(sorted({f"{r[1]} on {r[0]}" for r in rows}))
            raise BrokerUnavailable(
                NAME, f"PUBLIC holds {found}: refusing to issue", "public_write"
            )

    # ------------------------------------------------------------------ revoke
    async def revoke(self, lease: Lease) -> None:
        role = lease.handle
        if not role.startswith(self._settings.role_prefix):
            # Defence in depth: never drop a role this broker did not name.
            raise ValueError(f"lease handle {role!r} lacks the broker's role prefix")
        database = lease.details.get("database", "")
        ident = sql.Identifier(role)
        async with self._admin(self._maintenance_db) as conn:
            try:
                # Committed on its own before any session is terminated: a login racing the
                # termination must already be refused.
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
            except psycopg.errors.UndefinedObject:
                return  # already dropped: revoking is idempotent
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            await self._sessions_ended(conn, role)
        if database and database != self._maintenance_db:
            async with self._admin(database) as conn:
                if await _role_exists(conn, role):
                    await conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        async with self._admin(self._maintenance_db) as conn:
            if await _role_exists(conn, role):
                await conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    async def _sessions_ended(self, conn: psycopg.AsyncConnection[Any], role: str) -> None:
        """Wait (up to terminate_wait_ms) for the terminated sessions to exit. Polled every
        5 ms rather than `pg_terminate_backend(pid, timeout)`, which checks only every 100 ms
        and would hold this connection, and every revocation queued behind it, that long.
        A backend still there at the deadline cannot log in again (NOLOGIN) and loses its
        privileges with DROP OWNED below."""
        deadline = time.monotonic() + self._settings.terminate_wait_ms / 1000
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
            )
            row = await cursor.fetchone()
            if not row or not row[0] or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ orphans
    async def orphans(self, known: Collection[str]) -> list[Lease]:
        async with self._admin(self._maintenance_db) as conn:
            cursor = await conn.execute(
                "SELECT r.rolname, shobj_description(r.oid, 'pg_authid') FROM pg_roles r "
                "WHERE starts_with(r.rolname, %s) ORDER BY r.rolname",
                (self._settings.role_prefix,),
            )
            rows = await cursor.fetchall()
        leases = []
        for rolname, comment in rows:
            if rolname in known:
                continue
            match = _COMMENT.fullmatch(comment or "")
            if match is None:
                continue  # a role with our prefix that we did not make: leave it alone
            leases.append(
                Lease(
                    broker=NAME,
                    handle=rolname,
                    grant_id=match["grant"],
                    expires_at=0.0,
                    details={"database": match["db"]},
                )
            )
        return leases

    # ------------------------------------------------------------------ connections
    @contextlib.asynccontextmanager
    async def _admin(self, database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One cached admin connection per database, one operation at a time on each. A
        connection that failed is dropped, so the next call reconnects."""
        lock = self._locks.setdefault(database, asyncio.Lock())
        async with lock:
            conn = self._connections.get(database)
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        make_conninfo(
                            self._settings.admin_dsn,
                            dbname=database,
                            connect_timeout=str(self._settings.connect_timeout_seconds),
                            application_name="jit-sidecar-broker",
                        ),
                        autocommit=True,
                    )
                    self._connections[database] = conn
                yield conn
            except psycopg.OperationalError as err:
                await self._discard(database)
                # The message may name the host, never the password: libpq does not echo it.
                raise BrokerUnavailable(NAME, _first_line(err), "unreachable") from err
            except psycopg.Error as err:
                if isinstance(err, psycopg.errors.InsufficientPrivilege):
                    raise BrokerUnavailable(NAME, _first_line(err), "privileges") from err
                raise BrokerUnavailable(NAME, _first_line(err), "error") from err

    async def _discard(self, database: str) -> None:
        conn = self._connections.pop(database, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def aclose(self) -> None:
        for database in list(self._connections):
            await self._discard(database)


async def _role_exists(conn: psycopg.AsyncConnection[Any], role: str) -> bool:
    cursor = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    return await cursor.fetchone() is not None


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise CredentialSpecInvalid(f"{what} must be a non-empty list")
    if not all(isinstance(v, str) for v in value):
        raise CredentialSpecInvalid(f"{what} must hold strings")
    if len(set(value)) != len(value):
        raise CredentialSpecInvalid(f"{what} has duplicates")
    return tuple(value)


def _schemas(tables: tuple[str, ...]) -> list[str]:
    return sorted({t.split(".", 1)[0] for t in tables})


def _regclass(table: str) -> str:
    schema, name = table.split(".", 1)
    return f'"{schema}"."{name}"'


def _check_covered(resource: str, database: str, tables: tuple[str, ...]) -> None:
    """For a `postgres://<database>[/<schema>[.<table>]]` resource, the credential stays
    inside it: same database, and tables inside the named schema or equal to the named
    table. Other resource schemes leave the mapping to the policy."""
    if not resource.startswith("postgres://"):
        return
    authority, _, path = resource[len("postgres://") :].partition("/")
    if authority != database:
        raise CredentialSpecInvalid(f"database {database} is outside the resource {resource}")
    if not path:
        return
    target = path.split("/", 1)[0]
    for table in tables:
        inside = table == target if "." in target else table.split(".", 1)[0] == target
        if not inside:
            raise CredentialSpecInvalid(f"table {table} is outside the resource {resource}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

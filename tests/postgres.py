"""A real, throwaway PostgreSQL cluster for the broker tests.

Debian's PostgreSQL (`make test` installs it: scripts/bootstrap.sh postgres) is run from its
own binaries, never as the system service: `initdb` in a temporary directory owned by an
unprivileged OS user, listening only on a free loopback port (and a private Unix socket
directory), with SCRAM password authentication for TCP. `stop()` stops it; the directory goes
with the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.harness import free_port, wait_for

#: The OS user the server runs as when the tests run as root (PostgreSQL refuses root).
PG_OS_USER = os.environ.get("JIT_TEST_PG_USER", "postgres")
ADMIN_ROLE = "jit_admin"


def pg_bin_dir() -> Path:
    """Directory of Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    override = os.environ.get("JIT_TEST_PG_BIN")
    if override:
        return Path(override)
    base = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in base.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: run "
            "`scripts/bootstrap.sh postgres` (make test does)"
        )
    return versions[-1]


class PostgresServer:
    """One throwaway cluster: `admin_dsn` is a superuser-free admin login (CREATEROLE plus
    ownership of the test databases), as docs/brokers.md recommends for production."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "data"
        self.sockets = workdir / "sock"
        self.log = workdir / "postgres.log"
        self.superuser_password = secrets.token_urlsafe(18)
        self.admin_password = secrets.token_urlsafe(18)
        self._as_user: list[str] = []
        self._options = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PostgresServer:
        bindir = pg_bin_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_OS_USER)
            for path in (self.workdir, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            # The temporary tree above the work dir must be traversable by that user.
            for parent in self.workdir.parents:
                if str(parent) in ("/", "/tmp"):
                    break
                with contextlib.suppress(OSError):
                    os.chmod(parent, os.stat(parent).st_mode | 0o011)  # noqa: S103 (search bit)
            self._as_user = ["runuser", "-u", PG_OS_USER, "--"]
        pwfile = self.workdir / "superuser.pw"
        pwfile.write_text(self.superuser_password)
        if self._as_user:
            user = pwd.getpwnam(PG_OS_USER)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--pwfile",
                str(pwfile),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        self._options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockets} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200 "
            "-c log_min_messages=warning"
        )
        self.restart()
        self._bootstrap_admin()
        return self

    def stop(self) -> None:
        if not self.data.exists():
            return
        with contextlib.suppress(RuntimeError):
            self._run(
                [str(pg_bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            )

    def restart(self) -> None:
        """Start the cluster (again, after `stop()`) and wait until it answers."""
        self._run(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                self._options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        wait_for(self.healthy, timeout=30, what="PostgreSQL to accept connections")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self._as_user, *argv],
            check=False,
            capture_output=True,
            cwd=self.workdir,
            timeout=120,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    # ------------------------------------------------------------------ access
    def dsn(
        self, user: str = "postgres", password: str | None = None, dbname: str = "postgres"
    ) -> str:
        pw = self.superuser_password if password is None and user == "postgres" else password
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
            f"password={pw} connect_timeout=5"
        )

    @property
    def admin_dsn(self) -> str:
        return self.dsn(ADMIN_ROLE, self.admin_password)

    def healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    @contextlib.contextmanager
    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Iterator[Any]:
        """A superuser connection, for the tests' own assertions on the catalog."""
        import psycopg

        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True, **kwargs) as conn:
            yield conn

    def query(self, sql: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            return conn.execute(sql, params or None).fetchall()

    def execute(self, sql: str, *params: Any, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql, params or None)

    def _bootstrap_admin(self) -> None:
        """The broker's admin login and a `crm` database with a table to grant on."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                    sql.Identifier(ADMIN_ROLE), sql.Literal(self.admin_password)
                )
            )
            conn.execute(sql.SQL("CREATE DATABASE crm OWNER {}").format(sql.Identifier(ADMIN_ROLE)))
        with self.connect("crm") as conn:
            conn.execute(f"SET ROLE {ADMIN_ROLE}")
            conn.execute("CREATE TABLE public.tickets (id int PRIMARY KEY, subject text NOT NULL)")
            conn.execute("INSERT INTO public.tickets VALUES (1001, 'printer on fire')")
            conn.execute("CREATE TABLE public.customers (id int PRIMARY KEY, email text)")
            conn.execute("INSERT INTO public.customers VALUES (7, 'ada@example.org')")

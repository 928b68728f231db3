"""Install and upgrade the schema: yoyo migrations, then the re-runnable sql/ files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import psycopg
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend

from tracefence.schema import migrations_dir, sql_dir, sql_files

MIGRATION_TABLE = "_yoyo_migration"


@dataclass(frozen=True)
class _Target:
    """What yoyo calls a database URI: here, a libpq connection string."""

    conninfo: str
    database: str = ""  # read by yoyo's table listing; the conninfo names the database


class _Backend(PostgresqlPsycopgBackend):  # type: ignore[misc]
    """yoyo's psycopg 3 backend, connecting with a libpq conninfo (PG* variables honoured)."""

    def connect(self, dburi: _Target) -> psycopg.Connection[Any]:
        self.schema = None
        return psycopg.connect(dburi.conninfo, autocommit=True)


def _backend(conninfo: str) -> _Backend:
    backend = _Backend(_Target(conninfo), MIGRATION_TABLE)
    backend.init_database()
    return backend


@dataclass
class MigrationStatus:
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    sql_changed: list[str] = field(default_factory=list)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _installed_sql(conn: psycopg.Connection[Any]) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('conformance.installed_sql') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT path, sha256 FROM conformance.installed_sql").fetchall()
    return {path: digest for path, digest in rows}


def _sql_sources() -> list[tuple[str, str]]:
    root = sql_dir()
    return [(str(p.relative_to(root)), p.read_text()) for p in sql_files()]


def status(conninfo: str) -> MigrationStatus:
    migrations = read_migrations(str(migrations_dir()))
    backend = _backend(conninfo)
    result = MigrationStatus()
    with backend.lock():
        for migration in migrations:
            (result.applied if backend.is_applied(migration) else result.pending).append(
                migration.id
            )
    with psycopg.connect(conninfo) as conn:
        installed = _installed_sql(conn)
    result.sql_changed = [
        path for path, text in _sql_sources() if installed.get(path) != _digest(text)
    ]
    return result


def apply(conninfo: str) -> MigrationStatus:
    """Apply pending migrations, then the sql/ files if any changed. A second run is a no-op."""
    migrations = read_migrations(str(migrations_dir()))
    backend = _backend(conninfo)
    result = MigrationStatus()
    with backend.lock():
        pending = backend.to_apply(migrations)
        result.pending = [m.id for m in pending]
        backend.apply_migrations(pending)
        result.applied = [m.id for m in migrations]
    result.sql_changed = apply_sql(conninfo)
    return result


def apply_sql(conninfo: str, *, force: bool = False) -> list[str]:
    """Run every sql/ file as tracefence_owner in one transaction when any of them changed."""
    sources = _sql_sources()
    with psycopg.connect(conninfo) as conn:
        installed = _installed_sql(conn)
        changed = [path for path, text in sources if installed.get(path) != _digest(text)]
        if not changed and not force and set(installed) == {p for p, _ in sources}:
            return []
        with conn.transaction():
            conn.execute("SET LOCAL ROLE tracefence_owner")
            for path, text in sources:
                try:
                    conn.execute(text.encode())
                except psycopg.Error as error:
                    error.add_note(f"while applying sql/{path}")
                    raise
            conn.execute("DELETE FROM conformance.installed_sql")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO conformance.installed_sql (path, sha256) VALUES (%s, %s)",
                    [(path, _digest(text)) for path, text in sources],
                )
    return changed


def rollback(conninfo: str, count: int = 1) -> list[str]:
    """Roll back the last `count` migrations; the sql/ files are re-applied on the next apply."""
    migrations = read_migrations(str(migrations_dir()))
    backend = _backend(conninfo)
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)[:count]
        backend.rollback_migrations(to_rollback)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if _installed_sql(conn):
            conn.execute("DELETE FROM conformance.installed_sql")
    return [m.id for m in to_rollback]

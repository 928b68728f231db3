"""Install and upgrade the schema: yoyo migrations, then the re-runnable sql/ files."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend

from tracefence.errors import RollbackBlocked, SchemaVersionError
from tracefence.schema import SQL_FOLDERS, migrations_dir, package_version, sql_dir, sql_files

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
    package_version: str = ""
    schema_version: str | None = None  # the package version whose migrate ran last, if recorded


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (0.2.0rc1 -> (0, 2, 0)): what "newer" compares."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else (0,)


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone() == (True,)


def _schema_version(conn: psycopg.Connection[Any]) -> str | None:
    if not _exists(conn, "conformance.installed_package"):
        return None
    row = conn.execute("SELECT version FROM conformance.installed_package").fetchone()
    return row[0] if row else None


def _refuse_newer_schema(conninfo: str, known: set[str]) -> None:
    """Raise SchemaVersionError if a newer tracefence migrated the database: it applied a
    migration this package does not have, or recorded a later version."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        unknown: list[str] = []
        if _exists(conn, MIGRATION_TABLE):
            applied = conn.execute(f"SELECT migration_id FROM {MIGRATION_TABLE}").fetchall()
            unknown = sorted(row[0] for row in applied if row[0] not in known)
        recorded = _schema_version(conn)
    mine = package_version()
    if unknown or (recorded is not None and _release(recorded) > _release(mine)):
        newer = f"tracefence {recorded}" if recorded else "a newer tracefence"
        what = f" (migrations unknown to this package: {', '.join(unknown)})" if unknown else ""
        raise SchemaVersionError(
            f"this database was migrated by {newer}{what}; this package is {mine}: "
            "upgrade the package, or restore the database it was installed with"
        )


def _record_version(conn: psycopg.Connection[Any]) -> None:
    """Record this package's version as the one that migrated the database (no write when it
    already is). A schema from before migration 0011 (tests install old releases) has no
    record to keep."""
    if not _exists(conn, "conformance.installed_package"):
        return
    conn.execute(
        "INSERT INTO conformance.installed_package (version) VALUES (%s) ON CONFLICT (singleton)"
        " DO UPDATE SET version = excluded.version, migrated_at = now()"
        " WHERE installed_package.version IS DISTINCT FROM excluded.version",
        [package_version()],
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _installed_sql(conn: psycopg.Connection[Any]) -> dict[str, str]:
    if not _exists(conn, "conformance.installed_sql"):
        return {}
    rows = conn.execute("SELECT path, sha256 FROM conformance.installed_sql").fetchall()
    return {path: digest for path, digest in rows}


def _sql_sources() -> list[tuple[str, str]]:
    root = sql_dir()
    return [(str(p.relative_to(root)), p.read_text()) for p in sql_files()]


def status(conninfo: str) -> MigrationStatus:
    migrations = read_migrations(str(migrations_dir()))
    backend = _backend(conninfo)
    result = MigrationStatus(package_version=package_version())
    with backend.lock():
        for migration in migrations:
            (result.applied if backend.is_applied(migration) else result.pending).append(
                migration.id
            )
    with psycopg.connect(conninfo) as conn:
        installed = _installed_sql(conn)
        result.schema_version = _schema_version(conn)
    result.sql_changed = [
        path for path, text in _sql_sources() if installed.get(path) != _digest(text)
    ]
    return result


def apply(conninfo: str) -> MigrationStatus:
    """Apply pending migrations, then the sql/ files if any changed, and record the package's
    version. A second run is a no-op. A database a newer package migrated is refused
    (SchemaVersionError) before anything is written."""
    migrations = read_migrations(str(migrations_dir()))
    _refuse_newer_schema(conninfo, {m.id for m in migrations})
    backend = _backend(conninfo)
    result = MigrationStatus(package_version=package_version())
    with backend.lock():
        pending = backend.to_apply(migrations)
        result.pending = [m.id for m in pending]
        backend.apply_migrations(pending)
        result.applied = [m.id for m in migrations]
    result.sql_changed = apply_sql(conninfo)
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET LOCAL ROLE tracefence_owner")
        _record_version(conn)
        result.schema_version = package_version()
    return result


#: A migration that creates a function (not sql/'s job, but 0007's audit functions are).
_MIGRATION_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([a-z_]+\.[a-z_]+)\s*\(",
                                 re.IGNORECASE)


def _functions_of_migrations() -> set[str]:
    """Names (schema.name) of the functions the migrations create."""
    return {
        match.lower()
        for path in migrations_dir().glob("*.sql")
        if not path.name.endswith(".rollback.sql")
        for match in _MIGRATION_FUNCTION.findall(path.read_text())
    }


def _package_functions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every function of the package's schemas owned by tracefence_owner, by signature, with
    the version (xmin) of its catalog row."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.xmin::text, n.nspname || '.' || p.proname"
        " FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE n.nspname = ANY(%s) AND p.proowner = 'tracefence_owner'::regrole",
        [list(SQL_FOLDERS)],
    ).fetchall()
    kept = _functions_of_migrations()
    return {signature: version for signature, version, name in rows if name not in kept}


def _drop_stale_functions(conn: psycopg.Connection[Any], before: dict[str, str]) -> list[str]:
    """Drop the functions sql/ defined before this application and no longer defines: a
    function CREATE OR REPLACE re-created has a new catalog row, so one whose row is unchanged
    was not re-created (a signature that changed, a function removed). RESTRICT: a policy,
    trigger or view still using one fails the whole application, naming it."""
    after = _package_functions(conn)
    stale = sorted(sig for sig, version in after.items() if before.get(sig) == version)
    for signature in stale:
        try:
            conn.execute(f"DROP FUNCTION {signature}")
        except psycopg.Error as error:
            error.add_note(f"sql/ no longer defines {signature}, and it cannot be dropped")
            raise
    return stale


def apply_sql(conninfo: str, *, force: bool = False) -> list[str]:
    """Run every sql/ file as tracefence_owner in one transaction when any of them changed,
    then drop the package functions the files no longer define (stale overloads)."""
    sources = _sql_sources()
    with psycopg.connect(conninfo) as conn:
        installed = _installed_sql(conn)
        changed = [path for path, text in sources if installed.get(path) != _digest(text)]
        if not changed and not force and set(installed) == {p for p, _ in sources}:
            return []
        with conn.transaction():
            conn.execute("SET LOCAL ROLE tracefence_owner")
            before = _package_functions(conn)
            for path, text in sources:
                try:
                    conn.execute(text.encode())
                except psycopg.Error as error:
                    error.add_note(f"while applying sql/{path}")
                    raise
            _drop_stale_functions(conn, before)
            conn.execute("DELETE FROM conformance.installed_sql")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO conformance.installed_sql (path, sha256) VALUES (%s, %s)",
                    [(path, _digest(text)) for path, text in sources],
                )
    return changed


#: Schemas whose tables hold tenants' data (what `rollback` will not drop unasked), and the
#: tables there whose rows the migrations write themselves (the catalog, the signing key) or
#: derive from other tables (descendant_projects, rebuilt by the migration that creates it).
DATA_SCHEMAS = ("tenancy", "iam", "telemetry", "audit")
PACKAGE_ROWS = ("iam.permissions", "iam.roles", "iam.role_permissions", "iam.request_signing_key",
                "tenancy.descendant_projects")


def _tables_holding_rows(conn: psycopg.Connection[Any]) -> set[str]:
    """Tables of DATA_SCHEMAS with at least one row. A table this login cannot read past
    row-level security counts as holding rows (row_security = off makes that an error, not an
    empty answer)."""
    tables = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) AND NOT c.oid::regclass::text = ANY(%s)",
        [list(DATA_SCHEMAS), list(PACKAGE_ROWS)],
    ).fetchall()
    holding = set()
    row = conn.execute(
        "SELECT current_setting('row_security'), set_config('row_security', 'off', true)"
    ).fetchone()
    previous = row[0] if row else "on"
    for (table,) in tables:
        try:
            with conn.transaction():
                found = conn.execute(f"SELECT EXISTS (SELECT FROM {table})").fetchone()
        except psycopg.errors.InsufficientPrivilege:
            found = (True,)
        if found and found[0]:
            holding.add(table)
    conn.execute("SELECT set_config('row_security', %s, true)", [previous])
    return holding


def rollback(conninfo: str, count: int = 1, *, drop_data: bool = False) -> list[str]:
    """Roll back the last `count` migrations in one transaction: all of them, or none.

    Raises RollbackBlocked, having changed nothing, when a rollback would drop a table that
    holds rows, or delete rows other rows refer to; with `drop_data` it drops them (emptying a
    referring table first). The sql/ files are re-applied on the next apply.
    """
    migrations = read_migrations(str(migrations_dir()))
    backend = _backend(conninfo)
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)[:count]
        with psycopg.connect(conninfo) as conn, conn.transaction():
            for migration in to_rollback:
                _rollback_one(conn, migration, drop_data)
                conn.execute(f"DELETE FROM {MIGRATION_TABLE} WHERE migration_hash = %s", [migration.hash])
            if _installed_sql(conn):
                conn.execute("DELETE FROM conformance.installed_sql")
    return [m.id for m in to_rollback]


def _rollback_one(conn: psycopg.Connection[Any], migration: Any, drop_data: bool) -> None:
    """Run one migration's rollback file inside the caller's transaction."""
    text = Path(str(migration.path).removesuffix(".sql") + ".rollback.sql").read_text()
    emptied: list[str] = []
    while True:
        holding = _tables_holding_rows(conn)
        try:
            with conn.transaction():
                conn.execute(text.encode())
                conn.execute("SET LOCAL ROLE NONE")  # the file's SET LOCAL ROLE ends with it
        except psycopg.errors.ForeignKeyViolation as error:
            referring = f"{error.diag.schema_name}.{error.diag.table_name}"
            if not drop_data or referring in emptied:
                raise RollbackBlocked(
                    f"rolling back {migration.id} would delete rows that {referring} refers to "
                    f"({error.diag.message_primary}); nothing was rolled back: pass --drop-data "
                    "to empty it first"
                ) from error
            emptied.append(referring)
            conn.execute(f"TRUNCATE {referring} CASCADE")
            continue
        except psycopg.Error as error:
            error.add_note(f"while rolling back {migration.id}; nothing was rolled back")
            raise
        break
    dropped = sorted(t for t in holding if not _exists(conn, t))
    if dropped and not drop_data:
        raise RollbackBlocked(
            f"rolling back {migration.id} would drop {', '.join(dropped)}, which hold rows; "
            "nothing was rolled back: pass --drop-data to drop them"
        )

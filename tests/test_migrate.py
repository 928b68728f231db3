"""tracefence migrate: an empty database gets everything, a second run is a no-op, status
reports, rollback undoes, and nothing needs an extension."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from tracefence import migrate


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracefence", *args], capture_output=True, text=True, timeout=120
    )


def test_migrate_applies_everything_then_is_a_no_op(empty_db: str) -> None:
    first = _cli("migrate", "--dsn", empty_db)
    assert first.returncode == 0, first.stderr
    assert "applied migration 0001_roles" in first.stdout
    assert "applied sql/" in first.stdout
    second = _cli("migrate", "--dsn", empty_db)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    status = _cli("migrate", "status", "--dsn", empty_db)
    assert status.returncode == 0
    assert "pending" not in status.stdout
    assert "sql/: up to date" in status.stdout


def test_status_lists_pending_migrations_before_apply(empty_db: str) -> None:
    result = migrate.status(empty_db)
    assert result.applied == []
    assert "0005_telemetry" in result.pending


def test_migrated_database_uses_no_extension_and_the_package_roles(empty_db: str) -> None:
    migrate.apply(empty_db)
    with psycopg.connect(empty_db) as conn:
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
        assert extensions <= {"plpgsql"}
        roles = dict(
            (r[0], r[1:]) for r in conn.execute(
                "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin FROM pg_roles "
                "WHERE rolname LIKE 'tracefence\\_%' AND rolname NOT LIKE 'tracefence\\_test%'"
            ).fetchall()
        )
        assert roles == {
            "tracefence_owner": (False, True, False),
            "tracefence_app": (False, False, False),
            "tracefence_service": (False, False, False),
            "tracefence_audit": (False, False, False),  # owns the append-only audit log
        }
        owned_by_app = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = 'tracefence_app'::regrole"
        ).fetchone()
        assert owned_by_app == (0,)
        not_owner = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('tenancy', 'iam', 'telemetry', 'conformance') "
            "AND c.relowner <> 'tracefence_owner'::regrole"
        ).fetchall()
        assert not_owner == []


def test_rollback_then_apply_restores_the_schema(empty_db: str) -> None:
    migrate.apply(empty_db)
    applied = migrate.status(empty_db).applied
    rolled = migrate.rollback(empty_db, count=len(applied))
    assert rolled == list(reversed(applied))
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('telemetry.traces')").fetchone() == (None,)
    result = migrate.apply(empty_db)
    assert result.pending[0] == "0001_roles"
    assert result.sql_changed
    with psycopg.connect(empty_db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_policy WHERE polrelid = 'telemetry.traces'::regclass"
        ).fetchone() == (4,)
        assert conn.execute("SELECT to_regclass('audit.events')").fetchone() != (None,)


def test_a_failing_migration_reports_and_exits_2(empty_db: str) -> None:
    result = _cli("migrate", "--dsn", empty_db + " port=1")
    assert result.returncode == 2
    assert "migration failed" in result.stderr


def test_landed_migrations_match_their_recorded_checksums() -> None:
    """migrations/landed.sha256 (sha256sum format) records every migration as it landed: a
    landed file that changed fails here, and a new migration must be recorded to land. Fix a
    mistake with a new migration, never by editing one (sql/CONVENTIONS.md, rule 1)."""
    import hashlib

    from tracefence.schema import migrations_dir

    folder = migrations_dir()
    recorded: dict[str, str] = {}
    for line in (folder / "landed.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        recorded[name.lstrip("*")] = digest
    present = {p.name for p in folder.glob("*.sql")}
    assert present - set(recorded) == set(), "migrations not yet recorded in landed.sha256"
    assert set(recorded) - present == set(), "landed.sha256 names migrations that are gone"
    edited = [name for name, digest in recorded.items()
              if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest]
    assert edited == [], f"landed migrations were edited: {edited}"


def test_migrate_records_the_package_version_and_status_shows_it(empty_db: str) -> None:
    from tracefence.schema import package_version

    assert migrate.status(empty_db).schema_version is None
    migrate.apply(empty_db)
    assert migrate.status(empty_db).schema_version == package_version()
    shown = _cli("migrate", "status", "--dsn", empty_db)
    assert f"schema version: {package_version()}; package version: {package_version()}" in shown.stdout


@pytest.mark.parametrize("newer", ["migration", "version"])
def test_migrate_refuses_a_database_a_newer_package_migrated_and_changes_nothing(
    empty_db: str, newer: str
) -> None:
    migrate.apply(empty_db)
    with psycopg.connect(empty_db) as conn:
        if newer == "migration":  # a migration this package does not have
            conn.execute(
                "INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc)"
                " VALUES ('f00d', '9999_from_the_future', now())"
            )
        else:  # only sql/ changed in the newer release
            conn.execute("SET ROLE tracefence_owner")
            conn.execute("UPDATE conformance.installed_package SET version = '99.0.0'")
        conn.execute("SET ROLE tracefence_owner")
        conn.execute("UPDATE conformance.installed_sql SET sha256 = repeat('0', 64)")  # would re-apply
        before = conn.execute("SELECT array_agg(path || sha256 ORDER BY path) FROM conformance.installed_sql"
                              ).fetchone()
    refused = _cli("migrate", "--dsn", empty_db)
    assert refused.returncode == 2
    assert "this database was migrated by" in refused.stderr
    assert ("9999_from_the_future" if newer == "migration" else "tracefence 99.0.0") in refused.stderr
    assert "upgrade the package" in refused.stderr and "Traceback" not in refused.stderr
    with psycopg.connect(empty_db) as conn:
        conn.execute("SET ROLE tracefence_owner")
        after = conn.execute("SELECT array_agg(path || sha256 ORDER BY path) FROM conformance.installed_sql"
                             ).fetchone()
    assert after == before


def test_rollback_that_would_drop_data_changes_nothing_and_says_what_blocks_it(db) -> None:
    owner = db.create_user("owner")
    with db.fence().request(user=owner) as conn:
        conn.execute("SELECT tenancy.create_organisation('acme', 'Acme')")
    applied = migrate.status(db.admin_conninfo).applied
    before = db.snapshot()
    blocked = _cli("migrate", "rollback", "--count", str(len(applied)), "--dsn", db.admin_conninfo)
    assert blocked.returncode == 2, blocked.stdout
    # The first blocker on the way down: the audit rows of the organisation's creation.
    assert "rolling back 0007_audit would drop audit.events, which hold rows" in blocked.stderr
    assert "nothing was rolled back: pass --drop-data" in blocked.stderr
    after = migrate.status(db.admin_conninfo)
    assert after.applied == applied and after.pending == [] and after.sql_changed == []
    assert db.snapshot() == before


def test_rollback_with_drop_data_undoes_every_migration_and_apply_restores_them(db) -> None:
    owner = db.create_user("owner")
    with db.fence().request(user=owner) as conn:
        conn.execute("SELECT tenancy.create_organisation('acme', 'Acme')")
    applied = migrate.status(db.admin_conninfo).applied
    done = _cli("migrate", "rollback", "--count", str(len(applied)), "--drop-data", "--dsn",
                db.admin_conninfo)
    assert done.returncode == 0, done.stderr
    assert migrate.status(db.admin_conninfo).applied == []
    with psycopg.connect(db.admin_conninfo) as conn:
        left = conn.execute("SELECT array_agg(nspname) FROM pg_namespace WHERE nspname = ANY(%s)",
                            [["tenancy", "iam", "telemetry", "audit", "conformance"]]).fetchone()
    assert left == (None,)
    assert migrate.apply(db.admin_conninfo).pending == applied


def test_rollback_of_the_latest_migration_keeps_the_data(db) -> None:
    owner = db.create_user("owner")
    with db.fence().request(user=owner) as conn:
        conn.execute("SELECT tenancy.create_organisation('acme', 'Acme')")
    before = db.snapshot()
    latest = migrate.status(db.admin_conninfo).applied[-1]
    assert migrate.rollback(db.admin_conninfo) == [latest]
    assert migrate.status(db.admin_conninfo).pending == [latest]
    migrate.apply(db.admin_conninfo)
    assert db.snapshot() == before


def test_applying_sql_drops_functions_it_no_longer_defines_and_keeps_the_rest(empty_db: str) -> None:
    """An upgrade must not leave an old overload behind (42725 "is not unique" otherwise):
    a function sql/ defined before and no longer defines is dropped; the functions migrations
    create and anyone else's stay."""
    migrate.apply(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_owner")
        # What an earlier release's sql/ left: the same name with another signature.
        conn.execute("CREATE FUNCTION iam.effective_permission_set(uuid, uuid) RETURNS text[]"
                     " LANGUAGE sql AS 'SELECT NULL::text[]'")
        conn.execute("RESET ROLE")
        conn.execute("CREATE ROLE host_owner_for_stale_test")
        conn.execute("GRANT CREATE ON SCHEMA telemetry TO host_owner_for_stale_test")
        conn.execute("SET ROLE host_owner_for_stale_test")
        conn.execute("CREATE FUNCTION telemetry.host_helper() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("RESET ROLE")
    try:
        migrate.apply_sql(empty_db, force=True)
        with psycopg.connect(empty_db) as conn:
            left = {r[0] for r in conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc AS p"
                " WHERE p.proname IN ('effective_permission_set', 'host_helper', 'purge_expired')"
            ).fetchall()}
        assert "iam.effective_permission_set(uuid,uuid)" not in left
        assert {"telemetry.host_helper()", "audit.purge_expired()"} <= left
        assert any(s.startswith("iam.effective_permission_set(") for s in left)  # the current one
    finally:
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute("DROP FUNCTION IF EXISTS telemetry.host_helper()")
            conn.execute("DROP OWNED BY host_owner_for_stale_test")
            conn.execute("DROP ROLE host_owner_for_stale_test")

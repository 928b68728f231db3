"""tracefence migrate: an empty database gets everything, a second run is a no-op, status
reports, rollback undoes, and nothing needs an extension."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from tests.world import Server
from tracefence import migrate


@pytest.fixture
def empty_db(server: Server, template: str) -> Iterator[str]:
    """A database that has never seen tracefence (the template fixture made the roles)."""
    name = f"tracefence_empty_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user, host=server.host, port=server.port, password=server.password,
        dbname=name,
    )
    with janitor:
        yield server.conninfo(name)


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

"""Upgrade from the previous landed state with data in it: install the schema of that commit
(its migrations and its sql/ files), fill it through its SQL API, upgrade with the current
`tracefence migrate`, and check that the data and the fence survived."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from tests.conftest import APP_LOGIN, LOGIN_PASSWORD, SERVICE_LOGIN, TOKEN_SECRET
from tests.world import Server
from tracefence import migrate, schema, user_token

# Where upgrades start: the last release (0.1.0) and the last landed state, moved forward as
# they change (CHANGELOG.md).
UPGRADE_FROM = {"0.1.0": "023eacf", "landed": "8422b77"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=list(UPGRADE_FROM.values()), ids=list(UPGRADE_FROM))
def previous_release(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The migrations/ and sql/ folders of a state in UPGRADE_FROM, from git."""
    ref = request.param
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "migrations", "sql"],
            capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:  # pragma: no cover - not a clone
        pytest.skip(f"the git history with {ref} is not available: {error}")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True, timeout=60)
    return tmp_path


@pytest.fixture
def old_db(server: Server, template: str) -> Iterator[str]:
    name = f"tracefence_upgrade_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user, host=server.host, port=server.port, password=server.password, dbname=name,
    )
    with janitor:
        yield server.conninfo(name)


def _install_previous(conninfo: str, release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(migrate, "migrations_dir", lambda: release / "migrations")
        patch.setattr(migrate, "sql_dir", lambda: release / "sql")
        patch.setattr(migrate, "sql_files", lambda: [
            path for folder in schema.SQL_FOLDERS for path in sorted((release / "sql" / folder).glob("*.sql"))
        ])
        migrate.apply(conninfo)


def _as(conninfo: str, login: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo + f" user={login} password={LOGIN_PASSWORD}", autocommit=True)


def _request(conn: psycopg.Connection[Any], credential: str) -> None:
    conn.execute("BEGIN")
    conn.execute("SELECT iam.begin_request(%s)", [credential])


def test_an_upgrade_from_the_previous_release_keeps_data_and_fence(
    old_db: str, previous_release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_previous(old_db, previous_release, monkeypatch)
    with _as(old_db, SERVICE_LOGIN) as service:
        service.execute("SELECT iam.set_token_secret(%s)", [TOKEN_SECRET])
        owner = service.execute("SELECT iam.create_user('owner@example.com', 'Owner')").fetchone()[0]
        reader = service.execute("SELECT iam.create_user('reader@example.com', 'Reader')").fetchone()[0]
    with _as(old_db, APP_LOGIN) as app:
        _request(app, user_token(TOKEN_SECRET, owner))
        org = app.execute("SELECT tenancy.create_organisation('acme', 'Acme')").fetchone()[0]
        ws = app.execute("SELECT tenancy.create_workspace(%s, 'web', 'Web')", [org]).fetchone()[0]
        projects = [
            app.execute("SELECT tenancy.create_project(%s, %s, %s)", [ws, slug, slug]).fetchone()[0]
            for slug in ("checkout", "search")
        ]
        envs = [
            app.execute("SELECT tenancy.create_environment(%s, 'production', true)", [p]).fetchone()[0]
            for p in projects
        ]
        app.execute("SELECT iam.grant_role(%s, 'project_developer', %s)", [reader, projects[0]])
        key = app.execute(
            "SELECT secret FROM iam.create_api_key('ingest', %s, ARRAY['traces:write', 'traces:read:prod'])",
            [ws],
        ).fetchone()[0]
        app.execute("COMMIT")
        _request(app, key)
        for project, env in zip(projects, envs, strict=True):
            for i in range(3):
                trace = uuid.uuid4()
                app.execute(
                    "INSERT INTO telemetry.traces (id, project_id, environment_id, name)"
                    " VALUES (%s, %s, %s, %s)",
                    [trace, project, env, f"GET /{i}"],
                )
                app.execute("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'db')", [trace])
        app.execute("COMMIT")

    result = migrate.apply(old_db)
    assert result.pending and result.pending[-1] == result.applied[-1]  # up to the latest

    with psycopg.connect(old_db) as conn:
        for table in ("traces", "spans"):
            stamped = conn.execute(
                sql.SQL(
                    "SELECT count(*), count(*) FILTER (WHERE t.organisation_id = p.organisation_id"
                    " AND t.workspace_id = p.workspace_id) FROM telemetry.{} AS t"
                    " JOIN tenancy.projects AS p ON p.id = t.project_id"
                ).format(sql.Identifier(table))
            ).fetchone()
            assert stamped == (6, 6), table
        findings = conn.execute(
            "SELECT code, object FROM conformance.findings WHERE level = 'error'"
        ).fetchall()
        assert findings == []
    with _as(old_db, APP_LOGIN) as app:
        # The key minted before the upgrade still reads what it read, nothing more.
        _request(app, key)
        assert app.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (6,)
        assert app.execute("SELECT count(*) FROM telemetry.spans").fetchone() == (6,)
        app.execute("ROLLBACK")
        # The developer of one project: non-production traces only, so none of these.
        _request(app, user_token(TOKEN_SECRET, reader))
        assert app.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)
        app.execute("ROLLBACK")
        # The owner after the upgrade: every trace, and a new workspace works in the request.
        _request(app, user_token(TOKEN_SECRET, owner))
        assert app.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (6,)
        app.execute("SELECT tenancy.create_workspace(%s, 'api', 'API')", [org])
        app.execute("ROLLBACK")

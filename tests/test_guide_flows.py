"""The trace-access guide's flows, each through fence.request."""

from __future__ import annotations

import pytest

from tests.world import Database, build_org, visible_traces
from tracefence import CredentialError, api


def _project_with_traces(db: Database):
    org = build_org(db, workspaces=2, projects_per_workspace=1)
    project = org.projects[0]
    prod = db.insert_trace(project.id, project.production, "GET /checkout")
    staging = db.insert_trace(project.id, project.staging, "GET /checkout")
    return org, project, prod, staging


def test_developer_sees_non_production_only(db: Database) -> None:
    org, project, _prod, staging = _project_with_traces(db)
    dev = db.create_user("dev")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, dev, "project_developer", project.id)
    assert visible_traces(db, user=dev) == {staging}
    with db.fence().request(user=dev) as conn:
        assert api.trace_access(conn, project.id) == {
            "traces:read": True, "traces:read:prod": False,
        }


def test_admin_role_adds_production(db: Database) -> None:
    org, project, prod, staging = _project_with_traces(db)
    user = db.create_user("dev")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_developer", project.id)
    assert visible_traces(db, user=user) == {staging}
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_admin", project.id)  # replaces the developer role
    assert visible_traces(db, user=user) == {prod, staging}
    assert db.scalar(
        "SELECT count(*) FROM iam.role_bindings WHERE principal_id = %s", [user]
    ) == 1


def test_key_with_only_prod_scope_reads_production_only(db: Database) -> None:
    org, project, prod, _staging = _project_with_traces(db)
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "prod reports", project.id, ["traces:read:prod"])
    assert key.secret.startswith("tfk_")
    assert visible_traces(db, api_key=key.secret) == {prod}
    stored = db.scalar("SELECT encode(secret_hash, 'hex') FROM iam.api_keys WHERE id = %s", [key.id])
    assert key.secret not in stored


def test_key_with_read_scope_reads_non_production_only(db: Database) -> None:
    org, project, _prod, staging = _project_with_traces(db)
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "staging", project.id, ["traces:read"])
    assert visible_traces(db, api_key=key.secret) == {staging}


def test_revoking_takes_effect_on_the_next_request(db: Database) -> None:
    org, project, prod, staging = _project_with_traces(db)
    user = db.create_user("admin")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_admin", project.id)
    assert visible_traces(db, user=user) == {prod, staging}
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_developer", project.id)
    assert visible_traces(db, user=user) == {staging}
    with db.fence().request(user=org.owner) as conn:
        api.revoke_role(conn, user, project.id)
    assert visible_traces(db, user=user) == set()


def test_editing_key_scopes_or_revoking_the_key_removes_access(db: Database) -> None:
    org, project, prod, staging = _project_with_traces(db)
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "reader", project.id, ["traces:read", "traces:read:prod"])
    assert visible_traces(db, api_key=key.secret) == {prod, staging}
    with db.fence().request(user=org.owner) as conn:
        api.set_api_key_scopes(conn, key.id, ["traces:read"])
    assert visible_traces(db, api_key=key.secret) == {staging}
    with db.fence().request(user=org.owner) as conn:
        api.revoke_api_key(conn, key.id)
    with pytest.raises(CredentialError):
        visible_traces(db, api_key=key.secret)


def test_classification_is_fixed_at_capture(db: Database) -> None:
    org, project, _prod, staging = _project_with_traces(db)
    dev = db.create_user("dev")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, dev, "project_developer", project.id)
        api.set_environment_production(conn, project.staging, True)
    later = db.insert_trace(project.id, project.staging, "after the flip")
    # The trace captured before the flip stays non-production; the new one is production.
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s", [staging]) is False
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s", [later]) is True
    assert visible_traces(db, user=dev) == {staging}


def test_cascade_from_workspace_and_organisation(db: Database) -> None:
    org = build_org(db, workspaces=2, projects_per_workspace=2)
    traces = {p.id: db.insert_trace(p.id, p.production) for p in org.projects}
    ws_admin, org_admin = db.create_user("ws"), db.create_user("org")
    first_ws = org.workspaces[0]
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, ws_admin, "workspace_admin", first_ws)
        api.grant_role(conn, org_admin, "org_admin", org.id)
    assert visible_traces(db, user=ws_admin) == {
        traces[p.id] for p in org.projects if p.workspace == first_ws
    }
    assert visible_traces(db, user=org_admin) == set(traces.values())
    # A project created after the grant is covered too: the cascade is structural.
    with db.fence().request(user=org.owner) as conn:
        new_project = api.create_project(conn, first_ws, "late", "Late project")
        env = api.create_environment(conn, new_project, "production", True)
    late = db.insert_trace(new_project, env)
    assert late in visible_traces(db, user=ws_admin)
    assert late in visible_traces(db, user=org_admin)


def test_boundary_state_for_a_member_without_trace_permissions(db: Database) -> None:
    org, project, _prod, _staging = _project_with_traces(db)
    member = db.create_user("member")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, member, "project_member", project.id)
    assert visible_traces(db, user=member) == set()
    with db.fence().request(user=member) as conn:
        assert api.trace_access(conn, project.id) == {
            "traces:read": False, "traces:read:prod": False,
        }
        names = [r[0] for r in conn.execute("SELECT slug FROM tenancy.projects").fetchall()]
        assert names == ["p-0"]


def test_ingest_through_a_write_key_is_classified_by_the_database(db: Database) -> None:
    org, project, _prod, _staging = _project_with_traces(db)
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "ingest", project.id, ["traces:write"])
    with db.fence().request(api_key=key.secret) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, %s)",
            [project.id, project.production, "POST /ingest"],
        )
        # A write-only key reads nothing back, not even what it wrote.
        assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)
    assert db.scalar(
        "SELECT is_production FROM telemetry.traces WHERE name = 'POST /ingest'"
    ) is True

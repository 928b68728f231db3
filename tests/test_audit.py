"""The audit log (SPEC §3) and the guide's "Verify the grant in the audit log" and
"Troubleshooting" paths, explain and the role matrix."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.world import Database, Org, build_org, visible_traces
from tracefence import InvalidInput, PermissionDenied, api


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=2, projects_per_workspace=2)


def _rows(db: Database, where: str = "TRUE", params: list | None = None) -> list[tuple]:
    with psycopg.connect(db.admin_conninfo) as conn:
        return conn.execute(
            f"SELECT cause, scope_tier, prior_permissions, new_permissions, actor_kind "
            f"FROM audit.events WHERE {where} ORDER BY id".encode(), params or []
        ).fetchall()


def _count(db: Database) -> int:
    return int(db.scalar("SELECT count(*) FROM audit.events"))


def test_a_grant_writes_one_row_per_scope_whose_set_changed(db: Database, org: Org) -> None:
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        event = api.grant_role(conn, user, "org_admin", org.id)
    assert event is not None
    assert (event.event_type, event.cause, event.scope_id) == ("rbac_grant", "binding_created", org.id)
    assert (event.actor_id, event.actor_kind, event.principal_id) == (org.owner, "user", user)
    assert event.prior_permissions == frozenset()
    assert "traces:read:prod" in (event.new_permissions or ())
    rows = _rows(db, "principal_id = %s", [user])
    # the organisation, its two workspaces and four projects
    assert sorted(r[1] for r in rows) == ["organisation"] + ["project"] * 4 + ["workspace"] * 2


def test_a_grant_that_changes_no_effective_set_writes_no_row(db: Database, org: Org) -> None:
    user = db.create_user()
    project = org.projects[0].id
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "org_admin", org.id)
    before = _count(db)
    with db.fence().request(user=org.owner) as conn:
        # project_admin is held already through the cascade; org_admin again is the same binding
        assert api.grant_role(conn, user, "project_admin", project) is None
        assert api.grant_role(conn, user, "org_admin", org.id) is None
        assert api.revoke_role(conn, db.create_user(), project) is None
    assert _count(db) == before


def test_revoking_writes_the_prior_and_new_sets(db: Database, org: Org) -> None:
    user = db.create_user()
    project = org.projects[0].id
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_admin", project)
        changed = api.grant_role(conn, user, "project_developer", project)
        removed = api.revoke_role(conn, user, project)
    assert changed is not None and removed is not None
    assert changed.cause == "binding_changed"
    assert "traces:read:prod" in (changed.prior_permissions or ())
    assert "traces:read:prod" not in (changed.new_permissions or ())
    assert removed.cause == "binding_removed"
    assert removed.new_permissions == frozenset()


def test_key_creation_scope_edits_and_revocation_are_audited(db: Database, org: Org) -> None:
    project = org.projects[0].id
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "k", project, ["traces:read", "traces:read:prod"])
        same = api.set_api_key_scopes(conn, key.id, ["traces:read:prod", "traces:read"])
        edited = api.set_api_key_scopes(conn, key.id, ["traces:read"])
        revoked = api.revoke_api_key(conn, key.id)
        again = api.revoke_api_key(conn, key.id)
    assert key.audit_event is not None and key.audit_event.cause == "key_created"
    assert key.audit_event.principal_kind == "api_key"
    assert same is None and again is None
    assert edited is not None and edited.new_permissions == {"traces:read"}
    assert revoked is not None and revoked.cause == "key_revoked"
    assert revoked.new_permissions == frozenset()


def test_verify_the_grant_in_the_project_audit_feed(db: Database, org: Org) -> None:
    """The guide: open the project feed, filter rbac_grant, find the row by principal and time."""
    project = org.projects[0]
    user = db.create_user()
    started = datetime.now(UTC)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_admin", project.id)
        api.set_environment_production(conn, project.staging, True)
    with db.fence().request(user=org.owner) as conn:
        feed = api.audit_feed(conn, project.id, "rbac_grant")
        everything = api.audit_feed(conn, project.id)
    assert all(e.event_type == "rbac_grant" for e in feed)
    mine = [e for e in feed if e.principal_id == user and e.occurred_at >= started]
    assert len(mine) == 1
    assert mine[0].actor_id == org.owner
    assert mine[0].new_permissions and "traces:read:prod" in mine[0].new_permissions
    # the feed includes rows scoped at ancestors: the owner's own org-level grant
    assert any(e.scope_id == org.id for e in feed)
    policy = [e for e in everything if e.event_type == "environment_policy"]
    assert [(p.detail["prior_is_production"], p.detail["new_is_production"]) for p in policy] == [
        (False, True)
    ]
    assert [e.occurred_at for e in everything] == sorted(
        (e.occurred_at for e in everything), reverse=True
    )


def test_the_feed_needs_audit_read_and_a_known_event_type(db: Database, org: Org) -> None:
    project = org.projects[0].id
    dev = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, dev, "project_developer", project)
    with pytest.raises(PermissionDenied) as denied, db.fence().request(user=dev) as conn:
        api.audit_feed(conn, project)
    assert denied.value.permission == "audit:read"
    with pytest.raises(InvalidInput), db.fence().request(user=org.owner) as conn:
        api.audit_feed(conn, project, "rbac_granted")


def test_flipping_to_the_same_value_writes_no_policy_row(db: Database, org: Org) -> None:
    project = org.projects[0]
    with db.fence().request(user=org.owner) as conn:
        assert api.set_environment_production(conn, project.production, True) is None


def test_the_row_rolls_back_with_its_change(db: Database, org: Org) -> None:
    user = db.create_user()
    before = _count(db)
    with pytest.raises(RuntimeError), db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "org_admin", org.id)
        raise RuntimeError("the request fails after the grant")
    assert _count(db) == before
    assert db.scalar("SELECT count(*) FROM iam.role_bindings WHERE principal_id = %s", [user]) == 0


def _expire(db: Database, user, resource) -> None:
    db.scalar(
        "UPDATE iam.role_bindings SET valid_until = now() - interval '1 second', "
        "granted_at = now() - interval '1 hour' WHERE principal_id = %s AND resource_id = %s "
        "RETURNING 1", [user, resource],
    )


def test_a_time_bounded_grant_is_audited_at_start_and_end(db: Database, org: Org) -> None:
    project = org.projects[0]
    trace = db.insert_trace(project.id, project.production)
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        start = api.grant_role(
            conn, user, "project_admin", project.id,
            valid_until=datetime.now(UTC) + timedelta(hours=4),
        )
    assert start is not None and start.cause == "binding_created"
    assert trace in visible_traces(db, user=user)
    _expire(db, user, project.id)
    # From valid_until on the binding grants nothing, whether or not the sweep has run.
    assert visible_traces(db, user=user) == set()
    service = db.service()
    assert api.sweep_expired(service) == 1
    assert api.sweep_expired(service) == 0  # idempotent
    rows = _rows(db, "principal_id = %s AND cause = 'binding_expired'", [user])
    assert len(rows) == 1
    _cause, tier, prior, new, actor = rows[0]
    assert (tier, actor, new) == ("project", "system", [])
    assert "traces:read:prod" in prior
    assert db.scalar(
        "SELECT occurred_at = b.valid_until FROM audit.events e JOIN iam.role_bindings b "
        "ON b.principal_id = e.principal_id WHERE e.cause = 'binding_expired' AND e.principal_id = %s",
        [user],
    ) is True


def test_a_grant_that_starts_later_is_recorded_when_it_starts(db: Database, org: Org) -> None:
    project = org.projects[0]
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        event = api.grant_role(
            conn, user, "project_developer", project.id,
            valid_from=datetime.now(UTC) + timedelta(hours=1),
        )
    assert event is None  # nothing is effective yet
    db.scalar(
        "UPDATE iam.role_bindings SET valid_from = now() - interval '1 second', "
        "granted_at = now() - interval '1 hour' WHERE principal_id = %s RETURNING 1", [user],
    )
    assert api.sweep_expired(db.service()) == 1
    assert [r[0] for r in _rows(db, "principal_id = %s", [user])] == ["binding_started"]


def test_the_fixed_window_workaround_is_audited_at_both_ends(db: Database, org: Org) -> None:
    project = org.projects[0].id
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_admin", project)
    with db.fence().request(user=org.owner) as conn:
        api.revoke_role(conn, user, project)
    assert [r[0] for r in _rows(db, "principal_id = %s", [user])] == [
        "binding_created", "binding_removed",
    ]


def test_expired_keys_are_recorded_as_expiry_not_revocation(db: Database, org: Org) -> None:
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(
            conn, "k", org.projects[0].id, ["traces:read"],
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    db.scalar("UPDATE iam.api_keys SET expires_at = now() WHERE id = %s RETURNING 1", [key.id])
    assert api.sweep_expired(db.service()) == 1
    assert [r[0] for r in _rows(db, "principal_id = %s", [key.id])] == ["key_created", "key_expired"]


def test_deleting_a_project_or_a_user_records_every_lost_set(db: Database, org: Org) -> None:
    project = org.projects[0]
    dev = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, dev, "project_developer", project.id)
        key = api.create_api_key(conn, "k", project.id, ["traces:read"])
        api.delete_project(conn, project.id)
    deleted = _rows(db, "cause = 'project_deleted'")
    assert len(deleted) == 3  # the owner, the developer and the key lost the project
    assert all(r[3] == [] for r in deleted)
    assert db.scalar("SELECT count(*) FROM iam.api_keys WHERE id = %s", [key.id]) == 0
    other = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, other, "workspace_member", org.workspaces[1])
    assert api.delete_user(db.service(), other) == 1 + 2  # the workspace and its two projects
    assert {r[0] for r in _rows(db, "principal_id = %s", [other])} == {
        "binding_created", "principal_removed",
    }


ROLES = ["tracefence_app", "tracefence_service", "tracefence_owner"]
TAMPERING = [
    "UPDATE audit.events SET cause = 'binding_removed'",
    "DELETE FROM audit.events",
    "TRUNCATE audit.events",
    "ALTER TABLE audit.events DISABLE TRIGGER USER",
    "ALTER TABLE audit.events DISABLE TRIGGER events_no_update",
    "ALTER TABLE audit.events NO FORCE ROW LEVEL SECURITY",
    "DROP TABLE audit.events",
    "CREATE OR REPLACE FUNCTION audit.refuse_tampering() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RETURN OLD; END $$",
    "ALTER TABLE audit.events ADD COLUMN note text",
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("statement", TAMPERING)
def test_no_package_role_can_tamper_with_the_audit_log(
    db: Database, org: Org, role: str, statement: str
) -> None:
    before = db.scalar("SELECT array_agg(e.* ORDER BY id)::text FROM audit.events e")
    assert before is not None
    with psycopg.connect(db.admin_conninfo) as conn:
        conn.execute(f"SET ROLE {role}".encode())
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(statement.encode())
    assert raised.value.sqlstate in {"42501", "42883"}, raised.value
    assert db.scalar("SELECT array_agg(e.* ORDER BY id)::text FROM audit.events e") == before


def test_nobody_acts_as_the_audit_role(db: Database) -> None:
    members = db.scalar(
        "SELECT array_agg(m.rolname) FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member "
        "WHERE a.roleid = 'tracefence_audit'::regrole AND NOT m.rolsuper"
    )
    assert members is None
    assert db.scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tracefence_audit'") is False


def test_purge_removes_only_rows_older_than_five_years(db: Database, org: Org) -> None:
    young = _count(db)
    with psycopg.connect(db.admin_conninfo) as conn:
        conn.execute(
            "INSERT INTO audit.events (occurred_at, event_type, actor_kind, scope_id, scope_tier, "
            "organisation_id, cause) SELECT now() - interval '5 years 1 day', "
            "'environment_policy', 'system', %s, 'organisation', %s, 'environment_flipped' "
            "FROM generate_series(1, 3)", [org.id, org.id],
        )
        conn.commit()
    # the service cannot delete directly, only purge
    with pytest.raises(psycopg.Error):
        db.service().execute("DELETE FROM audit.events")
    assert api.purge_expired(db.service()) == 3
    assert api.purge_expired(db.service()) == 0
    assert _count(db) == young


def test_explain_says_why_production_traces_are_hidden(db: Database, org: Org) -> None:
    project = org.projects[0].id
    dev, admin = db.create_user(), db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, dev, "project_developer", project)
        api.grant_role(conn, admin, "workspace_admin", org.projects[0].workspace)
    with db.fence().request(user=dev) as conn:
        why_not = api.explain(conn, dev, project, "traces:read:prod")
    assert not any(line.granted for line in why_not)
    reasons = " / ".join(line.reason for line in why_not)
    assert "role project_developer does not carry traces:read:prod" in reasons
    assert "no role is bound at the organisation" in reasons
    assert "project_admin" in why_not[-1].reason and why_not[-1].source == "missing"
    with db.fence().request(user=org.owner) as conn:
        why = api.explain(conn, admin, project, "traces:read:prod")
    assert [(w.granted, w.tier, w.role) for w in why] == [(True, "workspace", "workspace_admin")]
    # project_developer holds members:read at the project: it may ask about others there ...
    with db.fence().request(user=dev) as conn:
        assert api.explain(conn, admin, project, "traces:read")[0].granted
    # ... a project member may ask only about itself
    member = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, member, "project_member", project)
    with pytest.raises(PermissionDenied) as denied, db.fence().request(user=member) as conn:
        api.explain(conn, admin, project, "traces:read")
    assert denied.value.permission == "members:read"
    with db.fence().request(user=member) as conn:
        assert not api.explain(conn, member, project, "traces:read")[0].granted


def test_role_matrix_shows_what_the_caller_may_read(db: Database, org: Org) -> None:
    project = org.projects[0].id
    admin, member = db.create_user("admin"), db.create_user("member")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, admin, "project_admin", project)
        api.grant_role(conn, member, "org_member", org.id)
    with db.fence().request(user=org.owner) as conn:
        everything = api.role_matrix(conn, org.id)
    assert {(r["principal_id"], r["tier"], r["role"]) for r in everything} == {
        (org.owner, "organisation", "org_owner"),
        (admin, "project", "project_admin"),
        (member, "organisation", "org_member"),
    }
    with db.fence().request(user=admin) as conn:
        assert {r["principal_id"] for r in api.role_matrix(conn, org.id)} == {admin}
    with pytest.raises(PermissionDenied), db.fence().request(user=member) as conn:
        api.role_matrix(conn, org.id)


def test_sweep_and_explain_from_the_command_line(db: Database, org: Org) -> None:
    sweep = subprocess.run(
        [sys.executable, "-m", "tracefence", "sweep", "--dsn", db.admin_conninfo],
        capture_output=True, text=True, timeout=120,
    )
    assert sweep.returncode == 0, sweep.stderr
    assert "sweep recorded 0 audit rows" in sweep.stdout
    user = db.create_user()
    explain = subprocess.run(
        [sys.executable, "-m", "tracefence", "explain", "--dsn", db.admin_conninfo,
         "--principal", str(user), "--resource", str(org.id), "--permission", "traces:read:prod"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert explain.returncode == 1, explain.stderr
    assert "denied" in explain.stdout


def test_concurrent_sweeps_record_each_expiry_once(db: Database, org: Org) -> None:
    users = [db.create_user() for _ in range(12)]
    with db.fence().request(user=org.owner) as conn:
        for user in users:
            api.grant_role(conn, user, "org_member", org.id,
                           valid_until=datetime.now(UTC) + timedelta(hours=1))
    db.scalar(
        "UPDATE iam.role_bindings SET valid_until = now() - interval '1 second', "
        "granted_at = now() - interval '1 hour' WHERE role = 'org_member' RETURNING 1"
    )
    barrier = threading.Barrier(3)
    results: list[int] = []

    def sweep() -> None:
        service = psycopg.connect(db.service_conninfo, autocommit=True)
        try:
            barrier.wait()
            for _ in range(3):
                results.append(api.sweep_expired(service))
        finally:
            service.close()

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each member loses projects:read at the org, both workspaces and four projects
    assert sum(results) == len(users) * 7
    assert db.scalar("SELECT count(*) FROM audit.events WHERE cause = 'binding_expired'") == len(users) * 7


def test_troubleshooting_the_boundary_state_after_a_grant(db: Database, org: Org) -> None:
    """"I granted the role but the user still sees the boundary state": a request already in
    flight keeps its set; the next request has the new one, and explain says why."""
    project = org.projects[0]
    trace = db.insert_trace(project.id, project.production)
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_developer", project.id)
    with db.fence().request(user=user) as in_flight:
        assert api.trace_access(in_flight, project.id)["traces:read:prod"] is False
        with db.fence().request(user=org.owner) as conn:
            api.grant_role(conn, user, "project_admin", project.id)
        assert api.trace_access(in_flight, project.id)["traces:read:prod"] is False
        assert in_flight.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)
    with db.fence().request(user=user) as conn:
        assert api.trace_access(conn, project.id)["traces:read:prod"] is True
        assert api.explain(conn, user, project.id, "traces:read:prod")[0].role == "project_admin"
    assert trace in visible_traces(db, user=user)

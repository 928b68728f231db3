"""Attacks found by the security review, each proven closed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.world import Database, Org, build_org, visible_traces
from tracefence import ConstraintViolation, Fence, PermissionDenied, RequestStateError, TracefenceError, api


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=1, projects_per_workspace=1)


def test_a_pooled_session_cannot_hijack_the_next_begin_request(db: Database, org: Org) -> None:
    """An injected PREPARE that wraps begin_request (psycopg prepares hot queries) would
    steal the next user's credential; every pooled request starts from a clean session."""
    project = org.projects[0]
    db.insert_trace(project.id, project.production)
    with ConnectionPool(db.app_conninfo, min_size=1, max_size=1, open=True) as pool:
        fence = Fence(pool, user_token_secret=db.token_secret)
        for _ in range(6):  # enough uses for psycopg to prepare its statements
            with fence.request(user=org.owner) as conn:
                conn.execute("SELECT 1")
        with fence.request(user=org.owner) as conn:
            conn.execute("CREATE TEMP TABLE loot (credential text)")
            prepared = {r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements")}
            for name in prepared | {f"_pg3_{i}" for i in range(8)}:
                if name in prepared:
                    conn.execute(f'DEALLOCATE "{name}"'.encode())
                conn.execute(
                    f'PREPARE "{name}"(text) AS WITH s AS (INSERT INTO pg_temp.loot VALUES ($1)) '
                    "SELECT iam.begin_request($1)".encode()
                )
            conn.execute("PREPARE stash AS SELECT 1")
            conn.execute("SET SESSION default_transaction_isolation = 'repeatable read'")
        with fence.request(user=org.owner) as conn:
            assert conn.execute("SELECT to_regclass('pg_temp.loot')").fetchone() == (None,)
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
            assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (1,)


def test_a_deferred_owner_binding_cannot_replace_the_last_owner(db: Database, org: Org) -> None:
    before = db.snapshot()
    with pytest.raises(ConstraintViolation), db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, org.owner, "org_owner", org.id, None,
                       datetime.now(UTC) + timedelta(days=365))
    assert db.snapshot() == before


def test_a_disabled_owner_does_not_count_as_the_remaining_owner(db: Database, org: Org) -> None:
    other = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, other, "org_owner", org.id)
    db.scalar("UPDATE iam.users SET disabled_at = now() WHERE id = %s RETURNING 1", [other])
    with pytest.raises(ConstraintViolation), db.fence().request(user=org.owner) as conn:
        api.revoke_role(conn, org.owner, org.id)


def test_an_app_held_advisory_lock_cannot_stall_access_changes(db: Database, org: Org) -> None:
    user = db.create_user()
    attacker = db.app()
    key = psycopg.sql.Literal("tracefence.principal:" + str(user))
    attacker.execute(
        psycopg.sql.SQL("SELECT pg_advisory_lock(hashtextextended({}, 0))").format(key)
    )
    with db.fence().request(user=org.owner) as conn:
        conn.execute("SET LOCAL lock_timeout = '5s'")
        assert api.grant_role(conn, user, "org_member", org.id) is not None


def test_access_changes_refuse_repeatable_read(db: Database, org: Org) -> None:
    """Requests run at READ COMMITTED (Fence v2: begin_request refuses any other level), so
    every access change inside one does too; the back office's changes check it themselves."""
    conn = db.app(autocommit=False)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(RequestStateError) as raised:
        api.begin_request(conn, db.fence().credential_for(user=org.owner))
    assert "READ COMMITTED" in str(raised.value)
    conn.rollback()


def test_explain_reveals_nothing_about_foreign_resources_or_keys(db: Database, org: Org) -> None:
    other = build_org(db, workspaces=1, projects_per_workspace=1)
    foreign_project = other.projects[0].id
    with db.fence().request(user=other.owner) as conn:
        foreign_key = api.create_api_key(conn, "k", foreign_project, ["traces:read"])
    own_project = org.projects[0].id
    for principal, resource in (
        (org.owner, foreign_project),  # about oneself, somewhere foreign
        (org.owner, uuid.uuid4()),  # ... or nowhere
        (foreign_key.id, own_project),  # about another tenant's key
    ):
        with pytest.raises(PermissionDenied) as raised, db.fence().request(user=org.owner) as conn:
            api.explain(conn, principal, resource, "traces:read")
        assert str(other.id) not in str(raised.value)
        assert str(other.projects[0].workspace) not in str(raised.value)


def test_foreign_environment_and_key_errors_name_only_what_was_passed(db: Database, org: Org) -> None:
    other = build_org(db, workspaces=1, projects_per_workspace=1)
    with db.fence().request(user=other.owner) as conn:
        foreign_key = api.create_api_key(conn, "k", other.projects[0].id, ["traces:read"])
    calls = [
        lambda c: api.set_environment_production(c, other.projects[0].staging, True),
        lambda c: api.set_environment_production(c, uuid.uuid4(), True),
        lambda c: api.revoke_api_key(c, foreign_key.id),
        lambda c: api.revoke_api_key(c, uuid.uuid4()),
    ]
    messages = []
    for call in calls:
        with pytest.raises(PermissionDenied) as raised, db.fence().request(user=org.owner) as conn:
            call(conn)
        assert str(other.projects[0].id) not in str(raised.value)
        messages.append(str(raised.value).rsplit(" ", 1)[0])
    assert messages[0] == messages[1] and messages[2] == messages[3]
    assert visible_traces(db, user=org.owner) == set()


def test_a_tenant_holding_a_change_of_a_user_blocks_nothing_in_the_users_other_organisations(
    db: Database, org: Org
) -> None:
    """Issue 14: binding a victim into an organisation of one's own and keeping the transaction
    open (or prepared) used to lock the victim's principal row: nobody could revoke it, and
    every grant or key it made waited on the foreign-key check. The lock is now per principal
    and organisation."""
    victim = db.create_user("victim")
    colleague = db.create_user("colleague")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, victim, "org_admin", org.id)
    attacker_org = build_org(db, workspaces=1, projects_per_workspace=1)
    holder = db.app(autocommit=False)
    api.begin_request(holder, db.fence().credential_for(user=attacker_org.owner))
    api.grant_role(holder, victim, "org_member", attacker_org.id)  # held, uncommitted
    try:
        fence = db.fence()
        with fence.request(user=victim) as conn:  # the victim's own change (granted_by FK)
            conn.execute("SET LOCAL statement_timeout = '3s'")
            assert api.grant_role(conn, colleague, "org_member", org.id) is not None
        with fence.request(user=victim) as conn:  # ... a key it makes (created_by FK)
            conn.execute("SET LOCAL statement_timeout = '3s'")
            api.create_api_key(conn, "k", org.projects[0].id, ["traces:read"])
        with fence.request(user=org.owner) as conn:  # its revocation in its own organisation
            conn.execute("SET LOCAL statement_timeout = '3s'")
            assert api.revoke_role(conn, victim, org.id) is not None
        with fence.request(user=org.owner) as conn:  # a new workspace where it was bound
            conn.execute("SET LOCAL statement_timeout = '3s'")
            api.create_workspace(conn, org.id, "after", "After")
    finally:
        holder.rollback()


def test_a_change_waiting_on_the_same_principal_and_organisation_fails_clearly_and_writes_nothing(
    db: Database, org: Org
) -> None:
    user = db.create_user()
    holder = db.app(autocommit=False)
    api.begin_request(holder, db.fence().credential_for(user=org.owner))
    api.grant_role(holder, user, "org_member", org.id)  # held, uncommitted
    try:
        before = db.snapshot()
        with pytest.raises(TracefenceError) as raised, db.fence().request(user=org.owner) as conn:
            conn.execute("SET LOCAL statement_timeout = '30s'")  # a regression fails, not hangs
            api.grant_role(conn, user, "org_admin", org.id)
        assert raised.value.sqlstate == "55P03"
        assert f"another access change of principal {user} in organisation {org.id}" in str(raised.value)
        assert db.snapshot() == before
    finally:
        holder.rollback()


def test_an_environment_is_answered_as_its_project_never_with_a_silent_empty_set(
    db: Database, org: Org
) -> None:
    """Issue 14: effective_permissions at an environment id returned an empty set for everyone,
    the organisation owner included, and explain said projects:read was required."""
    project = org.projects[0]
    developer = db.create_user("developer")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, developer, "project_developer", project.id)
        at_project = api.effective_permissions(conn, developer, project.id)
        for environment in (project.production, project.staging):
            assert api.effective_permissions(conn, org.owner, environment) == \
                api.effective_permissions(conn, org.owner, project.id) != frozenset()
            assert api.effective_permissions(conn, developer, environment) == at_project
            granted = [e for e in api.explain(conn, developer, environment, "traces:read") if e.granted]
            assert [(e.role, e.resource_id) for e in granted] == [("project_developer", project.id)]
    # Another tenant's environment is another tenant's project: nothing about it, as before.
    other = build_org(db, workspaces=1, projects_per_workspace=1)
    with db.fence().request(user=org.owner) as conn:
        assert api.effective_permissions(conn, org.owner, other.projects[0].staging) == frozenset()
    with pytest.raises(PermissionDenied), db.fence().request(user=org.owner) as conn:
        api.effective_permissions(conn, other.owner, other.projects[0].staging)


def test_organisation_names_are_public_by_design_and_nothing_below_them_is(db: Database, org: Org) -> None:
    """Issue 14 asked for a decision (docs/reference.md, "Resources"): an organisation slug is
    one global name, so its taken-ness is public; a workspace or project slug is answered only
    to who may create there."""
    slug = db.scalar("SELECT slug FROM tenancy.organisations WHERE id = %s", [org.id])
    stranger = db.create_user("stranger")
    with pytest.raises(ConstraintViolation) as raised, db.fence().request(user=stranger) as conn:
        api.create_organisation(conn, slug, "Copycat")
    assert str(raised.value) == f"organisation slug {slug} is taken" and str(org.id) not in str(raised.value)
    taken = db.scalar("SELECT slug FROM tenancy.workspaces WHERE organisation_id = %s LIMIT 1", [org.id])
    with pytest.raises(PermissionDenied), db.fence().request(user=stranger) as conn:
        api.create_workspace(conn, org.id, taken, "Again")

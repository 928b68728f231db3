"""Who may change access: members:write, no escalation, org_owner only by an org_owner, the
last org_owner stays, API keys no wider than their creator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.world import Database, Org, build_org
from tracefence import ConstraintViolation, PermissionDenied, api


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=2, projects_per_workspace=1)


def _member(db: Database, org: Org, role: str, resource) -> object:
    user = db.create_user(role)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, role, resource)
    return user


def _denied(db: Database, actor, action, permission: str) -> None:
    before = db.snapshot()
    with pytest.raises(PermissionDenied) as raised, db.fence().request(user=actor) as conn:
        action(conn)
    assert raised.value.sqlstate == "42501"
    assert raised.value.permission == permission
    assert permission in str(raised.value)
    assert db.snapshot() == before


def test_developer_cannot_grant_anything(db: Database, org: Org) -> None:
    project = org.projects[0].id
    dev = _member(db, org, "project_developer", project)
    other = db.create_user()
    _denied(db, dev, lambda c: api.grant_role(c, other, "project_member", project), "members:write")


def test_project_admin_cannot_mint_a_project_owner(db: Database, org: Org) -> None:
    project = org.projects[0].id
    admin = _member(db, org, "project_admin", project)
    other = db.create_user()
    _denied(db, admin, lambda c: api.grant_role(c, other, "project_owner", project), "projects:manage")
    with db.fence().request(user=admin) as conn:  # but it may grant what it holds
        api.grant_role(conn, other, "project_admin", project)


def test_project_admin_cannot_demote_a_project_owner(db: Database, org: Org) -> None:
    project = org.projects[0].id
    admin = _member(db, org, "project_admin", project)
    owner = _member(db, org, "project_owner", project)
    _denied(db, admin, lambda c: api.grant_role(c, owner, "project_member", project), "projects:manage")
    _denied(db, admin, lambda c: api.revoke_role(c, owner, project), "projects:manage")


def test_workspace_admin_cannot_mint_a_workspace_owner(db: Database, org: Org) -> None:
    ws = org.workspaces[0]
    admin = _member(db, org, "workspace_admin", ws)
    other = db.create_user()
    _denied(db, admin, lambda c: api.grant_role(c, other, "workspace_owner", ws), "workspaces:manage")


def test_org_admin_cannot_mint_an_org_owner(db: Database, org: Org) -> None:
    admin = _member(db, org, "org_admin", org.id)
    other = db.create_user()
    _denied(db, admin, lambda c: api.grant_role(c, other, "org_owner", org.id), "org:manage")
    _denied(db, admin, lambda c: api.revoke_role(c, org.owner, org.id), "org:manage")


def test_members_write_in_one_workspace_does_not_reach_another(db: Database, org: Org) -> None:
    admin = _member(db, org, "workspace_admin", org.workspaces[0])
    other = db.create_user()
    target = org.projects[1]
    assert target.workspace == org.workspaces[1]
    _denied(db, admin, lambda c: api.grant_role(c, other, "project_member", target.id), "members:write")


def test_org_owner_can_grant_org_owner_and_step_down(db: Database, org: Org) -> None:
    second = db.create_user("second")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, second, "org_owner", org.id)
    with db.fence().request(user=second) as conn:
        api.revoke_role(conn, org.owner, org.id)
    assert db.scalar(
        "SELECT array_agg(principal_id) FROM iam.role_bindings WHERE resource_id = %s", [org.id]
    ) == [second]


def test_the_last_org_owner_cannot_be_removed_or_demoted(db: Database, org: Org) -> None:
    for action in (
        lambda c: api.revoke_role(c, org.owner, org.id),
        lambda c: api.grant_role(c, org.owner, "org_admin", org.id),
    ):
        before = db.snapshot()
        with pytest.raises(ConstraintViolation) as raised, \
                db.fence().request(user=org.owner) as conn:
            action(conn)
        assert raised.value.sqlstate == "23514"
        assert "last org_owner" in str(raised.value)
        assert db.snapshot() == before


def test_a_time_bounded_owner_does_not_count_as_the_remaining_owner(db: Database, org: Org) -> None:
    temp = db.create_user("temp")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(
            conn, temp, "org_owner", org.id, valid_until=datetime.now(UTC) + timedelta(hours=4)
        )
    with pytest.raises(ConstraintViolation), db.fence().request(user=org.owner) as conn:
        api.revoke_role(conn, org.owner, org.id)


def test_key_creation_needs_api_keys_write_at_the_resource(db: Database, org: Org) -> None:
    project = org.projects[0]
    dev = _member(db, org, "project_developer", project.id)
    _denied(db, dev, lambda c: api.create_api_key(c, "k", project.id, ["traces:read"]), "api-keys:write")
    admin = _member(db, org, "project_admin", project.id)
    _denied(db, admin, lambda c: api.create_api_key(c, "k", project.workspace, ["traces:read"]),
            "api-keys:write")


def test_key_scopes_cannot_exceed_the_creator(db: Database, org: Org) -> None:
    project = org.projects[0]
    # The scope check is per resource: admin of one project, nothing in the other.
    admin = _member(db, org, "project_admin", project.id)
    other_project = org.projects[1]
    _denied(
        db, admin, lambda c: api.create_api_key(c, "k", other_project.id, ["traces:read"]),
        "api-keys:write",
    )
    with db.fence().request(user=admin) as conn:
        key = api.create_api_key(conn, "k", project.id, ["traces:read:prod"])
    # Only someone holding api-keys:write where the key lives may edit it.
    _denied(db, _member(db, org, "project_admin", other_project.id),
            lambda c: api.set_api_key_scopes(c, key.id, ["traces:read"]), "api-keys:write")


def test_an_api_key_cannot_administer(db: Database, org: Org) -> None:
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(
            conn, "wide", org.id, ["traces:read", "traces:read:prod", "environments:write"]
        )
    bystander = db.create_user()
    before = db.snapshot()
    with pytest.raises(PermissionDenied), db.fence().request(api_key=key.secret) as conn:
        api.create_organisation(conn, "keys-org", "Keys")
    with pytest.raises(PermissionDenied), db.fence().request(api_key=key.secret) as conn:
        api.grant_role(conn, bystander, "org_member", org.id)
    assert db.snapshot() == before
    with db.fence().request(api_key=key.secret) as conn:  # but it may use its own scopes
        api.create_environment(conn, org.projects[0].id, "canary", False)

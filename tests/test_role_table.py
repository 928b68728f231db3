"""Every row of SPEC §2's role table, checked against the database at each tier of the cascade."""

from __future__ import annotations

import pytest

from tests.world import Database, Org, build_org, visible_traces
from tracefence import api

ALL = frozenset({
    "traces:read", "traces:read:prod", "traces:write", "projects:read", "projects:manage",
    "workspaces:manage", "org:manage", "environments:write", "members:read", "members:write",
    "api-keys:read", "api-keys:write", "audit:read",
})
PROJECT_OWNER = frozenset({
    "traces:read", "traces:read:prod", "traces:write", "projects:read", "projects:manage",
    "environments:write", "members:read", "members:write", "api-keys:read", "api-keys:write",
    "audit:read",
})

# role: (tier, reads non-production, reads production, every permission it carries) — typed in
# from the SPEC, not read from the migration, so a catalog edit that breaks the contract fails.
ROLE_TABLE = {
    "org_owner": ("organisation", True, True, ALL),
    "org_admin": ("organisation", True, True, ALL - {"org:manage"}),
    "org_member": ("organisation", False, False, frozenset({"projects:read"})),
    "workspace_owner": ("workspace", True, True, ALL - {"org:manage"}),
    "workspace_admin": ("workspace", True, True, ALL - {"org:manage", "workspaces:manage"}),
    "workspace_member": ("workspace", False, False, frozenset({"projects:read"})),
    "project_owner": ("project", True, True, PROJECT_OWNER),
    "project_admin": ("project", True, True, PROJECT_OWNER - {"projects:manage"}),
    "project_developer": ("project", True, False, frozenset({
        "traces:read", "traces:write", "projects:read", "members:read", "api-keys:read",
    })),
    "project_member": ("project", False, False, frozenset({"projects:read"})),
}


def _traces(db: Database, org: Org) -> dict[str, set]:
    """A production and a non-production trace in every project of the organisation."""
    out: dict[str, set] = {}
    for project in org.projects:
        out[f"{project.id}:prod"] = {db.insert_trace(project.id, project.production)}
        out[f"{project.id}:staging"] = {db.insert_trace(project.id, project.staging)}
    return out


@pytest.mark.parametrize("role", sorted(ROLE_TABLE))
def test_role_grants_exactly_its_trace_columns_down_the_cascade(db: Database, role: str) -> None:
    tier, reads_staging, reads_prod, permissions = ROLE_TABLE[role]
    org = build_org(db, workspaces=2, projects_per_workspace=2)
    traces = _traces(db, org)
    target = org.projects[0]
    resource = {"organisation": org.id, "workspace": target.workspace, "project": target.id}[tier]
    user = db.create_user(role)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, role, resource)

    # Which projects the binding covers: the whole org, one workspace, or one project.
    covered = [
        p for p in org.projects
        if tier == "organisation"
        or (tier == "workspace" and p.workspace == target.workspace)
        or (tier == "project" and p.id == target.id)
    ]
    expected = set()
    for project in covered:
        if reads_staging:
            expected |= traces[f"{project.id}:staging"]
        if reads_prod:
            expected |= traces[f"{project.id}:prod"]
    assert visible_traces(db, user=user) == expected

    with db.fence().request(user=user) as conn:
        for project in org.projects:
            held = api.effective_permissions(conn, user, project.id)
            assert held == (permissions if project in covered else frozenset()), project
            if project in covered:
                assert api.trace_access(conn, project.id) == {
                    "traces:read": reads_staging,
                    "traces:read:prod": reads_prod,
                }


def test_catalog_matches_the_spec(db: Database) -> None:
    rows = db.scalar(
        "SELECT jsonb_object_agg(r.name, jsonb_build_object('tier', r.tier, 'permissions', "
        "(SELECT jsonb_agg(rp.permission) FROM iam.role_permissions rp WHERE rp.role = r.name)))"
        " FROM iam.roles r"
    )
    assert set(rows) == set(ROLE_TABLE)
    for role, (tier, _, _, permissions) in ROLE_TABLE.items():
        assert rows[role]["tier"] == tier
        assert frozenset(rows[role]["permissions"]) == permissions, role
    key_forbidden = db.scalar(
        "SELECT array_agg(name ORDER BY name) FROM iam.permissions WHERE NOT key_allowed"
    )
    assert key_forbidden == sorted([
        "api-keys:read", "api-keys:write", "members:read", "members:write", "org:manage",
        "projects:manage", "workspaces:manage",
    ])


def test_roles_are_additive_across_tiers(db: Database) -> None:
    """A workspace member who is also project developer gets the union at that project."""
    org = build_org(db, workspaces=1, projects_per_workspace=2)
    first, second = org.projects
    user = db.create_user("dev")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "workspace_member", first.workspace)
        api.grant_role(conn, user, "project_admin", first.id)
    with db.fence().request(user=user) as conn:
        assert "traces:read:prod" in api.effective_permissions(conn, user, first.id)
        assert api.effective_permissions(conn, user, second.id) == {"projects:read"}

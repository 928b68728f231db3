from tests.world import build_org, visible_traces


def test_owner_sees_both_classifications(db):
    org = build_org(db, workspaces=1, projects_per_workspace=1)
    p = org.projects[0]
    prod = db.insert_trace(p.id, p.production)
    staging = db.insert_trace(p.id, p.staging)
    assert visible_traces(db, user=org.owner) == {prod, staging}

"""Capture-time classification (SPEC §2): stamped by the database, never changed later."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.world import Database, Org, build_org
from tracefence import ConstraintViolation, api


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=1, projects_per_workspace=2)


@pytest.fixture
def writer(db: Database, org: Org) -> str:
    with db.fence().request(user=org.owner) as conn:
        return api.create_api_key(conn, "ingest", org.id, ["traces:write", "traces:read",
                                                            "traces:read:prod"]).secret


def test_minimal_insert_is_stamped_from_the_environment(db: Database, org: Org, writer: str) -> None:
    p = org.projects[0]
    with db.fence().request(api_key=writer) as conn:
        rows = conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES "
            "(%s, %s, 'a'), (%s, %s, 'b') RETURNING name, is_production, attributes, started_at",
            [p.id, p.production, p.id, p.staging],
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("a", True, {}), ("b", False, {})]
    assert all(r[3] is not None for r in rows)


def test_a_contradicting_classification_is_rejected(db: Database, org: Org, writer: str) -> None:
    p = org.projects[0]
    before = db.snapshot()
    with pytest.raises(ConstraintViolation) as raised, \
            db.fence().request(api_key=writer) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name, is_production) "
            "VALUES (%s, %s, 'sneaky', false)", [p.id, p.production],
        )
    assert raised.value.sqlstate == "23514"
    assert "contradicts environment" in str(raised.value)
    assert db.snapshot() == before
    with db.fence().request(api_key=writer) as conn:  # naming the right value is fine
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name, is_production) "
            "VALUES (%s, %s, 'honest', true)", [p.id, p.production],
        )


def test_an_environment_of_another_project_is_rejected(db: Database, org: Org, writer: str) -> None:
    first, second = org.projects
    with pytest.raises(ConstraintViolation) as raised, \
            db.fence().request(api_key=writer) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, 'x')",
            [first.id, second.production],
        )
    assert raised.value.sqlstate == "23503"


def test_spans_inherit_scope_and_classification(db: Database, org: Org, writer: str) -> None:
    p = org.projects[0]
    trace = db.insert_trace(p.id, p.production)
    with db.fence().request(api_key=writer) as conn:
        conn.execute("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'root')", [trace])
        row = conn.execute(
            "SELECT project_id, environment_id, is_production FROM telemetry.spans"
        ).fetchone()
    assert row == (p.id, p.production, True)


def test_a_span_cannot_claim_another_project(db: Database, org: Org, writer: str) -> None:
    first, second = org.projects
    trace = db.insert_trace(first.id, first.staging)
    with pytest.raises(ConstraintViolation) as raised, \
            db.fence().request(api_key=writer) as conn:
        conn.execute(
            "INSERT INTO telemetry.spans (trace_id, project_id, name) VALUES (%s, %s, 'x')",
            [trace, second.id],
        )
    # Trace ids are unique per project: the trace the span names is not in that project.
    assert raised.value.sqlstate == "23503"


def test_flipping_the_flag_reclassifies_nothing_already_captured(db: Database, org: Org) -> None:
    p = org.projects[0]
    before = db.insert_trace(p.id, p.staging)
    span = db.insert_span(before)
    with db.fence().request(user=org.owner) as conn:
        api.set_environment_production(conn, p.staging, True)
    after = db.insert_trace(p.id, p.staging)
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s", [before]) is False
    assert db.scalar("SELECT is_production FROM telemetry.spans WHERE id = %s", [span]) is False
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s", [after]) is True


@pytest.mark.parametrize("assignment", [
    "is_production = NOT is_production",
    "project_id = %(other_project)s",
    "environment_id = %(other_env)s",
])
def test_scope_of_a_captured_trace_cannot_be_updated_even_by_the_owner(
    db: Database, org: Org, assignment: str
) -> None:
    first, second = org.projects
    trace = db.insert_trace(first.id, first.staging)
    with psycopg.connect(db.admin_conninfo) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute("SET ROLE tracefence_owner")
        conn.execute(
            f"UPDATE telemetry.traces SET {assignment} WHERE id = %(id)s".encode(),
            {"other_project": second.id, "other_env": first.production, "id": trace},
        )
    assert raised.value.sqlstate == "23514"
    assert db.scalar("SELECT project_id FROM telemetry.traces WHERE id = %s", [trace]) == first.id


def test_a_writer_that_may_not_read_production_learns_nothing_from_naming_a_class(
    db: Database, org: Org
) -> None:
    """Issue 14: 23514 came exactly when the trace or environment named was production, which
    told a key that cannot read production traces which ones are. Only a writer that may read
    the class hears of the contradiction; any other has its row classified from the trace or
    environment, whatever it named."""
    p = org.projects[0]
    hidden = db.insert_trace(p.id, p.production)
    with db.fence().request(user=org.owner) as conn:
        blind = api.create_api_key(conn, "blind", p.id, ["traces:write", "traces:read"]).secret
        sighted = api.create_api_key(conn, "sighted", p.id, ["traces:write", "traces:read:prod"]).secret
    span, trace = uuid.uuid4(), uuid.uuid4()  # no RETURNING: that needs read access to the row
    with db.fence().request(api_key=blind) as conn:
        conn.execute(
            "INSERT INTO telemetry.spans (id, trace_id, name, is_production) VALUES (%s, %s, 'db', false)",
            [span, hidden],
        )
        conn.execute(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name, is_production)"
            " VALUES (%s, %s, %s, 'sneaky', false)", [trace, p.id, p.production],
        )
    assert db.scalar("SELECT is_production FROM telemetry.spans WHERE id = %s", [span]) is True
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s", [trace]) is True
    before = db.snapshot()
    for statement, params in (
        ("INSERT INTO telemetry.spans (trace_id, name, is_production) VALUES (%s, 'db', false)", [hidden]),
        ("INSERT INTO telemetry.traces (project_id, environment_id, name, is_production)"
         " VALUES (%s, %s, 'sneaky', false)", [p.id, p.production]),
    ):
        with pytest.raises(ConstraintViolation) as raised, db.fence().request(api_key=sighted) as conn:
            conn.execute(statement, params)
        assert raised.value.sqlstate == "23514"
    assert db.snapshot() == before

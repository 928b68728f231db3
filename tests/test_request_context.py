"""The self-contained request context (issue 10, SPEC §1.7 and §1.8): attacks on its binding to one
transaction, on the snapshot it is verified under, on the number of requests a transaction
serves, and on windows that end while a request is open; parallel plans under the fence.

Every test shows both halves: the attack yields nothing (or the stated SQLSTATE), and the
legitimate path works, so none passes vacuously.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.test_attacks import (
    assert_context_rejected,
    begin,
    current_context,
    ids,
    scene,
    sqlstate,
    token,
)
from tests.world import Database
from tracefence import ConstraintViolation, api

Connection = psycopg.Connection[Any]


def _revoked_key(db: Database) -> tuple[Any, api.ApiKey]:
    s = scene(db)
    with db.fence().request(user=s.org.owner) as conn:
        key = api.create_api_key(conn, "reader", s.a.id, ["traces:read", "traces:read:prod", "traces:write"])
    return s, key


def _revoke(db: Database, s: Any, key: api.ApiKey) -> None:
    with db.fence().request(user=s.org.owner) as conn:
        api.revoke_api_key(conn, key.id)


# --------------------------------------------------------------------------------------------
# Snapshots and isolation levels (SPEC §1.7)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_request_cannot_open_at_an_isolation_level_that_keeps_an_old_snapshot(db, level):
    s, key = _revoked_key(db)
    conn = db.app(autocommit=False)
    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [key.secret]) == "25001"
    assert ids(conn) == set()
    conn.rollback()
    # Not vacuous: the same key opens a request at READ COMMITTED.
    begin(conn, key.secret)
    assert ids(conn) == s.of("a")
    conn.rollback()


def test_a_snapshot_taken_before_a_revocation_cannot_open_a_request(db):
    s, key = _revoked_key(db)
    conn = db.app(autocommit=False)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SELECT 1")  # the snapshot is taken here, before the revocation commits
    _revoke(db, s, key)
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [key.secret]) == "25001"
    conn.rollback()
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [key.secret]) == "28000"
    conn.rollback()


def test_an_imported_snapshot_from_before_a_revocation_cannot_open_a_request(db):
    s, key = _revoked_key(db)
    exporter = db.app(autocommit=False)
    exporter.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    snapshot = row[0]
    _revoke(db, s, key)
    importer = db.app(autocommit=False)
    importer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    importer.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    # The imported snapshot still shows the key unrevoked, but no request opens under it.
    assert sqlstate(importer, "SELECT iam.begin_request(%s)", [key.secret]) == "25001"
    importer.rollback()
    exporter.rollback()
    assert sqlstate(importer, "SELECT iam.begin_request(%s)", [key.secret]) == "28000"
    importer.rollback()


def test_a_demoted_admin_cannot_mint_a_key_from_an_old_snapshot(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SELECT 1")
    with db.fence().request(user=s.org.owner) as owner:
        api.revoke_role(owner, s.alice, s.a.id)
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [token(db, s.alice)]) == "25001"
    conn.rollback()
    assert db.scalar("SELECT count(*) FROM iam.api_keys") == 0
    # Not vacuous: bob, still an admin, mints one at READ COMMITTED.
    with db.fence().request(user=s.bob) as fenced:
        api.create_api_key(fenced, "k", s.b.id, ["traces:read"])
    assert db.scalar("SELECT count(*) FROM iam.api_keys") == 1


# --------------------------------------------------------------------------------------------
# One request per transaction, bound to that transaction
# --------------------------------------------------------------------------------------------


def test_a_savepoint_rolled_back_over_a_request_does_not_allow_a_second_one(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.execute("SAVEPOINT before")
    begin(conn, token(db, s.alice))
    first = current_context(conn)
    conn.execute("ROLLBACK TO SAVEPOINT before")
    assert ids(conn) == set()
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [token(db, s.bob)]) == "25001"
    # The first context, planted again, is still the transaction's only one.
    conn.execute("SELECT set_config('tracefence.request', %s, true)", [first])
    assert ids(conn) == s.of("a")
    conn.rollback()


@pytest.mark.parametrize("mode", ["READ WRITE", "READ ONLY"])
def test_clearing_the_setting_does_not_allow_a_second_request(db, mode):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.execute(f"SET TRANSACTION {mode}")
    begin(conn, token(db, s.alice))
    first = current_context(conn)
    conn.execute("SELECT set_config('tracefence.request', '', true)")
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [token(db, s.bob)]) == "25001"
    conn.execute("SELECT set_config('tracefence.request', %s, true)", [first])
    assert ids(conn) == s.of("a")
    conn.rollback()


def test_a_transaction_that_wrote_cannot_then_open_a_request(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.execute("CREATE TEMPORARY TABLE scratch (x int)")
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [token(db, s.alice)]) == "25001"
    conn.rollback()


def test_a_context_replayed_in_the_next_transaction_of_one_message_is_rejected(db):
    """Every transaction of one multi-statement message starts at the same instant: the
    binding must tell them apart (read-write and read-only alike)."""
    s = scene(db)
    conn = db.app(autocommit=True)
    for mode in ("READ WRITE", "READ ONLY"):
        conn.execute(
            f"BEGIN {mode}; SELECT iam.begin_request('{token(db, s.alice)}');"
            " SELECT set_config('attack.saved', current_setting('tracefence.request'), false); COMMIT;"
            f" BEGIN {mode}; SELECT set_config('tracefence.request', current_setting('attack.saved'), true);"
        )
        assert_context_rejected(conn)
        conn.execute("ROLLBACK")


def test_a_request_in_a_prepared_transaction_pins_nothing(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    saved = current_context(conn)
    conn.execute(
        "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, 'parked')",
        [s.a.id, s.a.staging],
    )
    gid = f"tf-{uuid.uuid4().hex}"
    conn.execute(f"PREPARE TRANSACTION '{gid}'")
    conn.commit()  # psycopg's view of the transaction; the server has already ended it
    try:
        # The next request on the same connection opens at once and sees its own rows.
        conn.execute("SET lock_timeout = '2s'")
        begin(conn, token(db, s.bob))
        assert ids(conn) == s.of("b")
        conn.rollback()
        # The parked context is bound to the prepared transaction: worthless here.
        conn.execute("SELECT set_config('tracefence.request', %s, true)", [saved])
        assert_context_rejected(conn)
        conn.rollback()
    finally:
        conn.rollback()
        db.admin().execute(f"ROLLBACK PREPARED '{gid}'")
    assert db.scalar("SELECT count(*) FROM telemetry.traces WHERE name = 'parked'") == 0


# --------------------------------------------------------------------------------------------
# Windows that end inside a request (SPEC §2)
# --------------------------------------------------------------------------------------------


def test_a_grant_that_expires_during_a_request_stops_granting_at_that_instant(db):
    s = scene(db)
    carol = db.create_user("carol")
    until = datetime.now(UTC) + timedelta(seconds=2)
    with db.fence().request(user=s.org.owner) as conn:
        api.grant_role(conn, carol, "project_admin", s.a.id, valid_until=until)
    conn = db.app(autocommit=False)
    begin(conn, token(db, carol))
    assert ids(conn) == s.of("a")
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)
    # The same request, after valid_until: nothing, for reads and writes alike.
    assert ids(conn) == set()
    assert ids(conn, "SELECT id FROM telemetry.spans") == set()
    assert sqlstate(
        conn, "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, 'x')",
        [s.a.id, s.a.staging],
    ) == "42501"
    conn.rollback()


def test_a_key_that_expires_during_a_request_stops_granting_at_that_instant(db):
    s = scene(db)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    with db.fence().request(user=s.org.owner) as owner:
        key = api.create_api_key(owner, "short", s.a.id, ["traces:read", "traces:read:prod"], expires)
    conn = db.app(autocommit=False)
    begin(conn, key.secret)
    assert ids(conn) == s.of("a")
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    assert ids(conn) == set()
    conn.rollback()


def test_a_revocation_does_not_reach_a_request_in_flight(db):
    """Only expiry reaches a request in flight: a revocation committed during it does not."""
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    with db.fence().request(user=s.org.owner) as owner:
        api.revoke_role(owner, s.alice, s.a.id)
    assert ids(conn) == s.of("a")
    conn.rollback()
    begin(conn, token(db, s.alice))
    assert ids(conn) == set()
    conn.rollback()


# --------------------------------------------------------------------------------------------
# Parallel query (SPEC §9): the accessors run once in the leader; workers get their answers
# --------------------------------------------------------------------------------------------


def _force_parallel(conn: Connection, server_version: int) -> None:
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                    "min_parallel_table_scan_size = 0", "min_parallel_index_scan_size = 0",
                    "max_parallel_workers_per_gather = 2"):
        conn.execute(f"SET LOCAL {setting}")
    name = "debug_parallel_query" if server_version >= 160000 else "force_parallel_mode"
    conn.execute(f"SET LOCAL {name} = on")


def test_fenced_queries_run_in_parallel_and_see_the_same_rows_as_serial(db):
    s = scene(db)
    for i in range(200):
        db.insert_trace(s.a.id, s.a.staging, f"bulk-{i}")
        db.insert_trace(s.b.id, s.b.staging, f"bulk-{i}")
    db.admin().execute("ANALYZE telemetry.traces")
    query = "SELECT id FROM telemetry.traces WHERE name LIKE 'bulk-%' OR name LIKE '%-prod'"
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    serial = ids(conn, query)
    assert len(serial) == 201 and serial <= {r[0] for r in db.admin().execute(
        "SELECT id FROM telemetry.traces WHERE project_id = %s", [s.a.id]).fetchall()}
    _force_parallel(conn, db.server.version)
    plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) {query}").fetchall())
    assert "Gather" in plan and "InitPlan" in plan, plan
    assert ids(conn, query) == serial
    count = conn.execute("SELECT count(*) FROM telemetry.traces").fetchone()
    assert count == (len(s.of("a")) + 200,)
    conn.rollback()


def test_a_forged_context_is_rejected_in_a_parallel_plan(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    forged = current_context(conn).replace(str(s.a.id), str(s.b.id))
    _force_parallel(conn, db.server.version)
    conn.execute("SELECT set_config('tracefence.request', %s, true)", [forged])
    assert_context_rejected(conn)
    conn.rollback()


# --------------------------------------------------------------------------------------------
# Tier columns and project-scoped keys (issue 10, item 5)
# --------------------------------------------------------------------------------------------


def test_telemetry_rows_carry_their_tier_path_stamped_at_capture(db):
    s = scene(db)
    writer = db.fence()
    with db.fence().request(user=s.org.owner) as conn:
        key = api.create_api_key(conn, "ingest", s.a.id, ["traces:write"])
    trace = uuid.uuid4()
    with writer.request(api_key=key.secret) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name) VALUES (%s, %s, %s, 'x')",
            [trace, s.a.id, s.a.staging],
        )
        conn.execute("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'root')", [trace])
    project = db.admin().execute(
        "SELECT organisation_id, workspace_id FROM tenancy.projects WHERE id = %s", [s.a.id]
    ).fetchone()
    for table in ("traces", "spans"):
        stamped = db.admin().execute(
            f"SELECT DISTINCT organisation_id, workspace_id FROM telemetry.{table} WHERE project_id = %s",
            [s.a.id],
        ).fetchall()
        assert stamped == [project]
    # Naming a wrong tier path is a contradiction for a writer of the project.
    with pytest.raises(ConstraintViolation) as raised, writer.request(api_key=key.secret) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, organisation_id, name) "
            "VALUES (%s, %s, %s, 'x')", [s.a.id, s.a.staging, uuid.uuid4()],
        )
    assert raised.value.sqlstate == "23514"


@pytest.mark.parametrize("column", ["organisation_id", "workspace_id"])
def test_the_tier_path_of_a_captured_row_cannot_change_even_for_the_owner(db, column):
    s = scene(db)
    for table in ("traces", "spans"):
        with psycopg.connect(db.admin_conninfo) as conn:
            conn.execute("SET ROLE tracefence_owner")
            assert sqlstate(conn, f"UPDATE telemetry.{table} SET {column} = %s", [s.b.workspace]) == "23514"


def test_an_id_taken_in_another_tenant_neither_collides_nor_reveals_anything(db):
    s = scene(db)
    victim = s.traces["b_staging"]
    with db.fence().request(user=s.org.owner) as conn:
        key = api.create_api_key(conn, "ingest", s.a.id, ["traces:write", "traces:read"])
    with db.fence().request(api_key=key.secret) as conn:
        # Same id as bob's trace, in alice's project: accepted like any fresh id.
        conn.execute(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name)"
            " VALUES (%s, %s, %s, 'squat')",
            [victim, s.a.id, s.a.staging],
        )
        conn.execute("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'mine')", [victim])
    # Bob's trace is untouched and bob still sees exactly his own rows.
    with db.fence().request(user=s.bob) as conn:
        assert ids(conn) == s.of("b")
        assert conn.execute("SELECT name FROM telemetry.spans WHERE trace_id = %s", [victim]).fetchall() \
            == [("db.query",)]
    # A duplicate id in one project is still refused, with the constraint's error.
    with pytest.raises(ConstraintViolation) as raised, db.fence().request(api_key=key.secret) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name)"
            " VALUES (%s, %s, %s, 'again')",
            [victim, s.a.id, s.a.staging],
        )
    assert raised.value.sqlstate == "23505"


# --------------------------------------------------------------------------------------------
# The clock, not the statement's start (security review of Fence v2)
# --------------------------------------------------------------------------------------------


def _short_key(db: Database, s: Any, seconds: float) -> tuple[api.ApiKey, datetime]:
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    with db.fence().request(user=s.org.owner) as owner:
        key = api.create_api_key(owner, "short", s.a.id, ["traces:read", "traces:write"], expires)
    return key, expires


def _wait_past(moment: datetime) -> float:
    return max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.3


def test_a_message_that_began_before_an_expiry_cannot_open_a_request_after_it(db):
    s = scene(db)
    key, expires = _short_key(db, s, 1.5)
    conn = db.app(autocommit=True)
    # One simple-query message: every statement in it shares the message's statement_timestamp.
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        conn.execute(
            f"SELECT pg_sleep({_wait_past(expires)}); BEGIN;"
            f" SELECT iam.begin_request('{key.secret}'); SELECT count(*) FROM telemetry.traces;"
        )
    conn.execute("ROLLBACK")
    # Not vacuous: the same message before the expiry opens the request.
    fresh, _ = _short_key(db, s, 30)
    conn.execute(f"BEGIN; SELECT iam.begin_request('{fresh.secret}');")
    assert ids(conn) == s.of("a") - {s.traces["a_prod"]}
    conn.execute("ROLLBACK")


def test_a_do_block_that_commits_past_an_expiry_cannot_open_a_request_after_it(db):
    s = scene(db)
    key, expires = _short_key(db, s, 1.5)
    conn = db.app(autocommit=True)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        conn.execute(
            f"DO $$ BEGIN PERFORM pg_sleep({_wait_past(expires)}); COMMIT;"
            f" PERFORM iam.begin_request('{key.secret}');"
            " INSERT INTO telemetry.traces (project_id, environment_id, name)"
            f" VALUES ('{s.a.id}', '{s.a.staging}', 'after expiry'); COMMIT; END $$"
        )
    assert db.scalar("SELECT count(*) FROM telemetry.traces WHERE name = 'after expiry'") == 0


def test_a_statement_that_outlives_a_window_reads_nothing_it_has_not_read_before(db):
    s = scene(db)
    key, expires = _short_key(db, s, 1.5)
    conn = db.app(autocommit=False)
    begin(conn, key.secret)
    row = conn.execute(
        f"SELECT (SELECT pg_sleep({_wait_past(expires)})), (SELECT count(*) FROM telemetry.traces)"
    ).fetchone()
    assert row is not None and row[1] == 0
    conn.rollback()


def test_a_span_without_its_project_lands_in_the_writers_project_however_many_tenants_hold_the_id(db):
    """The span's trace is found among every trace of that id, so neither the outcome nor the
    error says how many other projects hold it."""
    s = scene(db)
    with db.fence().request(user=s.org.owner) as owner:
        third = api.create_project(owner, s.b.workspace, "third", "Third")
        third_env = api.create_environment(owner, third, "staging", False)
        key = api.create_api_key(owner, "ingest", s.a.id, ["traces:write", "traces:read"])
    shared = uuid.uuid4()
    for project, env in ((s.b.id, s.b.staging), (third, third_env)):
        db.scalar(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name) VALUES (%s, %s, %s, 'x')"
            " RETURNING 1", [shared, project, env],
        )
    with db.fence().request(api_key=key.secret) as conn:
        conn.execute(
            "INSERT INTO telemetry.traces (id, project_id, environment_id, name) VALUES (%s, %s, %s, 'x')",
            [shared, s.a.id, s.a.staging],
        )
        conn.execute("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'mine')", [shared])
    assert db.scalar(
        "SELECT project_id FROM telemetry.spans WHERE trace_id = %s AND name = 'mine'", [shared]
    ) == s.a.id

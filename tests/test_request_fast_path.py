"""The request fast path (migration 0009): where a transaction may write, begin_request keeps the
request in its backend's row of iam.open_requests and statements read it there. These tests
attack what is new: the row must serve only the transaction that wrote it, only while the
setting is the value it signed, and a request that cannot write the row (a read-only
transaction) must see exactly what a read-write one sees."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.test_attacks import (
    assert_context_rejected,
    begin,
    current_context,
    ids,
    principal,
    scene,
    token,
)
from tracefence import api


def _row(conn, pid: int):
    return conn.execute(
        "SELECT transaction_id::text, cardinality(roles) FROM iam.open_requests WHERE backend_pid = %s",
        [pid],
    ).fetchone()


def test_read_write_request_is_served_from_the_backends_row(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    pid, xid = conn.execute("SELECT pg_backend_pid(), pg_current_xact_id_if_assigned()::text").fetchone()
    assert xid is not None  # the row was written in this transaction
    # The setting carries only the signed header: no roles.
    assert '"roles"' not in current_context(conn)
    assert ids(conn) == s.of("a")
    conn.commit()
    row = _row(db.admin(), pid)
    assert row is not None and row[0] == xid and row[1] == 1  # one role: project_admin


def test_read_only_request_sees_what_a_read_write_one_sees(db):
    s = scene(db)
    for user, project in ((s.alice, "a"), (s.bob, "b"), (s.org.owner, None)):
        expected = s.everything if project is None else s.of(project)
        conn = db.app(autocommit=False)
        conn.read_only = True
        begin(conn, token(db, user))
        assert conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone() == (None,)
        assert '"roles"' in current_context(conn)  # the whole context, signed
        assert ids(conn) == expected
        assert ids(conn, "SELECT trace_id FROM telemetry.spans") == expected
        conn.rollback()
        conn.read_only = False
        begin(conn, token(db, user))
        assert ids(conn) == expected
        conn.rollback()


def test_edited_setting_in_a_read_only_request_is_rejected(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.read_only = True
    begin(conn, token(db, s.bob))
    widened = current_context(conn).replace(str(s.b.id), str(s.a.id))
    assert widened != current_context(conn)
    conn.execute("SELECT set_config('tracefence.request', %s, true)", [widened])
    assert_context_rejected(conn)
    conn.rollback()


def test_row_of_an_earlier_transaction_serves_no_later_one(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.org.owner))
    saved = current_context(conn)
    assert ids(conn) == s.everything
    conn.commit()  # the row stays, with the old transaction id
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.rollback()
    assert _row(db.admin(), pid) is not None
    # A new transaction with a transaction id of its own, and the old signed value planted.
    conn.execute("SELECT pg_current_xact_id()")
    conn.execute("SELECT set_config('tracefence.request', %s, true)", [saved])
    assert_context_rejected(conn)
    conn.rollback()
    # Without a transaction id, and without a planted value: nothing.
    assert principal(conn) is None
    assert ids(conn) == set()
    conn.rollback()


def test_request_opened_in_a_rolled_back_savepoint_is_gone(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    conn.execute("SELECT pg_current_xact_id()")  # the row would be written in a subtransaction
    conn.execute("SAVEPOINT s")
    begin(conn, token(db, s.alice))
    assert ids(conn) == s.of("a")
    conn.execute("ROLLBACK TO SAVEPOINT s")
    assert principal(conn) is None
    assert ids(conn) == set()
    # And a request can be opened again in the same transaction.
    begin(conn, token(db, s.bob))
    assert ids(conn) == s.of("b")
    conn.rollback()


@pytest.mark.parametrize("statement", [
    "UPDATE iam.open_requests SET backend_pid = pg_backend_pid()",
    "DELETE FROM iam.open_requests",
    "SELECT * FROM iam.open_request()",
    "SELECT * FROM iam.request_roles()",
])
def test_app_role_cannot_touch_the_fast_path(db, statement):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    with pytest.raises(Exception) as caught, conn.transaction():
        conn.execute(statement)
    assert getattr(caught.value, "sqlstate", None) == "42501"
    assert ids(conn) == s.of("a")  # the request is unharmed
    conn.rollback()


def test_organisation_created_in_a_request_is_usable_in_the_same_request(db):
    """extend_request rewrites the row: the new organisation's projects are the owner's at once."""
    user = db.create_user("founder")
    with db.fence().request(user=user) as conn:
        org = api.create_organisation(conn, "fast", "Fast")
        project = api.create_project(conn, api.create_workspace(conn, org, "w", "W"), "p", "P")
        env = api.create_environment(conn, project, "staging", False)
        conn.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, 'x')",
            [project, env],
        )
        assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (1,)
        assert conn.execute("SELECT iam.current_principal()").fetchone() == (user,)


def test_sweep_removes_the_rows_of_backends_that_have_exited(db):
    s = scene(db)
    gone = db.app(autocommit=False)
    begin(gone, token(db, s.alice))
    gone_pid = gone.execute("SELECT pg_backend_pid()").fetchone()[0]
    gone.commit()
    live = db.app(autocommit=False)
    begin(live, token(db, s.bob))
    live_pid = live.execute("SELECT pg_backend_pid()").fetchone()[0]
    live.commit()
    gone.close()
    admin = db.admin()
    for _ in range(100):  # the backend exits shortly after the client disconnects
        if admin.execute("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                         [gone_pid]).fetchone() == (True,):
            break
        time.sleep(0.05)
    pids = ("SELECT array_agg(backend_pid ORDER BY backend_pid) FROM iam.open_requests"
            " WHERE backend_pid = ANY(%s)")
    assert admin.execute(pids, [[gone_pid, live_pid]]).fetchone() == (sorted([gone_pid, live_pid]),)
    api.sweep_expired(db.service())
    assert admin.execute(pids, [[gone_pid, live_pid]]).fetchone() == ([live_pid],)
    # The live backend's next request is unaffected.
    begin(live, token(db, s.bob))
    assert ids(live) == s.of("b")
    live.rollback()


def test_context_saved_in_one_transaction_of_a_message_is_rejected_in_the_next(db):
    """Every transaction of one multi-statement message starts at the same instant, so the
    binding also names the transaction's virtual id: a read-only request's signed context,
    saved in a session setting, cannot be replayed in the message's next transaction (where
    a revocation committed in between would not reach it)."""
    s = scene(db)
    conn = db.app()  # autocommit: the message's BEGIN/COMMIT delimit its transactions
    message = (
        f"BEGIN READ ONLY; SELECT iam.begin_request('{token(db, s.alice)}');"
        " SELECT set_config('x.saved', current_setting('tracefence.request'), false); COMMIT;"
        " BEGIN; SELECT set_config('tracefence.request', current_setting('x.saved'), true);"
        " SELECT count(*) FROM telemetry.traces; COMMIT;"
    )
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(message)
    assert caught.value.sqlstate == "28000"
    conn.execute("ROLLBACK")
    # The same value in its own transaction still works: the replay, not the context, failed.
    conn.execute("BEGIN READ ONLY")
    begin(conn, token(db, s.alice))
    assert ids(conn) == s.of("a")
    conn.execute("ROLLBACK")


def test_second_request_in_a_transaction_is_refused_even_with_the_setting_cleared(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    conn.execute("SELECT set_config('tracefence.request', '', true)")
    with pytest.raises(psycopg.Error) as caught:
        begin(conn, token(db, s.bob))
    assert caught.value.sqlstate == "25001"
    conn.rollback()

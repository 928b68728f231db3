"""Requests on a real hot standby (SPEC §9): the same answers as the primary at the replayed
state; a revocation on the primary reaches the standby's next request once replayed; a request
open on the standby keeps its set."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.standby import Standby
from tests.standby import standby as standby_fixture  # noqa: F401
from tests.test_attacks import Scene, assert_context_rejected, begin, current_context, ids, scene, token
from tests.world import Database
from tracefence import api

Connection = psycopg.Connection[Any]


def _reads(conn: Connection, credential: str) -> tuple[set[UUID], set[UUID], int]:
    """What one read-only request sees: traces, spans, projects."""
    conn.execute("BEGIN READ ONLY")
    try:
        begin(conn, credential)
        projects = conn.execute("SELECT count(*) FROM tenancy.projects").fetchone()
        assert projects is not None
        return ids(conn), ids(conn, "SELECT id FROM telemetry.spans"), int(projects[0])
    finally:
        conn.execute("ROLLBACK")


def _principals(db: Database, s: Scene) -> dict[str, str]:
    with db.fence().request(user=s.org.owner) as conn:
        key = api.create_api_key(conn, "prod reader", s.a.id, ["traces:read:prod", "projects:read"])
    return {
        "owner": token(db, s.org.owner),
        "alice": token(db, s.alice),
        "bob": token(db, s.bob),
        "key": key.secret,
    }


def test_every_principal_sees_on_the_standby_what_it_sees_on_the_primary(
    db: Database, standby: Standby
) -> None:
    s = scene(db)
    principals = _principals(db, s)
    standby.wait_for_replay()
    primary, replica = db.app(), standby.app()
    for name, credential in principals.items():
        assert _reads(replica, credential) == _reads(primary, credential), name
    # Not vacuous: the principals see different things.
    assert _reads(replica, principals["alice"])[0] == s.of("a")
    assert _reads(replica, principals["key"])[0] == {s.traces["a_prod"]}
    # No request: nothing, on both.
    for conn in (primary, replica):
        assert ids(conn) == set()
        assert conn.execute("SELECT count(*) FROM tenancy.projects").fetchone() == (0,)


def test_a_forged_or_copied_context_is_rejected_on_the_standby(db: Database, standby: Standby) -> None:
    s = scene(db)
    standby.wait_for_replay()
    # A context signed on the primary, copied to the standby: bound to another transaction.
    primary = db.app(autocommit=False)
    begin(primary, token(db, s.alice))
    copied = current_context(primary)
    primary.rollback()
    replica = standby.app()
    replica.execute("BEGIN READ ONLY")
    replica.execute("SELECT set_config('tracefence.request', %s, true)", [copied])
    assert_context_rejected(replica)
    replica.execute("ROLLBACK")
    # A context signed on the standby, edited: rejected; the unedited one works.
    replica.execute("BEGIN READ ONLY")
    begin(replica, token(db, s.alice))
    own = current_context(replica)
    assert ids(replica) == s.of("a")
    replica.execute(
        "SELECT set_config('tracefence.request', %s, true)", [own.replace(str(s.a.id), str(s.b.id))]
    )
    assert_context_rejected(replica)
    replica.execute("ROLLBACK")
    # ... and replayed in the next transaction of the same message.
    replica.execute(
        f"BEGIN READ ONLY; SELECT iam.begin_request('{token(db, s.alice)}');"
        " SELECT set_config('attack.saved', current_setting('tracefence.request'), false); COMMIT;"
        " BEGIN READ ONLY; SELECT set_config('tracefence.request', current_setting('attack.saved'), true);"
    )
    assert_context_rejected(replica)
    replica.execute("ROLLBACK")


def test_a_revocation_reaches_the_standbys_next_request_once_replayed(db: Database, standby: Standby) -> None:
    s = scene(db)
    standby.wait_for_replay()
    replica = standby.app()
    in_flight = standby.app(autocommit=False)
    begin(in_flight, token(db, s.alice))
    assert ids(in_flight) == s.of("a")
    with db.fence().request(user=s.org.owner) as conn:
        api.revoke_role(conn, s.alice, s.a.id)
    standby.wait_for_replay()
    # The request open on the standby keeps its set ...
    assert ids(in_flight) == s.of("a")
    in_flight.rollback()
    # ... and the next one has none.
    assert _reads(replica, token(db, s.alice))[0] == set()
    assert _reads(replica, token(db, s.bob))[0] == s.of("b")


def test_a_standby_refuses_writes_inside_a_request(db: Database, standby: Standby) -> None:
    s = scene(db)
    standby.wait_for_replay()
    replica = standby.app(autocommit=False)
    begin(replica, token(db, s.alice))
    try:
        replica.execute(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, 'x')",
            [s.a.id, s.a.staging],
        )
        raise AssertionError("a standby accepted a write")
    except psycopg.errors.ReadOnlySqlTransaction:
        pass
    replica.rollback()


def test_clearing_the_setting_on_the_standby_does_not_allow_a_second_request(
    db: Database, standby: Standby
) -> None:
    s = scene(db)
    standby.wait_for_replay()
    replica = standby.app(autocommit=False)
    begin(replica, token(db, s.alice))
    first = current_context(replica)
    replica.execute("SELECT set_config('tracefence.request', '', true)")
    with pytest.raises(psycopg.errors.ActiveSqlTransaction):
        replica.execute("SELECT iam.begin_request(%s)", [token(db, s.bob)])
    replica.rollback()
    # Not vacuous: the first context still serves its own transaction until then.
    begin(replica, token(db, s.alice))
    assert ids(replica) == s.of("a")
    replica.rollback()
    assert first


def test_a_lock_another_session_holds_cannot_stall_a_request_on_the_standby(
    db: Database, standby: Standby
) -> None:
    """The standby's request marker is a lock of the backend's own key, taken without waiting:
    a session holding it (or any advisory lock) exclusively stalls nobody's request."""
    s = scene(db)
    standby.wait_for_replay()
    victim = standby.app(autocommit=False)
    row = victim.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    victim.rollback()
    attacker = standby.app()
    # The victim's own key, and the one key every backend would share had the marker one.
    attacker.execute("SELECT pg_advisory_lock(1953392230, %s)", [row[0]])
    attacker.execute("SELECT pg_advisory_lock(1953392230, 1919250805)")
    try:
        victim.execute("SET lock_timeout = '2s'")
        begin(victim, token(db, s.alice))
        assert ids(victim) == s.of("a")
        victim.rollback()
    finally:
        attacker.execute("SELECT pg_advisory_unlock_all()")

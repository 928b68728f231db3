"""RequestPool: whatever a request leaves on its connection, the next checkout of the same server
connection (pool size 1, same backend pid), by Fence or raw, starts from a fresh session with
no context and sees no rows. Each kind of planted state is first shown to survive in a plain
ConnectionPool, so the attack is real."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.world import Database, Org, build_org
from tracefence import CredentialError, Fence, TracefenceError, api
from tracefence.pool import RequestPool

Connection = psycopg.Connection[Any]


@dataclass
class Setup:
    db: Database
    org: Org
    outsider: UUID  # a user with no grants: every request of theirs sees nothing
    trace: UUID


@pytest.fixture
def setup(db: Database) -> Setup:
    org = build_org(db, workspaces=1, projects_per_workspace=1)
    project = org.projects[0]
    trace = db.insert_trace(project.id, project.production)
    return Setup(db, org, db.create_user("outsider"), trace)


@pytest.fixture
def pool(setup: Setup) -> Iterator[RequestPool]:
    with RequestPool(setup.db.app_conninfo, min_size=1, max_size=1, open=True) as pool:
        yield pool


def _value(conn: Connection, query: str, params: list[Any] | None = None) -> Any:
    row = conn.execute(query.encode(), params or []).fetchone()
    assert row is not None
    return row[0]


def _pid(conn: Connection) -> int:
    return int(_value(conn, "SELECT pg_backend_pid()"))


# Session state a request can plant. Each entry: what the request runs inside its block, and a
# query returning True while the planted state is still there.
def _plant_request_setting(conn: Connection) -> None:
    conn.execute("SET tracefence.request = 'planted'")


def _plant_copied_context(conn: Connection) -> None:
    conn.execute("SELECT set_config('tracefence.request', current_setting('tracefence.request'), false)")


def _plant_role(conn: Connection) -> None:
    conn.execute("SET ROLE tracefence_app")


def _plant_prepared_hijack(conn: Connection) -> None:
    # psycopg names its prepared statements _pg3_<n>: a statement of that name wrapping
    # begin_request would capture the next user's credential if anyone executed it.
    conn.execute("CREATE TEMP TABLE loot (credential text)")
    for n in range(8):
        conn.execute(
            f'PREPARE "_pg3_{n}"(text) AS WITH s AS (INSERT INTO pg_temp.loot VALUES ($1)) '
            "SELECT iam.begin_request($1)".encode()
        )


def _plant_temp_shadows(conn: Connection) -> None:
    conn.execute("CREATE TEMP TABLE traces AS SELECT * FROM telemetry.traces")
    conn.execute(
        "CREATE FUNCTION pg_temp.permitted_projects(text) RETURNS uuid[] LANGUAGE sql "
        "AS $$ SELECT array_agg(id) FROM tenancy.projects $$"
    )


def _plant_session_defaults(conn: Connection) -> None:
    conn.execute("SET SESSION default_transaction_isolation = 'repeatable read'")
    conn.execute("SELECT set_config('search_path', 'pg_temp, public', false)")


def _plant_advisory_lock(conn: Connection) -> None:
    conn.execute("SELECT pg_advisory_lock(4242)")


PLANTS: dict[str, tuple[Callable[[Connection], None], str]] = {
    "set tracefence.request": (
        _plant_request_setting, "SELECT coalesce(current_setting('tracefence.request', true), '') = 'planted'"
    ),
    "copied signed context": (
        _plant_copied_context, "SELECT coalesce(current_setting('tracefence.request', true), '') <> ''"
    ),
    "set role": (_plant_role, "SELECT current_user = 'tracefence_app'"),
    "prepared hijack": (
        _plant_prepared_hijack, "SELECT count(*) > 0 FROM pg_prepared_statements"
    ),
    "temp table and function shadowing": (
        _plant_temp_shadows,
        "SELECT to_regclass('pg_temp.traces') IS NOT NULL "
        "OR to_regprocedure('pg_temp.permitted_projects(text)') IS NOT NULL",
    ),
    "session defaults": (
        _plant_session_defaults, "SELECT current_setting('default_transaction_isolation') <> 'read committed'"
    ),
    "advisory lock": (
        _plant_advisory_lock,
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
}


def _plant_everything(conn: Connection) -> None:
    # Last to first: planting tracefence.request ends the request's own context too.
    for do_plant, _ in reversed(PLANTS.values()):
        do_plant(conn)


def _assert_raw_checkout_is_clean(pool: ConnectionPool[Any], pid: int, login: str) -> None:
    with pool.connection() as conn:
        assert _pid(conn) == pid  # the same server connection, reused
        for _, present in PLANTS.values():
            assert _value(conn, present) is False, present
        assert _value(conn, "SELECT current_user") == login
        assert _value(conn, "SELECT coalesce(current_setting('tracefence.request', true), '')") == ""
        assert api.current_principal(conn) is None
        assert _value(conn, "SELECT count(*) FROM telemetry.traces") == 0


def _assert_next_request_is_clean(fence: Fence, setup: Setup, pid: int) -> None:
    with fence.request(user=setup.outsider) as conn:
        assert _pid(conn) == pid
        assert api.current_principal(conn) == setup.outsider
        assert _value(conn, "SELECT count(*) FROM telemetry.traces") == 0
        assert _value(conn, "SELECT count(*) FROM pg_prepared_statements") == 0
    with fence.request(user=setup.org.owner) as conn:  # the owner still sees exactly their trace
        assert {r[0] for r in conn.execute("SELECT id FROM telemetry.traces")} == {setup.trace}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_session_state_survives_a_plain_pool(setup: Setup, plant: str) -> None:
    """The control: without a reset, each planted state is still there at the next checkout."""
    do_plant, present = PLANTS[plant]
    with ConnectionPool(setup.db.app_conninfo, min_size=1, max_size=1, open=True) as pool:
        fence = Fence(pool, user_token_secret=setup.db.token_secret)
        with fence.request(user=setup.org.owner) as conn:
            do_plant(conn)
        with pool.connection() as conn:
            assert _value(conn, present) is True


@pytest.mark.parametrize("plant", list(PLANTS))
def test_state_planted_by_a_request_is_gone_at_the_next_checkout(
    setup: Setup, pool: RequestPool, plant: str
) -> None:
    do_plant, _ = PLANTS[plant]
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
        assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (1,)
        do_plant(conn)
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


@pytest.mark.parametrize("plant", list(PLANTS))
def test_state_planted_before_an_error_is_gone_at_the_next_checkout(
    setup: Setup, pool: RequestPool, plant: str
) -> None:
    """The request plants its state, then fails in the database: rolled back, typed error,
    and what survives a rollback (prepared statements, advisory locks) is reset anyway."""
    do_plant, _ = PLANTS[plant]
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with pytest.raises(TracefenceError) as raised, fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
        do_plant(conn)
        conn.execute("SELECT 1 / 0")
    assert raised.value.sqlstate == "22012"
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_a_python_error_inside_a_request_leaves_nothing(setup: Setup, pool: RequestPool) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with pytest.raises(RuntimeError), fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
        _plant_everything(conn)
        raise RuntimeError("the application failed")
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_a_request_that_ends_its_own_transaction_leaks_nothing(setup: Setup, pool: RequestPool) -> None:
    """COMMIT inside the block ends the request early: what follows runs with no context, and
    the session state it plants after that is reset too."""
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)
        _plant_request_setting(conn)
        _plant_advisory_lock(conn)
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_a_raw_checkout_returned_inside_a_transaction_leaks_nothing(
    setup: Setup, pool: RequestPool
) -> None:
    """Code that uses the pool directly opens a request, plants state, and gives the connection
    back with its transaction still open (getconn/putconn, no context manager)."""
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    conn = pool.getconn()
    pid = _pid(conn)
    conn.execute("SELECT iam.begin_request(%s)", [fence.credential_for(user=setup.org.owner)])
    _plant_everything(conn)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    pool.putconn(conn)
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_a_raw_checkout_left_in_a_failed_transaction_leaks_nothing(
    setup: Setup, pool: RequestPool
) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    conn = pool.getconn()
    pid = _pid(conn)
    conn.execute("SELECT iam.begin_request(%s)", [fence.credential_for(user=setup.org.owner)])
    _plant_prepared_hijack(conn)
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    pool.putconn(conn)
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_a_request_that_kills_its_connection_gets_a_fresh_one_next(
    setup: Setup, pool: RequestPool
) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with pytest.raises(TracefenceError), fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
        _plant_request_setting(conn)
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    with pool.connection() as conn:
        new_pid = _pid(conn)
    assert new_pid != pid
    _assert_raw_checkout_is_clean(pool, new_pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, new_pid)


def test_a_connection_that_died_in_the_pool_is_replaced_before_checkout(
    setup: Setup, pool: RequestPool
) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
    admin = setup.db.admin()
    assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    with fence.request(user=setup.org.owner) as conn:
        assert _pid(conn) != pid
        assert {r[0] for r in conn.execute("SELECT id FROM telemetry.traces")} == {setup.trace}


def test_a_failed_credential_leaves_the_pooled_connection_usable(
    setup: Setup, pool: RequestPool
) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with fence.request(user=setup.org.owner) as conn:
        pid = _pid(conn)
    with pytest.raises(CredentialError), fence.request(api_key="tfk_not-a-key"):
        pass
    _assert_raw_checkout_is_clean(pool, pid, setup.db.app_login)
    _assert_next_request_is_clean(fence, setup, pid)


def test_request_pool_connections_never_prepare_statements(setup: Setup, pool: RequestPool) -> None:
    fence = Fence(pool, user_token_secret=setup.db.token_secret)
    with fence.request(user=setup.org.owner) as conn:
        for _ in range(10):  # psycopg would prepare a query run this often (threshold 5)
            conn.execute("SELECT count(*) FROM telemetry.traces WHERE name = %s", ["GET /"])
        assert conn.prepare_threshold is None
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    with pool.connection() as conn:
        assert conn.prepare_threshold is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reset": lambda conn: None}, "RequestPool sets reset itself"),
        ({"check": lambda conn: None}, "RequestPool sets check itself"),
        ({"kwargs": {"prepare_threshold": 5}}, "prepare_threshold must be None"),
    ],
)
def test_request_pool_refuses_options_that_would_undo_the_reset(
    setup: Setup, options: dict[str, Any], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        RequestPool(setup.db.app_conninfo, open=False, **options)

"""Fence.session: a SQLAlchemy 2 Session inside one request, on the connection Fence hands out."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from sqlalchemy import FetchedValue, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.world import Database, Org, build_org
from tracefence import (
    ConstraintViolation,
    CredentialError,
    Fence,
    PermissionDenied,
    TracefenceError,
    api,
)
from tracefence.pool import RequestPool


class Base(DeclarativeBase):
    pass


class Trace(Base):
    __tablename__ = "traces"
    __table_args__ = {"schema": "telemetry"}  # noqa: RUF012 - SQLAlchemy's declarative form

    id: Mapped[UUID] = mapped_column(primary_key=True, server_default=FetchedValue())
    project_id: Mapped[UUID]
    environment_id: Mapped[UUID]
    is_production: Mapped[bool] = mapped_column(server_default=FetchedValue())  # stamped by a trigger
    name: Mapped[str]


traces = Trace.__table__


@dataclass
class World:
    db: Database
    org: Org
    developer: UUID  # project_developer on project B: B's non-production traces
    prod_key: api.ApiKey  # traces:read:prod on project A: A's production traces
    rows: dict[str, UUID]  # "a-prod", "a-staging", "b-prod", "b-staging"


@pytest.fixture
def world(db: Database) -> World:
    org = build_org(db, workspaces=1, projects_per_workspace=2)
    a, b = org.projects
    rows = {
        "a-prod": db.insert_trace(a.id, a.production),
        "a-staging": db.insert_trace(a.id, a.staging),
        "b-prod": db.insert_trace(b.id, b.production),
        "b-staging": db.insert_trace(b.id, b.staging),
    }
    developer = db.create_user("developer")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, developer, "project_developer", b.id)
        key = api.create_api_key(conn, "prod reader", a.id, ["traces:read:prod"])
    return World(db, org, developer, key, rows)


@pytest.fixture(params=["request-pool", "conninfo"])
def fence(request: pytest.FixtureRequest, world: World) -> Iterator[Fence]:
    if request.param == "conninfo":
        yield Fence(world.db.app_conninfo, user_token_secret=world.db.token_secret)
        return
    with RequestPool(world.db.app_conninfo, min_size=1, max_size=2, open=True) as pool:
        yield Fence(pool, user_token_secret=world.db.token_secret)


def _admin_count(world: World, name: str) -> int:
    return int(world.db.scalar("SELECT count(*) FROM telemetry.traces WHERE name = %s", [name]))


def test_orm_and_core_queries_see_exactly_the_principals_rows(world: World, fence: Fence) -> None:
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"user": world.org.owner}, set(world.rows)),
        ({"user": world.developer}, {"b-staging"}),
        ({"api_key": world.prod_key.secret}, {"a-prod"}),
        ({"user": world.db.create_user("stranger")}, set()),
    ]
    for principal, names in cases:
        expected = {world.rows[n] for n in names}
        with fence.session(**principal) as session:
            assert set(session.scalars(select(Trace.id))) == expected, principal
            assert set(session.scalars(select(traces.c.id))) == expected
            assert set(session.scalars(text("SELECT id FROM telemetry.traces"))) == expected
            assert session.scalar(select(func.count()).select_from(Trace)) == len(expected)


def test_a_session_runs_inside_the_request_transaction(world: World, fence: Fence) -> None:
    a = world.org.projects[0]
    with fence.session(user=world.org.owner) as session:
        assert session.scalar(text("SELECT iam.current_principal()")) == world.org.owner
        xid = session.scalar(text("SELECT pg_current_xact_id()::text"))
        session.add(Trace(project_id=a.id, environment_id=a.production, name="orm insert"))
        session.flush()
        added = session.scalars(select(Trace).where(Trace.name == "orm insert")).one()
        assert added.is_production is True  # stamped by the database inside the request
        session.commit()  # a checkpoint of the request, not its end
        assert session.scalar(text("SELECT pg_current_xact_id()::text")) == xid
        assert session.scalar(text("SELECT iam.current_principal()")) == world.org.owner
        assert _admin_count(world, "orm insert") == 0  # not committed yet
    assert _admin_count(world, "orm insert") == 1  # committed when the block ended


def test_session_rollback_inside_the_block_undoes_only_the_session_work(
    world: World, fence: Fence
) -> None:
    a = world.org.projects[0]
    with fence.session(user=world.org.owner) as session:
        session.add(Trace(project_id=a.id, environment_id=a.staging, name="kept"))
        session.commit()
        session.add(Trace(project_id=a.id, environment_id=a.staging, name="undone"))
        session.flush()
        session.rollback()
        assert session.scalar(text("SELECT iam.current_principal()")) == world.org.owner
        assert session.scalar(select(func.count()).select_from(Trace)) == len(world.rows) + 1
    assert (_admin_count(world, "kept"), _admin_count(world, "undone")) == (1, 0)


def test_a_revoked_principal_sees_nothing_in_the_next_session(world: World, fence: Fence) -> None:
    with fence.session(user=world.developer) as session:
        assert set(session.scalars(select(Trace.id))) == {world.rows["b-staging"]}
    with fence.session(user=world.org.owner, expire_on_commit=False) as session:
        conn = session.connection().connection.driver_connection
        api.revoke_role(conn, world.developer, world.org.projects[1].id)
        api.revoke_api_key(conn, world.prod_key.id)
    with fence.session(user=world.developer) as session:
        assert list(session.scalars(select(Trace.id))) == []
    with pytest.raises(CredentialError), fence.session(api_key=world.prod_key.secret):
        pytest.fail("a revoked key opened a session")


def test_an_error_inside_the_block_rolls_back_and_raises_the_typed_error(
    world: World, fence: Fence
) -> None:
    a, b = world.org.projects
    before = world.db.snapshot()
    with pytest.raises(PermissionDenied), fence.session(user=world.developer) as session:
        session.add(Trace(project_id=b.id, environment_id=b.staging, name="allowed"))
        session.flush()
        session.add(Trace(project_id=a.id, environment_id=a.staging, name="foreign"))
    with pytest.raises(ConstraintViolation) as raised, fence.session(user=world.org.owner) as session:
        session.add(Trace(project_id=a.id, environment_id=a.staging, name="ok"))
        session.flush()
        session.execute(
            text("INSERT INTO telemetry.traces (project_id, environment_id, name, started_at, ended_at) "
                 "VALUES (:p, :e, 'backwards', now(), now() - interval '1 hour')"),
            {"p": a.id, "e": a.staging},
        )
    assert raised.value.sqlstate == "23514"
    with pytest.raises(RuntimeError), fence.session(user=world.org.owner) as session:
        session.add(Trace(project_id=a.id, environment_id=a.staging, name="python error"))
        session.flush()
        raise RuntimeError("the application failed")
    assert world.db.snapshot() == before


def test_a_bad_credential_opens_no_session(world: World, fence: Fence) -> None:
    with pytest.raises(CredentialError), fence.session(api_key="tfk_forged"):
        pytest.fail("a forged key opened a session")
    with pytest.raises(ValueError, match="exactly one"), fence.session():
        pytest.fail("a session without a principal")


def test_the_connection_returned_to_the_pool_carries_no_context(world: World) -> None:
    with RequestPool(world.db.app_conninfo, min_size=1, max_size=1, open=True) as pool:
        fence = Fence(pool, user_token_secret=world.db.token_secret)
        for _ in range(3):
            with fence.session(user=world.org.owner) as session:
                pid = session.scalar(text("SELECT pg_backend_pid()"))
                assert session.scalar(text("SELECT count(*) FROM telemetry.traces")) == 4
                session.execute(text("SET tracefence.request = 'planted'"))
        gc.collect()  # SQLAlchemy's throw-away pools are gone: they closed nothing
        with pool.connection() as conn:
            assert not conn.closed
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
            assert conn.execute(
                "SELECT coalesce(current_setting('tracefence.request', true), '')"
            ).fetchone() == ("",)
            assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)
            assert conn.prepare_threshold is None


def test_a_plain_pool_connection_comes_back_in_its_own_mode(world: World) -> None:
    with ConnectionPool(world.db.app_conninfo, min_size=1, max_size=1, open=True,
                        kwargs={"autocommit": True}) as pool:
        fence = Fence(pool, user_token_secret=world.db.token_secret)
        with fence.session(user=world.developer) as session:
            assert set(session.scalars(select(Trace.id))) == {world.rows["b-staging"]}
        with pool.connection() as conn:
            assert conn.autocommit is True
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (0,)


def test_sqlalchemy_never_opens_a_connection_of_its_own(world: World, fence: Fence) -> None:
    with fence.session(user=world.org.owner) as session:
        engine = session.get_bind().engine
    with pytest.raises(TracefenceError, match="only wraps connections handed out by Fence"):
        engine.connect()


def test_loaded_objects_are_readable_after_the_block_with_expire_on_commit_off(
    world: World, fence: Fence
) -> None:
    with fence.session(api_key=world.prod_key.secret, expire_on_commit=False) as session:
        loaded = session.scalars(select(Trace)).all()
    assert [(t.id, t.is_production) for t in loaded] == [(world.rows["a-prod"], True)]


def test_session_refuses_options_that_would_take_the_transaction(world: World, fence: Fence) -> None:
    for option in ("bind", "join_transaction_mode", "autobegin"):
        with pytest.raises(TypeError, match=f"sets {option} itself"), fence.session(
            user=world.org.owner, **{option: None}
        ):
            pytest.fail("the session opened")


def test_concurrent_sessions_on_one_fence_each_see_their_own_rows(world: World) -> None:
    principals: list[tuple[dict[str, Any], set[UUID]]] = [
        ({"user": world.org.owner}, set(world.rows.values())),
        ({"user": world.developer}, {world.rows["b-staging"]}),
        ({"api_key": world.prod_key.secret}, {world.rows["a-prod"]}),
    ]
    with RequestPool(world.db.app_conninfo, min_size=2, max_size=3, open=True) as pool:
        fence = Fence(pool, user_token_secret=world.db.token_secret)

        def run(i: int) -> bool:
            principal, expected = principals[i % len(principals)]
            with fence.session(**principal) as session:
                return set(session.scalars(select(Trace.id))) == expected

        with ThreadPoolExecutor(max_workers=6) as executor:
            assert all(executor.map(run, range(36)))


def test_session_without_sqlalchemy_says_which_extra_to_install(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["sqlalchemy"] = None  # as if the extra were not installed
        from tracefence import Fence
        fence = Fence("host=/nonexistent", user_token_secret=b"secret")
        try:
            with fence.session(user="00000000-0000-0000-0000-000000000001"):
                pass
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "pip install 'tracefence[sqlalchemy]'" in result.stdout

"""Fixtures: a real PostgreSQL (embedded by default), one template database migrated once,
and a fresh copy of it for every test (pytest-postgresql's DatabaseJanitor)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from tests.world import Database, Server
from tracefence import migrate
from tracefence.embedded import embedded_server

TEMPLATE = "tracefence_test_template"
TOKEN_SECRET = b"tracefence-test-token-secret-0123456789abcdef"
APP_LOGIN = "tracefence_test_app"
SERVICE_LOGIN = "tracefence_test_service"
LOGIN_PASSWORD = "tracefence-test-login"
# Prepared transactions on, as many production servers have them, so the attack tests can use
# PREPARE TRANSACTION; durability off, because a test cluster is thrown away (.ci/run starts
# Debian's PostgreSQL 15 with the same settings).
TEST_SERVER_SETTINGS = {
    "max_prepared_transactions": "10",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _external_conninfo() -> str | None:
    """TRACEFENCE_TEST_DSN, or "" when PG* variables name a server, else None."""
    dsn = os.environ.get("TRACEFENCE_TEST_DSN")
    if dsn is not None:
        return dsn
    if any(os.environ.get(name) for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")):
        return ""
    return None


def _server_from(conninfo: str) -> Server:
    with psycopg.connect(conninfo) as conn:
        info = conn.info
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None
        return Server(
            host=info.host,
            port=info.port,
            user=info.user,
            password=info.password or None,
            version=int(version[0]),
        )


def _create_logins(server: Server) -> None:
    """Login roles that are members of the package roles, as an application would map them."""
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        for login, group in ((APP_LOGIN, "tracefence_app"), (SERVICE_LOGIN, "tracefence_service")):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login]).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(login), sql.Literal(LOGIN_PASSWORD)
                    )
                )
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login))
            )


def _load_template(host: str, port: int, user: str, dbname: str, password: str | None,
                   **_: Any) -> None:
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=port, user=user, dbname=dbname, password=password
    )
    migrate.apply(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_service")
        conn.execute("SELECT iam.set_token_secret(%s)", [TOKEN_SECRET])


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    external = _external_conninfo()
    if external is not None:
        yield _server_from(external)
        return
    with embedded_server(settings=TEST_SERVER_SETTINGS) as conninfo:
        yield _server_from(conninfo)


@pytest.fixture(scope="session")
def template(server: Server) -> Iterator[str]:
    """The template database: migrated once per session. Its first run also creates the
    package roles, so the test login roles are created after it."""
    janitor = DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=TEMPLATE,
        as_template=True,
    )
    janitor.drop()
    with janitor:
        janitor.load(_load_template)
        _create_logins(server)
        yield TEMPLATE


@pytest.fixture
def db(server: Server, template: str) -> Iterator[Database]:
    """A fresh copy of the migrated template for one test."""
    name = f"tracefence_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=name,
        template_dbname=template,
    )
    with janitor:
        database = Database(
            server=server,
            name=name,
            app_login=APP_LOGIN,
            service_login=SERVICE_LOGIN,
            login_password=LOGIN_PASSWORD,
            token_secret=TOKEN_SECRET,
        )
        try:
            yield database
        finally:
            database.close()


@pytest.fixture
def empty_db(server: Server, template: str) -> Iterator[str]:
    """A database that has never seen tracefence (the template fixture made the roles)."""
    name = f"tracefence_empty_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user, host=server.host, port=server.port, password=server.password,
        dbname=name,
    )
    with janitor:
        yield server.conninfo(name)

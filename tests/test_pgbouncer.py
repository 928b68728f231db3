"""The request path through a real PgBouncer in transaction pooling mode: more clients than
server connections, so consecutive transactions of different clients share a server session.
The context is transaction-local, signed and bound to its backend and transaction, so no
client sees another's context, even when one of them plants session state on the shared
server connections (PgBouncer runs no reset query between transactions in this mode)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from sqlalchemy import text

from tests.world import Database, Org, build_org
from tracefence import CredentialError, Fence, api
from tracefence.pool import RequestPool

Connection = psycopg.Connection[Any]

SERVER_CONNECTIONS = 2  # default_pool_size: what PgBouncer opens to PostgreSQL
CLIENT_THREADS = 8
DATABASE_ALIAS = "tracefence"


def _pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bouncer:
    host: str
    port: int
    db: Database

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=DATABASE_ALIAS, user=self.db.app_login,
            password=self.db.login_password, connect_timeout=10,
        )


@pytest.fixture
def bouncer(db: Database) -> Iterator[Bouncer]:
    binary = _pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)")
    server = db.server
    directory = Path(tempfile.mkdtemp(prefix="tracefence-pgbouncer-"))
    port = _free_port()
    run_as = None
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root. Run it as the owner of the server's socket
        # directory (the only user sure to reach a 0700 socket directory), else nobody.
        run_as = (Path(server.host).owner() if server.host.startswith("/") else "nobody")
    logins = [(db.app_login, db.login_password), (db.service_login, db.login_password)]
    (directory / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in logins))
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{DATABASE_ALIAS} = host={server.host} port={server.port} dbname={db.name}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
        + (f"user = {run_as}\n" if run_as else "")
    )
    if run_as:
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, user=run_as, group=pwd.getpwnam(run_as).pw_gid)
    log = (directory / "pgbouncer.log").open("wb")
    process = subprocess.Popen([binary, str(directory / "pgbouncer.ini")], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        bouncer = Bouncer("127.0.0.1", port, db)
        for _ in range(100):
            if process.poll() is not None:
                pytest.fail("pgbouncer exited:\n" + (directory / "pgbouncer.log").read_text())
            try:
                psycopg.connect(bouncer.conninfo(), autocommit=True).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        else:
            pytest.fail("pgbouncer did not accept connections:\n"
                        + (directory / "pgbouncer.log").read_text())
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class World:
    org: Org
    principals: dict[str, dict[str, Any]]  # name -> Fence.request keyword arguments
    ids: dict[str, UUID]  # name -> the principal iam.current_principal() names
    expected: dict[str, set[UUID]]  # name -> the traces that principal sees
    owner_credential: str


@pytest.fixture
def world(db: Database) -> World:
    """Two workspaces of two projects, a production and a staging trace in each project, and
    principals that each see a different set of them."""
    org = build_org(db, workspaces=2, projects_per_workspace=2)
    rows = {
        (p.id, env): db.insert_trace(p.id, env_id, f"{env} trace")
        for p in org.projects
        for env, env_id in (("prod", p.production), ("staging", p.staging))
    }
    principals: dict[str, dict[str, Any]] = {"owner": {"user": org.owner}}
    ids = {"owner": org.owner}
    expected: dict[str, set[UUID]] = {"owner": set(rows.values())}
    with db.fence().request(user=org.owner) as conn:
        admin = db.create_user("ws-admin")
        api.grant_role(conn, admin, "workspace_admin", org.workspaces[0])
        principals["workspace admin"] = {"user": admin}
        ids["workspace admin"] = admin
        expected["workspace admin"] = {
            row for (project, _), row in rows.items()
            if project in {p.id for p in org.projects if p.workspace == org.workspaces[0]}
        }
        for i, p in enumerate(org.projects):
            developer = db.create_user(f"dev-{i}")
            api.grant_role(conn, developer, "project_developer", p.id)
            principals[f"developer {i}"] = {"user": developer}
            ids[f"developer {i}"] = developer
            expected[f"developer {i}"] = {rows[(p.id, "staging")]}
            key = api.create_api_key(conn, f"prod key {i}", p.id, ["traces:read:prod"])
            principals[f"prod key {i}"] = {"api_key": key.secret}
            ids[f"prod key {i}"] = key.id
            expected[f"prod key {i}"] = {rows[(p.id, "prod")]}
    ids["stranger"] = db.create_user("stranger")
    principals["stranger"] = {"user": ids["stranger"]}
    expected["stranger"] = set()
    assert len({frozenset(v) for v in expected.values()}) == len(expected)  # all different
    return World(org, principals, ids, expected, db.fence().credential_for(user=org.owner))


def _owner_context(bouncer: Bouncer, credential: str) -> str:
    """A genuine signed context, copied out of the owner's own request through PgBouncer."""
    with psycopg.connect(bouncer.conninfo(), prepare_threshold=None) as conn:
        conn.execute("SELECT iam.begin_request(%s)", [credential])
        row = conn.execute("SELECT current_setting('tracefence.request')").fetchone()
        assert row is not None
        return str(row[0])


def _plant_on_every_server_connection(bouncer: Bouncer, value: str) -> None:
    """Hold one transaction per server connection at once, so each one gets the planted value
    as its session setting when they commit."""
    conns = [psycopg.connect(bouncer.conninfo(), prepare_threshold=None)
             for _ in range(SERVER_CONNECTIONS)]
    try:
        pids = set()
        for conn in conns:
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone())
            conn.execute("SELECT set_config('tracefence.request', %s, false)", [value])
        assert len(pids) == SERVER_CONNECTIONS
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()


def _reads_without_a_request(conn: Connection) -> int | str:
    """What a client that opened no request reads: a row count, or the SQLSTATE it got."""
    try:
        row = conn.execute("SELECT count(*) FROM telemetry.traces").fetchone()
        assert row is not None
        return int(row[0])
    except psycopg.Error as error:
        return error.sqlstate or "?"


def test_a_copied_context_is_refused_and_never_reaches_other_clients(
    db: Database, bouncer: Bouncer, world: World
) -> None:
    copied = _owner_context(bouncer, world.owner_credential)
    _plant_on_every_server_connection(bouncer, copied)
    with psycopg.connect(bouncer.conninfo(), autocommit=True, prepare_threshold=None) as probe:
        # The plant is real: the next client's session carries the owner's signed context ...
        assert probe.execute("SELECT current_setting('tracefence.request', true)").fetchone() == (copied,)
        # ... and it is refused: 28000, not the owner's rows, in any transaction of any client.
        for _ in range(2 * SERVER_CONNECTIONS):
            assert _reads_without_a_request(probe) == "28000"
    fence = Fence(bouncer.conninfo(), user_token_secret=db.token_secret)
    for name in ("developer 0", "prod key 3", "stranger"):
        with fence.request(**world.principals[name]) as conn:
            assert api.current_principal(conn) == world.ids[name]
            assert {r[0] for r in conn.execute("SELECT id FROM telemetry.traces")} == world.expected[name]
        with fence.session(**world.principals[name]) as session:  # SQLAlchemy, same path
            assert session.scalar(text("SELECT iam.current_principal()")) == world.ids[name]
            assert set(session.scalars(text("SELECT id FROM telemetry.traces"))) == world.expected[name]
    with pytest.raises(CredentialError), fence.request(api_key="tfk_forged"):
        pass


def test_concurrent_clients_through_pgbouncer_each_see_exactly_their_own_rows(
    db: Database, bouncer: Bouncer, world: World
) -> None:
    """Eight client threads, two server connections; half the clients open a connection per
    request (Fence with a conninfo), half use a RequestPool; meanwhile one client keeps
    planting the owner's copied context and a forged one on the shared server sessions, and
    another keeps reading without a request."""
    conninfo = bouncer.conninfo()
    copied = _owner_context(bouncer, world.owner_credential)
    _plant_on_every_server_connection(bouncer, copied)
    names = sorted(world.principals)
    stop = threading.Event()
    first_read = threading.Event()
    planted_seen: list[str] = []
    unopened_reads: list[int | str] = []

    def plant() -> int:
        forged = copied.replace(str(world.org.owner), str(world.org.projects[0].id))
        rounds = 0
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            while not stop.is_set():
                conn.execute("SELECT set_config('tracefence.request', %s, false)",
                             [copied if rounds % 2 else forged])
                conn.execute("SET SESSION ROLE tracefence_app")
                rounds += 1
        return rounds

    def read_without_request() -> None:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            while True:
                value = conn.execute("SELECT current_setting('tracefence.request', true)").fetchone()
                if value and value[0]:
                    planted_seen.append(str(value[0]))
                unopened_reads.append(_reads_without_a_request(conn))
                first_read.set()  # the first round ran while every server session was planted
                if stop.is_set():
                    return

    with RequestPool(conninfo, min_size=CLIENT_THREADS // 2, max_size=CLIENT_THREADS // 2,
                     open=True) as pool:
        fences = [Fence(conninfo, user_token_secret=db.token_secret),
                  Fence(pool, user_token_secret=db.token_secret)]

        def run(i: int) -> tuple[str, set[UUID], UUID | None, int]:
            name = names[i % len(names)]
            with fences[i % 2].request(**world.principals[name]) as conn:
                # More than psycopg's prepare threshold: had Fence let psycopg prepare, the
                # statement would be left on a server session another client then reuses.
                for _ in range(6):
                    seen = {r[0] for r in conn.execute("SELECT id FROM telemetry.traces")}
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                return name, seen, api.current_principal(conn), int(row[0])

        with ThreadPoolExecutor(max_workers=CLIENT_THREADS + 2) as executor:
            planter = executor.submit(plant)
            reader = executor.submit(read_without_request)
            try:
                assert first_read.wait(timeout=60)
                results = list(executor.map(run, range(CLIENT_THREADS * 12)))
            finally:
                stop.set()
            assert planter.result(timeout=60) > 0
            reader.result(timeout=60)

    for name, seen, principal, _ in results:
        assert (principal, seen) == (world.ids[name], world.expected[name]), name
    server_pids = {pid for *_, pid in results}
    assert len(server_pids) <= SERVER_CONNECTIONS  # 8 clients multiplexed onto 2 sessions
    backends = db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s",
        [db.name, db.app_login],
    )
    assert backends <= SERVER_CONNECTIONS
    # The attack ran (planted values were on the shared sessions, deterministically in the
    # reader's first round), and every read without a request was refused or empty, never
    # the owner's rows.
    assert set(planted_seen) <= {copied, copied.replace(str(world.org.owner),
                                                        str(world.org.projects[0].id))}
    assert planted_seen
    assert unopened_reads and set(unopened_reads) <= {0, "28000"}
    assert "28000" in unopened_reads

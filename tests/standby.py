"""A real hot standby of the test server: pg_basebackup of the whole cluster, streaming
replication over unix sockets, read-only queries on the copy.

Use it from a test module with

    from tests.standby import standby  # noqa: F401

and request the function fixture ``standby`` (it depends on ``db``). Ruff then reports F811 on
every test parameter named ``standby`` (it shadows the import); the fixtures carry explicit
names, so an alias keeps ruff quiet and works the same:

    from tests.standby import standby as standby_fixture  # noqa: F401

One standby of the whole cluster is created the first time a test of the module asks for it,
and is stopped and deleted when the module ends; every test's fresh ``db`` database reaches it by
replication (CREATE DATABASE is WAL-logged), and the fixture waits until the standby has
replayed it.

The module's standby is kept on the module's collection node rather than in a module-scoped
fixture of its own: pytest looks a fixture's dependencies up by name from the requesting test
module, so a separate ``standby_server`` fixture would have to be imported too. It is exported
anyway (``from tests.standby import standby_server``) for tests that want the cluster without a
``db``; both fixtures share the same standby.

``hot_standby(server)`` is the same thing as a plain context manager.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.world import Database, Server

Connection = psycopg.Connection[Any]

REPLAY_TIMEOUT = 30.0  # seconds wait_for_replay waits by default
BASEBACKUP_TIMEOUT = 300.0
PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for the standby to start or stop
CONNECT_TIMEOUT = 10
STANDBY_PORT = 5432  # unix socket only, in the standby's own directory: no port can clash

# Hot standby refuses to start unless these are at least the primary's values.
_HOT_STANDBY_PARAMETERS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


class StandbyUnavailable(Exception):
    """No pg_basebackup (with pg_ctl and postgres) of the server's major version was found."""


@dataclass(frozen=True)
class _Primary:
    version: int  # server_version_num
    data_directory: Path
    socket_dir: str | None  # the first unix_socket_directories entry, if any
    hba_file: Path
    backend_pid: int
    bindir: str | None  # pg_config's BINDIR, as the server reports it
    parameters: dict[str, str]

    @property
    def major(self) -> int:
        return self.version // 10000


def _inspect(server: Server) -> _Primary:
    with psycopg.connect(
        server.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
    ) as conn:

        def setting(name: str) -> str:
            row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
            assert row is not None
            return str(row[0])

        bindir: str | None
        try:
            row = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
            bindir = None if row is None else str(row[0])
        except psycopg.Error:
            bindir = None
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        sockets = [s.strip() for s in setting("unix_socket_directories").split(",") if s.strip()]
        return _Primary(
            version=int(setting("server_version_num")),
            data_directory=Path(setting("data_directory")),
            socket_dir=sockets[0] if sockets else None,
            hba_file=Path(setting("hba_file")),
            backend_pid=int(pid[0]),
            bindir=bindir,
            parameters={name: setting(name) for name in _HOT_STANDBY_PARAMETERS},
        )


def _major_of(executable: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _find_bindir(primary: _Primary) -> Path:
    """The directory of the running server's binaries, or another one of its major version."""
    candidates: list[Path] = []
    if primary.bindir:
        candidates.append(Path(primary.bindir))
    with contextlib.suppress(OSError):  # the backend's executable is the server's `postgres`
        candidates.append(Path(os.readlink(f"/proc/{primary.backend_pid}/exe")).parent)
    candidates.append(Path(f"/usr/lib/postgresql/{primary.major}/bin"))
    on_path = shutil.which("pg_basebackup")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        tools = [bindir / name for name in ("pg_basebackup", "pg_ctl", "postgres")]
        if all(os.access(tool, os.X_OK) for tool in tools) and all(
            _major_of(tool) == primary.major for tool in tools
        ):
            return bindir
    raise StandbyUnavailable(
        f"no pg_basebackup, pg_ctl and postgres of PostgreSQL {primary.major} found "
        f"(looked in {', '.join(map(str, dict.fromkeys(candidates)))})"
    )


def _os_user_for(primary: _Primary) -> str | None:
    """The OS user to run the standby as: None for ourselves. PostgreSQL refuses to run as root,
    so as root use the owner of the primary's data directory."""
    if os.geteuid() != 0:
        return None
    try:
        owner = primary.data_directory.stat().st_uid
    except OSError as exc:
        raise RuntimeError(
            f"cannot see the server's data directory ({exc}): a standby needs the server on this machine"
        ) from exc
    if owner == 0:
        raise RuntimeError(f"{primary.data_directory} is owned by root: cannot run a standby")
    return pwd.getpwuid(owner).pw_name


def _run(command: Sequence[str], *, as_user: str | None, cwd: Path, timeout: float,
         env: dict[str, str] | None = None) -> str:
    """Run a command (as `as_user`), its output in a file: a pipe could be inherited by the
    postmaster pg_ctl starts and keep us waiting."""
    argv = ["runuser", "-u", as_user, "--", *command] if as_user else list(command)
    with tempfile.TemporaryFile("w+") as output:
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output.seek(0)
            raise RuntimeError(f"timed out after {timeout}s: {shlex.join(argv)}\n{output.read()}") from exc
        output.seek(0)
        text = output.read()
    if result.returncode != 0:
        raise RuntimeError(f"exit status {result.returncode}: {shlex.join(argv)}\n{text}")
    return text


def _reload_and_wait(server: Server) -> None:
    """pg_reload_conf(), then wait until a new backend (forked by the postmaster, which reloads
    pg_hba.conf with the rest) shows the new configuration load time."""
    conninfo = server.conninfo("postgres")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        before = conn.execute("SELECT pg_conf_load_time()").fetchone()
        conn.execute("SELECT pg_reload_conf()")
    assert before is not None
    deadline = time.monotonic() + REPLAY_TIMEOUT
    while True:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            now = conn.execute("SELECT pg_conf_load_time()").fetchone()
        if now is not None and now[0] > before[0]:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError("the server did not reload its configuration")
        time.sleep(0.05)


def _replication_allowed(server: Server, os_user: str) -> bool:
    """Whether the first pg_hba.conf rule for replication over the unix socket by our user lets
    pg_basebackup in without a prompt."""
    with psycopg.connect(
        server.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
    ) as conn:
        rules = conn.execute(
            "SELECT database, user_name, auth_method FROM pg_hba_file_rules "
            "WHERE type = 'local' AND error IS NULL"
        ).fetchall()
    for databases, users, method in rules:
        if "replication" in databases and ("all" in users or server.user in users):
            if method == "trust":
                return True
            if method == "peer":
                return os_user == server.user
            if method in ("md5", "scram-sha-256", "password"):
                return server.password is not None
            return False
    return False


@contextlib.contextmanager
def _replication_over_socket(server: Server, primary: _Primary, os_user: str) -> Iterator[None]:
    """Make sure pg_hba.conf lets the superuser replicate over the unix socket; when it does not,
    put a trust line first while the standby exists and restore the file afterwards."""
    if _replication_allowed(server, os_user):
        yield
        return
    original = primary.hba_file.read_bytes()
    line = f"local replication {server.user} trust  # tracefence tests: hot standby\n"
    primary.hba_file.write_bytes(line.encode() + original)
    try:
        _reload_and_wait(server)
        yield
    finally:
        primary.hba_file.write_bytes(original)
        _reload_and_wait(server)


def _drop_slot(server: Server, slot: str) -> None:
    """Drop our replication slot once its walsender (if any) has gone."""
    deadline = time.monotonic() + REPLAY_TIMEOUT
    with psycopg.connect(
        server.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
    ) as conn:
        while True:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
            ).fetchone()
            if row is None:
                return
            if row[0] is None:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                return
            now = time.monotonic()
            if now >= deadline + REPLAY_TIMEOUT:
                raise TimeoutError(f"replication slot {slot} is still in use by pid {row[0]}")
            if now >= deadline:
                conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.05)


@dataclass
class StandbyServer:
    """A running hot standby of `primary`, listening only on a unix socket in `socket_dir`."""

    primary: Server
    server: Server  # the standby, as a tests.world.Server (superuser, read-only)
    directory: Path  # socket directory; holds data/ and log
    bindir: Path
    os_user: str | None
    slot: str

    @property
    def data_directory(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "log"

    def conninfo(self, dbname: str, *, user: str | None = None, password: str | None = None) -> str:
        return self.server.conninfo(dbname, user=user, password=password)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def wait_for_replay(self, timeout: float = REPLAY_TIMEOUT) -> str:
        """Wait until the standby has replayed everything the primary had written when called;
        return that position. Raises TimeoutError after `timeout` seconds."""
        with psycopg.connect(
            self.primary.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            # The insert position: with synchronous_commit off a commit may not be written yet.
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        target = str(row[0])
        deadline = time.monotonic() + timeout
        with psycopg.connect(
            self.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            while True:
                state = conn.execute(
                    "SELECT pg_last_wal_replay_lsn()::text, "
                    "coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                    [target],
                ).fetchone()
                assert state is not None
                if state[1]:
                    return target
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the standby replayed WAL up to {state[0]}, not {target}, within {timeout}s;"
                        f" its log ends with:\n{self.log_tail()}"
                    )
                time.sleep(0.02)


@contextlib.contextmanager
def hot_standby(server: Server) -> Iterator[StandbyServer]:
    """Create a hot standby of the whole cluster `server` (pg_basebackup -R through a physical
    replication slot), start it, and yield it; stop it and delete everything afterwards.

    Raises StandbyUnavailable when no binaries of the server's major version exist here.
    """
    primary = _inspect(server)
    bindir = _find_bindir(primary)
    os_user = _os_user_for(primary)
    slot = f"tracefence_standby_{uuid.uuid4().hex[:12]}"
    with contextlib.ExitStack() as stack:
        # /tmp rather than pytest's tmp_path: short socket paths, and traversable by os_user.
        directory = Path(tempfile.mkdtemp(prefix="tracefence-standby-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o700)
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        data = directory / "data"

        if primary.socket_dir is not None:
            host = primary.socket_dir
            stack.enter_context(_replication_over_socket(server, primary, os_user or
                                                         pwd.getpwuid(os.geteuid()).pw_name))
        else:
            host = server.host
        env = dict(os.environ)
        if server.password is not None:
            env["PGPASSWORD"] = server.password  # -R writes it into primary_conninfo

        stack.callback(_drop_slot, server, slot)
        _run(
            [
                str(bindir / "pg_basebackup"), "-D", str(data), "-R", "-X", "stream",
                "-C", "-S", slot, "--checkpoint=fast", "--no-sync",
                "-h", host, "-p", str(server.port), "-U", server.user,
            ],
            as_user=os_user, cwd=directory, timeout=BASEBACKUP_TIMEOUT, env=env,
        )

        # Its own authentication (local connections only, no TCP at all) and, for clusters whose
        # configuration lives outside the data directory, an empty postgresql.conf.
        for name, text in (
            ("pg_hba.conf", "local all all trust\nlocal replication all trust\n"),
            ("pg_ident.conf", ""),
        ):
            (data / name).write_text(text)
        config = data / "postgresql.conf"
        if not config.exists():
            config.write_text("")
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            for name in ("pg_hba.conf", "pg_ident.conf", "postgresql.conf"):
                os.chown(data / name, entry.pw_uid, entry.pw_gid)

        options = [
            "-k", str(directory), "-h", "", "-p", str(STANDBY_PORT),
            "-c", "hot_standby=on",
            "-c", f"hba_file={data / 'pg_hba.conf'}",
            "-c", f"ident_file={data / 'pg_ident.conf'}",
            "-c", "archive_mode=off",
            "-c", "logging_collector=off",
            "-c", "cluster_name=tracefence_standby",
            *[arg for name, value in primary.parameters.items() for arg in ("-c", f"{name}={value}")],
        ]
        pg_ctl = str(bindir / "pg_ctl")
        standby = StandbyServer(
            primary=server,
            server=Server(
                host=str(directory), port=STANDBY_PORT, user=server.user,
                password=server.password, version=primary.version,
            ),
            directory=directory,
            bindir=bindir,
            os_user=os_user,
            slot=slot,
        )
        stack.callback(_stop, standby)
        try:
            _run(
                [pg_ctl, "-D", str(data), "-l", str(standby.log_file), "-w", "-t", str(PG_CTL_TIMEOUT),
                 "-o", shlex.join(options), "start"],
                as_user=os_user, cwd=directory, timeout=PG_CTL_TIMEOUT + 30,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nthe standby's log ends with:\n{standby.log_tail()}") from exc
        with psycopg.connect(
            standby.conninfo("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row is not None and row[0] is True, "the standby is not in recovery"
        standby.wait_for_replay()
        yield standby


def _stop(standby: StandbyServer) -> None:
    """pg_ctl -m immediate stop; kill the postmaster if that does not work."""
    data = standby.data_directory
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        _run(
            [str(standby.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
             "-t", str(PG_CTL_TIMEOUT), "stop"],
            as_user=standby.os_user, cwd=standby.directory, timeout=PG_CTL_TIMEOUT + 30,
        )
    except RuntimeError:
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        raise


@dataclass
class Standby:
    """The standby, seen from one test: its database `name` is the test's `db`."""

    cluster: StandbyServer
    db: Database
    _open: list[Connection] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.db.name

    def conninfo(self, dbname: str) -> str:
        """The superuser on the standby."""
        return self.cluster.conninfo(dbname)

    def db_conninfo(self, login: str | None = None, password: str | None = None) -> str:
        """The test's database on the standby, as `login` (the superuser by default; a login's
        password defaults to the tests' login password)."""
        if login is None:
            return self.cluster.conninfo(self.db.name)
        return self.cluster.conninfo(
            self.db.name, user=login, password=self.db.login_password if password is None else password
        )

    @property
    def admin_conninfo(self) -> str:
        return self.db_conninfo()

    @property
    def app_conninfo(self) -> str:
        return self.db_conninfo(self.db.app_login)

    def connect(self, login: str | None = None, password: str | None = None,
                autocommit: bool = True) -> Connection:
        """A connection to the test's database on the standby, closed when the test ends."""
        conn = psycopg.connect(self.db_conninfo(login, password), autocommit=autocommit)
        self._open.append(conn)
        return conn

    def admin(self, autocommit: bool = True) -> Connection:
        return self.connect(autocommit=autocommit)

    def app(self, autocommit: bool = True) -> Connection:
        return self.connect(self.db.app_login, autocommit=autocommit)

    def wait_for_replay(self, timeout: float = REPLAY_TIMEOUT) -> str:
        return self.cluster.wait_for_replay(timeout)

    def close(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()


_STANDBYS: dict[str, StandbyServer] = {}
_UNAVAILABLE: dict[str, str] = {}


def _module_standby(request: pytest.FixtureRequest, server: Server) -> StandbyServer:
    """The standby of the requesting test module, created on first use; stopped and deleted when
    pytest tears the module down."""
    node = request.node
    module = node if isinstance(node, pytest.Module) else node.getparent(pytest.Module)
    assert module is not None, "the standby fixtures need a test module"
    key = module.nodeid
    if key in _UNAVAILABLE:
        pytest.skip(_UNAVAILABLE[key])
    existing = _STANDBYS.get(key)
    if existing is not None:
        return existing
    stack = contextlib.ExitStack()
    try:
        standby = stack.enter_context(hot_standby(server))
    except StandbyUnavailable as exc:
        _UNAVAILABLE[key] = f"no hot standby: {exc}"
        pytest.skip(_UNAVAILABLE[key])

    def finish() -> None:
        _STANDBYS.pop(key, None)
        atexit.unregister(stack.close)
        stack.close()

    atexit.register(stack.close)  # should pytest never tear the module down
    module.addfinalizer(finish)
    _STANDBYS[key] = standby
    return standby


@pytest.fixture(scope="module", name="standby_server")
def standby_server(request: pytest.FixtureRequest, server: Server) -> StandbyServer:
    """The module's hot standby of the whole test cluster (shared with `standby`)."""
    return _module_standby(request, server)


@pytest.fixture(name="standby")
def standby(request: pytest.FixtureRequest, db: Database) -> Iterator[Standby]:
    """The module's hot standby, once it has replayed the creation of this test's `db`."""
    cluster = _module_standby(request, db.server)
    cluster.wait_for_replay()
    view = Standby(cluster, db)
    try:
        yield view
    finally:
        view.close()

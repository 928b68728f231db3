"""The benchmark runs end to end at a tiny scale, and what it compares is comparable: every
fenced query returned exactly the rows of its hand-written equivalents (the runner stops
otherwise), and those rows are what the principals may see. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from bench import data
from bench.queries import BASELINE_ROLES
from psycopg import sql

from tracefence import user_token

ROOT = Path(__file__).resolve().parent.parent
BENCH_ROLES = [data.APP_LOGIN, *BASELINE_ROLES.values()]


@pytest.fixture
def bench_db(db):
    """The test database; afterwards the roles the benchmark created (roles are the server's,
    not the database's) are dropped, so no other test sees them."""
    yield db
    with psycopg.connect(db.admin_conninfo, autocommit=True) as conn:
        for role in BENCH_ROLES:
            if conn.execute("SELECT FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_benchmark_runs_at_tiny_scale_with_fenced_results_equal_to_the_limit(bench_db, tmp_path):
    db = bench_db
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--dsn", db.admin_conninfo, "--scale", "tiny",
         "--rounds", "1", "--seconds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert (out / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| q1 " in (out / "results.md").read_text()

    # Four queries for each of the five principals, each with rows to compare.
    seen = {(r["query"], r["principal"]) for r in doc["queries"]}
    assert len(seen) == 20
    # The latest traces and one trace with its spans are never empty, for anyone (at this scale
    # an hour or a day of one project may be).
    assert all(r["rows"] > 0 for r in doc["queries"] if r["query"] in ("q2", "q3"))
    for r in doc["queries"]:
        for variant in ("fenced", "limit", "literal", "naive", "wrapped"):
            assert r[variant]["runs"] >= 1
        assert "Scan" in r["plans"]["fenced"]["plan"] and "Scan" in r["plans"]["limit"]["plan"]
    for clients in (1, 2, 8):
        block = doc["requests"][f"clients_{clients}"]
        assert block["fenced"]["tps_median"] > 0 and block["unfenced"]["tps_median"] > 0
    assert doc["ingest"]["fenced"]["runs"] == 1

    # The comparison is not vacuous: a principal's fenced view is its projects and
    # classification, counted here independently of the runner.
    world = data.load(db.admin_conninfo)
    with psycopg.connect(db.admin_conninfo) as admin:
        traces = admin.execute("SELECT count(*) FROM telemetry.traces").fetchone()
        assert traces is not None and traces[0] == world.traces
    for name, principal in world.principals.items():
        credential = principal.secret or user_token(data.SECRET, principal.principal_id, 60)
        with psycopg.connect(world.app_dsn) as conn:
            conn.execute("SELECT iam.begin_request(%s)", [credential])
            fenced = conn.execute("SELECT count(*) FROM telemetry.traces").fetchone()
        with psycopg.connect(db.admin_conninfo) as admin:
            expected = admin.execute(
                "SELECT count(*) FROM telemetry.traces WHERE (NOT is_production AND project_id = ANY(%s))"
                " OR (is_production AND project_id = ANY(%s))",
                [principal.read, principal.read_prod],
            ).fetchone()
        assert fenced == expected and expected is not None and expected[0] > 0, name
    # The planner expects a narrow principal's fenced rows to be few, though the database holds
    # one organisation (iam.install_fence's n_distinct): it plans index scans, not a scan of
    # every row. Estimates only; no timing.
    developer = world.principals["developer"]
    with psycopg.connect(world.app_dsn) as conn:
        conn.execute("SELECT iam.begin_request(%s)", [user_token(data.SECRET, developer.principal_id, 60)])
        for table, total in (("traces", world.traces), ("spans", world.traces * 3)):
            (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT * FROM telemetry.{table}").fetchone()
            assert plan[0]["Plan"]["Plan Rows"] < 0.25 * total, (table, plan)
    # Ingest cleaned up after itself and left no unfenced copy behind.
    with psycopg.connect(db.admin_conninfo) as admin:
        assert admin.execute("SELECT count(*) FROM telemetry.traces").fetchone() == (world.traces,)
        assert admin.execute("SELECT to_regclass('bench.traces_unfenced')").fetchone() == (None,)


def test_benchmark_refuses_a_database_with_tenants(db, tmp_path):
    user = db.create_user("owner")
    with db.fence().request(user=user) as conn:
        conn.execute("SELECT tenancy.create_organisation('acme', 'Acme')")
    before = db.snapshot()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--dsn", db.admin_conninfo, "--scale", "tiny",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "needs an empty tracefence database" in done.stderr
    assert "Traceback" not in done.stderr
    assert db.snapshot() == before

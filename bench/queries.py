"""The four read queries, each run three or four ways on the same data in one run:

- fenced: inside a request opened with iam.begin_request, as the application role, with no
  filter of its own: row-level security decides what the principal sees;
- explicit: as tracefence_owner (no row-level security), with the equivalent hand-written
  WHERE (the principal's projects and classification, as literal arrays): the physical limit;
- naive and wrapped: the policies people usually write, installed side by side for two roles
  of their own: a per-row EXISTS against a membership table that reads
  current_setting('bench.principal') unwrapped (naive), or wrapped in (SELECT ...) (wrapped).

Every variant must return the same rows as the explicit query, or the run stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from rich.progress import Progress

from bench.data import SECRET, Principal, World
from bench.timing import Sample, interleave
from tracefence import user_token

# The visibility rule of SPEC §2, written by hand for the owner's explicit queries.
VISIBLE = "((NOT {t}.is_production AND {t}.project_id = ANY(%(read)s::uuid[]))" \
          " OR ({t}.is_production AND {t}.project_id = ANY(%(read_prod)s::uuid[])))"


@dataclass(frozen=True)
class Query:
    key: str
    title: str
    sql: str  # as the application writes it; {where} and {span_where} take the explicit filter


QUERIES = [
    Query(
        "q1", "count of one project's traces in the last hour",
        "SELECT count(*) FROM telemetry.traces AS t"
        " WHERE t.project_id = %(project)s AND t.started_at > %(anchor)s - interval '1 hour' {where}",
    ),
    Query(
        "q2", "latest 50 traces across everything visible",
        "SELECT t.id, t.project_id, t.name, t.started_at FROM telemetry.traces AS t"
        " WHERE true {where} ORDER BY t.started_at DESC, t.id LIMIT 50",
    ),
    Query(
        "q3", "one trace by id with its spans",
        "SELECT t.id, t.name, s.id, s.name FROM telemetry.traces AS t"
        " LEFT JOIN telemetry.spans AS s ON s.trace_id = t.id {span_where}"
        " WHERE t.id = %(trace)s {where} ORDER BY s.id",
    ),
    Query(
        "q4", "per-name counts over 24 hours across everything visible",
        "SELECT t.name, count(*) FROM telemetry.traces AS t"
        " WHERE t.started_at > %(anchor)s - interval '24 hours' {where} GROUP BY t.name ORDER BY t.name",
    ),
]

BASELINE_ROLES = {"naive": "bench_naive_policy", "wrapped": "bench_wrapped_policy"}
_PRINCIPAL = "current_setting('bench.principal')::uuid"


def _baseline_policy(principal: str) -> str:
    return (
        "EXISTS (SELECT FROM bench.memberships AS m WHERE m.principal_id = " + principal
        + " AND m.project_id = {table}.project_id"
        " AND CASE WHEN {table}.is_production THEN m.read_prod ELSE m.read END)"
    )


def install_baselines(world: World) -> None:
    """The membership table and the two usual policies, on the same tables as tracefence's."""
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench.memberships (principal_id uuid, project_id uuid,"
            " read boolean NOT NULL, read_prod boolean NOT NULL, PRIMARY KEY (principal_id, project_id))"
        )
        conn.execute("TRUNCATE bench.memberships")
        with conn.cursor() as cur, cur.copy("COPY bench.memberships FROM STDIN") as copy:
            for p in world.principals.values():
                for project in set(p.read) | set(p.read_prod):
                    copy.write_row((p.principal_id, project, project in p.read, project in p.read_prod))
        conn.execute("ANALYZE bench.memberships")
        for kind, role in BASELINE_ROLES.items():
            conn.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')"
                f" THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
            )
            conn.execute(f"GRANT USAGE ON SCHEMA telemetry, bench TO {role}")
            conn.execute(f"GRANT SELECT ON telemetry.traces, telemetry.spans, bench.memberships TO {role}")
            principal = _PRINCIPAL if kind == "naive" else f"(SELECT {_PRINCIPAL})"
            for table in ("traces", "spans"):
                conn.execute(f"DROP POLICY IF EXISTS bench_{kind} ON telemetry.{table}")
                conn.execute(
                    f"CREATE POLICY bench_{kind} ON telemetry.{table} FOR SELECT TO {role} USING ("
                    + _baseline_policy(principal).format(table=table) + ")"
                )


def _params(world: World, p: Principal) -> dict[str, Any]:
    return {
        "project": world.projects[0],
        "anchor": world.anchor,
        "trace": world.sample_traces[p.name],
        "read": p.read,
        "read_prod": p.read_prod,
    }


def _runner(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        return conn.execute(sql, params).fetchall()
    return run


@dataclass
class QueryResult:
    query: Query
    principal: str
    rows: int
    samples: dict[str, Sample]

    def ratio(self, variant: str) -> float:
        return self.samples[variant].median / self.samples["explicit"].median


def run_queries(world: World, rounds: int, baseline_rounds: int, progress: Progress,
                principals: list[str] | None = None) -> list[QueryResult]:
    results: list[QueryResult] = []
    names = principals or ["developer", "workspace_admin", "org_admin", "prod_key", "user_1000_bindings"]
    task = progress.add_task("queries", total=len(names) * len(QUERIES))
    for name in names:
        p = world.principals[name]
        credential = p.secret or user_token(SECRET, p.principal_id, 3600)
        params = _params(world, p)
        with psycopg.connect(world.app_dsn) as fenced, psycopg.connect(world.dsn) as owner, \
                psycopg.connect(world.dsn) as naive, psycopg.connect(world.dsn) as wrapped:
            fenced.execute("SELECT iam.begin_request(%s)", [credential], prepare=False)
            owner.execute("SET ROLE tracefence_owner")
            for conn, kind in ((naive, "naive"), (wrapped, "wrapped")):
                conn.execute(f"SET ROLE {BASELINE_ROLES[kind]}")
                conn.execute("SELECT set_config('bench.principal', %s, true)", [str(p.principal_id)])
            for q in QUERIES:
                plain = q.sql.format(where="", span_where="")
                explicit = q.sql.format(where="AND " + VISIBLE.format(t="t"),
                                        span_where="AND " + VISIBLE.format(t="s"))
                run = {
                    "fenced": _runner(fenced, plain, params),
                    "explicit": _runner(owner, explicit, params),
                    "naive": _runner(naive, plain, params),
                    "wrapped": _runner(wrapped, plain, params),
                }
                expected = run["explicit"]()
                for variant, runner in run.items():
                    got = runner()
                    if got != expected:
                        raise AssertionError(
                            f"{q.key} as {name}: {variant} returned {len(got)} rows, explicit {len(expected)}"
                        )
                samples = interleave({k: run[k] for k in ("fenced", "explicit")}, rounds)
                samples.update(interleave({k: run[k] for k in ("naive", "wrapped")}, baseline_rounds))
                results.append(QueryResult(q, name, len(expected), samples))
                progress.advance(task)
            for conn in (fenced, owner, naive, wrapped):
                conn.rollback()
    return results

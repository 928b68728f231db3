"""The four read queries, each run five ways on the same data in one run:

- fenced: inside a request opened with iam.begin_request, as the application role, with no
  filter of its own: row-level security decides what the principal sees;
- limit: as tracefence_owner (no row-level security), with the filter a DBA would write for
  that principal's grants on the same schema and indexes: the tier column each grant is bound
  at (organisation_id = the organisation for an organisation-wide grant, workspace_id for a
  workspace, project_id for projects), split by classification only where the principal's
  traces:read and traces:read:prod grants differ: the physical limit;
- literal: as tracefence_owner, the visibility rule with the principal's projects as literal
  arrays (the baseline before rows carried their tier path);
- naive and wrapped: the policies people usually write, installed side by side for two roles
  of their own: a per-row EXISTS against a membership table that reads
  current_setting('bench.principal') unwrapped (naive), or wrapped in (SELECT ...) (wrapped).

Every variant must return the same rows as the limit query, or the run stops. The plans of the
fenced and the limit query (EXPLAIN, costs off, as timed: the prepared statement's plan once
psycopg has prepared it) are kept with the results.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from rich.progress import Progress

from bench.data import SECRET, Principal, Scopes, World
from bench.timing import Sample, interleave
from tracefence import user_token

# The visibility rule of SPEC §2 with the principal's projects as literal arrays.
VISIBLE = "((NOT {t}.is_production AND {t}.project_id = ANY(%(read)s::uuid[]))" \
          " OR ({t}.is_production AND {t}.project_id = ANY(%(read_prod)s::uuid[])))"
TIMED = ("fenced", "limit", "literal")  # interleaved at full rounds; naive and wrapped at fewer


@dataclass(frozen=True)
class Query:
    key: str
    title: str
    sql: str  # as the application writes it; {where} and {span_where} take a hand-written filter


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


def _scope_filter(scopes: Scopes, t: str, prefix: str, params: dict[str, Any]) -> str:
    """The rows below `scopes`: one comparison per tier that holds a grant, = for one id,
    = ANY for several; "false" for none."""
    arms = []
    for column, ids, name in (("organisation_id", scopes.organisations, "org"),
                              ("workspace_id", scopes.workspaces, "workspace"),
                              ("project_id", scopes.projects, "project")):
        if len(ids) == 1:
            arms.append(f"{t}.{column} = %({prefix}_{name})s")
            params[f"{prefix}_{name}"] = ids[0]
        elif ids:
            arms.append(f"{t}.{column} = ANY(%({prefix}_{name}s)s::uuid[])")
            params[f"{prefix}_{name}s"] = list(ids)
    if not arms:
        return "false"
    return arms[0] if len(arms) == 1 else "(" + " OR ".join(arms) + ")"


def limit_filter(p: Principal, t: str) -> tuple[str, dict[str, Any]]:
    """The hand-written filter of what `p` reads in the table aliased `t`, and its parameters:
    the scope test alone where traces:read and traces:read:prod are bound at the same places,
    else one or both classification arms (NOT is_production needs traces:read, is_production
    traces:read:prod)."""
    params: dict[str, Any] = {}
    if p.read_at.same(p.read_prod_at):
        return _scope_filter(p.read_at, t, "read", params), params
    read = _scope_filter(p.read_at, t, "read", params)
    prod = _scope_filter(p.read_prod_at, t, "prod", params)
    if prod == "false":
        return f"(NOT {t}.is_production AND {read})", params
    if read == "false":
        return f"({t}.is_production AND {prod})", params
    return f"((NOT {t}.is_production AND {read}) OR ({t}.is_production AND {prod}))", params


def _params(world: World, p: Principal) -> dict[str, Any]:
    return {
        "project": world.projects[0],
        "anchor": world.anchor,
        "trace": world.sample_traces[p.name],
        "read": p.read,
        "read_prod": p.read_prod,
        **limit_filter(p, "t")[1],
    }


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _as_sent(query: str) -> tuple[str, list[str]]:
    """The text psycopg sends for `query` (each named placeholder numbered in order of first
    appearance) and the names in that order: how pg_prepared_statements shows it."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, query), names


def timed_plan(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN (ANALYZE off, COSTS off) of `query` as the timed runs executed it: once psycopg
    prepared it, the prepared statement's plan (generic or custom, as the plan cache now
    chooses), else a plan for these parameters."""
    text, names = _as_sent(query)
    prepared = conn.execute(
        "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = %s",
        [text], prepare=False).fetchone()
    if prepared is None:
        rows = conn.execute("EXPLAIN (ANALYZE off, COSTS off) " + query, params, prepare=False).fetchall()
        return {"plan": "\n".join(r[0] for r in rows), "prepared": False}
    name, generic, custom = prepared
    arguments = sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(params[n]) for n in names))
    explain = sql.SQL("EXPLAIN (ANALYZE off, COSTS off) EXECUTE {}{}").format(
        sql.Identifier(name), arguments if names else sql.SQL(""))
    rows = conn.execute(explain, prepare=False).fetchall()
    return {"plan": "\n".join(r[0] for r in rows), "prepared": True,
            "generic_plans": generic, "custom_plans": custom}


def _runner(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        return conn.execute(query, params).fetchall()
    return run


@dataclass
class QueryResult:
    query: Query
    principal: str
    rows: int
    samples: dict[str, Sample]
    limit_filter: str = ""
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # fenced, limit

    def ratio(self, variant: str, baseline: str = "limit") -> float:
        return self.samples[variant].median / self.samples[baseline].median


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
            # Spans carry their trace's tier path and classification: the same filter on s.
            trace_filter, span_filter = limit_filter(p, "t")[0], limit_filter(p, "s")[0]
            for q in QUERIES:
                plain = q.sql.format(where="", span_where="")
                texts = {
                    "limit": q.sql.format(where="AND " + trace_filter, span_where="AND " + span_filter),
                    "literal": q.sql.format(where="AND " + VISIBLE.format(t="t"),
                                            span_where="AND " + VISIBLE.format(t="s")),
                }
                run = {
                    "fenced": _runner(fenced, plain, params),
                    "limit": _runner(owner, texts["limit"], params),
                    "literal": _runner(owner, texts["literal"], params),
                    "naive": _runner(naive, plain, params),
                    "wrapped": _runner(wrapped, plain, params),
                }
                expected = run["limit"]()
                for variant, runner in run.items():
                    got = runner()
                    if got != expected:
                        raise AssertionError(
                            f"{q.key} as {name}: {variant} returned {len(got)} rows, limit {len(expected)}"
                        )
                samples = interleave({k: run[k] for k in TIMED}, rounds)
                samples.update(interleave({k: run[k] for k in ("naive", "wrapped")}, baseline_rounds))
                plans = {"fenced": timed_plan(fenced, plain, params),
                         "limit": timed_plan(owner, texts["limit"], params)}
                results.append(QueryResult(q, name, len(expected), samples, trace_filter, plans))
                progress.advance(task)
            for conn in (fenced, owner, naive, wrapped):
                conn.rollback()
    return results

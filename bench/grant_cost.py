"""What an audited grant costs: a grant at organisation tier in an organisation with 1,000
projects (one audit row per scope whose effective set changes: 1 + 50 + 1,000) against a grant
at project tier (one row), measured side by side, interleaved, in one run; each time is the
grant's statement and its COMMIT (the audit rows are written and flushed by then).

    python -m bench.grant_cost [--dsn DSN] [--projects 1000] [--rounds 15]

Without --dsn it starts an embedded PostgreSQL. Prints medians, p95 and the ratio; writes JSON
to bench/out/grant_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool
from rich.console import Console
from rich.table import Table

import tracefence.api as api
import tracefence.migrate as migrate
from tracefence import Fence
from tracefence.embedded import embedded_server

SECRET = b"bench-token-secret-0123456789abcdef0123"
OUT = Path(__file__).parent / "out" / "grant_cost.json"


def _setup(
    dsn: str, projects: int, workspaces: int
) -> tuple[ConnectionPool[Any], Fence, UUID, UUID, list[UUID]]:
    migrate.apply(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_service")
        api.set_token_secret(conn, SECRET)
        owner = api.create_user(conn, f"owner-{time.time_ns()}@bench.test", "Owner")
        conn.execute("RESET ROLE")
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracefence_bench') "
            "THEN CREATE ROLE tracefence_bench LOGIN IN ROLE tracefence_app; END IF; END $$"
        )
    app_dsn = psycopg.conninfo.make_conninfo(dsn, user="tracefence_bench", password="")
    # One pooled connection, as an application would hold it: plans and compiled functions
    # are warm, so the numbers are the grant's, not the connection's.
    pool: ConnectionPool[Any] = ConnectionPool(app_dsn, min_size=1, max_size=1, open=True)
    fence = Fence(pool, user_token_secret=SECRET)
    with fence.request(user=owner) as conn:
        org = api.create_organisation(conn, f"bench-{time.time_ns()}", "Bench")
    # The bulk of the organisation is loaded directly: this measures grants, not creation.
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE tracefence_owner")
        conn.execute(
            """
            WITH ws AS (
                INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
                SELECT id, 'workspace', %(org)s, id FROM (SELECT gen_random_uuid() AS id
                    FROM generate_series(1, %(ws)s)) g RETURNING id
            ), named AS (
                INSERT INTO tenancy.workspaces (id, organisation_id, slug, name)
                SELECT id, %(org)s, 'ws-' || row_number() OVER (), 'Workspace' FROM ws RETURNING id
            ), p AS (
                INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
                SELECT gen_random_uuid(), 'project', %(org)s, named.id
                FROM named, generate_series(1, %(per)s) RETURNING id, workspace_id
            )
            INSERT INTO tenancy.projects (id, organisation_id, workspace_id, slug, name)
            SELECT id, %(org)s, workspace_id, 'p-' || row_number() OVER (), 'Project' FROM p
            """,
            {"org": org, "ws": workspaces, "per": projects // workspaces},
        )
    with psycopg.connect(dsn) as conn:
        project_ids = [
            r[0] for r in conn.execute(
                "SELECT id FROM tenancy.projects WHERE organisation_id = %s ORDER BY id", [org]
            ).fetchall()
        ]
    return pool, fence, owner, org, project_ids


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def run(dsn: str, projects: int, rounds: int) -> dict[str, object]:
    pool, fence, owner, org, project_ids = _setup(dsn, projects, workspaces=50)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_service")
        users = [
            api.create_user(conn, f"u{i}-{time.time_ns()}@bench.test", f"User {i}")
            for i in range(2 * rounds)
        ]
    timings: dict[str, list[float]] = {"organisation": [], "project": []}
    with fence.request(user=owner) as conn:  # warm-up: compile the functions once
        conn.execute("SELECT iam.grant_role(%s, 'org_member', %s)", [users[0], org])
        conn.execute("SELECT iam.revoke_role(%s, %s)", [users[0], org])
    rows: dict[str, int] = {}
    for i in range(rounds):  # interleaved: org grant, project grant, org grant, ...
        for tier, role, resource, user in (
            ("organisation", "org_admin", org, users[2 * i]),
            ("project", "project_admin", project_ids[i % len(project_ids)], users[2 * i + 1]),
        ):
            with fence.request(user=owner) as conn:
                started = time.perf_counter()
                conn.execute("SELECT iam.grant_role(%s, %s, %s)", [user, role, resource])
            timings[tier].append((time.perf_counter() - started) * 1000)  # the grant and its COMMIT
            with psycopg.connect(dsn) as admin:
                count = admin.execute(
                    "SELECT count(*) FROM audit.events WHERE principal_id = %s", [user]
                ).fetchone()
                rows[tier] = int(count[0]) if count else 0
    pool.close()
    result: dict[str, object] = {
        "projects": len(project_ids),
        "rounds": rounds,
        "audit_rows_per_grant": rows,
        "median_ms": {t: statistics.median(v) for t, v in timings.items()},
        "p95_ms": {t: _p95(v) for t, v in timings.items()},
    }
    medians = result["median_ms"]
    assert isinstance(medians, dict)
    result["ratio_org_to_project"] = medians["organisation"] / medians["project"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="superuser conninfo; default: an embedded PostgreSQL")
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_server())
        result = run(dsn, args.projects, args.rounds)
    table = Table("grant at", "audit rows", "median ms", "p95 ms")
    for tier in ("organisation", "project"):
        table.add_row(
            tier,
            str(result["audit_rows_per_grant"][tier]),  # type: ignore[index]
            f"{result['median_ms'][tier]:.1f}",  # type: ignore[index]
            f"{result['p95_ms'][tier]:.1f}",  # type: ignore[index]
        )
    console = Console()
    console.print(table)
    console.print(f"organisation / project grant time: {result['ratio_org_to_project']:.1f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

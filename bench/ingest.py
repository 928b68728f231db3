"""Ingest: batches of traces and their spans written through a request (an API key holding
traces:write; the database classifies each trace and stamps each span, and row-level security
checks every row) against the same rows written into an unfenced copy of the tables (same
rows, columns, keys, indexes and foreign keys; no triggers, no row-level security; the writer
supplies the tier path and the classification itself). Batches alternate; the inserted rows and the copy are
removed afterwards.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from rich.progress import Progress

from bench.data import SPAN_NAMES, TRACE_NAMES, World
from bench.timing import interleave

TRACES_PER_BATCH = 200
SPANS_PER_TRACE = 3

FENCED_TRACES = (
    "INSERT INTO telemetry.traces (id, project_id, environment_id, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[])"
)
FENCED_SPANS = (
    "INSERT INTO telemetry.spans (id, trace_id, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[])"
)
# The unfenced writer supplies what the database stamps on the fenced side: the tier path and
# the classification.
UNFENCED_TRACES = (
    "INSERT INTO bench.traces_unfenced (id, organisation_id, workspace_id, project_id, environment_id,"
    " is_production, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::boolean[],"
    " %s::text[], %s::timestamptz[])"
)
UNFENCED_SPANS = (
    "INSERT INTO bench.spans_unfenced (id, trace_id, organisation_id, workspace_id, project_id,"
    " environment_id, is_production, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[],"
    " %s::boolean[], %s::text[], %s::timestamptz[])"
)
COPIES = {"telemetry.traces": "bench.traces_unfenced", "telemetry.spans": "bench.spans_unfenced"}


def install_unfenced_copy(world: World) -> None:
    """The copy holds the same rows as the fenced tables, so both sides insert into indexes of
    the same size; its keys, unique constraints, indexes and foreign keys are telemetry's."""
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute("DROP TABLE IF EXISTS bench.spans_unfenced, bench.traces_unfenced")
        for table in ("traces", "spans"):
            copy = f"bench.{table}_unfenced"
            conn.execute(
                f"CREATE TABLE {copy} (LIKE telemetry.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            conn.execute(f"INSERT INTO {copy} SELECT * FROM telemetry.{table}")
            for (definition,) in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype IN ('p', 'u')", [f"telemetry.{table}"]
            ).fetchall():
                conn.execute(f"ALTER TABLE {copy} ADD {definition}")
            for (definition,) in conn.execute(
                "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i WHERE i.indrelid = %s::regclass"
                " AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)",
                [f"telemetry.{table}"],
            ).fetchall():
                _, on = definition.split(" ON ", 1)
                conn.execute(f"CREATE INDEX ON {copy} " + on.split(" ", 1)[1])
        # telemetry's foreign keys, those between its tables pointed at the copies.
        for table, copy in COPIES.items():
            for (definition,) in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname", [table]
            ).fetchall():
                for original, replacement in COPIES.items():
                    definition = definition.replace(f"REFERENCES {original}(", f"REFERENCES {replacement}(")
                conn.execute(f"ALTER TABLE {copy} ADD {definition}")
        conn.execute("VACUUM ANALYZE bench.traces_unfenced, bench.spans_unfenced")


def _batch(world: World, rng: random.Random) -> dict[str, list[Any]]:
    projects = world.projects[:20]  # the ingest key writes to the first workspace
    workspace = world.workspaces[0]
    b: dict[str, list[Any]] = {k: [] for k in (
        "tid", "org", "workspace", "project", "env", "prod", "name", "start", "sid", "strace", "sorg",
        "sworkspace", "sproject", "senv", "sprod", "sname", "sstart")}
    for _ in range(TRACES_PER_BATCH):
        project = projects[rng.randrange(len(projects))]
        production = rng.random() < 0.6
        env = world.environments[project][0 if production else 1]
        started = world.anchor - timedelta(seconds=rng.randrange(86_400))
        trace = uuid.uuid4()
        for col, value in (("tid", trace), ("org", world.organisation), ("workspace", workspace),
                           ("project", project), ("env", env), ("prod", production),
                           ("name", TRACE_NAMES[rng.randrange(len(TRACE_NAMES))]), ("start", started)):
            b[col].append(value)
        for k in range(SPANS_PER_TRACE):
            for col, value in (("sid", uuid.uuid4()), ("strace", trace), ("sorg", world.organisation),
                               ("sworkspace", workspace), ("sproject", project),
                               ("senv", env), ("sprod", production),
                               ("sname", SPAN_NAMES[k % len(SPAN_NAMES)]), ("sstart", started)):
                b[col].append(value)
    return b


def run_ingest(world: World, key_secret: str, batches: int, progress: Progress) -> dict[str, Any]:
    install_unfenced_copy(world)
    rng = random.Random(5)
    task = progress.add_task("ingest", total=2 * batches)
    written: list[uuid.UUID] = []
    # The unfenced copy lives in the benchmark's own schema, written by the superuser.
    with psycopg.connect(world.app_dsn) as fenced, psycopg.connect(world.dsn) as owner:

        def through_fence() -> None:
            b = _batch(world, rng)
            fenced.execute("SELECT iam.begin_request(%s)", [key_secret], prepare=False)
            fenced.execute(FENCED_TRACES, [b["tid"], b["project"], b["env"], b["name"], b["start"]])
            fenced.execute(FENCED_SPANS, [b["sid"], b["strace"], b["sname"], b["sstart"]])
            fenced.commit()
            written.extend(b["tid"])
            progress.advance(task)

        def unfenced() -> None:
            b = _batch(world, rng)
            owner.execute(UNFENCED_TRACES, [b["tid"], b["org"], b["workspace"], b["project"], b["env"],
                                            b["prod"], b["name"], b["start"]])
            owner.execute(UNFENCED_SPANS, [b["sid"], b["strace"], b["sorg"], b["sworkspace"], b["sproject"],
                                           b["senv"], b["sprod"], b["sname"], b["sstart"]])
            owner.commit()
            progress.advance(task)

        variants: dict[str, Callable[[], object]] = {"fenced": through_fence, "unfenced": unfenced}
        samples = interleave(variants, batches)
        # Both paths stored the same classification: every fenced trace is where the writer
        # asked and classified from its environment, every span stamped from its trace.
        checked = owner.execute(
            "SELECT count(*) FILTER (WHERE t.is_production = e.is_production),"
            " (SELECT count(*) FROM telemetry.spans AS s WHERE s.trace_id = ANY(%s)"
            "  AND s.is_production = (SELECT t2.is_production FROM telemetry.traces AS t2"
            "                         WHERE t2.id = s.trace_id))"
            " FROM telemetry.traces AS t JOIN tenancy.environments AS e ON e.id = t.environment_id"
            " WHERE t.id = ANY(%s)", [written, written]).fetchone()
        assert checked == (len(written), len(written) * SPANS_PER_TRACE), checked
        owner.execute("DELETE FROM telemetry.traces WHERE id = ANY(%s)", [written])
        owner.execute("DROP TABLE bench.spans_unfenced, bench.traces_unfenced")
        owner.commit()
    rows = TRACES_PER_BATCH * (1 + SPANS_PER_TRACE)
    out: dict[str, Any] = {name: s.as_dict() | {"rows_per_second": round(rows / (s.median / 1000))}
                           for name, s in samples.items()}
    out["rows_per_batch"] = rows
    out["throughput_ratio"] = round(samples["unfenced"].median / samples["fenced"].median, 3)
    return out

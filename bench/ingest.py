"""Ingest: batches of traces and their spans written through a request (an API key holding
traces:write; the database classifies each trace and stamps each span, and row-level security
checks every row) against the same rows written into the same tables without the fence: as a
superuser (no row-level security) with the classification triggers disabled, the writer
supplying the tier path and the classification itself. Same tables, so both sides insert into
the same indexes, with the same foreign keys, at the same cache temperature (an earlier version
wrote an unfenced copy of the tables, whose freshly written indexes were warmer in cache than
telemetry's and made the unfenced side up to twice as fast for reasons unrelated to the fence).
Batches alternate; every inserted row is removed afterwards.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
from rich.progress import Progress

from bench.data import SPAN_NAMES, TRACE_NAMES, World
from bench.timing import Sample

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
    "INSERT INTO telemetry.traces (id, organisation_id, workspace_id, project_id, environment_id,"
    " is_production, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::boolean[],"
    " %s::text[], %s::timestamptz[])"
)
UNFENCED_SPANS = (
    "INSERT INTO telemetry.spans (id, trace_id, organisation_id, workspace_id, project_id,"
    " environment_id, is_production, name, started_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[],"
    " %s::boolean[], %s::text[], %s::timestamptz[])"
)
# The fence's own work on insert, switched off for the unfenced batches (foreign keys stay).
FENCE_TRIGGERS = {"telemetry.traces": "traces_classify", "telemetry.spans": "spans_stamp"}


def _fence_triggers(conn: psycopg.Connection[Any], enabled: bool) -> None:
    for table, trigger in FENCE_TRIGGERS.items():
        conn.execute(f"ALTER TABLE {table} {'ENABLE' if enabled else 'DISABLE'} TRIGGER {trigger}")
    conn.commit()


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
    rng = random.Random(5)
    task = progress.add_task("ingest", total=2 * batches)
    fenced_traces: list[uuid.UUID] = []
    unfenced_traces: list[uuid.UUID] = []
    durations: dict[str, list[float]] = {"fenced": [], "unfenced": []}
    with psycopg.connect(world.app_dsn) as fenced, psycopg.connect(world.dsn) as owner:

        def through_fence() -> None:
            b = _batch(world, rng)
            started = time.perf_counter()
            fenced.execute("SELECT iam.begin_request(%s)", [key_secret], prepare=False)
            fenced.execute(FENCED_TRACES, [b["tid"], b["project"], b["env"], b["name"], b["start"]])
            fenced.execute(FENCED_SPANS, [b["sid"], b["strace"], b["sname"], b["sstart"]])
            fenced.commit()
            durations["fenced"].append((time.perf_counter() - started) * 1000)
            fenced_traces.extend(b["tid"])

        def unfenced() -> None:
            b = _batch(world, rng)
            _fence_triggers(owner, enabled=False)  # untimed, committed: DDL is not the fence's cost
            try:
                started = time.perf_counter()
                owner.execute(UNFENCED_TRACES, [b["tid"], b["org"], b["workspace"], b["project"], b["env"],
                                                b["prod"], b["name"], b["start"]])
                owner.execute(UNFENCED_SPANS, [b["sid"], b["strace"], b["sorg"], b["sworkspace"],
                                               b["sproject"], b["senv"], b["sprod"], b["sname"], b["sstart"]])
                owner.commit()
                durations["unfenced"].append((time.perf_counter() - started) * 1000)
            finally:
                owner.rollback()
                _fence_triggers(owner, enabled=True)
            unfenced_traces.extend(b["tid"])

        try:
            for r in range(batches):  # interleaved, the order alternating every round
                for run in (through_fence, unfenced) if r % 2 == 0 else (unfenced, through_fence):
                    run()
                    progress.advance(task)
            # The fenced path stored what the unfenced writer supplied: every trace classified from
            # its environment, every span stamped from its trace.
            checked = owner.execute(
                "SELECT count(*) FILTER (WHERE t.is_production = e.is_production),"
                " (SELECT count(*) FROM telemetry.spans AS s WHERE s.trace_id = ANY(%s)"
                "  AND s.is_production = (SELECT t2.is_production FROM telemetry.traces AS t2"
                "                         WHERE t2.id = s.trace_id))"
                " FROM telemetry.traces AS t JOIN tenancy.environments AS e ON e.id = t.environment_id"
                " WHERE t.id = ANY(%s)", [fenced_traces, fenced_traces]).fetchone()
            assert checked == (len(fenced_traces), len(fenced_traces) * SPANS_PER_TRACE), checked
        finally:
            owner.rollback()
            written = fenced_traces + unfenced_traces
            owner.execute("DELETE FROM telemetry.traces WHERE id = ANY(%s)", [written])
            owner.commit()
    samples = {name: Sample(values) for name, values in durations.items()}
    rows = TRACES_PER_BATCH * (1 + SPANS_PER_TRACE)
    out: dict[str, Any] = {name: s.as_dict() | {"rows_per_second": round(rows / (s.median / 1000))}
                           for name, s in samples.items()}
    out["rows_per_batch"] = rows
    out["throughput_ratio"] = round(samples["unfenced"].median / samples["fenced"].median, 3)
    return out

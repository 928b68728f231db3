"""The benchmark's organisation: 1,000 projects in 50 workspaces, each with a production and a
staging environment, and (at full scale) 2,000,000 traces with 6,000,000 spans over seven days.

Tenancy goes through tracefence's own API where it is cheap (the organisation, the principals,
their grants) and straight into the tables, as the owner, where it is bulk (workspaces,
projects, environments, telemetry). Telemetry is loaded with COPY; the capture-time
classification triggers run on every row, as in production.
"""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from rich.progress import Progress

import tracefence.api as api
import tracefence.migrate as migrate
from tracefence import Fence

SECRET = b"bench-token-secret-0123456789abcdef0123"
APP_LOGIN = "bench_tracefence_app"
WORKSPACES = 50
PROJECTS_PER_WORKSPACE = 20
SPANS_PER_TRACE = 3
FULL_TRACES = 2_000_000
DAYS = 7
PRODUCTION_SHARE = 0.6
TRACE_NAMES = [f"{verb} /api/{noun}" for verb in ("GET", "POST") for noun in (
    "cart", "checkout", "search", "login", "orders", "items", "users", "payments",
    "inventory", "reviews", "shipping", "coupons", "wishlist", "profile", "health",
)]
SPAN_NAMES = ["db.query", "http.client", "cache.get", "queue.publish", "render", "auth.check"]


@dataclass
class Scopes:
    """Where a principal's grants of one permission are bound, by tier (the resource ids a
    DBA would filter on: an organisation-wide grant is one organisation id, not its projects)."""

    organisations: list[uuid.UUID] = field(default_factory=list)
    workspaces: list[uuid.UUID] = field(default_factory=list)
    projects: list[uuid.UUID] = field(default_factory=list)

    def same(self, other: Scopes) -> bool:
        return (set(self.organisations), set(self.workspaces), set(self.projects)) == (
            set(other.organisations), set(other.workspaces), set(other.projects))

    def as_dict(self) -> dict[str, list[str]]:
        return {"organisations": [str(x) for x in self.organisations],
                "workspaces": [str(x) for x in self.workspaces],
                "projects": [str(x) for x in self.projects]}

    @classmethod
    def from_dict(cls, doc: dict[str, list[str]]) -> Scopes:
        u = uuid.UUID
        return cls([u(x) for x in doc["organisations"]], [u(x) for x in doc["workspaces"]],
                   [u(x) for x in doc["projects"]])


@dataclass
class Principal:
    """Someone the benchmark opens requests as, with the projects it may read (the expected
    answer, from the generator's own bookkeeping, not from the database) and where the grants
    that give it each permission are bound (what a hand-written filter tests)."""

    name: str
    credential_kind: str  # "user" or "api_key"
    principal_id: uuid.UUID
    secret: str | None  # the API key secret; users get a fresh token per request
    read: list[uuid.UUID] = field(default_factory=list)  # traces:read (non-production)
    read_prod: list[uuid.UUID] = field(default_factory=list)  # traces:read:prod
    read_at: Scopes = field(default_factory=Scopes)  # where its traces:read grants are bound
    read_prod_at: Scopes = field(default_factory=Scopes)  # where its traces:read:prod grants are


@dataclass
class World:
    dsn: str  # superuser
    app_dsn: str  # a login mapped to tracefence_app
    organisation: uuid.UUID
    workspaces: list[uuid.UUID]
    projects: list[uuid.UUID]  # ordered: workspace by workspace
    environments: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]]  # project -> (production, staging)
    anchor: datetime  # the newest trace starts just before this instant
    traces: int
    principals: dict[str, Principal]
    sample_traces: dict[str, uuid.UUID]  # principal name -> a trace it may read
    ingest_key: str  # an API key holding traces:write at the first workspace

    def fence(self, pool: ConnectionPool[Any] | None = None) -> Fence:
        return Fence(pool or self.app_dsn, user_token_secret=SECRET)


def _owner(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET ROLE tracefence_owner")


def _create_login(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_LOGIN}') "
            f"THEN CREATE ROLE {APP_LOGIN} LOGIN IN ROLE tracefence_app; END IF; END $$"
        )
    return psycopg.conninfo.make_conninfo(dsn, user=APP_LOGIN)


def _copy(conn: psycopg.Connection[Any], statement: str, rows: Iterator[str], total: int,
          progress: Progress, label: str) -> None:
    task = progress.add_task(label, total=total)
    buffer = io.StringIO()
    pending = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for line in rows:
            buffer.write(line)
            pending += 1
            if pending == 20_000:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
                progress.advance(task, pending)
                pending = 0
        copy.write(buffer.getvalue())
        progress.advance(task, pending)


def _tenancy(dsn: str, app_dsn: str, owner_user: uuid.UUID) -> tuple[
        uuid.UUID, list[uuid.UUID], list[uuid.UUID], dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]]]:
    fence = Fence(app_dsn, user_token_secret=SECRET)
    with fence.request(user=owner_user) as conn:
        organisation = api.create_organisation(conn, "bench", "Benchmark Inc.")
    workspaces = [uuid.uuid4() for _ in range(WORKSPACES)]
    projects = [uuid.uuid4() for _ in range(WORKSPACES * PROJECTS_PER_WORKSPACE)]
    environments = {p: (uuid.uuid4(), uuid.uuid4()) for p in projects}
    with psycopg.connect(dsn) as conn:
        _owner(conn)
        with conn.cursor() as cur:
            resources = "COPY tenancy.resources (id, tier, organisation_id, workspace_id) FROM STDIN"
            with cur.copy(resources) as cp:
                for w in workspaces:
                    cp.write_row((w, "workspace", organisation, w))
                for i, p in enumerate(projects):
                    cp.write_row((p, "project", organisation, workspaces[i // PROJECTS_PER_WORKSPACE]))
            with cur.copy("COPY tenancy.workspaces (id, organisation_id, slug, name) FROM STDIN") as cp:
                for i, w in enumerate(workspaces):
                    cp.write_row((w, organisation, f"ws-{i:02}", f"Workspace {i}"))
            with cur.copy(
                "COPY tenancy.projects (id, organisation_id, workspace_id, slug, name) FROM STDIN"
            ) as cp:
                for i, p in enumerate(projects):
                    cp.write_row((p, organisation, workspaces[i // PROJECTS_PER_WORKSPACE],
                                  f"p-{i:04}", f"Project {i}"))
            with cur.copy(
                "COPY tenancy.environments (id, project_id, name, is_production) FROM STDIN"
            ) as cp:
                for p, (prod, staging) in environments.items():
                    cp.write_row((prod, p, "production", True))
                    cp.write_row((staging, p, "staging", False))
    return organisation, workspaces, projects, environments


def _telemetry(dsn: str, projects: list[uuid.UUID],
               environments: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]], traces: int,
               anchor: datetime, progress: Progress) -> None:
    """Traces spread evenly over the projects and, in time order, over the last seven days."""
    rng = random.Random(20261123)
    span = timedelta(days=DAYS)
    trace_rows: list[tuple[uuid.UUID, uuid.UUID, str]] = []  # kept for the spans: (id, start)

    def trace_lines() -> Iterator[str]:
        for i in range(traces):
            project = projects[rng.randrange(len(projects))]
            production = rng.random() < PRODUCTION_SHARE
            environment = environments[project][0 if production else 1]
            started = anchor - span + span * (i + 0.5) / traces
            trace_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            duration = timedelta(milliseconds=rng.randrange(5, 900))
            trace_rows.append((trace_id, project, started.isoformat()))
            yield (f"{trace_id}\t{project}\t{environment}\t{TRACE_NAMES[rng.randrange(len(TRACE_NAMES))]}"
                   f"\t{started.isoformat()}\t{(started + duration).isoformat()}\n")

    def span_lines() -> Iterator[str]:
        for trace_id, _project, started in trace_rows:
            root = uuid.UUID(int=rng.getrandbits(128), version=4)
            yield f"{root}\t{trace_id}\t\\N\t{SPAN_NAMES[0]}\t{started}\n"
            for k in range(1, SPANS_PER_TRACE):
                child = uuid.UUID(int=rng.getrandbits(128), version=4)
                yield f"{child}\t{trace_id}\t{root}\t{SPAN_NAMES[k % len(SPAN_NAMES)]}\t{started}\n"

    with psycopg.connect(dsn) as conn:
        _owner(conn)
        _copy(conn, "COPY telemetry.traces (id, project_id, environment_id, name, started_at, ended_at)"
              " FROM STDIN", trace_lines(), traces, progress, "traces")
        conn.commit()
        _owner(conn)
        _copy(conn, "COPY telemetry.spans (id, trace_id, parent_span_id, name, started_at) FROM STDIN",
              span_lines(), traces * SPANS_PER_TRACE, progress, "spans")
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        task = progress.add_task("analyze", total=1)
        conn.execute("VACUUM (ANALYZE) telemetry.traces, telemetry.spans")
        progress.advance(task)


def _principals(dsn: str, app_dsn: str, owner_user: uuid.UUID, organisation: uuid.UUID,
                workspaces: list[uuid.UUID], projects: list[uuid.UUID],
                progress: Progress) -> tuple[dict[str, Principal], str]:
    """The five principals of the benchmark, plus a ten-binding user to compare with the
    thousand-binding one. Every grant goes through iam.grant_role, audited."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_service")
        users = {name: api.create_user(conn, f"{name}@bench.test", name) for name in (
            "developer", "workspace_admin", "org_admin", "user_10_bindings", "user_1000_bindings")}
    ws_projects = projects[:PROJECTS_PER_WORKSPACE]
    fence = Fence(app_dsn, user_token_secret=SECRET)
    at_workspace, at_organisation = Scopes(workspaces=[workspaces[0]]), Scopes(organisations=[organisation])
    # project_developer holds traces:read, not traces:read:prod; the admins hold both.
    principals = {
        "developer": Principal("developer", "user", users["developer"], None, read=[projects[0]],
                               read_at=Scopes(projects=[projects[0]])),
        "workspace_admin": Principal("workspace_admin", "user", users["workspace_admin"], None,
                                     read=ws_projects, read_prod=ws_projects,
                                     read_at=at_workspace, read_prod_at=at_workspace),
        "org_admin": Principal("org_admin", "user", users["org_admin"], None,
                               read=list(projects), read_prod=list(projects),
                               read_at=at_organisation, read_prod_at=at_organisation),
        # One binding per project: together every project of the organisation, but bound at
        # the projects, so a project created later is not theirs.
        "user_1000_bindings": Principal("user_1000_bindings", "user", users["user_1000_bindings"],
                                        None, read=list(projects), read_at=Scopes(projects=list(projects))),
        "user_10_bindings": Principal("user_10_bindings", "user", users["user_10_bindings"], None,
                                      read=projects[:10], read_at=Scopes(projects=projects[:10])),
    }
    task = progress.add_task("grants", total=3 + len(projects) + 10)
    with fence.request(user=owner_user) as conn:
        api.grant_role(conn, users["developer"], "project_developer", projects[0])
        api.grant_role(conn, users["workspace_admin"], "workspace_admin", workspaces[0])
        api.grant_role(conn, users["org_admin"], "org_admin", organisation)
        key = api.create_api_key(conn, "prod reader", projects[0], ["traces:read:prod"])
        ingest = api.create_api_key(conn, "ingest", workspaces[0], ["traces:write"])
        progress.advance(task, 3)
        for p in projects[:10]:
            api.grant_role(conn, users["user_10_bindings"], "project_developer", p)
        progress.advance(task, 10)
    for start in range(0, len(projects), 100):
        with fence.request(user=owner_user) as conn:
            for p in projects[start:start + 100]:
                api.grant_role(conn, users["user_1000_bindings"], "project_developer", p)
        progress.advance(task, 100)
    principals["prod_key"] = Principal("prod_key", "api_key", key.id, key.secret,
                                       read_prod=[projects[0]], read_prod_at=Scopes(projects=[projects[0]]))
    return principals, ingest.secret


def _sample_traces(dsn: str, principals: dict[str, Principal]) -> dict[str, uuid.UUID]:
    """For each principal, the newest trace it may read (query 3 looks it up by id)."""
    samples: dict[str, uuid.UUID] = {}
    with psycopg.connect(dsn) as conn:
        for p in principals.values():
            row = conn.execute(
                "SELECT id FROM telemetry.traces WHERE (NOT is_production AND project_id = ANY(%s))"
                " OR (is_production AND project_id = ANY(%s)) ORDER BY started_at DESC LIMIT 1",
                [p.read, p.read_prod],
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no trace visible to {p.name}: scale too small")
            samples[p.name] = row[0]
    return samples


def generate(dsn: str, scale: float, progress: Progress) -> World:
    """Install tracefence in the database `dsn` names (a superuser) and fill it."""
    traces = max(1_000, int(FULL_TRACES * scale))
    migrate.apply(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT EXISTS (SELECT FROM tenancy.organisations)").fetchone() != (False,):
            raise RuntimeError("the benchmark needs an empty tracefence database")
        conn.execute("SET ROLE tracefence_service")
        api.set_token_secret(conn, SECRET)
        owner_user = api.create_user(conn, "owner@bench.test", "Owner")
    anchor = datetime.now(UTC).replace(microsecond=0)
    app_dsn = _create_login(dsn)
    organisation, workspaces, projects, environments = _tenancy(dsn, app_dsn, owner_user)
    principals, ingest_key = _principals(dsn, app_dsn, owner_user, organisation, workspaces, projects,
                                         progress)
    _telemetry(dsn, projects, environments, traces, anchor, progress)
    return World(dsn, app_dsn, organisation, workspaces, projects, environments, anchor, traces,
                 principals, _sample_traces(dsn, principals), ingest_key)


def save(world: World) -> None:
    """Remember the world in its own database, so `run` can follow `generate` later."""
    doc = {
        "organisation": str(world.organisation),
        "workspaces": [str(w) for w in world.workspaces],
        "projects": [str(p) for p in world.projects],
        "environments": {str(p): [str(e) for e in pair] for p, pair in world.environments.items()},
        "anchor": world.anchor.isoformat(),
        "traces": world.traces,
        "principals": {
            name: {"kind": p.credential_kind, "id": str(p.principal_id), "secret": p.secret,
                   "read": [str(x) for x in p.read], "read_prod": [str(x) for x in p.read_prod],
                   "read_at": p.read_at.as_dict(), "read_prod_at": p.read_prod_at.as_dict()}
            for name, p in world.principals.items()
        },
        "sample_traces": {name: str(t) for name, t in world.sample_traces.items()},
        "ingest_key": world.ingest_key,
    }
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute("CREATE TABLE IF NOT EXISTS bench.world (doc jsonb NOT NULL)")
        conn.execute("TRUNCATE bench.world")
        conn.execute("INSERT INTO bench.world VALUES (%s)", [Jsonb(doc)])


def load(dsn: str) -> World:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('bench.world') IS NOT NULL").fetchone()
        row = conn.execute("SELECT doc FROM bench.world").fetchone() if exists == (True,) else None
    if row is None:
        raise RuntimeError("no benchmark data in this database: run `python -m bench generate` first")
    doc = row[0]
    u = uuid.UUID
    return World(
        dsn=dsn,
        app_dsn=psycopg.conninfo.make_conninfo(dsn, user=APP_LOGIN),
        organisation=u(doc["organisation"]),
        workspaces=[u(w) for w in doc["workspaces"]],
        projects=[u(p) for p in doc["projects"]],
        environments={u(p): (u(a), u(b)) for p, (a, b) in doc["environments"].items()},
        anchor=datetime.fromisoformat(doc["anchor"]),
        traces=doc["traces"],
        principals={name: _load_principal(name, p) for name, p in doc["principals"].items()},
        sample_traces={name: u(t) for name, t in doc["sample_traces"].items()},
        ingest_key=doc["ingest_key"],
    )


def _load_principal(name: str, doc: dict[str, Any]) -> Principal:
    u = uuid.UUID
    read, read_prod = [u(x) for x in doc["read"]], [u(x) for x in doc["read_prod"]]
    # A world saved before the scopes were recorded: its grants as the projects they reach.
    read_at = Scopes.from_dict(doc["read_at"]) if "read_at" in doc else Scopes(projects=read)
    read_prod_at = (Scopes.from_dict(doc["read_prod_at"]) if "read_prod_at" in doc
                    else Scopes(projects=read_prod))
    return Principal(name, doc["kind"], u(doc["id"]), doc["secret"], read, read_prod, read_at, read_prod_at)

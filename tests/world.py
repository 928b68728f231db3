"""Test helpers: connections to a test database and a small organisation built through the
real SQL API (requests opened by tracefence.Fence)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg

from tracefence import Fence, api

Connection = psycopg.Connection[Any]
_counter = itertools.count()


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None
    version: int

    def conninfo(self, dbname: str, *, user: str | None = None, password: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=user or self.user,
            password=password if user else self.password,
        )


@dataclass
class Database:
    server: Server
    name: str
    app_login: str
    service_login: str
    login_password: str
    token_secret: bytes
    _open: list[Connection] = field(default_factory=list)

    @property
    def admin_conninfo(self) -> str:
        return self.server.conninfo(self.name)

    @property
    def app_conninfo(self) -> str:
        return self.server.conninfo(self.name, user=self.app_login, password=self.login_password)

    @property
    def service_conninfo(self) -> str:
        return self.server.conninfo(
            self.name, user=self.service_login, password=self.login_password
        )

    def _connect(self, conninfo: str, autocommit: bool) -> Connection:
        conn = psycopg.connect(conninfo, autocommit=autocommit)
        self._open.append(conn)
        return conn

    def admin(self, autocommit: bool = True) -> Connection:
        """A superuser connection: sets up data and inspects it behind the fence."""
        return self._connect(self.admin_conninfo, autocommit)

    def app(self, autocommit: bool = True) -> Connection:
        """A raw connection as the application login (member of tracefence_app)."""
        return self._connect(self.app_conninfo, autocommit)

    def service(self) -> Connection:
        return self._connect(self.service_conninfo, True)

    def fence(self) -> Fence:
        return Fence(self.app_conninfo, user_token_secret=self.token_secret)

    def close(self) -> None:
        for conn in self._open:
            conn.close()

    def scalar(self, query: str, params: list[Any] | None = None) -> Any:
        with psycopg.connect(self.admin_conninfo) as conn:
            row = conn.execute(query.encode(), params or []).fetchone()
            return None if row is None else row[0]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the package's tables: to prove a rejected call changed nothing."""
        tables = [
            "tenancy.resources", "tenancy.organisations", "tenancy.workspaces",
            "tenancy.projects", "tenancy.environments", "iam.principals", "iam.users",
            "iam.api_keys", "iam.api_key_scopes", "iam.role_bindings", "iam.token_secret",
            "telemetry.traces", "telemetry.spans",
        ]
        with psycopg.connect(self.admin_conninfo) as conn:
            return {
                t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}").fetchall()), key=repr)
                for t in tables
            }

    def create_user(self, label: str = "user") -> UUID:
        n = next(_counter)
        return api.create_user(self.service(), f"{label}-{n}@example.test", f"{label} {n}")

    def insert_trace(self, project: UUID, environment: UUID, name: str = "GET /") -> UUID:
        """Capture a trace behind the fence (as the superuser); classification still applies."""
        return UUID(str(self.scalar(
            "INSERT INTO telemetry.traces (project_id, environment_id, name) "
            "VALUES (%s, %s, %s) RETURNING id",
            [project, environment, name],
        )))

    def insert_span(self, trace: UUID, name: str = "db.query") -> UUID:
        return UUID(str(self.scalar(
            "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, %s) RETURNING id",
            [trace, name],
        )))


@dataclass
class Project:
    id: UUID
    workspace: UUID
    production: UUID  # environment flagged is_production
    staging: UUID  # environment not flagged


@dataclass
class Org:
    id: UUID
    owner: UUID
    workspaces: list[UUID]
    projects: list[Project]


def build_org(db: Database, *, workspaces: int = 2, projects_per_workspace: int = 2,
              owner: UUID | None = None) -> Org:
    """An organisation made through the SQL API by its owner, each project with a production
    and a staging environment."""
    owner = owner or db.create_user("owner")
    n = next(_counter)
    fence = db.fence()
    with fence.request(user=owner) as conn:
        org = api.create_organisation(conn, f"org-{n}", f"Org {n}")
        ws_ids = [
            api.create_workspace(conn, org, f"ws-{i}", f"Workspace {i}") for i in range(workspaces)
        ]
        projects = []
        for ws in ws_ids:
            for j in range(projects_per_workspace):
                pid = api.create_project(conn, ws, f"p-{j}", f"Project {j}")
                prod = api.create_environment(conn, pid, "production", True)
                staging = api.create_environment(conn, pid, "staging", False)
                projects.append(Project(pid, ws, prod, staging))
    return Org(org, owner, ws_ids, projects)


def visible_traces(db: Database, **principal: Any) -> set[UUID]:
    with db.fence().request(**principal) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM telemetry.traces").fetchall()}

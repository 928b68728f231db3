"""Declarative conformance scenarios (conformance/*.toml): an organisation, principals with
roles or API keys, traces, and who must see what. Everything is set up through the real SQL API
and checked through real requests; nothing here decides access."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import psycopg.sql

from tracefence import api
from tracefence.fence import Fence

NOBODY = "nobody"  # the expectation for a connection with no request open


@dataclass
class Mismatch:
    principal: str
    table: str
    expected: list[str]
    actual: list[str]


@dataclass
class ScenarioResult:
    path: Path
    description: str
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def run(
    path: Path, *, app_conninfo: str, service_conninfo: str, token_secret: bytes
) -> ScenarioResult:
    """Build the scenario in the database (fresh organisation, names tagged with this run)
    and compare what each principal reads with the expectations."""
    spec = load(path)
    fence = Fence(app_conninfo, user_token_secret=token_secret)
    tag = uuid4().hex[:8]
    with psycopg.connect(service_conninfo, autocommit=True) as service:
        owner = api.create_user(service, f"scenario-owner-{tag}@example.test", "Scenario owner")
        users = {
            p["name"]: api.create_user(service, f"{p['name']}-{tag}@example.test", p["name"])
            for p in spec.get("principals", [])
            if "roles" in p
        }

    resources: dict[str, UUID] = {}
    keys: dict[str, str] = {}
    with fence.request(user=owner) as conn:
        resources[""] = api.create_organisation(conn, f"scenario-{tag}", f"Scenario {tag}")
        for ws in spec.get("workspaces", []):
            ws_id = api.create_workspace(conn, resources[""], ws["slug"], ws["slug"])
            resources[ws["slug"]] = ws_id
            for project in ws.get("projects", []):
                path_ = f"{ws['slug']}/{project['slug']}"
                resources[path_] = api.create_project(conn, ws_id, project["slug"], project["slug"])
                for env, is_production in project.get("environments", {}).items():
                    resources[f"{path_}/{env}"] = api.create_environment(
                        conn, resources[path_], env, bool(is_production)
                    )
        for principal in spec.get("principals", []):
            for binding in principal.get("roles", []):
                api.grant_role(
                    conn, users[principal["name"]], binding["role"], resources[binding["at"]]
                )
            if "api_key" in principal:
                key = principal["api_key"]
                keys[principal["name"]] = api.create_api_key(
                    conn, principal["name"], resources[key["at"]], key["scopes"]
                ).secret
        for trace in spec.get("traces", []):
            project_path, _, env = trace["at"].rpartition("/")
            row = conn.execute(
                "INSERT INTO telemetry.traces (project_id, environment_id, name) "
                "VALUES (%s, %s, %s) RETURNING id",
                [resources[project_path], resources[trace["at"]], f"{tag}:{trace['name']}"],
            ).fetchone()
            assert row is not None
            for span in trace.get("spans", []):
                conn.execute(
                    "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, %s)",
                    [row[0], f"{tag}:{span}"],
                )

    result = ScenarioResult(path, spec.get("description", ""))
    for name, tables in spec.get("expect", {}).items():
        for table, expected in tables.items():
            actual = _visible(fence, app_conninfo, table, tag, users.get(name), keys.get(name), name)
            if sorted(expected) != actual:
                result.mismatches.append(Mismatch(name, table, sorted(expected), actual))
    return result


def _visible(
    fence: Fence, app_conninfo: str, table: str, tag: str,
    user: UUID | None, key: str | None, name: str,
) -> list[str]:
    """Names (without the run's tag) of the scenario's rows the principal can read."""
    query = psycopg.sql.SQL("SELECT name FROM {} WHERE starts_with(name, %s)").format(
        psycopg.sql.Identifier(*table.split("."))
    )
    prefix = f"{tag}:"
    if user is None and key is None:
        if name != NOBODY:
            raise ValueError(f"expectation for unknown principal {name!r}")
        with psycopg.connect(app_conninfo) as conn:
            rows = conn.execute(query, [prefix]).fetchall()
    else:
        with fence.request(user=user, api_key=key) as conn:
            rows = conn.execute(query, [prefix]).fetchall()
    return sorted(r[0].removeprefix(prefix) for r in rows)

"""`tracefence demo`: a sample organisation on a real PostgreSQL, told in seven sections.

With no DSN it starts an embedded PostgreSQL (the `embedded` extra) in a temporary or given
directory; with one it uses that database. Either way it migrates the schema and builds the
sample organisation through the SQL API, every write inside a `Fence.request`: two workspaces,
projects with a production and a staging environment, one user at every built-in role (read
from the database), an API key with only ``traces:read:prod`` and an ingest key whose requests
capture the traces. Then it shows the role matrix, what each principal sees, a boundary state,
a grant with its audit row, a revoke taking effect on the next request, and the conformance
summary, and writes the HTML conformance report.

Every count shown is counted by the database inside that principal's own request: Python
only arranges the story and prints it.

Requests run as ``tracefence_app`` through the given login (``options=-c role=...``), so the
demo creates no login role; the back-office calls run as ``tracefence_service`` the same way.
The organisation is ``acme``, or ``acme-2``, ``acme-3``... when the database already has one:
a run never touches an earlier run's data, so a database can host any number of runs.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from tracefence import api
from tracefence import conformance as checker
from tracefence import migrate as migrations
from tracefence.errors import TracefenceError
from tracefence.fence import Fence
from tracefence.reports import ReportFormat, render
from tracefence.tokens import user_token

Connection = psycopg.Connection[Any]

#: Workspaces and their projects; every project gets a production and a staging environment.
LAYOUT: dict[str, tuple[str, ...]] = {"web": ("checkout", "search"), "data": ("warehouse",)}
#: Traces the ingest key captures per project: (production, staging).
TRACES: dict[str, tuple[int, int]] = {"checkout": (3, 2), "search": (2, 1), "warehouse": (1, 2)}
SPANS_PER_TRACE = 2
#: Where each tier's roles are bound (a resource path; "" is the organisation).
BIND_AT = {"organisation": "", "workspace": "web", "project": "web/checkout"}
#: The API key that may read production traces only, and where it is bound.
PROD_KEY = ("prod-dashboards", "web", ("traces:read:prod",))
INGEST_KEY = ("ingest", "", ("traces:write",))
REPORT_NAME = "tracefence-conformance.html"


class DemoError(Exception):
    """The demo could not run or a step of it failed; the message says which and why."""


@dataclass(frozen=True)
class Options:
    dsn: str | None = None  # None: an embedded server
    directory: Path | None = None  # the embedded server's home and the report's default folder
    report: Path | None = None
    keep: bool = False
    token_secret: bytes | None = None


@dataclass(frozen=True)
class Role:
    name: str
    tier: str
    permissions: frozenset[str]


@dataclass(frozen=True)
class Principal:
    label: str  # an email or a key name
    holds: str  # the role or the scopes it was given
    at: str  # where: a resource path
    id: UUID
    secret: str | None = None  # an API key's secret

    @property
    def credential(self) -> dict[str, Any]:
        return {"api_key": self.secret} if self.secret else {"user": self.id}


@dataclass
class SampleOrg:
    slug: str
    founder: Principal
    roles: list[Role]
    members: dict[str, Principal] = field(default_factory=dict)  # by role name
    keys: list[Principal] = field(default_factory=list)
    resources: dict[str, UUID] = field(default_factory=dict)  # "", "web", "web/checkout"
    environments: dict[str, tuple[UUID, UUID]] = field(default_factory=dict)  # (prod, staging)

    @property
    def id(self) -> UUID:
        return self.resources[""]

    @property
    def principals(self) -> list[Principal]:
        return [self.founder, *self.members.values(), *self.keys]

    def name_of(self, principal_id: UUID | None) -> str:
        if principal_id is None:
            return "system"
        return next((p.label for p in self.principals if p.id == principal_id), str(principal_id))

    def path_of(self, resource_id: UUID) -> str:
        path = next((p for p, r in self.resources.items() if r == resource_id), None)
        if path is None:
            return str(resource_id)
        return f"{self.slug}/{path}" if path else self.slug


@dataclass
class Story:
    """What every section needs."""

    console: Console
    admin_dsn: str
    fence: Fence
    org: SampleOrg
    generated_secret: bytes | None = None  # the token secret the demo set (shown with --keep)


def _say(console: Console, *lines: str) -> None:
    """Lines of plain text: no markup, no highlighting, never wrapped (easy to grep)."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _cells(*values: object) -> list[Text]:
    """Table cells as plain text: names from the database are never read as markup."""
    return [Text(str(value)) for value in values]


# ----------------------------------------------------------------------------------------
# Database: embedded or given, migrated, with the two package roles to run as


def _as_role(conninfo: str, role: str) -> str:
    """The same login, with `role` set for the whole session (a startup option)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    options = f"{params.get('options') or ''} -c role={role}".strip()
    return psycopg.conninfo.make_conninfo(conninfo, options=options)


def _shown(conninfo: str) -> str:
    """A conninfo without its password, to print."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


@contextmanager
def _server(options: Options, directory: Path | None) -> Iterator[str]:
    """The admin conninfo: the given DSN, or an embedded server started in `directory`."""
    if options.dsn is not None:
        yield options.dsn
        return
    assert directory is not None
    from tracefence.embedded import embedded_server

    stack = ExitStack()
    try:
        conninfo = stack.enter_context(embedded_server(directory, keep=options.keep))
    except RuntimeError as error:  # the embedded extra is missing
        raise DemoError(str(error)) from error
    except Exception as error:
        raise DemoError(f"the embedded PostgreSQL did not start in {directory}: {error}") from error
    with stack:
        yield conninfo


def _token_secret(admin_dsn: str, given: bytes | None) -> tuple[bytes, bool]:
    """The user-token secret, and whether the demo set it. An existing secret is never
    replaced: it must be given (the database keeps only HMAC pads, which sign nothing here)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_owner")
        row = conn.execute("SELECT EXISTS (SELECT FROM iam.token_secret)").fetchone()
    if row and row[0]:
        if given is None:
            raise DemoError(
                "this database already has a user-token secret and the demo never replaces it: "
                "pass the one it was set with (--token-secret or TRACEFENCE_TOKEN_SECRET)"
            )
        _check_token_secret(admin_dsn, given)
        return given, False
    secret = given if given is not None else secrets.token_urlsafe(32).encode()
    with psycopg.connect(_as_role(admin_dsn, "tracefence_service"), autocommit=True) as conn:
        api.set_token_secret(conn, secret)
    return secret, given is None


def _check_token_secret(admin_dsn: str, secret: bytes) -> None:
    """Open a request for a throw-away user with `secret`, in a transaction rolled back:
    a wrong secret fails here, before the demo writes anything."""
    with psycopg.connect(admin_dsn) as conn:
        try:
            conn.execute("SET LOCAL ROLE tracefence_service")
            probe = api.create_user(conn, f"token-check-{uuid4().hex}@demo.example", "Token check")
            conn.execute("SET LOCAL ROLE tracefence_app")
            conn.execute("SELECT iam.begin_request(%s)", [user_token(secret, probe)])
        except psycopg.errors.InvalidAuthorizationSpecification as error:
            raise DemoError(
                "the token secret given is not the one this database was set with"
            ) from error
        finally:
            conn.rollback()


def _roles(admin_dsn: str) -> list[Role]:
    """The built-in roles as the database defines them: by tier, broadest first."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_owner")
        rows = conn.execute(
            "SELECT r.name, r.tier, array_agg(rp.permission ORDER BY rp.permission) "
            "FROM iam.roles AS r JOIN iam.role_permissions AS rp ON rp.role = r.name "
            "GROUP BY r.name, r.tier "
            "ORDER BY array_position(ARRAY['organisation', 'workspace', 'project'], r.tier), "
            "count(*) DESC, r.name"
        ).fetchall()
    return [Role(name, tier, frozenset(perms)) for name, tier, perms in rows]


def _free_slug(admin_dsn: str, base: str = "acme") -> str:
    """`acme`, or the first of acme-2, acme-3... that no organisation uses yet."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE tracefence_owner")
        taken = {row[0] for row in conn.execute("SELECT slug FROM tenancy.organisations")}
    n = 1
    while (slug := base if n == 1 else f"{base}-{n}") in taken:
        n += 1
    return slug


# ----------------------------------------------------------------------------------------
# The sample organisation, built through the SQL API


def _local_part(role: str) -> str:
    return role.replace("_", "-")


def _create_users(service_dsn: str, slug: str, local_parts: list[str]) -> dict[str, UUID]:
    """Back office: one user per local part, mailed at the organisation's own domain."""
    with psycopg.connect(service_dsn, autocommit=True) as conn:
        return {
            local: api.create_user(conn, f"{local}@{slug}.example", local.replace("-", " ").title())
            for local in local_parts
        }


def _create_tenancy(fence: Fence, org: SampleOrg) -> None:
    with fence.request(user=org.founder.id) as conn:
        org.resources[""] = api.create_organisation(conn, org.slug, org.slug.title())
        for workspace, projects in LAYOUT.items():
            ws = api.create_workspace(conn, org.id, workspace, workspace.title())
            org.resources[workspace] = ws
            for project in projects:
                pid = api.create_project(conn, ws, project, project.title())
                org.resources[f"{workspace}/{project}"] = pid
                org.environments[f"{workspace}/{project}"] = (
                    api.create_environment(conn, pid, "production", True),
                    api.create_environment(conn, pid, "staging", False),
                )


def _bind_members(fence: Fence, org: SampleOrg, users: dict[str, UUID]) -> None:
    """The founder binds each role to its user, at the resource BIND_AT names for its tier."""
    with fence.request(user=org.founder.id) as conn:
        for role in org.roles:
            resource = org.resources[BIND_AT[role.tier]]
            user = users[_local_part(role.name)]
            api.grant_role(conn, user, role.name, resource)
            org.members[role.name] = Principal(
                f"{_local_part(role.name)}@{org.slug}.example", role.name, org.path_of(resource), user
            )


def _create_keys(fence: Fence, org: SampleOrg) -> None:
    with fence.request(user=org.founder.id) as conn:
        for name, where, scopes in (PROD_KEY, INGEST_KEY):
            key = api.create_api_key(conn, name, org.resources[where], scopes)
            org.keys.append(Principal(name, f"key: {', '.join(scopes)}",
                                      org.path_of(org.resources[where]), key.id, key.secret))


def _ingest(fence: Fence, org: SampleOrg) -> None:
    """The ingest key captures the traces; the database stamps their classification."""
    ingest = next(k for k in org.keys if k.label == INGEST_KEY[0])
    with fence.request(**ingest.credential) as conn:
        for path, (production, staging) in org.environments.items():
            per_environment = TRACES[path.split("/")[1]]
            for environment, count in zip((production, staging), per_environment, strict=True):
                for n in range(count):
                    trace = uuid4()  # the key may write but not read: no RETURNING
                    conn.execute(
                        "INSERT INTO telemetry.traces (id, project_id, environment_id, name) "
                        "VALUES (%s, %s, %s, %s)",
                        [trace, org.resources[path], environment, f"GET /{path}/{n}"],
                    )
                    for s in range(SPANS_PER_TRACE):
                        conn.execute(
                            "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, %s)",
                            [trace, f"span {s}"],
                        )


def build_sample_org(fence: Fence, admin_dsn: str, service_dsn: str) -> SampleOrg:
    slug = _free_slug(admin_dsn)
    roles = _roles(admin_dsn)
    users = _create_users(service_dsn, slug, ["founder", *(_local_part(r.name) for r in roles)])
    founder = Principal(f"founder@{slug}.example", "(created it)", slug, users["founder"])
    org = SampleOrg(slug, founder, roles)
    _create_tenancy(fence, org)
    _bind_members(fence, org, users)
    _create_keys(fence, org)
    _ingest(fence, org)
    return org


def _traces(n: int) -> str:
    return f"{n} trace{'' if n == 1 else 's'}"


def show_sample_org(story: Story) -> None:
    org = story.org
    tree = Tree(Text.assemble((org.slug, "bold"), " (organisation)"))
    for workspace, projects in LAYOUT.items():
        branch = tree.add(Text.assemble((workspace, "bold"), " (workspace)"))
        for project in projects:
            production, staging = TRACES[project]
            branch.add(Text(f"{project} (project): {_traces(production)} in production, "
                            f"{_traces(staging)} in staging, {SPANS_PER_TRACE} spans each"))
    story.console.print(tree)
    _say(story.console, f"{len(org.members) + 1} users (the founder and one per built-in role), "
         f"{len(org.keys)} API keys; the ingest key captured every trace through its own request")


# ----------------------------------------------------------------------------------------
# The sections


def _counts(conn: Connection, project: UUID | None = None) -> tuple[int, int, int]:
    """(production traces, non-production traces, spans) this request can see."""
    where, params = ("WHERE project_id = %s", [project]) if project else ("", [])
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE is_production), count(*) FILTER (WHERE NOT is_production), "
        f"(SELECT count(*) FROM telemetry.spans {where}) FROM telemetry.traces {where}",
        params * 2,
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _seen(counts: tuple[int, int, int]) -> str:
    return f"{counts[0]} production, {counts[1]} non-production traces"


def show_role_matrix(story: Story) -> None:
    with story.fence.request(user=story.org.founder.id) as conn:
        rows = api.role_matrix(conn, story.org.id)
    table = Table("user", "tier", "resource", "role", "in force", box=box.SIMPLE_HEAD)
    for row in rows:
        table.add_row(*_cells(row["email"], row["tier"], story.org.path_of(row["resource_id"]),
                              row["role"], "yes" if row["active"] else "no"))
    story.console.print(table)
    _say(story.console, f"role matrix: {len(rows)} bindings, read by {story.org.founder.label} "
         "through iam.role_matrix (needs members:read)")


def show_visibility(story: Story) -> None:
    table = Table(box=box.SIMPLE_HEAD, caption="prod, non-prod: traces of each classification; "
                  "spans: of both", caption_justify="left")
    table.add_column("principal", no_wrap=True)
    table.add_column("holds", overflow="fold")
    table.add_column("at", overflow="fold")
    for header in ("prod", "non-prod", "spans"):
        table.add_column(header, justify="right", no_wrap=True)
    for principal in story.org.principals:
        with story.fence.request(**principal.credential) as conn:
            counts = _counts(conn)
        table.add_row(*_cells(principal.label, principal.holds, principal.at, *counts))
    story.console.print(table)
    _say(story.console, "each row counted by the database inside that principal's own request")


def _developer(story: Story) -> tuple[Principal, Role]:
    """The member bound at the project with traces:read but not traces:read:prod."""
    for role in story.org.roles:
        held = role.permissions
        if role.tier == "project" and "traces:read" in held and "traces:read:prod" not in held:
            return story.org.members[role.name], role
    raise DemoError("no built-in project role holds traces:read without traces:read:prod")


def show_boundary_state(story: Story) -> None:
    member, role = _developer(story)
    project = story.org.resources[BIND_AT["project"]]
    path = story.org.path_of(project)
    with story.fence.request(**member.credential) as conn:
        access = api.trace_access(conn, project)
        counts = _counts(conn, project)
        why = api.explain(conn, member.id, project, "traces:read:prod")
    words = {True: "holds", False: "does NOT hold"}
    _say(
        story.console,
        f"boundary state: {member.label} ({role.name}) at {path}: "
        f"{words[access['traces:read']]} traces:read, "
        f"{words[access['traces:read:prod']]} traces:read:prod",
        f"  its trace list there shows {_seen(counts)}; telemetry.trace_access tells the "
        "application that production traces are hidden by a missing permission, instead of a "
        "silent empty list (and reveals no count)",
        *(f"  why not (iam.explain): {line.reason}" for line in why),
    )


def _audit_table(story: Story, event: api.AuditEvent) -> Table:
    org = story.org
    prior, new = event.prior_permissions or frozenset(), event.new_permissions or frozenset()
    table = Table("field", "value", box=box.SIMPLE_HEAD, show_header=False)
    for name, value in (
        ("audit row", f"#{event.id} {event.event_type} at {event.occurred_at:%Y-%m-%d %H:%M:%S%z}"),
        ("actor", org.name_of(event.actor_id)),
        ("principal", org.name_of(event.principal_id)),
        ("scope", f"{event.scope_tier} {org.path_of(event.scope_id)}"),
        ("cause", event.cause),
        ("prior set", ", ".join(sorted(prior)) or "(none)"),
        ("new set", ", ".join(sorted(new)) or "(none)"),
        ("added", ", ".join(sorted(new - prior)) or "(none)"),
        ("removed", ", ".join(sorted(prior - new)) or "(none)"),
    ):
        table.add_row(name, Text(value))
    return table


def _granting_role(story: Story) -> Role:
    """The narrowest project role that carries traces:read:prod."""
    roles = [r for r in story.org.roles if r.tier == "project" and "traces:read:prod" in r.permissions]
    if not roles:
        raise DemoError("no built-in project role carries traces:read:prod")
    return min(roles, key=lambda r: (len(r.permissions), r.name))


def show_grant(story: Story) -> None:
    member, _ = _developer(story)
    role = _granting_role(story)
    founder = story.org.founder
    project = story.org.resources[BIND_AT["project"]]
    path = story.org.path_of(project)
    with story.fence.request(user=founder.id) as conn:
        event = api.grant_role(conn, member.id, role.name, project)
    if event is None:
        raise DemoError(f"granting {role.name} to {member.label} changed nothing")
    _say(story.console, f"{founder.label} grants {role.name} to {member.label} at {path}:")
    story.console.print(_audit_table(story, event))
    with story.fence.request(user=founder.id) as conn:
        listed = any(e.id == event.id for e in api.audit_feed(conn, project, "rbac_grant"))
    with story.fence.request(**member.credential) as conn:
        access = api.trace_access(conn, project)
        counts = _counts(conn)
    _say(
        story.console,
        f"the audit feed of {path} {'lists' if listed else 'does NOT list'} row #{event.id}",
        f"after grant: {member.label}: {_seen(counts)}; traces:read:prod "
        f"{'granted' if access['traces:read:prod'] else 'still missing'} at {path}",
    )


def show_revoke(story: Story) -> None:
    member, _ = _developer(story)
    founder = story.org.founder
    project = story.org.resources[BIND_AT["project"]]
    path = story.org.path_of(project)
    with story.fence.request(**member.credential) as in_flight:
        before = _counts(in_flight)
        with story.fence.request(user=founder.id) as conn:
            event = api.revoke_role(conn, member.id, project)
        during = _counts(in_flight)
    with story.fence.request(**member.credential) as conn:
        after = _counts(conn)
    audit = f"audit row #{event.id}, cause {event.cause}" if event else "no audit row"
    _say(
        story.console,
        f"before revoke: {member.label}: {_seen(before)}",
        f"{founder.label} revokes {member.label}'s role at {path} ({audit})",
        f"same request, still in flight: {member.label}: {_seen(during)} "
        "(a request keeps the permissions it began with)",
        f"next request: {member.label}: {_seen(after)}",
    )


def show_conformance(story: Story) -> checker.Report:
    try:
        report = checker.run(story.admin_dsn, probe=True)
    except checker.CouldNotRun as error:
        raise DemoError(f"the conformance check could not run: {error}") from error
    counts = report.counts()
    table = Table("table", "tier", "status", "probe", box=box.SIMPLE_HEAD)
    for tier, tables in report.tables_by_tier():
        for entry in tables:
            if entry.status != "not applicable":
                table.add_row(*_cells(entry.relation, tier, entry.status,
                                      entry.probe.status if entry.probe else "-"))
    story.console.print(table)
    verdict = "PASS: every classified table is fenced" if report.passed else "FAIL"
    _say(
        story.console,
        *(f"  {f.level} {f.code} {f.object}: {f.detail}" for f in report.findings),
        f"conformance: {verdict}; {counts['tables']} tables, {counts['fenced']} fenced, "
        f"{len(report.findings)} findings ({counts['errors']} errors, {counts['warnings']} "
        f"warnings); probe: {counts['probed']} probed, {counts['probe_failed']} failed",
    )
    return report


def write_report(story: Story, report: checker.Report, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(report, ReportFormat.html))
    except OSError as error:
        raise DemoError(f"cannot write the HTML report to {path}: {error}") from error
    _say(story.console, f"HTML conformance report: {path}")


# ----------------------------------------------------------------------------------------
# The whole story


@contextmanager
def _section(console: Console, title: str) -> Iterator[None]:
    console.rule(f"[bold]{title}")
    try:
        yield
    except DemoError:
        raise
    except (TracefenceError, psycopg.Error) as error:
        raise DemoError(f"{title} failed: {error}") from error
    except Exception as error:  # yoyo, the file system...: still one clear line
        raise DemoError(f"{title} failed: {type(error).__name__}: {error}") from error


def _stop_command(admin_dsn: str) -> str:
    """How to stop the kept server: its own pg_ctl, as the user that owns its data directory
    (as root that is the embedded server's system user: pg_ctl refuses to run as root)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory'), "
            "(SELECT setting FROM pg_config WHERE name = 'BINDIR')"
        ).fetchone()
    assert row is not None
    pgdata, bindir = Path(str(row[0])), Path(str(row[1]))
    owner = pgdata.stat().st_uid
    runas = "" if owner == os.geteuid() else f"runuser -u {pwd.getpwuid(owner).pw_name} -- "
    return f"{runas}{shlex.quote(str(bindir / 'pg_ctl'))} -D {shlex.quote(str(pgdata))} -m fast -w stop"


def show_kept_server(console: Console, admin_dsn: str, secret: bytes | None) -> None:
    console.rule("[bold]The embedded server keeps running")
    lines = [
        f"DSN: {admin_dsn}",
        "requests: that DSN with options='-c role=tracefence_app' "
        "(back office: options='-c role=tracefence_service')",
        *([f"token secret (TRACEFENCE_TOKEN_SECRET): {secret.decode()}"] if secret else []),
    ]
    try:
        lines.append(f"stop it: {_stop_command(admin_dsn)}")
    except (psycopg.Error, OSError, KeyError) as error:
        lines.append(f"stop it: pg_ctl stop on its data directory ({error})")
    _say(console, *lines)


def set_up(console: Console, admin_dsn: str, where: str, token_secret: bytes | None,
           given_database: bool = False) -> Story:
    _say(console, f"database: {_shown(admin_dsn)}{where}")
    status = migrations.apply(admin_dsn)
    _say(console, f"migrated: {len(status.pending)} migrations applied, "
         f"{len(status.sql_changed)} sql/ files changed")
    secret, generated = _token_secret(admin_dsn, token_secret)
    if generated and given_database:
        # The database keeps this secret and the demo never replaces it: whoever runs the demo
        # again, or issues the application's user tokens there, needs it.
        _say(console, f"set a new user-token secret (TRACEFENCE_TOKEN_SECRET): {secret.decode()}",
             "  keep it: user tokens for this database are signed with it, and the next demo "
             "run on it needs it (--token-secret)")
    fence = Fence(_as_role(admin_dsn, "tracefence_app"), user_token_secret=secret)
    org = build_sample_org(fence, admin_dsn, _as_role(admin_dsn, "tracefence_service"))
    story = Story(console, admin_dsn, fence, org, secret if generated else None)
    show_sample_org(story)
    return story


SECTIONS: list[tuple[str, Callable[[Story], None]]] = [
    ("2. Role matrix", show_role_matrix),
    ("3. What each principal sees", show_visibility),
    ("4. Boundary state", show_boundary_state),
    ("5. Grant, with its audit row", show_grant),
    ("6. Revoke, in force on the next request", show_revoke),
]


def _report_path(options: Options, directory: Path | None) -> Path:
    if options.report is not None:
        return options.report.absolute()
    folder = directory or Path(tempfile.mkdtemp(prefix="tracefence-demo-"))
    return (folder / REPORT_NAME).absolute()


def run(options: Options, console: Console) -> checker.Report:
    """Run the whole demo; raises DemoError when a step fails."""
    started = time.monotonic()
    temporary = options.dsn is None and options.directory is None
    directory = Path(tempfile.mkdtemp(prefix="tracefence-demo-")) if temporary else options.directory
    where = "" if options.dsn else f" (embedded, in {directory})"
    try:
        with _server(options, directory) as admin_dsn:
            story: Story | None = None
            try:
                with _section(console, "1. Schema and sample organisation"):
                    story = set_up(console, admin_dsn, where, options.token_secret,
                                   given_database=options.dsn is not None)
                for title, show in SECTIONS:
                    with _section(console, title):
                        show(story)
                with _section(console, "7. Isolation conformance (with the dynamic probe)"):
                    report = show_conformance(story)
                    write_report(story, report, _report_path(options, directory))
            finally:
                if options.keep and options.dsn is None:
                    show_kept_server(console, admin_dsn, story.generated_secret if story else None)
    except DemoError:
        if temporary and directory is not None and not options.keep:
            shutil.rmtree(directory, ignore_errors=True)  # nothing in it is worth keeping
        raise
    _say(console, f"demo finished in {time.monotonic() - started:.1f}s")
    return report

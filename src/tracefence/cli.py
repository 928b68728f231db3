"""The tracefence command line."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracefence import conformance as checker
from tracefence import demo as demo_story
from tracefence import migrate as migrations
from tracefence.errors import RollbackBlocked, SchemaVersionError
from tracefence.reports import ReportFormat, render
from tracefence.reports import text_renderables as checker_text

app = typer.Typer(
    help="tracefence: the database decides who may read which telemetry.",
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DsnOption = Annotated[
    str,
    typer.Option(
        "--dsn",
        help="libpq connection string or URI; empty means the standard PG* variables.",
        envvar="TRACEFENCE_DSN",
    ),
]


def could_not(action: str, reason: object) -> NoReturn:
    """Exit 2 with a one-line reason: a server error's primary message and the notes added on
    the way (which sql/ file), else the text (libpq's connection errors span lines)."""
    if isinstance(reason, psycopg.Error) and reason.diag.message_primary:
        reason = " ".join([reason.diag.message_primary, *getattr(reason, "__notes__", [])])
    line = " ".join(str(reason).split())
    errors.print(f"[red]{action}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


class MigrateAction(StrEnum):
    apply = "apply"
    status = "status"
    rollback = "rollback"


@app.callback()
def main() -> None:
    """Install, check and explore tracefence."""


@app.command()
def migrate(
    action: Annotated[MigrateAction, typer.Argument(help="What to do.")] = MigrateAction.apply,
    dsn: DsnOption = "",
    count: Annotated[int, typer.Option(help="How many migrations to roll back.", min=1)] = 1,
    drop_data: Annotated[bool, typer.Option(
        "--drop-data", help="Let rollback drop tables that hold rows, and empty tables whose "
        "rows refer to rows it deletes (without it, such a rollback changes nothing).")] = False,
) -> None:
    """Apply pending migrations and sql/ files (default), show status, or roll back."""
    try:
        if action is MigrateAction.apply:
            result = migrations.apply(dsn)
            if result.pending or result.sql_changed:
                for migration_id in result.pending:
                    console.print(f"applied migration [bold]{migration_id}[/]")
                if result.sql_changed:
                    console.print(f"applied sql/ ({len(result.sql_changed)} files changed)")
            else:
                console.print("schema is up to date: nothing to do")
        elif action is MigrateAction.status:
            status = migrations.status(dsn)
            table = Table("migration", "state")
            for migration_id in status.applied:
                table.add_row(migration_id, "[green]applied[/]")
            for migration_id in status.pending:
                table.add_row(migration_id, "[yellow]pending[/]")
            console.print(table)
            if status.sql_changed:
                console.print(f"sql/: {len(status.sql_changed)} files to apply")
            else:
                console.print("sql/: up to date")
            console.print(f"schema version: {status.schema_version or 'not recorded'}; "
                          f"package version: {status.package_version}")
        else:
            rolled_back = migrations.rollback(dsn, count, drop_data=drop_data)
            for migration_id in rolled_back:
                console.print(f"rolled back migration [bold]{migration_id}[/]")
            if not rolled_back:
                console.print("nothing to roll back")
    except (psycopg.Error, SchemaVersionError, RollbackBlocked) as error:
        could_not("migration failed", error)


@app.command()
def demo(
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="Use this database (a superuser, or a member of the three "
                     "package roles) instead of an embedded PostgreSQL. The demo migrates it and "
                     "commits a new sample organisation (acme, acme-2, ...) on every run."),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--directory", file_okay=False,
                     help="Where the embedded server lives and the report goes (default: a new "
                     "temporary directory)."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", dir_okay=False,
                     help=f"The HTML conformance report (default: DIRECTORY/{demo_story.REPORT_NAME})."),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Leave the embedded server running and print its DSN."),
    ] = False,
    token_secret: Annotated[
        str | None,
        typer.Option("--token-secret", envvar="TRACEFENCE_TOKEN_SECRET",
                     help="The user-token secret, needed when the database already has one "
                     "(the demo never replaces it); otherwise the demo sets it or a random one."),
    ] = None,
) -> None:
    """A sample organisation on a real PostgreSQL: role matrix, what each principal sees, a
    boundary state, a grant and its audit row, a revoke, and the conformance report.

    Exit 0: done, every table fenced; 1: conformance findings (the report says which);
    2: the demo could not run.
    """
    options = demo_story.Options(dsn=dsn, directory=directory, report=report, keep=keep,
                                 token_secret=token_secret.encode() if token_secret else None)
    try:
        result = demo_story.run(options, console)
    except demo_story.DemoError as error:
        could_not("demo failed", error)
    raise typer.Exit(result.exit_code)


@app.command()
def sweep(dsn: DsnOption = "") -> None:
    """Record expired bindings and keys in the audit log (safe to run at any time)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT iam.sweep_expired()").fetchone()
    except psycopg.Error as error:
        could_not("sweep failed", error)
    recorded = row[0] if row else 0
    console.print(f"sweep recorded {recorded} audit row{'s' if recorded != 1 else ''}")


@app.command()
def explain(
    principal: Annotated[str, typer.Option(help="User or API key id.")],
    resource: Annotated[str, typer.Option(help="Organisation, workspace or project id.")],
    permission: Annotated[str, typer.Option(help="Permission, e.g. traces:read:prod.")],
    dsn: DsnOption = "",
) -> None:
    """Why a principal holds a permission at a resource, or why not (exit 0 granted, 1 denied).

    Runs as a DBA: the connecting login must be able to SET ROLE tracefence_owner.
    """
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SET ROLE tracefence_owner")
            rows = conn.execute(
                "SELECT granted, tier, resource_id, source, role, valid_from, valid_until, reason "
                "FROM iam.explain_access(%s, %s, %s)",
                [principal, resource, permission],
            ).fetchall()
    except psycopg.Error as error:
        could_not("explain failed", error)
    granted = any(row[0] for row in rows)
    table = Table("granted", "tier", "resource", "source", "role", "window", "reason")
    for ok, tier, resource_id, source, role, valid_from, valid_until, reason in rows:
        window = " to ".join(str(t) if t else "open" for t in (valid_from, valid_until))
        table.add_row(
            "[green]yes[/]" if ok else "[red]no[/]",
            tier or "",
            str(resource_id or ""),
            source,
            role or "",
            window if valid_from or valid_until else "",
            reason,
        )
    console.print(table)
    verdict = "[green]granted[/]" if granted else "[red]denied[/]"
    console.print(f"{permission} for {principal} at {resource}: {verdict}")
    raise typer.Exit(0 if granted else 1)


@app.command("conformance")
def conformance_command(
    dsn: DsnOption = "",
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also run the dynamic probe: canary rows for two projects in every "
            "project-scoped table, checked through real requests, always rolled back.",
        ),
    ] = False,
    report_format: Annotated[
        ReportFormat, typer.Option("--format", help="Report format.")
    ] = ReportFormat.text,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to this file instead of stdout.",
                     dir_okay=False, writable=True),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Apply this manifest file (conformance/manifest.toml "
                     "form) before checking.", exists=True, dir_okay=False, readable=True),
    ] = None,
    scenarios: Annotated[
        Path | None,
        typer.Option("--scenarios", help="Also run the scenario files (*.toml) of this folder; "
                     "they commit a fresh organisation: use a scratch database.",
                     exists=True, file_okay=False),
    ] = None,
    app_dsn: Annotated[
        str | None,
        typer.Option("--app-dsn", envvar="TRACEFENCE_APP_DSN",
                     help="For --scenarios: a login that is a member of tracefence_app."),
    ] = None,
    service_dsn: Annotated[
        str | None,
        typer.Option("--service-dsn", envvar="TRACEFENCE_SERVICE_DSN",
                     help="For --scenarios: a login that is a member of tracefence_service."),
    ] = None,
    token_secret: Annotated[
        str | None,
        typer.Option("--token-secret", envvar="TRACEFENCE_TOKEN_SECRET",
                     help="For --scenarios: the user-token secret set with "
                     "iam.set_token_secret (UTF-8 text; prefer the environment variable)."),
    ] = None,
) -> None:
    """Prove that every project-scoped table is fenced (SPEC §4).

    Exit 0: no error finding (every classified table fenced; warnings are reported only);
    1: findings; 2: could not run. Runs as a DBA: a superuser, or a login that is a member of
    tracefence_owner (for --probe also of tracefence_app; the owner then needs INSERT on host
    tables). --manifest commits the classification it applies; --probe commits nothing.
    """
    logins = None
    if scenarios is not None:
        missing = [name for name, value in (("--app-dsn", app_dsn), ("--service-dsn", service_dsn),
                                            ("--token-secret", token_secret)) if not value]
        if missing:
            could_not("conformance could not run", f"--scenarios needs {', '.join(missing)}")
        assert app_dsn and service_dsn and token_secret
        logins = checker.ScenarioLogins(app_dsn, service_dsn, token_secret.encode())
    try:
        report = checker.run(dsn, probe=probe, manifest=manifest, scenarios=scenarios,
                             logins=logins)
    except checker.CouldNotRun as error:
        could_not("conformance could not run", error)
    if output is not None:
        try:
            output.write_text(render(report, report_format))
        except OSError as error:
            could_not("conformance could not write its report", f"{output}: {error.strerror}")
        verdict = "[green]fenced[/]" if report.passed else f"[red]{len(report.errors)} error(s)[/]"
        errors.print(f"wrote {report_format.value} report to {output}: {verdict}")
    elif report_format is ReportFormat.text:
        console.print(*checker_text(report))
    else:
        typer.echo(render(report, report_format), nl=False)
    raise typer.Exit(report.exit_code)


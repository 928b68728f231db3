"""Isolation conformance (SPEC §4), the Python side: apply a manifest file, read the SQL checks
(``conformance.findings``, ``conformance.isolation``), run the dynamic probe and the scenario
files, and gather everything in one `Report` for the formats of `tracefence.reports`.

Python decides nothing about access here either: the checks are SQL views, the probe asks the
database through the real request path, the scenarios through real requests.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from tracefence import probe as dynamic_probe
from tracefence import scenarios as scenario_files
from tracefence.schema import migrations_dir, sql_dir, sql_files

Connection = psycopg.Connection[Any]

TIERS = ("project", "workspace", "organisation", "global", "internal")
LEVELS = ("error", "warning")

#: Codes of the findings made here rather than by the SQL checks: (title, remediation).
SCENARIO_CODES = {
    "TF200": (
        "scenario expectation not met",
        "A principal of the scenario sees other rows than the file expects: fix the policy (or "
        "the expectation, if the file is wrong). Run the scenario alone with "
        "`tracefence conformance --scenarios DIR` against a scratch database.",
    ),
    "TF201": (
        "scenario could not run",
        "Fix the scenario file or the logins given with --app-dsn, --service-dsn and "
        "--token-secret.",
    ),
}


class CouldNotRun(Exception):
    """The check could not run: no connection, schema not installed, bad manifest (exit 2)."""


# ----------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Location:
    """Where an object was created: a file (absolute) and a 1-based line."""

    path: Path
    line: int

    @property
    def root(self) -> Path:
        return source_root()

    @property
    def relative(self) -> str:
        """The path relative to the package's source root, or absolute if outside it."""
        try:
            return self.path.relative_to(self.root).as_posix()
        except ValueError:
            return self.path.as_posix()


@dataclass
class Finding:
    code: str
    level: str  # "error" | "warning"
    object: str
    detail: str
    remediation: str
    source: str = "check"  # "check" (SQL views) | "probe" | "scenario"
    location: Location | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "level": self.level,
            "object": self.object,
            "detail": self.detail,
            "remediation": self.remediation,
            "source": self.source,
            "location": None
            if self.location is None
            else {"path": self.location.relative, "line": self.location.line},
        }


@dataclass
class TableReport:
    """One classified table: a row of conformance.isolation, plus the probe's verdict."""

    relation: str
    tier: str
    status: str  # "fenced" | "violations" | "not applicable"
    problems: list[Finding] = field(default_factory=list)
    probe: dynamic_probe.ProbeResult | None = None

    @property
    def errors(self) -> list[Finding]:
        return [p for p in self.problems if p.level == "error"]


@dataclass
class ScenarioOutcome:
    path: Path
    description: str
    passed: bool
    mismatches: int = 0
    error: str | None = None


@dataclass
class Report:
    database: str
    user: str
    server_version: str
    generated_at: datetime
    tables: list[TableReport]
    #: every finding once: the SQL checks', the probe's and the scenarios'
    findings: list[Finding]
    probed: bool = False
    manifest: Path | None = None
    scenarios: list[ScenarioOutcome] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level != "error"]

    @property
    def passed(self) -> bool:
        """Everything is fenced: no error-level finding (warnings are reported, not failed)."""
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def tables_by_tier(self) -> list[tuple[str, list[TableReport]]]:
        tiers = list(TIERS) + sorted({t.tier for t in self.tables} - set(TIERS))
        return [
            (tier, sorted((t for t in self.tables if t.tier == tier), key=lambda t: t.relation))
            for tier in tiers
            if any(t.tier == tier for t in self.tables)
        ]

    def unattributed_findings(self) -> list[Finding]:
        """Findings that are the problem of no classified table."""
        covered = {id(p) for t in self.tables for p in t.problems}
        return [f for f in self.findings if id(f) not in covered]

    def object_findings(self) -> list[Finding]:
        """Findings about something other than a classified table (a role, a function, a view,
        the server): conformance.isolation lists them under every scoped table they weaken."""
        relations = {t.relation for t in self.tables}
        return [f for f in self.findings if f.object not in relations]

    def counts(self) -> dict[str, int]:
        statuses = [t.status for t in self.tables]
        probed = [t.probe for t in self.tables if t.probe is not None]
        return {
            "tables": len(self.tables),
            "fenced": statuses.count("fenced"),
            "violations": statuses.count("violations"),
            "not_applicable": statuses.count("not applicable"),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "probed": sum(1 for p in probed if p.status != "not probed"),
            "probe_failed": sum(1 for p in probed if p.status == "failed"),
            "not_probed": sum(1 for p in probed if p.status == "not probed"),
        }


# ----------------------------------------------------------------------------------------
# The manifest file


@dataclass(frozen=True)
class ManifestTable:
    relation: str
    tier: str
    reason: str
    scope_column: str | None = None  # default: <tier>_id for the scoped tiers


@dataclass(frozen=True)
class ManifestReader:
    role: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    tables: tuple[ManifestTable, ...]
    readers: tuple[ManifestReader, ...]


def _entries(
    data: dict[str, Any], key: str, fields: tuple[str, ...], path: Path,
    optional: tuple[str, ...] = (),
) -> list[dict[str, str]]:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise CouldNotRun(f"{path}: [[{key}]] must be an array of tables")
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise CouldNotRun(f"{path}: [[{key}]] #{n} must be a table")
        missing = [f for f in fields if not isinstance(entry.get(f), str) or not entry[f].strip()]
        unknown = sorted(set(entry) - set(fields) - set(optional))
        wrong = [f for f in optional if f in entry and not isinstance(entry[f], str)]
        if missing or unknown or wrong:
            problem = (f"missing {', '.join(missing)}" if missing
                       else f"unknown key {', '.join(unknown)}" if unknown
                       else f"{', '.join(wrong)} must be a string")
            raise CouldNotRun(
                f"{path}: [[{key}]] #{n}: {problem} (keys: {', '.join(fields + optional)})"
            )
    return entries


def load_manifest(path: Path) -> Manifest:
    """Read a manifest file: [[table]] relation, tier, reason (and optionally scope_column);
    [[cross_tenant_reader]] role, reason."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CouldNotRun(f"cannot read manifest {path}: {error}") from error
    unknown = sorted(set(data) - {"table", "cross_tenant_reader", "description"})
    if unknown:
        raise CouldNotRun(f"{path}: unknown section {', '.join(unknown)}")
    tables = _entries(data, "table", ("relation", "tier", "reason"), path, ("scope_column",))
    for entry in tables:
        if entry["tier"] not in TIERS:
            raise CouldNotRun(
                f"{path}: {entry['relation']}: tier {entry['tier']!r} is not one of {', '.join(TIERS)}"
            )
    readers = _entries(data, "cross_tenant_reader", ("role", "reason"), path)
    return Manifest(
        path,
        tuple(
            ManifestTable(e["relation"], e["tier"], e["reason"], e.get("scope_column"))
            for e in tables
        ),
        tuple(ManifestReader(e["role"], e["reason"]) for e in readers),
    )


def apply_manifest(conn: Connection, manifest: Manifest) -> None:
    """Classify the file's tables and list its readers, in one transaction (committed)."""
    with conn.transaction():
        for table in manifest.tables:
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT conformance.classify(%s::regclass, %s, %s, %s)",
                        [table.relation, table.tier, table.reason, table.scope_column],
                    )
            except psycopg.Error as error:
                raise CouldNotRun(
                    f"{manifest.path}: cannot classify {table.relation}: {_message(error)}"
                ) from error
        for reader in manifest.readers:
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT conformance.add_cross_tenant_reader(%s::name, %s)",
                        [reader.role, reader.reason],
                    )
            except psycopg.Error as error:
                raise CouldNotRun(
                    f"{manifest.path}: cannot list cross-tenant reader {reader.role}: "
                    f"{_message(error)}"
                ) from error


def _message(error: psycopg.Error) -> str:
    return error.diag.message_primary or str(error).strip().splitlines()[0]


# ----------------------------------------------------------------------------------------
# Where package objects were created (for SARIF)


def source_root() -> Path:
    """The folder that holds migrations/ and sql/ (a checkout, or the installed package)."""
    return migrations_dir().parent


@cache
def _sources() -> tuple[tuple[Path, str], ...]:
    files = sorted(p for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))
    try:
        files += sql_files()
    except FileNotFoundError:
        files += sorted(sql_dir().rglob("*.sql"))
    return tuple((path, path.read_text()) for path in files)


def _ident(name: str) -> str:
    return r'"?' + re.escape(name) + r'"?'


def _qualified(schema: str, name: str) -> str:
    return _ident(schema) + r"\s*\.\s*" + _ident(name)


_QN = re.compile(r'"?([A-Za-z_][\w$]*)"?\."?([A-Za-z_][\w$]*)"?')


def _patterns(obj: str) -> list[str]:
    """Regexes of the statements that may have created the object a finding names, most
    specific first. Objects come as 'schema.table', 'policy p on schema.table',
    'schema.function(args)', 'role r', 'view schema.v' and the like."""
    patterns: list[str] = []
    names = _QN.findall(obj)
    policy = re.search(r"\bpolicy\s+\"?([\w$]+)\"?\s+on\s+" + _QN.pattern, obj, re.I) or re.search(
        r"^\"?([\w$]+)\"?\s+on\s+" + _QN.pattern, obj, re.I
    )
    if policy:
        patterns.append(
            r"CREATE\s+POLICY\s+" + _ident(policy.group(1)) + r"\s+ON\s+"
            + _qualified(policy.group(2), policy.group(3)) + r"\b"
        )
    for schema, name in names:
        if re.search(_qualified(schema, name) + r"\s*\(", obj):
            patterns.append(
                r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+"
                + _qualified(schema, name) + r"\s*\("
            )
    role = re.search(r"\brole\s*[:\s]\s*\"?([\w$]+)\"?", obj, re.I)
    if role:
        patterns.append(r"CREATE\s+ROLE\s+" + _ident(role.group(1)) + r"\b")
    for schema, name in names:
        qn = _qualified(schema, name)
        patterns += [
            r"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + qn + r"[\s(]",
            r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?"
            + qn + r"\b",
            r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+" + qn + r"\s*\(",
            r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
            + _ident(name) + r"\s+ON\s",
            r"CREATE\s+(?:SEQUENCE|TYPE|DOMAIN)\s+(?:IF\s+NOT\s+EXISTS\s+)?" + qn + r"\b",
        ]
    if not names:
        bare = re.fullmatch(r"\s*(?:schema\s+)?\"?([\w$]+)\"?\s*", obj, re.I)
        if bare:
            patterns += [
                r"CREATE\s+ROLE\s+" + _ident(bare.group(1)) + r"\b",
                r"CREATE\s+SCHEMA\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _ident(bare.group(1)) + r"\b",
            ]
    return patterns


@cache
def locate(obj: str) -> Location | None:
    """The file and line in migrations/ or sql/ that created a package object, else None
    (a host application's objects have no location here)."""
    for pattern in _patterns(obj):
        regex = re.compile(pattern, re.I)
        for path, text in _sources():
            match = regex.search(text)
            if match:
                return Location(path, text.count("\n", 0, match.start()) + 1)
    return None


def _locate_all(findings: Iterable[Finding]) -> None:
    for finding in findings:
        if finding.location is None and finding.source != "scenario":
            finding.location = locate(finding.object)


# ----------------------------------------------------------------------------------------
# Running the check


@dataclass(frozen=True)
class ScenarioLogins:
    """What `tracefence.scenarios.run` needs: an application login (member of
    tracefence_app), a back-office login (member of tracefence_service) and the user token
    secret set in the database."""

    app_conninfo: str
    service_conninfo: str
    token_secret: bytes


def _become_owner(conn: Connection) -> None:
    exists = conn.execute("SELECT to_regrole('tracefence_owner') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        raise CouldNotRun("tracefence is not installed here (no role tracefence_owner): "
                          "run `tracefence migrate` first")
    try:
        conn.execute("SET ROLE tracefence_owner")
    except psycopg.Error as error:
        raise CouldNotRun(
            "the conformance check runs as the package owner: connect as a superuser or a "
            f"login that is a member of tracefence_owner ({_message(error)})"
        ) from error
    installed = conn.execute(
        "SELECT to_regclass('conformance.isolation') IS NOT NULL "
        "AND to_regclass('conformance.findings') IS NOT NULL "
        "AND to_regclass('conformance.manifest') IS NOT NULL"
    ).fetchone()
    if not installed or not installed[0]:
        raise CouldNotRun("the conformance checks are not installed here "
                          "(conformance.isolation missing): run `tracefence migrate`")


def _finding(row: dict[str, Any] | tuple[Any, ...], obj: str | None = None) -> Finding:
    if isinstance(row, dict):
        return Finding(
            code=str(row.get("code") or "TF???"),
            level="error" if row.get("level") == "error" else "warning",
            object=obj if obj is not None else str(row.get("object") or ""),
            detail=str(row.get("detail") or ""),
            remediation=str(row.get("remediation") or ""),
        )
    code, level, object_, detail, remediation = row
    return Finding(str(code), "error" if level == "error" else "warning", str(object_ or ""),
                   str(detail or ""), str(remediation or ""))


def read_checks(conn: Connection) -> tuple[list[TableReport], list[Finding]]:
    """conformance.isolation and conformance.findings, a table's problems being the same
    Finding objects as the findings they repeat (matched on code and detail)."""
    findings = [
        _finding(row)
        for row in conn.execute(
            "SELECT code, level, object, detail, remediation FROM conformance.findings "
            "ORDER BY level, code, object, detail"
        ).fetchall()
    ]
    by_key: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        by_key.setdefault((finding.code, finding.detail), []).append(finding)
    tables = []
    for relation, tier, status, problems in conn.execute(
        "SELECT relation, tier, status, problems FROM conformance.isolation ORDER BY tier, relation"
    ).fetchall():
        table = TableReport(str(relation), str(tier), str(status))
        for problem in problems or []:
            candidates = by_key.get((str(problem.get("code")), str(problem.get("detail") or "")))
            if candidates:
                match = next((f for f in candidates if relation in f.object), candidates[0])
                table.problems.append(match)
            else:
                orphan = _finding(problem, obj=str(relation))
                findings.append(orphan)
                table.problems.append(orphan)
        tables.append(table)
    return tables, findings


def probe_targets(conn: Connection) -> list[dynamic_probe.ProbeTarget]:
    return [
        dynamic_probe.ProbeTarget(str(relation), scope, read, write)
        for relation, scope, read, write in conn.execute(
            "SELECT relation, scope_column, read_permission, write_permission "
            "FROM conformance.manifest WHERE tier = 'project' ORDER BY relation"
        ).fetchall()
    ]


def _merge_probe(
    tables: list[TableReport], findings: list[Finding], results: list[dynamic_probe.ProbeResult]
) -> None:
    by_relation = {t.relation: t for t in tables}
    for result in results:
        table = by_relation.get(result.relation)
        if table is None:
            table = TableReport(result.relation, "project", "fenced")
            tables.append(table)
            by_relation[result.relation] = table
        table.probe = result
        for pf in result.findings:
            finding = Finding(pf.code, pf.level, pf.object, pf.detail, pf.remediation, "probe")
            findings.append(finding)
            table.problems.append(finding)
        if table.errors:
            table.status = "violations"


def _scenario_line(path: Path, principal: str) -> int:
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        stripped = line.replace(" ", "")
        if stripped in (f"[expect.{principal}]", f'[expect."{principal}"]'):
            return n
    return 1


def is_scenario(path: Path) -> bool:
    """Scenario files of a folder: not the manifest (manifest.toml, or any file with
    [[table]] or [[cross_tenant_reader]] entries)."""
    if path.name == "manifest.toml":
        return False
    try:
        data = scenario_files.load(path)
    except (OSError, tomllib.TOMLDecodeError):
        return True  # let the runner report it
    return not ({"table", "cross_tenant_reader"} & set(data))


def run_scenarios(
    directory: Path, logins: ScenarioLogins
) -> tuple[list[ScenarioOutcome], list[Finding]]:
    outcomes: list[ScenarioOutcome] = []
    findings: list[Finding] = []
    for path in sorted(p for p in directory.glob("*.toml") if is_scenario(p)):
        try:
            result = scenario_files.run(
                path,
                app_conninfo=logins.app_conninfo,
                service_conninfo=logins.service_conninfo,
                token_secret=logins.token_secret,
            )
        except Exception as error:  # any failure of a scenario is a finding, not a crash
            title, remediation = SCENARIO_CODES["TF201"]
            findings.append(Finding(
                "TF201", "error", f"scenario {path.name}",
                f"{title}: {type(error).__name__}: {error}", remediation, "scenario",
                Location(path.resolve(), 1),
            ))
            outcomes.append(ScenarioOutcome(path, "", False, error=str(error)))
            continue
        title, remediation = SCENARIO_CODES["TF200"]
        for mismatch in result.mismatches:
            findings.append(Finding(
                "TF200", "error", f"scenario {path.name}: {mismatch.table}",
                f"{title}: {mismatch.principal} reading {mismatch.table} expected "
                f"{mismatch.expected}, saw {mismatch.actual}",
                remediation, "scenario",
                Location(path.resolve(), _scenario_line(path, mismatch.principal)),
            ))
        outcomes.append(ScenarioOutcome(
            path, result.description, result.passed, mismatches=len(result.mismatches)
        ))
    return outcomes, findings


def run(
    conninfo: str,
    *,
    probe: bool = False,
    manifest: Path | None = None,
    scenarios: Path | None = None,
    logins: ScenarioLogins | None = None,
) -> Report:
    """Apply the manifest file (if any), read the checks, run the probe and the scenarios."""
    if scenarios is not None and logins is None:
        raise CouldNotRun(
            "--scenarios needs the application and back-office logins and the token secret: "
            "--app-dsn, --service-dsn and --token-secret"
        )
    manifest_file = load_manifest(manifest) if manifest is not None else None
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as error:
        raise CouldNotRun(f"cannot connect to the database: {str(error).strip()}") from error
    with conn:
        try:
            _become_owner(conn)
            if manifest_file is not None:
                apply_manifest(conn, manifest_file)
            row = conn.execute(
                "SELECT current_database(), session_user, current_setting('server_version')"
            ).fetchone()
            assert row is not None
            tables, findings = read_checks(conn)
            probed = False
            if probe:
                targets = probe_targets(conn)
                conn.execute("RESET ROLE")
                _merge_probe(tables, findings, dynamic_probe.run(conn, targets))
                conn.execute("SET ROLE tracefence_owner")
                probed = True
        except psycopg.Error as error:
            raise CouldNotRun(f"the conformance check failed: {_message(error)}") from error
    outcomes = None
    if scenarios is not None:
        assert logins is not None
        outcomes, scenario_findings = run_scenarios(scenarios, logins)
        findings += scenario_findings
    _locate_all(findings)
    return Report(
        database=str(row[0]),
        user=str(row[1]),
        server_version=str(row[2]),
        generated_at=datetime.now(UTC),
        tables=tables,
        findings=findings,
        probed=probed,
        manifest=manifest,
        scenarios=outcomes,
    )

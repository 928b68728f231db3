"""`tracefence conformance`: the package's own schema passes in every format with the probe;
a broken host table fails with findings that SARIF locates; the dynamic probe catches a leaking
host table, passes a fenced one and reports one it cannot fill; exit 2 when it cannot run; the
HTML page renders in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from typer.testing import CliRunner

from tests.world import Database, Server
from tracefence.cli import app

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "conformance"
PACKAGE_PROJECT_TABLES = {"telemetry.traces", "telemetry.spans", "tenancy.environments"}


def conformance(*args: str) -> Any:
    result = CliRunner().invoke(app, ["conformance", *args], catch_exceptions=False)
    return result


def run_json(db: Database, *args: str) -> tuple[int, dict[str, Any]]:
    result = conformance("--dsn", db.admin_conninfo, "--format", "json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def table(report: dict[str, Any], relation: str) -> dict[str, Any]:
    matches = [t for t in report["tables"] if t["relation"] == relation]
    assert matches, f"{relation} not in the report: {[t['relation'] for t in report['tables']]}"
    return matches[0]


def codes(entry: dict[str, Any]) -> set[str]:
    return {p["code"] for p in entry["problems"]}


def write_manifest(path: Path, tables: dict[str, str], readers: dict[str, str] | None = None) -> Path:
    lines = []
    for relation, tier in tables.items():
        lines += ["[[table]]", f'relation = "{relation}"', f'tier = "{tier}"',
                  'reason = "made by the test"', ""]
    for role, reason in (readers or {}).items():
        lines += ["[[cross_tenant_reader]]", f'role = "{role}"', f'reason = "{reason}"', ""]
    path.write_text("\n".join(lines))
    return path


def host_table(db: Database, name: str, *, policy: str | None = None, fence: bool = False,
               extra: str = "") -> None:
    """A project-scoped host table with grants for the application, fenced through
    conformance.fence_table or with a hand-written policy."""
    with db.admin() as conn:
        conn.execute(
            f"CREATE TABLE public.{name} ("
            "id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
            "project_id uuid NOT NULL REFERENCES tenancy.projects (id) ON DELETE CASCADE, "
            f"label text NOT NULL, amount integer NOT NULL CHECK (amount > 0){extra})"
        )
        conn.execute(f"CREATE INDEX {name}_project_idx ON public.{name} (project_id)")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{name} TO tracefence_app")
        if fence:  # as the table's owner (here the superuser)
            conn.execute("SELECT conformance.fence_table(%s::regclass, 'traces:read', 'traces:write')",
                         [f"public.{name}"])
        if policy is not None:
            conn.execute(f"ALTER TABLE public.{name} ENABLE ROW LEVEL SECURITY")
            conn.execute(f"ALTER TABLE public.{name} FORCE ROW LEVEL SECURITY")
            conn.execute(f"CREATE POLICY {name}_all ON public.{name} TO tracefence_app {policy}")


# ----------------------------------------------------------------------------------------
# The package's own schema


@pytest.mark.parametrize("fmt", ["text", "json", "junit", "sarif", "html"])
def test_package_schema_is_fenced_in_every_format_with_the_probe(
    db: Database, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"report.{fmt}"
    result = conformance("--dsn", db.admin_conninfo, "--probe", "--format", fmt, "--output", str(out))
    assert result.exit_code == 0, out.read_text() if out.exists() else result.output
    text = out.read_text()
    if fmt == "text":
        assert "PASS" in text
        for relation in PACKAGE_PROJECT_TABLES:
            assert relation in text
    elif fmt == "json":
        report = json.loads(text)
        assert report["passed"] is True and report["exit_code"] == 0
        assert [f for f in report["findings"] if f["level"] == "error"] == []
        for relation in PACKAGE_PROJECT_TABLES:
            entry = table(report, relation)
            assert entry["status"] == "fenced" and entry["tier"] == "project"
            assert entry["probe"]["status"] == "passed", entry["probe"]
            assert entry["probe"]["checks"]["own_read"].endswith("visible")  # not vacuous
    elif fmt == "junit":
        root = ET.fromstring(text)
        assert root.tag == "testsuites" and root.get("failures") == "0"
        cases = {c.get("name"): c for c in root.iter("testcase")}
        assert set(cases) >= PACKAGE_PROJECT_TABLES
        assert all(c.find("failure") is None for c in cases.values())
    elif fmt == "sarif":
        sarif = json.loads(text)
        assert sarif["version"] == "2.1.0"
        assert sarif["runs"][0]["tool"]["driver"]["name"] == "tracefence"
        assert [r for r in sarif["runs"][0]["results"] if r["level"] == "error"] == []
    else:
        assert text.startswith("<!DOCTYPE html>")
        assert "telemetry.traces" in text and "Every classified table is fenced" in text
        for external in ("<script", "<link", "src=", "@import", "url("):
            assert external not in text


def test_json_goes_to_stdout_and_the_probe_commits_nothing(db: Database) -> None:
    before = db.snapshot()
    code, report = run_json(db, "--probe")
    assert code == 0
    assert report["probed"] is True
    assert db.snapshot() == before


def test_the_real_entry_point(db: Database) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracefence", "conformance", "--dsn", db.admin_conninfo],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_the_shipped_manifest_applies_on_the_package_schema(db: Database) -> None:
    code, _ = run_json(db, "--manifest", str(SCENARIOS / "manifest.toml"))
    assert code == 0


# ----------------------------------------------------------------------------------------
# Broken schemas: findings, exit 1, SARIF locations


def test_unfenced_host_table_and_a_hand_edit_fail_with_located_findings(
    db: Database, tmp_path: Path
) -> None:
    with db.admin() as conn:
        conn.execute("CREATE TABLE public.orders (project_id uuid)")
        # A package object broken by hand: its finding points at the migration that made it.
        conn.execute("ALTER TABLE telemetry.spans NO FORCE ROW LEVEL SECURITY")
        conn.execute("ALTER FUNCTION iam.current_principal() RESET search_path")
    manifest = write_manifest(tmp_path / "manifest.toml", {"public.orders": "project"})

    sarif_file = tmp_path / "report.sarif"
    result = conformance("--dsn", db.admin_conninfo, "--manifest", str(manifest),
                         "--format", "sarif", "--output", str(sarif_file))
    assert result.exit_code == 1, result.output
    sarif = json.loads(sarif_file.read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    results = run["results"]
    assert results
    rule_ids = {rule["id"] for rule in run["tool"]["driver"]["rules"]}
    assert {r["ruleId"] for r in results} <= rule_ids
    root = Path(unquote(urlparse(run["originalUriBaseIds"]["SRCROOT"]["uri"]).path))

    def names(r: dict[str, Any], relation: str) -> bool:
        return any(relation in loc["fullyQualifiedName"]
                   for loc in r["locations"][0]["logicalLocations"]) or relation in r["message"]["text"]

    orders = [r for r in results if names(r, "public.orders")]
    assert orders, "the unfenced host table is not reported"
    assert all("physicalLocation" not in r["locations"][0] for r in orders)  # host: no file

    located = [r for r in results if "physicalLocation" in r["locations"][0]]
    assert located, "no finding on a package object carries a file and line"
    for r in located:
        physical = r["locations"][0]["physicalLocation"]
        path = root / physical["artifactLocation"]["uri"]
        assert physical["artifactLocation"]["uriBaseId"] == "SRCROOT"
        assert path.is_file(), path
        assert path.relative_to(root).parts[0] in ("migrations", "sql")
        lines = path.read_text().splitlines()
        line = physical["region"]["startLine"]
        assert 1 <= line <= len(lines)
        assert "CREATE" in lines[line - 1].upper()
    spans = [r for r in located if names(r, "telemetry.spans")]
    assert spans, "the hand edit of telemetry.spans is not located"
    physical = spans[0]["locations"][0]["physicalLocation"]
    line = (root / physical["artifactLocation"]["uri"]).read_text().splitlines()[
        physical["region"]["startLine"] - 1
    ]
    assert "telemetry.spans" in line
    functions = [r for r in located if names(r, "iam.current_principal()")]
    assert functions, "the hand edit of iam.current_principal() is not located"
    physical = functions[0]["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == "sql/iam/030_accessors.sql"
    line = (root / physical["artifactLocation"]["uri"]).read_text().splitlines()[
        physical["region"]["startLine"] - 1
    ]
    assert "FUNCTION iam.current_principal(" in line

    # The other formats say the same: exit 1, a failing JUnit testcase, a JSON finding.
    code, report = run_json(db)
    assert code == 1 and report["passed"] is False
    assert table(report, "public.orders")["status"] == "violations"
    junit = conformance("--dsn", db.admin_conninfo, "--format", "junit")
    assert junit.exit_code == 1
    cases = {c.get("name"): c for c in ET.fromstring(junit.stdout).iter("testcase")}
    assert cases["public.orders"].find("failure") is not None
    assert cases["telemetry.spans"].find("failure") is not None
    assert cases["iam.roles"].find("failure") is None  # global: nothing to fence


def test_an_unclassified_table_fails(db: Database) -> None:
    with db.admin() as conn:
        conn.execute("CREATE TABLE public.stray (id int)")
    code, report = run_json(db)
    assert code == 1
    assert any("public.stray" in f["object"] or "public.stray" in f["detail"]
               for f in report["findings"] if f["level"] == "error")


# ----------------------------------------------------------------------------------------
# The dynamic probe


def test_probe_catches_a_leaking_host_table_and_passes_a_fenced_one(
    db: Database, tmp_path: Path
) -> None:
    host_table(db, "leaky", policy="USING (true) WITH CHECK (true)")
    host_table(db, "invoices", fence=True)
    manifest = write_manifest(tmp_path / "m.toml", {"public.leaky": "project"})

    code, report = run_json(db, "--manifest", str(manifest), "--probe")
    assert code == 1
    leaky = table(report, "public.leaky")
    assert leaky["status"] == "violations"
    assert leaky["probe"]["status"] == "failed"
    assert {"TF102", "TF103", "TF104", "TF105", "TF106", "TF107", "TF108"} <= codes(leaky)
    assert leaky["probe"]["checks"]["own_read"].endswith("visible")

    fenced = table(report, "public.invoices")
    assert fenced["tier"] == "project"
    assert fenced["probe"]["status"] == "passed", fenced["probe"]
    assert [p for p in fenced["problems"] if p["level"] == "error"] == []
    checks = fenced["probe"]["checks"]
    assert checks["own_read"] == "1 row(s) visible"
    assert checks["cross_read"] == "nothing visible"
    assert checks["cross_insert"].startswith("rejected (42501")
    assert checks["own_insert"] == "inserted"  # the fence is not vacuous for writes either
    assert checks["no_request_read"] == "nothing visible"
    # Nothing of the probe is left behind.
    assert db.scalar("SELECT count(*) FROM public.leaky") == 0
    assert db.scalar("SELECT count(*) FROM public.invoices") == 0


def test_probe_reports_a_table_it_cannot_fill_as_not_probed(db: Database) -> None:
    host_table(db, "sites", fence=True, extra=", origin point NOT NULL")
    code, report = run_json(db, "--probe")
    assert code == 1
    sites = table(report, "public.sites")
    assert sites["probe"]["status"] == "not probed"
    assert sites["status"] == "violations"
    [finding] = [p for p in sites["problems"] if p["code"] == "TF100"]
    assert finding["level"] == "error" and "origin" in finding["detail"]


def test_probe_fills_columns_through_foreign_keys_and_checks(db: Database) -> None:
    """NOT NULL columns without defaults, a CHECK list, a parent in a global table (whose
    CHECK the probe cannot satisfy, so it takes an existing row) and a child table whose
    foreign key includes the scope column."""
    with db.admin() as conn:
        conn.execute("CREATE TABLE public.currencies (code char(3) PRIMARY KEY "
                     "CHECK (code ~ '^[A-Z]{3}$'), name text NOT NULL)")
        conn.execute("INSERT INTO public.currencies VALUES ('EUR', 'Euro')")
    host_table(db, "carts", fence=True,
               extra=", status text NOT NULL CHECK (status IN ('open', 'closed')), "
               "currency char(3) NOT NULL REFERENCES public.currencies (code), "
               "opened_on date NOT NULL, meta jsonb NOT NULL, UNIQUE (project_id, id)")
    host_table(db, "cart_items", fence=True,
               extra=", cart_id uuid NOT NULL, "
               "FOREIGN KEY (project_id, cart_id) REFERENCES public.carts (project_id, id)")
    with db.admin() as conn:
        conn.execute("SELECT conformance.classify('public.currencies'::regclass, 'global', 'ISO list')")
    code, report = run_json(db, "--probe")
    for relation in ("public.carts", "public.cart_items"):
        entry = table(report, relation)
        assert entry["probe"]["status"] == "passed", entry
    assert code == 0, [f for f in report["findings"] if f["level"] == "error"]


# ----------------------------------------------------------------------------------------
# Scenario files


def test_scenarios_run_against_the_database(db: Database, tmp_path: Path) -> None:
    logins = ["--app-dsn", db.app_conninfo, "--service-dsn", db.service_conninfo,
              "--token-secret", db.token_secret.decode()]
    code, report = run_json(db, "--scenarios", str(SCENARIOS), *logins)
    assert code == 0
    assert report["scenarios"] and all(s["passed"] for s in report["scenarios"])
    assert "manifest.toml" not in {Path(s["path"]).name for s in report["scenarios"]}

    broken = tmp_path / "scenarios"
    broken.mkdir()
    source = (SCENARIOS / "trace_access_guide.toml").read_text()
    (broken / "guide.toml").write_text(source.replace(
        '[expect.developer]\n"telemetry.traces" = ["checkout-staging"]',
        '[expect.developer]\n"telemetry.traces" = ["checkout-prod", "checkout-staging"]',
    ))
    out = tmp_path / "scenarios.sarif"
    result = conformance("--dsn", db.admin_conninfo, "--scenarios", str(broken), *logins,
                         "--format", "sarif", "--output", str(out))
    assert result.exit_code == 1
    [finding] = json.loads(out.read_text())["runs"][0]["results"]
    assert finding["ruleId"] == "TF200"
    physical = finding["locations"][0]["physicalLocation"]
    path = Path(unquote(urlparse(physical["artifactLocation"]["uri"]).path))
    assert path == (broken / "guide.toml").resolve()
    assert path.read_text().splitlines()[physical["region"]["startLine"] - 1] == "[expect.developer]"


def test_scenarios_without_logins_cannot_run(db: Database) -> None:
    result = conformance("--dsn", db.admin_conninfo, "--scenarios", str(SCENARIOS))
    assert result.exit_code == 2
    assert "--app-dsn" in result.output


# ----------------------------------------------------------------------------------------
# Could not run: exit 2


@pytest.fixture
def empty_db(server: Server, template: str) -> Iterator[str]:
    name = f"tracefence_empty_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port,
                              password=server.password, dbname=name)
    with janitor:
        yield server.conninfo(name)


def test_exit_2_on_a_bad_dsn(tmp_path: Path) -> None:
    result = conformance("--dsn", f"host={tmp_path} port=1 dbname=nowhere connect_timeout=3")
    assert result.exit_code == 2
    assert "cannot connect" in result.output


def test_exit_2_when_the_schema_is_not_installed(empty_db: str) -> None:
    result = conformance("--dsn", empty_db, "--probe")
    assert result.exit_code == 2
    assert "tracefence migrate" in result.output


def test_exit_2_on_a_manifest_naming_a_missing_table(db: Database, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", {"public.nowhere": "project"})
    result = conformance("--dsn", db.admin_conninfo, "--manifest", str(manifest))
    assert result.exit_code == 2
    assert "public.nowhere" in result.output


def test_exit_2_for_an_application_login(db: Database) -> None:
    result = conformance("--dsn", db.app_conninfo)
    assert result.exit_code == 2
    assert "tracefence_owner" in result.output


# ----------------------------------------------------------------------------------------
# The HTML page in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(db: Database, tmp_path: Path) -> None:
    host_table(db, "leaky", policy="USING (true) WITH CHECK (true)")
    host_table(db, "invoices", fence=True)
    manifest = write_manifest(tmp_path / "m.toml", {"public.leaky": "project"})
    page = tmp_path / "report.html"
    result = conformance("--dsn", db.admin_conninfo, "--manifest", str(manifest), "--probe",
                         "--format", "html", "--output", str(page))
    assert result.exit_code == 1
    shot = tmp_path / "report.png"
    chromium = _chromium()
    assert chromium is not None
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), done.stderr
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a rendered page, not a blank one
    print(f"screenshot: {shot}")  # pytest keeps tmp_path: look at it with -s
    text = page.read_text()
    assert "public.leaky" in text and "TF102" in text

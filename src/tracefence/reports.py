"""The conformance report in five formats: text (rich), JSON, JUnit XML, SARIF 2.1.0 and one
self-contained HTML page. Each takes a `tracefence.conformance.Report` and decides nothing."""

from __future__ import annotations

import hashlib
import html
import io
import json
import xml.etree.ElementTree as ET
from enum import StrEnum
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tracefence import probe as dynamic_probe
from tracefence.conformance import SCENARIO_CODES, Finding, Report, TableReport
from tracefence.schema import package_version

INFORMATION_URI = "https://github.com/tracefence/tracefence"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    junit = "junit"
    sarif = "sarif"
    html = "html"


def _probe_status(table: TableReport, report: Report) -> str:
    if table.probe is not None:
        return table.probe.status
    if report.probed and table.tier == "project":
        return "not probed"
    return "-"


def _title(code: str) -> str:
    if code in dynamic_probe.CODES:
        return dynamic_probe.CODES[code][1]
    if code in SCENARIO_CODES:
        return SCENARIO_CODES[code][0]
    return f"conformance check {code}"


def render(report: Report, fmt: ReportFormat, *, color: bool = False) -> str:
    """The report as text in the given format."""
    if fmt is ReportFormat.text:
        return render_text(report, color=color)
    if fmt is ReportFormat.json:
        return render_json(report)
    if fmt is ReportFormat.junit:
        return render_junit(report)
    if fmt is ReportFormat.sarif:
        return render_sarif(report)
    return render_html(report)


# ----------------------------------------------------------------------------------------
# Text

_STATUS_STYLE = {
    "fenced": "green",
    "violations": "bold red",
    "not applicable": "dim",
    "passed": "green",
    "failed": "bold red",
    "not probed": "bold red",
}


def text_renderables(report: Report) -> list[RenderableType]:
    counts = report.counts()
    title = Text.assemble(
        ("tracefence isolation conformance", "bold"),
        f"  database {report.database} as {report.user}, PostgreSQL {report.server_version}",
    )
    tables = Table(title="Classified tables", box=box.SIMPLE_HEAD, title_justify="left")
    tables.add_column("tier", no_wrap=True)
    tables.add_column("table", overflow="fold", min_width=16)
    tables.add_column("status", no_wrap=True)
    tables.add_column("probe", no_wrap=True)
    tables.add_column("problems", overflow="fold")
    for tier, rows in report.tables_by_tier():
        for table in rows:
            probe = _probe_status(table, report)
            codes = sorted({p.code for p in table.problems})
            tables.add_row(
                tier,
                table.relation,
                Text(table.status, style=_STATUS_STYLE.get(table.status, "")),
                Text(probe, style=_STATUS_STYLE.get(probe, "dim")),
                ", ".join(codes),
            )
    parts: list[RenderableType] = [title, tables]
    if report.findings:
        findings = Table(title="Findings", box=box.SIMPLE_HEAD, title_justify="left")
        findings.add_column("level", no_wrap=True)
        findings.add_column("code", no_wrap=True)
        findings.add_column("object", overflow="fold", max_width=40)
        findings.add_column("detail / remediation", overflow="fold", ratio=1)
        for f in sorted(report.findings, key=lambda f: (f.level != "error", f.code, f.object)):
            where = f"\n[{f.location.relative}:{f.location.line}]" if f.location else ""
            findings.add_row(
                Text(f.level, style="bold red" if f.level == "error" else "yellow"),
                f.code,
                Text(f.object + where),
                Text.assemble(f.detail, ("\n→ " + f.remediation, "dim")),
            )
        parts.append(findings)
    if report.scenarios is not None:
        scenarios = Table("scenario", "result", title="Scenarios", box=box.SIMPLE_HEAD,
                          title_justify="left")
        for s in report.scenarios:
            outcome = "passed" if s.passed else (
                f"{s.mismatches} mismatch(es)" if s.error is None else "could not run")
            scenarios.add_row(s.path.name, Text(outcome, style="green" if s.passed else "bold red"))
        parts.append(scenarios)
    verdict = (
        Text("PASS: every classified table is fenced", style="bold green")
        if report.passed
        else Text(f"FAIL: {counts['errors']} error finding(s)", style="bold red")
    )
    parts.append(Text.assemble(
        verdict,
        f"  ({counts['tables']} tables: {counts['fenced']} fenced, {counts['violations']} with "
        f"violations, {counts['not_applicable']} not applicable; {counts['warnings']} warning(s)"
        + (f"; probe: {counts['probed']} probed, {counts['not_probed']} not probed)"
           if report.probed else "; probe not run)"),
    ))
    return parts


def render_text(report: Report, *, color: bool = False, width: int = 140) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color,
                      color_system="standard" if color else None, highlight=False)
    console.print(Group(*text_renderables(report)))
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------
# JSON


def report_dict(report: Report) -> dict[str, Any]:
    index = {id(f): n for n, f in enumerate(report.findings)}
    return {
        "tool": {"name": "tracefence", "version": package_version()},
        "database": report.database,
        "user": report.user,
        "server_version": report.server_version,
        "generated_at": report.generated_at.isoformat(),
        "manifest": str(report.manifest) if report.manifest else None,
        "passed": report.passed,
        "exit_code": report.exit_code,
        "summary": report.counts(),
        "probed": report.probed,
        "tables": [
            {
                "relation": t.relation,
                "tier": t.tier,
                "status": t.status,
                "probe": None if t.probe is None else {
                    "status": t.probe.status,
                    "checks": dict(t.probe.checks),
                },
                "problems": [p.as_dict() | {"finding": index.get(id(p))} for p in t.problems],
            }
            for t in report.tables
        ],
        "findings": [f.as_dict() for f in report.findings],
        "scenarios": None if report.scenarios is None else [
            {
                "path": str(s.path),
                "description": s.description,
                "passed": s.passed,
                "mismatches": s.mismatches,
                "error": s.error,
            }
            for s in report.scenarios
        ],
    }


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"


# ----------------------------------------------------------------------------------------
# JUnit XML


def _failure(parent: ET.Element, finding: Finding) -> None:
    element = ET.SubElement(parent, "failure", type=finding.code,
                            message=f"{finding.code} {finding.detail}")
    lines = [f"object: {finding.object}", f"detail: {finding.detail}",
             f"remediation: {finding.remediation}"]
    if finding.location:
        lines.append(f"created at: {finding.location.relative}:{finding.location.line}")
    element.text = "\n".join(lines)


def _system_out(parent: ET.Element, lines: list[str]) -> None:
    if lines:
        ET.SubElement(parent, "system-out").text = "\n".join(lines)


def render_junit(report: Report) -> str:
    root = ET.Element("testsuites", name="tracefence conformance")
    suites: list[ET.Element] = []

    tables = ET.Element("testsuite", name="tracefence.conformance.tables",
                        timestamp=report.generated_at.strftime("%Y-%m-%dT%H:%M:%S"))
    properties = ET.SubElement(tables, "properties")
    for name, value in (("database", report.database), ("server_version", report.server_version),
                        ("probed", str(report.probed).lower())):
        ET.SubElement(properties, "property", name=name, value=value)
    for tier, rows in report.tables_by_tier():
        for table in rows:
            case = ET.SubElement(tables, "testcase", classname=f"conformance.{tier}",
                                 name=table.relation, time="0")
            for problem in table.errors:
                _failure(case, problem)
            out = [f"status: {table.status}", f"probe: {_probe_status(table, report)}"]
            out += [f"warning {p.code}: {p.detail} -> {p.remediation}"
                    for p in table.problems if p.level != "error"]
            if table.probe is not None:
                out += [f"probe {name}: {outcome}" for name, _, outcome
                        in dynamic_probe.iter_checks(table.probe)]
            _system_out(case, out)
    suites.append(tables)

    others = report.unattributed_findings()
    scenario_findings = [f for f in others if f.source == "scenario"]
    objects = [f for f in others if f.source != "scenario"]
    if objects:
        suite = ET.Element("testsuite", name="tracefence.conformance.objects")
        grouped: dict[str, list[Finding]] = {}
        for finding in objects:
            grouped.setdefault(finding.object or "database", []).append(finding)
        for obj, findings in sorted(grouped.items()):
            case = ET.SubElement(suite, "testcase", classname="conformance.objects", name=obj,
                                 time="0")
            for finding in findings:
                if finding.level == "error":
                    _failure(case, finding)
            _system_out(case, [f"warning {f.code}: {f.detail} -> {f.remediation}"
                               for f in findings if f.level != "error"])
        suites.append(suite)
    if report.scenarios is not None:
        suite = ET.Element("testsuite", name="tracefence.conformance.scenarios")
        for scenario in report.scenarios:
            case = ET.SubElement(suite, "testcase", classname="conformance.scenarios",
                                 name=scenario.path.name, time="0")
            for finding in scenario_findings:
                if finding.location and finding.location.path == scenario.path.resolve():
                    _failure(case, finding)
            _system_out(case, [scenario.description] if scenario.description else [])
        suites.append(suite)

    total_tests = total_failures = 0
    for suite in suites:
        cases = suite.findall("testcase")
        failures = sum(1 for c in cases if c.find("failure") is not None)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        suite.set("time", "0")
        total_tests += len(cases)
        total_failures += failures
        root.append(suite)
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    root.set("time", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------------------
# SARIF 2.1.0


def _fingerprint(finding: Finding) -> str:
    return hashlib.sha256(
        "\x1f".join((finding.code, finding.object, finding.detail)).encode()
    ).hexdigest()


def _sarif_location(finding: Finding) -> dict[str, Any]:
    location: dict[str, Any] = {
        "logicalLocations": [{"fullyQualifiedName": finding.object or "database"}],
    }
    if finding.location is not None:
        relative = finding.location.relative
        artifact: dict[str, Any] = (
            {"uri": finding.location.path.as_uri()}
            if relative.startswith("/")
            else {"uri": relative, "uriBaseId": "SRCROOT"}
        )
        location["physicalLocation"] = {
            "artifactLocation": artifact,
            "region": {"startLine": finding.location.line},
        }
    return location


def sarif_dict(report: Report) -> dict[str, Any]:
    from tracefence.conformance import source_root

    rules: list[dict[str, Any]] = []
    rule_index: dict[str, int] = {}
    for finding in sorted(report.findings, key=lambda f: f.code):
        if finding.code in rule_index:
            continue
        rule_index[finding.code] = len(rules)
        rules.append({
            "id": finding.code,
            "name": finding.code,
            "shortDescription": {"text": _title(finding.code)},
            "fullDescription": {"text": finding.remediation or _title(finding.code)},
            "help": {"text": finding.remediation or _title(finding.code)},
            "defaultConfiguration": {"level": "error" if finding.level == "error" else "warning"},
        })
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": rule_index[f.code],
            "level": "error" if f.level == "error" else "warning",
            "message": {"text": f"{f.object}: {f.detail}" if f.object else f.detail},
            "locations": [_sarif_location(f)],
            "partialFingerprints": {"tracefence/v1": _fingerprint(f)},
            "properties": {"remediation": f.remediation, "source": f.source},
        }
        for f in report.findings
    ]
    root = source_root().resolve().as_uri().rstrip("/") + "/"
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tracefence",
                "version": package_version(),
                "informationUri": INFORMATION_URI,
                "rules": rules,
            }},
            "originalUriBaseIds": {"SRCROOT": {"uri": root}},
            "invocations": [{
                "executionSuccessful": True,
                "endTimeUtc": report.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }],
            "results": results,
            "properties": {
                "database": report.database,
                "serverVersion": report.server_version,
                "summary": report.counts(),
            },
        }],
    }


def render_sarif(report: Report) -> str:
    return json.dumps(sarif_dict(report), indent=2) + "\n"


# ----------------------------------------------------------------------------------------
# HTML: one page, inline CSS, no script, no external asset

_CSS = """
:root { --ok:#15803d; --ok-bg:#dcfce7; --bad:#b91c1c; --bad-bg:#fee2e2; --warn:#a16207;
  --warn-bg:#fef9c3; --mute:#475569; --mute-bg:#e2e8f0; --line:#e2e8f0; --ink:#0f172a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; color: var(--ink); background: #f8fafc; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; letter-spacing: -0.01em; }
header .meta { color: var(--mute); font-size: 13px; }
.verdict { margin: 18px 0; padding: 14px 18px; border-radius: 10px; font-weight: 600;
  font-size: 16px; border: 1px solid; }
.verdict.pass { background: var(--ok-bg); color: var(--ok); border-color: #86efac; }
.verdict.fail { background: var(--bad-bg); color: var(--bad); border-color: #fca5a5; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(118px, 1fr)); gap: 12px;
  margin: 0 0 24px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .n { font-size: 24px; font-weight: 700; }
.card .l { color: var(--mute); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.bad .n { color: var(--bad); } .card.ok .n { color: var(--ok); }
.card.warn .n { color: var(--warn); }
section { margin-top: 26px; }
h2 { font-size: 17px; margin: 0 0 10px; display: flex; align-items: center; gap: 8px; }
h2 .count { color: var(--mute); font-weight: 400; font-size: 13px; }
table { width: 100%; table-layout: fixed; border-collapse: collapse; background: #fff;
  border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
td code { overflow-wrap: anywhere; }
th, td { text-align: left; padding: 9px 12px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #f1f5f9; font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  color: var(--mute); }
tr:last-child td { border-bottom: 0; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px;
  font-weight: 600; white-space: nowrap; }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.warn { background: var(--warn-bg); color: var(--warn); }
.badge.mute { background: var(--mute-bg); color: var(--mute); }
.chip { display: inline-block; margin: 0 4px 2px 0; padding: 0 6px; border-radius: 4px;
  font: 12px ui-monospace, Menlo, Consolas, monospace; background: var(--mute-bg); }
.chip.error { background: var(--bad-bg); color: var(--bad); }
.chip.warning { background: var(--warn-bg); color: var(--warn); }
.problem { border-left: 3px solid var(--bad); padding: 6px 10px; margin: 6px 0;
  background: #fff7f7; border-radius: 0 6px 6px 0; }
.problem.warning { border-color: #eab308; background: #fffdf0; }
.problem .what { font-weight: 600; }
.problem .fix { color: var(--mute); margin-top: 2px; }
.problem .fix::before { content: "Remediation: "; font-weight: 600; color: var(--ink); }
.problem .where { color: var(--mute); font-size: 12px; }
details summary { cursor: pointer; color: var(--mute); font-size: 12px; }
.checks { margin: 4px 0 0; padding-left: 18px; color: var(--mute); font-size: 12px; }
.checks .leak { color: var(--bad); font-weight: 600; }
.empty { color: var(--mute); font-style: italic; }
.names { display: flex; flex-wrap: wrap; gap: 6px; background: #fff; border: 1px solid var(--line);
  border-radius: 10px; padding: 10px 12px; }
.names code { background: #f1f5f9; border-radius: 4px; padding: 1px 6px; }
footer { margin-top: 36px; color: var(--mute); font-size: 12px; }
"""

_BADGE = {
    "fenced": "ok", "passed": "ok", "violations": "bad", "failed": "bad",
    "not probed": "bad", "not applicable": "mute", "-": "mute",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(label: str) -> str:
    return f'<span class="badge {_BADGE.get(label, "mute")}">{_e(label)}</span>'


def _problem_html(finding: Finding) -> str:
    where = ""
    if finding.location is not None:
        where = (f'<div class="where">created at <code>{_e(finding.location.relative)}:'
                 f"{finding.location.line}</code></div>")
    return (
        f'<div class="problem {_e(finding.level)}">'
        f'<div class="what"><span class="chip {_e(finding.level)}">{_e(finding.code)}</span> '
        f"{_e(finding.detail)}</div>"
        f'<div class="where">object <code>{_e(finding.object)}</code> · {_e(finding.level)} · '
        f"{_e(finding.source)}</div>{where}"
        f'<div class="fix">{_e(finding.remediation)}</div></div>'
    )


def _probe_html(table: TableReport) -> str:
    if table.probe is None or not table.probe.checks:
        return ""
    items = []
    for _, meaning, outcome in dynamic_probe.iter_checks(table.probe):
        leak = ' class="leak"' if outcome.startswith("LEAK") or outcome.startswith("inconclusive") else ""
        items.append(f"<li{leak}>{_e(meaning)}: {_e(outcome)}</li>")
    return (f"<details><summary>probe checks</summary><ul class=\"checks\">{''.join(items)}</ul>"
            "</details>")


def render_html(report: Report) -> str:
    counts = report.counts()
    others = report.object_findings()
    object_errors = sum(1 for f in others if f.level == "error")
    verdict = (
        '<div class="verdict pass">✔ Every classified table is fenced: no error findings.</div>'
        if report.passed
        else f'<div class="verdict fail">✘ {counts["errors"]} error finding(s): '
        f'{counts["violations"]} table(s) with violations'
        + (f", {object_errors} on other objects" if object_errors else "")
        + ". Isolation is not proven.</div>"
    )
    cards = [
        ("tables classified", counts["tables"], ""),
        ("fenced", counts["fenced"], "ok"),
        ("violations", counts["violations"], "bad" if counts["violations"] else "ok"),
        ("not applicable", counts["not_applicable"], ""),
        ("errors", counts["errors"], "bad" if counts["errors"] else "ok"),
        ("warnings", counts["warnings"], "warn" if counts["warnings"] else "ok"),
    ]
    if report.probed:
        cards.append(("probed", counts["probed"], "ok"))
        cards.append(("not probed", counts["not_probed"], "bad" if counts["not_probed"] else "ok"))
    card_html = "".join(
        f'<div class="card {cls}"><div class="n">{n}</div><div class="l">{_e(label)}</div></div>'
        for label, n, cls in cards
    )

    sections = []
    for tier, tables in report.tables_by_tier():
        if tier in ("global", "internal") and not any(t.problems for t in tables):
            names = "".join(f"<code>{_e(t.relation)}</code>" for t in tables)
            sections.append(
                f'<section><h2>{_e(tier.capitalize())} <span class="count">{len(tables)} '
                f'table(s), {_badge("not applicable")} no tenant scope to fence</span></h2>'
                f'<div class="names">{names}</div></section>'
            )
            continue
        rows = []
        for table in tables:
            own = [p for p in table.problems if p.object == table.relation]
            inherited = sorted({(p.code, p.object) for p in table.problems if p.object != table.relation})
            problems = "".join(_problem_html(p) for p in own)
            if inherited:
                problems += '<div class="where">also weakened by (see below): ' + ", ".join(
                    f"{_e(code)} on <code>{_e(obj)}</code>" for code, obj in inherited
                ) + "</div>"
            levels: dict[str, str] = {}
            for p in table.problems:
                levels[p.code] = "error" if p.level == "error" else levels.get(p.code, p.level)
            chips = "".join(
                f'<span class="chip {_e(level)}">{_e(code)}</span>'
                for code, level in sorted(levels.items())
            ) or '<span class="empty">none</span>'
            rows.append(
                f"<tr><td><code>{_e(table.relation)}</code></td>"
                f"<td>{_badge(table.status)}</td>"
                f"<td>{_badge(_probe_status(table, report))}{_probe_html(table)}</td>"
                f"<td>{chips}{problems}</td></tr>"
            )
        heading = (f"{tier.capitalize()}-scoped" if tier in ("project", "workspace", "organisation")
                   else tier.capitalize())
        sections.append(
            f'<section><h2>{_e(heading)} <span class="count">{len(tables)} table(s)</span></h2>'
            '<table><thead><tr><th style="width:26%">table</th><th style="width:11%">status</th>'
            '<th style="width:15%">probe</th><th>problems and remediation</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>"
        )
    if not report.tables:
        sections.append('<section><h2>Tables</h2><p class="empty">No table is classified.</p></section>')

    if others:
        sections.append(
            '<section><h2>Findings on other objects <span class="count">'
            f"{len(others)} (roles, functions, views, server, scenarios)</span></h2>"
            + "".join(_problem_html(f) for f in others) + "</section>"
        )
    if report.scenarios is not None:
        scenario_rows = []
        for scenario in report.scenarios:
            if scenario.passed:
                result = _badge("passed")
            else:
                label = "could not run" if scenario.error else f"{scenario.mismatches} mismatch(es)"
                result = f'<span class="badge bad">{_e(label)}</span>'
            scenario_rows.append(
                f"<tr><td><code>{_e(scenario.path.name)}</code></td>"
                f"<td>{_e(scenario.description)}</td><td>{result}</td></tr>"
            )
        body = "".join(scenario_rows) or '<tr><td colspan="3" class="empty">no scenario file</td></tr>'
        sections.append(
            '<section><h2>Scenarios</h2><table><thead><tr><th>file</th><th>description</th>'
            f"<th>result</th></tr></thead><tbody>{body}</tbody></table></section>"
        )

    meta = (
        f"database <code>{_e(report.database)}</code> as <code>{_e(report.user)}</code> · "
        f"PostgreSQL {_e(report.server_version)} · "
        f"{_e(report.generated_at.strftime('%Y-%m-%d %H:%M:%S UTC'))} · "
        + ("dynamic probe run" if report.probed else "dynamic probe not run (use --probe)")
        + (f" · manifest <code>{_e(report.manifest)}</code>" if report.manifest else "")
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>tracefence conformance: {_e(report.database)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<header><h1>tracefence isolation conformance</h1><div class=\"meta\">{meta}</div></header>"
        f"{verdict}<div class=\"cards\">{card_html}</div>{''.join(sections)}"
        f"<footer>tracefence {_e(package_version())} · SPEC §4: every project-scoped table is fenced "
        "(RLS enabled and forced, canonical policies for every command keyed to the project, "
        "no bypass) and proven so by the dynamic probe.</footer>"
        "</main></body></html>\n"
    )

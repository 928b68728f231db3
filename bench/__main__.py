"""tracefence's benchmarks: what the fence costs, side by side with the unfenced query.

    python -m bench run --scale quick          # embedded PostgreSQL, generate, measure, report
    python -m bench generate --dsn DSN --scale full
    python -m bench run --dsn DSN               # measure a database generate filled

Results go to bench/out/ (results.json, results.md, ratios.png); --docs also rewrites the
results section of docs/benchmarks.md and its chart.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from contextlib import ExitStack
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import data, report
from bench.ingest import run_ingest
from bench.overhead import run_overhead
from bench.queries import install_baselines, run_queries

app = typer.Typer(help=__doc__.splitlines()[0], pretty_exceptions_enable=False, add_completion=False)
console = Console()
errors = Console(stderr=True)
ROOT = Path(__file__).resolve().parent.parent
SCALES = {"tiny": 0.001, "quick": 0.05, "full": 1.0}
DOCS_BEGIN = "<!-- results: written by python -m bench run --docs -->"
DOCS_END = "<!-- end of results -->"


class Section(StrEnum):
    queries = "queries"
    requests = "requests"
    ingest = "ingest"


def _scale(value: str) -> float:
    try:
        return SCALES[value] if value in SCALES else float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use tiny, quick, full or a fraction such as 0.2") from None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


DsnOption = Annotated[str, typer.Option(help="superuser conninfo; empty: start an embedded PostgreSQL")]
ScaleOption = Annotated[
    str, typer.Option(help="tiny, quick (100,000 traces), full (2,000,000) or a fraction")
]


@app.command()
def generate(dsn: Annotated[str, typer.Option(help="superuser conninfo of an empty database")],
             scale: ScaleOption = "quick") -> None:
    """Install tracefence and load the benchmark organisation into the database DSN names."""
    started = time.perf_counter()
    try:
        with _progress() as progress:
            world = data.generate(dsn, _scale(scale), progress)
    except RuntimeError as error:
        errors.print(f"cannot generate: {error}")
        raise typer.Exit(2) from None
    data.save(world)
    console.print(f"generated {world.traces:,} traces in {time.perf_counter() - started:.0f} s")


def measure(world: data.World, scale: float, rounds: int, sections: list[Section],
            seconds: float, standby_dsn: str | None = None) -> dict[str, Any]:
    """Every section of the benchmark on a generated world; the document report.write takes."""
    with psycopg.connect(world.dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        spans = conn.execute("SELECT count(*) FROM telemetry.spans").fetchone()
    doc: dict[str, Any] = {
        "scale": scale,
        "traces": world.traces,
        "spans": spans[0] if spans else 0,
        "projects": len(world.projects),
        "server_version": version[0] if version else "?",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rounds": rounds,
    }
    with _progress() as progress:
        if Section.queries in sections:
            install_baselines(world)
            results = run_queries(world, rounds, max(1, rounds // 3), progress)
            doc["queries"] = report.query_rows(results)
        if Section.requests in sections:
            doc["requests"] = run_overhead(world, max(1, rounds // 3), seconds, progress)
            if standby_dsn:
                doc["standby_requests"] = run_overhead(
                    world, max(1, rounds // 3), seconds, progress, standby_dsn=standby_dsn
                )
        if Section.ingest in sections:
            doc["ingest"] = run_ingest(world, world.ingest_key, rounds, progress)
    return doc


def _print(doc: dict[str, Any]) -> None:
    if "queries" in doc:
        table = Table("query", "principal", "rows", "limit ms", "literal ms", "fenced ms", "fenced/limit",
                      "fenced/literal", "naive/fenced", "wrapped/fenced", title="queries (medians)")
        for r in doc["queries"]:
            mark = "[green]" if r["met"] else "[red]"
            table.add_row(r["query"], r["principal"], str(r["rows"]), f"{r['limit']['median_ms']:.3f}",
                          f"{r['literal']['median_ms']:.3f}", f"{r['fenced']['median_ms']:.3f}",
                          f"{mark}{r['fenced_over_limit']:.2f}", f"{r['fenced_over_literal']:.2f}",
                          f"{r['naive_over_fenced']:.1f}x", f"{r['wrapped_over_fenced']:.1f}x")
        console.print(table)
    console.print(report.markdown(doc))


def _write_docs(doc: dict[str, Any], paths: dict[str, Path]) -> None:
    page = ROOT / "docs" / "benchmarks.md"
    text = page.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise RuntimeError(f"{page} has no results markers")
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    page.write_text(head + DOCS_BEGIN + "\n" + report.markdown(doc) + DOCS_END + tail)
    shutil.copyfile(paths["chart"], ROOT / "docs" / "benchmarks.png")
    console.print(f"updated {page}")


@app.command()
def run(
    dsn: DsnOption = "",
    scale: ScaleOption = "quick",
    rounds: Annotated[int, typer.Option(help="interleaved runs of each variant", min=1)] = 15,
    seconds: Annotated[float, typer.Option(help="length of each pgbench run", min=1)] = 3,
    section: Annotated[list[Section] | None, typer.Option(help="what to measure (repeatable)")] = None,
    out: Annotated[Path, typer.Option(help="where results go")] = ROOT / "bench" / "out",
    docs: Annotated[bool, typer.Option(help="rewrite docs/benchmarks.md's results and chart")] = False,
    standby_dsn: Annotated[str, typer.Option(
        help="superuser conninfo of a hot standby of DSN's server: also measure requests there"
    )] = "",
) -> None:
    """Measure (generating first unless DSN's database already holds the benchmark data)."""
    sections = section or list(Section)
    fraction = _scale(scale)
    with ExitStack() as stack:
        if not dsn:
            from tracefence.embedded import embedded_server

            dsn = stack.enter_context(embedded_server())
        try:
            world = data.load(dsn)
            fraction = world.traces / data.FULL_TRACES
        except RuntimeError:
            try:
                with _progress() as progress:
                    world = data.generate(dsn, fraction, progress)
            except RuntimeError as error:
                errors.print(f"cannot generate: {error}")
                raise typer.Exit(2) from None
            data.save(world)
        doc = measure(world, fraction, rounds, sections, seconds, standby_dsn or None)
    paths = report.write(doc, out)
    _print(doc)
    for kind, path in paths.items():
        console.print(f"wrote {kind}: {path}")
    if docs:
        _write_docs(doc, paths)


if __name__ == "__main__":
    app()

"""The benchmark's results as JSON, a markdown table and a PNG chart of the ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.overhead import CLIENTS
from bench.queries import QUERIES, QueryResult

# Issue 5's targets, medians of fenced / limit (the filter a DBA would write for the grants).
QUERY_TARGETS = {"q1": 1.10, "q2": 1.10, "q3": 1.30, "q4": 1.10}
REQUEST_TARGET = 0.75  # fenced throughput / unfenced, at least
BINDINGS_TARGET = 3.0  # 1,000-binding user / 10-binding user, at most
INGEST_TARGET = 0.85  # fenced throughput / unfenced, at least


def query_rows(results: list[QueryResult]) -> list[dict[str, Any]]:
    return [
        {
            "query": r.query.key,
            "title": r.query.title,
            "principal": r.principal,
            "rows": r.rows,
            **{variant: s.as_dict() for variant, s in r.samples.items()},
            "limit_filter": r.limit_filter,
            "fenced_over_limit": round(r.ratio("fenced"), 3),
            "fenced_over_literal": round(r.ratio("fenced", "literal"), 3),
            "naive_over_fenced": round(r.samples["naive"].median / r.samples["fenced"].median, 2),
            "wrapped_over_fenced": round(r.samples["wrapped"].median / r.samples["fenced"].median, 2),
            "target": QUERY_TARGETS[r.query.key],
            "met": r.ratio("fenced") <= QUERY_TARGETS[r.query.key],
            "plans": r.plans,
        }
        for r in results
    ]


def _request_row(clients: int, b: dict[str, Any]) -> str:
    """The columns every whole-request table starts with, primary and standby alike."""
    ratio = b["fenced_throughput_ratio"]
    return (
        f"| begin + point query + commit | {clients} | {b['unfenced']['tps_median']:,.0f} "
        f"| {b['fenced']['tps_median']:,.0f} | **{ratio:.2f}** "
        f"| ≥ {REQUEST_TARGET:.2f} {'✓' if ratio >= REQUEST_TARGET else '✗'} "
    )


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"Scale {doc['scale']}: {doc['traces']:,} traces, {doc['spans']:,} spans, "
        f"{doc['projects']:,} projects; PostgreSQL {doc['server_version']}; {doc['machine']}.",
    ]
    if "queries" in doc:
        lines += [
            "",
            "| query | principal | rows | limit ms | literal ms | fenced ms (p95) | fenced / limit "
            "| target | fenced / literal | naive / fenced | wrapped / fenced |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in doc.get("queries", []):
        lines.append(
            f"| {r['query']} {r['title']} | {r['principal']} | {r['rows']} "
            f"| {r['limit']['median_ms']:.3f} | {r['literal']['median_ms']:.3f} "
            f"| {r['fenced']['median_ms']:.3f} ({r['fenced']['p95_ms']:.3f}) "
            f"| **{r['fenced_over_limit']:.2f}** | ≤ {r['target']:.2f} {'✓' if r['met'] else '✗'} "
            f"| {r['fenced_over_literal']:.2f} "
            f"| {r['naive_over_fenced']:.1f}x | {r['wrapped_over_fenced']:.1f}x |"
        )
    if "standby_requests" in doc:
        lines += ["", "| read-only request on a hot standby | clients | unfenced tps | fenced tps "
                  "| fenced / unfenced | target | 1,000 / 10 bindings (latency) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for clients in CLIENTS:
            b = doc["standby_requests"].get(f"clients_{clients}")
            if b is None:
                continue
            lines.append(_request_row(clients, b) + f"| {b['bindings_1000_vs_10_latency_ratio']:.2f} |")
    if "requests" in doc:
        lines += ["", "| whole request | clients | unfenced tps | fenced tps | fenced / unfenced | target "
                  "| BEGIN apart / unfenced | unfenced + xid / unfenced "
                  "| 1,000 / 10 bindings (latency) | target |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for clients in CLIENTS:
            b = doc["requests"].get(f"clients_{clients}")
            if b is None:
                continue
            lines.append(
                _request_row(clients, b)
                + f"| {b['begin_apart_throughput_ratio']:.2f} "
                f"| {b.get('xid_throughput_ratio', float('nan')):.2f} "
                f"| **{b['bindings_1000_vs_10_latency_ratio']:.2f}** "
                f"| ≤ {BINDINGS_TARGET:.0f} "
                f"{'✓' if b['bindings_1000_vs_10_latency_ratio'] <= BINDINGS_TARGET else '✗'} |"
            )
        lines += ["", "Fenced: BEGIN and iam.begin_request in one round trip, as `Fence.request` sends "
                  "them (one pipeline). BEGIN apart: two round trips, as `Fence.request` sent them "
                  "before. Unfenced + xid: the unfenced transaction taking a transaction id, as "
                  "begin_request does on a primary (its commit then writes a WAL record, not flushed "
                  "synchronously)."]
    if "ingest" in doc:
        i = doc["ingest"]
        lines += ["", "| ingest | rows / batch | unfenced rows/s | fenced rows/s | fenced / unfenced "
                  "| target |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| traces + spans through a request | {i['rows_per_batch']} "
                  f"| {i['unfenced']['rows_per_second']:,} "
                  f"| {i['fenced']['rows_per_second']:,} | **{i['throughput_ratio']:.2f}** "
                  f"| ≥ {INGEST_TARGET:.2f} {'✓' if i['throughput_ratio'] >= INGEST_TARGET else '✗'} |"]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    principals = list(dict.fromkeys(r["principal"] for r in doc.get("queries", [])))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1.3]})
    ax = axes[0]
    width = 0.8 / max(1, len(principals))  # a run of other sections only has no query bars
    if max((r["fenced_over_limit"] for r in doc.get("queries", [])), default=0) > 4:
        ax.set_yscale("log")  # a plan that misses by orders of magnitude keeps the rest readable
    for i, principal in enumerate(principals):
        ratios = [next(r["fenced_over_limit"] for r in doc["queries"]
                       if r["principal"] == principal and r["query"] == q.key) for q in QUERIES]
        ax.bar([x + i * width for x in range(len(QUERIES))], ratios, width, label=principal)
    for x, q in enumerate(QUERIES):
        ax.hlines(QUERY_TARGETS[q.key], x - 0.1, x + 0.9, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(QUERIES))], [q.key for q in QUERIES])
    ax.set_ylabel("fenced / limit (median)")
    ax.set_title("Queries: tracefence vs the DBA's filter for the grants (dashed: target)")
    ax.legend(fontsize=8)
    ax = axes[1]
    labels, values, targets = [], [], []
    if "requests" in doc:
        for clients in CLIENTS:
            if f"clients_{clients}" not in doc["requests"]:
                continue
            labels.append(f"request\n{clients} client{'s' if clients > 1 else ''}")
            values.append(doc["requests"][f"clients_{clients}"]["fenced_throughput_ratio"])
            targets.append(REQUEST_TARGET)
    if "ingest" in doc:
        labels.append("ingest")
        values.append(doc["ingest"]["throughput_ratio"])
        targets.append(INGEST_TARGET)
    ax.bar(labels, values, color="tab:gray")
    for x, t in enumerate(targets):
        ax.hlines(t, x - 0.4, x + 0.4, colors="black", linestyles="dashed", linewidth=1)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fenced / unfenced throughput")
    ax.set_title("Throughput")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "ratios.png"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(doc))
    chart(doc, paths["chart"])
    return paths

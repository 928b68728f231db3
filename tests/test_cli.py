"""Every command that cannot do its job exits 2 with a one-line reason on stderr, no traceback,
and leaves nothing behind: an unreachable server, a database without tracefence, a report
that cannot be written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.world import Database

NOBODY = "00000000-0000-0000-0000-000000000000"
COMMANDS = {
    "migrate": ["migrate"],
    "migrate status": ["migrate", "status"],
    "migrate rollback": ["migrate", "rollback"],
    "sweep": ["sweep"],
    "explain": ["explain", "--principal", NOBODY, "--resource", NOBODY, "--permission", "traces:read"],
    "conformance": ["conformance"],
    "demo": ["demo"],
}


def tracefence(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracefence", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def assert_one_line_failure(done: subprocess.CompletedProcess[str], reason: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], done.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_exits_2_with_one_line_when_the_server_is_unreachable(command, tmp_path: Path):
    done = tracefence(*COMMANDS[command], "--dsn", f"host={tmp_path} port=1 dbname=x connect_timeout=2")
    assert_one_line_failure(done, "No such file or directory")


@pytest.mark.parametrize("command", ["sweep", "explain", "conformance"])
def test_command_exits_2_with_one_line_on_a_database_without_tracefence(command, empty_db: str):
    done = tracefence(*COMMANDS[command], "--dsn", empty_db)
    assert_one_line_failure(done, "")


def test_conformance_exits_2_when_its_report_cannot_be_written(db: Database, tmp_path: Path):
    target = tmp_path / "missing" / "report.json"
    done = tracefence("conformance", "--dsn", db.admin_conninfo, "--format", "json",
                      "--output", str(target))
    assert_one_line_failure(done, f"{target}: No such file or directory")
    assert not target.parent.exists()

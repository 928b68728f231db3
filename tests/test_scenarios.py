"""Every scenario file in conformance/ holds against the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.world import Database
from tracefence import scenarios

SCENARIOS = sorted(
    p for p in (Path(__file__).parents[1] / "conformance").glob("*.toml")
    if p.name != "manifest.toml"  # the tenancy manifest, not a scenario
)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_visibility_holds(db: Database, path: Path) -> None:
    result = scenarios.run(
        path,
        app_conninfo=db.app_conninfo,
        service_conninfo=db.service_conninfo,
        token_secret=db.token_secret,
    )
    assert result.mismatches == []


def test_a_wrong_expectation_is_reported(db: Database, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        (Path(__file__).parents[1] / "conformance" / "trace_access_guide.toml").read_text().replace(
            '[expect.developer]\n"telemetry.traces" = ["checkout-staging"]',
            '[expect.developer]\n"telemetry.traces" = ["checkout-prod", "checkout-staging"]',
        )
    )
    result = scenarios.run(
        broken,
        app_conninfo=db.app_conninfo,
        service_conninfo=db.service_conninfo,
        token_secret=db.token_secret,
    )
    assert [(m.principal, m.table, m.actual) for m in result.mismatches] == [
        ("developer", "telemetry.traces", ["checkout-staging"])
    ]

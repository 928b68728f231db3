"""An access change that waits for a concurrent deletion of its project fails with the
contract's error once the deletion commits (42501 naming only what it was passed, as for a
resource that never existed) and writes nothing: no P0002 from a locking re-read, no 23502 from
an audit row without a scope (issue 14, SPEC §1.4)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.world import Database, Org, build_org
from tracefence import PermissionDenied, api


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=1, projects_per_workspace=1)


def _calls(db: Database, org: Org) -> dict[str, tuple[Callable[[Any], object], str]]:
    """Each call at the organisation's project, and the id its error must name."""
    project = org.projects[0]
    user = db.create_user()
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "k", project.id, ["traces:read"])
    return {
        "grant_role": (lambda c: api.grant_role(c, user, "project_developer", project.id), str(project.id)),
        "create_api_key": (
            lambda c: api.create_api_key(c, "k2", project.id, ["traces:read"]), str(project.id)
        ),
        "set_api_key_scopes": (lambda c: api.set_api_key_scopes(c, key.id, ["traces:write"]), str(key.id)),
        "set_environment_production": (
            lambda c: api.set_environment_production(c, project.staging, True), str(project.staging)
        ),
    }


def _waiting_for_a_lock(db: Database, pid: int) -> bool:
    return db.scalar(
        "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity"
        " WHERE pid = %s", [pid],
    ) is True


@pytest.mark.parametrize(
    "call", ["grant_role", "create_api_key", "set_api_key_scopes", "set_environment_production"]
)
def test_an_access_change_racing_the_deletion_of_its_project_fails_clearly_and_writes_nothing(
    db: Database, org: Org, call: str
) -> None:
    change, named = _calls(db, org)[call]
    deleting = db.app(autocommit=False)
    api.begin_request(deleting, db.fence().credential_for(user=org.owner))
    api.delete_project(deleting, org.projects[0].id)  # holds the project's rows until commit
    outcome: dict[str, Any] = {}

    def racing() -> None:
        try:
            with db.fence().request(user=org.owner) as conn:
                outcome["pid"] = conn.info.backend_pid
                conn.execute("SET LOCAL statement_timeout = '30s'")  # a regression fails, not hangs
                change(conn)
        except Exception as error:  # the assertions below say what it must be
            outcome["error"] = error

    thread = threading.Thread(target=racing)
    thread.start()
    deadline = time.monotonic() + 20
    while not ("pid" in outcome and _waiting_for_a_lock(db, outcome["pid"])):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
    deleting.commit()
    after_deletion = db.snapshot()
    thread.join(40)
    error = outcome.get("error")
    assert isinstance(error, PermissionDenied), repr(error)
    assert error.sqlstate == "42501" and named in str(error)
    assert db.snapshot() == after_deletion

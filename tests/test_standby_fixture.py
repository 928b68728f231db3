"""The hot standby fixture: a real streaming replica of the test server."""

from __future__ import annotations

import psycopg
import pytest

from tests.standby import Standby
from tests.standby import standby as standby_fixture  # noqa: F401
from tests.world import Database


def test_committed_table_reaches_the_standby(db: Database, standby: Standby) -> None:
    with db.admin() as conn:
        conn.execute("CREATE TABLE public.standby_probe (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO public.standby_probe VALUES (1, 'one'), (2, 'two')")

    standby.wait_for_replay()

    with standby.admin() as conn:
        rows = conn.execute("SELECT id, label FROM public.standby_probe ORDER BY id").fetchall()
    assert rows == [(1, "one"), (2, "two")]


def test_standby_is_read_only(standby: Standby) -> None:
    with standby.admin() as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), current_database()").fetchone()
        assert row == (True, standby.name)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as raised:
            conn.execute("CREATE TABLE public.standby_write (id int)")
    assert raised.value.sqlstate == "25006"

    # The tests' application login exists on the standby too (roles replicate with the cluster).
    with standby.app() as conn:
        row = conn.execute("SELECT current_user, pg_is_in_recovery()").fetchone()
    assert row == (standby.db.app_login, True)

"""A psycopg connection pool whose connections come back clean.

The request context itself is transaction-local: it ends with the transaction whatever the
code inside the request does. But a request can leave *session* state behind on a pooled
connection (settings made with ``SET`` or ``set_config(..., false)``, ``SET ROLE``, prepared
statements, temporary tables and functions, advisory locks, ``LISTEN``). ``RequestPool`` wipes
all of it with ``DISCARD ALL`` every time a connection is returned, so the next checkout, by
``Fence.request`` or by any other code using the pool, starts from a fresh session.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

Connection = psycopg.Connection[Any]

# Options RequestPool sets itself: a caller's value would undo the guarantee.
_FIXED_OPTIONS = ("reset", "check", "connection_class")


def reset_session(conn: Connection) -> None:
    """Return `conn` to a fresh session: ``DISCARD ALL``, and no server-side prepared statements.

    Prepared statements are session state that could stand between the next user and the
    database, so psycopg stops making them on this connection (``prepare_threshold=None``,
    which PgBouncer in transaction pooling needs as well). The connection must be idle.
    """
    conn.prepare_threshold = None
    autocommit = conn.autocommit
    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
    try:
        conn.execute("DISCARD ALL")
    finally:
        conn.autocommit = autocommit


class RequestPool(ConnectionPool[Connection]):
    """A ``psycopg_pool.ConnectionPool`` for ``Fence``: every connection is returned clean.

    - ``reset=reset_session``: ``DISCARD ALL`` when a connection comes back; a connection that
      cannot be reset (broken, or left in a transaction it cannot roll back) is discarded;
    - ``check=ConnectionPool.check_connection``: a connection that died while it sat in the
      pool is replaced before anyone gets it;
    - ``prepare_threshold=None`` on every connection: no server-side prepared statements.

    Everything else is ``ConnectionPool``'s: ``RequestPool(conninfo, min_size=2, max_size=10)``.
    """

    def __init__(self, conninfo: str = "", *, kwargs: dict[str, Any] | None = None,
                 **options: Any) -> None:
        fixed = sorted(set(options) & set(_FIXED_OPTIONS))
        if fixed:
            raise TypeError(f"RequestPool sets {', '.join(fixed)} itself")
        connect_options = dict(kwargs or {})
        if connect_options.get("prepare_threshold") is not None:
            raise ValueError("RequestPool connections never prepare statements: "
                             "prepare_threshold must be None")
        connect_options["prepare_threshold"] = None
        super().__init__(
            conninfo,
            kwargs=connect_options,
            reset=reset_session,
            check=ConnectionPool.check_connection,
            **options,
        )

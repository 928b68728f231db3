"""SQLAlchemy 2 sessions inside a tracefence request (the ``sqlalchemy`` extra).

``Fence.session(user=...)`` opens the request exactly as ``Fence.request`` does (same checkout,
same clean session, same ``iam.begin_request`` call) and wraps *that* psycopg connection for
SQLAlchemy; SQLAlchemy never opens, pools or closes a connection itself:

- one ``Engine`` per ``Fence`` supplies the dialect and the compiled-statement cache; its own
  pool refuses to connect;
- each session gets a throw-away ``StaticPool`` around the request's connection, with
  ``reset_on_return=None``: returning it to SQLAlchemy neither closes nor resets it;
- SQLAlchemy owns the transaction: the request is opened as its first statement, the block
  commits at the end and rolls back on error. The ``Session`` works in a savepoint
  (``join_transaction_mode="create_savepoint"``), so ``session.commit()`` inside the block is a
  checkpoint of the request, never the end of it (the request's context would end with it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, StaticPool

from tracefence.errors import TracefenceError

Connection = psycopg.Connection[Any]

# Session options the request decides: a caller's value would take the transaction from it.
_FIXED_OPTIONS = ("bind", "binds", "join_transaction_mode", "autobegin")


def _no_connections() -> Any:
    raise TracefenceError(
        "this engine only wraps connections handed out by Fence.session(); "
        "open a session with fence.session(user=...) or fence.session(api_key=...)"
    )


class Sessions:
    """What one Fence needs to open SQLAlchemy sessions: an engine with no connections."""

    def __init__(self) -> None:
        self.engine: Engine = create_engine(
            "postgresql+psycopg://", poolclass=NullPool, creator=_no_connections
        )
        self._initialized = False
        self._lock = threading.Lock()

    def _wrap(self, conn: Connection) -> SAConnection:
        def creator() -> Any:  # psycopg's Connection, as SQLAlchemy's DBAPI connection
            return conn

        pool = StaticPool(creator, reset_on_return=None, dialect=self.engine.dialect)
        return SAConnection(self.engine, pool.connect())

    def _initialize(self, conn: Connection) -> None:
        """Let the dialect read the server's version and settings, once, outside any request
        (create_engine would do it on its first connection; this engine makes none)."""
        with self._lock:
            if self._initialized:
                return
            with self._wrap(conn) as sa_conn:
                self.engine.dialect.initialize(sa_conn)
                sa_conn.rollback()
            self._initialized = True

    @contextmanager
    def open(
        self, conn: Connection, begin: Callable[[Connection], None], options: dict[str, Any]
    ) -> Iterator[Session]:
        """A Session on `conn` whose transaction is the request `begin` opens."""
        fixed = sorted(set(options) & set(_FIXED_OPTIONS))
        if fixed:
            raise TypeError(f"Fence.session sets {', '.join(fixed)} itself")
        autocommit = conn.autocommit
        conn.autocommit = False  # the request must share the transaction SQLAlchemy commits
        try:
            if not self._initialized:
                self._initialize(conn)
            with self._wrap(conn) as sa_conn, sa_conn.begin():
                begin(conn)
                with Session(bind=sa_conn, join_transaction_mode="create_savepoint",
                             **options) as session:
                    yield session
                    session.commit()
        finally:
            if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.autocommit = autocommit


"""Opening requests under a verified principal.

A request is one transaction: ``iam.begin_request`` verifies the credential and fixes the
principal in a transaction-local setting, so the context ends with the transaction (commit,
rollback or error) and cannot reach the next user of a pooled connection. Python decides
nothing about access: it only passes the credential along.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from tracefence.errors import from_database
from tracefence.pool import RequestPool, reset_session
from tracefence.tokens import user_token

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tracefence.sqlalchemy import Sessions

Connection = psycopg.Connection[Any]


class Fence:
    """Opens requests on a psycopg connection pool or a connection string.

    ``user_token_secret`` is the secret set in the database with ``iam.set_token_secret``;
    it is needed only for ``request(user=...)``.
    """

    def __init__(
        self,
        pool_or_conninfo: ConnectionPool[Any] | str,
        *,
        user_token_secret: bytes | None = None,
        token_ttl: float = 60.0,
    ) -> None:
        self._source = pool_or_conninfo
        self._secret = user_token_secret
        self._token_ttl = token_ttl
        self._sessions: Sessions | None = None
        self._sessions_lock = threading.Lock()

    def credential_for(self, *, user: UUID | str | None = None, api_key: str | None = None) -> str:
        if (user is None) == (api_key is None):
            raise ValueError("give exactly one of user= or api_key=")
        if api_key is not None:
            return api_key
        if self._secret is None:
            raise ValueError("Fence(user_token_secret=...) is needed to open a request as a user")
        assert user is not None
        return user_token(self._secret, user, self._token_ttl)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A connection with a fresh session, for one request.

        A ``RequestPool`` resets every connection when it is returned; any other pool may hand
        out a connection carrying session state planted by an earlier user (prepared statements
        that wrap begin_request, temp tables, settings), so it is reset here, on checkout, by
        the same function. A connection string opens a new connection for every request.
        Server-side prepared statements are never made (PgBouncer in transaction pooling mode
        cannot keep them, and they are session state).
        """
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as conn:
                if not isinstance(self._source, RequestPool):
                    reset_session(conn)
                yield conn
        else:
            with psycopg.connect(self._source, autocommit=True, prepare_threshold=None) as conn:
                yield conn

    @staticmethod
    def _begin(conn: Connection, credential: str) -> None:
        """Open the request in the connection's current transaction."""
        # Never a prepared statement: nothing a previous user of the session defined may
        # stand between the credential and the database.
        conn.execute("SELECT iam.begin_request(%s)", [credential], prepare=False)

    @contextmanager
    def request(
        self, *, user: UUID | str | None = None, api_key: str | None = None
    ) -> Iterator[Connection]:
        """A connection inside a transaction whose principal is `user` or the `api_key`.

        The transaction commits when the block ends and rolls back if it raises; database
        errors inside the block come out as tracefence's typed errors.
        """
        credential = self.credential_for(user=user, api_key=api_key)
        try:
            with self._connection() as conn:
                autocommit = conn.autocommit
                conn.autocommit = True  # the BEGIN is ours, sent with the request
                try:
                    self._open(conn, credential)
                    try:
                        yield conn
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
                finally:
                    if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                        conn.autocommit = autocommit
        except psycopg.Error as error:
            raise from_database(error) from error

    @staticmethod
    def _open(conn: Connection, credential: str) -> None:
        """BEGIN and the request in one round trip (a pipeline), leaving the transaction open.

        ``conn`` is in autocommit mode, so psycopg adds no BEGIN of its own; a rejected
        credential rolls the transaction back before the error goes up.
        """
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute("SELECT iam.begin_request(%s)", [credential], prepare=False)
        except BaseException:
            conn.rollback()
            raise

    @contextmanager
    def session(
        self, *, user: UUID | str | None = None, api_key: str | None = None, **options: Any
    ) -> Iterator[Session]:
        """A SQLAlchemy ``Session`` whose queries run inside one request (needs the
        ``sqlalchemy`` extra).

        The request is opened as by ``request()``, on a connection from the same source; the
        block commits at the end and rolls back if it raises; database errors come out as
        tracefence's typed errors. `options` go to ``Session`` (``expire_on_commit=False`` to
        read loaded objects after the block).
        """
        credential = self.credential_for(user=user, api_key=api_key)
        try:
            import sqlalchemy.exc

            from tracefence.sqlalchemy import Sessions
        except ImportError as exc:
            raise ImportError(
                "Fence.session needs SQLAlchemy 2: pip install 'tracefence[sqlalchemy]'"
            ) from exc
        with self._sessions_lock:
            if self._sessions is None:
                self._sessions = Sessions()
            sessions = self._sessions
        try:
            with self._connection() as conn, sessions.open(
                conn, lambda c: self._begin(c, credential), options
            ) as session:
                yield session
        except psycopg.Error as error:
            raise from_database(error) from error
        except sqlalchemy.exc.DBAPIError as error:  # SQLAlchemy's wrapper of a driver error
            if isinstance(error.orig, psycopg.Error):
                raise from_database(error.orig) from error
            raise

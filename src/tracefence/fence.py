"""Opening requests under a verified principal.

A request is one transaction: ``iam.begin_request`` verifies the credential and fixes the
principal in a transaction-local setting, so the context ends with the transaction (commit,
rollback or error) and cannot reach the next user of a pooled connection. Python decides
nothing about access: it only passes the credential along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from tracefence.errors import from_database
from tracefence.tokens import user_token

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
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as conn:
                # A pooled connection may carry session state planted by an earlier request
                # (prepared statements that wrap begin_request, temp tables, settings):
                # start every request from a clean session. Server-side prepared statements
                # are session state too, so psycopg stops making them on this connection.
                conn.prepare_threshold = None
                autocommit = conn.autocommit
                conn.autocommit = True
                try:
                    conn.execute("DISCARD ALL")
                finally:
                    conn.autocommit = autocommit
                yield conn
        else:
            with psycopg.connect(self._source, autocommit=True) as conn:
                yield conn

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
            with self._connection() as conn, conn.transaction():
                # Never a prepared statement: nothing a previous user of the session defined
                # may stand between the credential and the database.
                conn.execute("SELECT iam.begin_request(%s)", [credential], prepare=False)
                yield conn
        except psycopg.Error as error:
            raise from_database(error) from error

"""Typed errors, mapped from the SQLSTATEs of SPEC §5."""

from __future__ import annotations

import re

import psycopg

_MISSING = re.compile(r"missing permission: (\S+)")


class TracefenceError(Exception):
    """Any error tracefence reports; `sqlstate` is the database's code when there is one."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class CredentialError(TracefenceError):
    """28000: the credential (API-key secret or user token) was not accepted."""


class PermissionDenied(TracefenceError):
    """42501: the request lacks a permission; `permission` names it when the database did."""

    def __init__(
        self, message: str, *, sqlstate: str | None = None, permission: str | None = None
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.permission = permission


class InvalidInput(TracefenceError):
    """22xxx: a parameter is malformed or names something unknown (role, permission, ...)."""


class ConstraintViolation(TracefenceError):
    """23xxx: the change would break a rule of the model (duplicate slug, last owner, ...)."""


class RequestStateError(TracefenceError):
    """25xxx: the transaction is not in a state to open a request."""


class SchemaVersionError(TracefenceError):
    """The database was migrated by a newer tracefence than this one: migrating it with this
    package would apply older sql/ files over newer ones."""


class RollbackBlocked(TracefenceError):
    """`migrate rollback` would drop or orphan data it was not allowed to drop; nothing was
    rolled back."""


def from_database(error: psycopg.Error) -> TracefenceError:
    """The typed error for a psycopg error; errors with another SQLSTATE become the base class."""
    state = error.sqlstate or ""
    message = error.diag.message_primary or str(error)
    if state == "28000":
        return CredentialError(message, sqlstate=state)
    if state == "42501":
        match = _MISSING.search(error.diag.message_detail or "")
        return PermissionDenied(
            message, sqlstate=state, permission=match.group(1) if match else None
        )
    if state.startswith("22"):
        return InvalidInput(message, sqlstate=state)
    if state.startswith("23"):
        return ConstraintViolation(message, sqlstate=state)
    if state.startswith("25"):
        return RequestStateError(message, sqlstate=state)
    return TracefenceError(message, sqlstate=state or None)

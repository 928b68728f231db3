"""Helpers mirroring the SQL API. Each runs one SQL call on a connection opened by
``Fence.request`` (or, for the back-office calls, a tracefence_service connection) and
raises tracefence's typed errors. None of them decides anything: the database does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from tracefence.errors import from_database

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class AuditEvent:
    """One row of audit.events."""

    id: int
    occurred_at: datetime
    event_type: str
    actor_id: UUID | None
    actor_kind: str
    principal_id: UUID | None
    principal_kind: str | None
    scope_id: UUID
    scope_tier: str
    organisation_id: UUID
    workspace_id: UUID | None
    project_id: UUID | None
    prior_permissions: frozenset[str] | None
    new_permissions: frozenset[str] | None
    cause: str
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditEvent | None:
        """The event of a row, or None for the all-NULL row of "nothing changed"."""
        if row.get("id") is None:
            return None

        def perms(value: Any) -> frozenset[str] | None:
            return None if value is None else frozenset(value)

        def uuid(value: Any) -> UUID | None:
            return None if value is None else UUID(str(value))

        occurred = row["occurred_at"]
        if isinstance(occurred, str):
            occurred = datetime.fromisoformat(occurred)
        return cls(
            id=int(row["id"]),
            occurred_at=occurred,
            event_type=row["event_type"],
            actor_id=uuid(row["actor_id"]),
            actor_kind=row["actor_kind"],
            principal_id=uuid(row["principal_id"]),
            principal_kind=row["principal_kind"],
            scope_id=UUID(str(row["scope_id"])),
            scope_tier=row["scope_tier"],
            organisation_id=UUID(str(row["organisation_id"])),
            workspace_id=uuid(row["workspace_id"]),
            project_id=uuid(row["project_id"]),
            prior_permissions=perms(row["prior_permissions"]),
            new_permissions=perms(row["new_permissions"]),
            cause=row["cause"],
            detail=row["detail"] or {},
        )


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    secret: str
    audit_event: AuditEvent | None = None


@dataclass(frozen=True)
class Explanation:
    """One line of iam.explain: a binding, key or tier and what it means for the permission."""

    granted: bool
    tier: str | None
    resource_id: UUID | None
    source: str
    role: str | None
    valid_from: datetime | None
    valid_until: datetime | None
    reason: str


def _one(conn: Connection, query: str, params: Iterable[Any] = ()) -> Any:
    try:
        with conn.transaction():
            row = conn.execute(query.encode(), list(params)).fetchone()
    except psycopg.Error as error:
        raise from_database(error) from error
    return None if row is None else row[0]


def _rows(conn: Connection, query: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    try:
        with conn.transaction():
            return conn.execute(query.encode(), list(params)).fetchall()
    except psycopg.Error as error:
        raise from_database(error) from error


def _dicts(conn: Connection, query: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query.encode(), list(params)).fetchall()
    except psycopg.Error as error:
        raise from_database(error) from error


def _event(conn: Connection, query: str, params: Iterable[Any] = ()) -> AuditEvent | None:
    rows = _dicts(conn, query, params)
    return AuditEvent.from_row(rows[0]) if rows else None


# The request
def begin_request(conn: Connection, credential: str) -> UUID:
    """Open a request in the connection's current transaction (iam.begin_request): the first
    statement of a READ COMMITTED transaction that writes anything. ``Fence.request`` does this
    for you; this is for a transaction you manage yourself."""
    try:
        row = conn.execute("SELECT iam.begin_request(%s)", [credential], prepare=False).fetchone()
    except psycopg.Error as error:
        raise from_database(error) from error
    assert row is not None
    return UUID(str(row[0]))


# Back office (tracefence_service)
def create_user(conn: Connection, email: str, display_name: str) -> UUID:
    return UUID(str(_one(conn, "SELECT iam.create_user(%s, %s)", [email, display_name])))


def set_token_secret(conn: Connection, secret: bytes) -> None:
    _one(conn, "SELECT iam.set_token_secret(%s)", [secret])


# Request context
def current_principal(conn: Connection) -> UUID | None:
    value = _one(conn, "SELECT iam.current_principal()")
    return None if value is None else UUID(str(value))


# Tenancy
def create_organisation(conn: Connection, slug: str, name: str) -> UUID:
    return UUID(str(_one(conn, "SELECT tenancy.create_organisation(%s, %s)", [slug, name])))


def create_workspace(conn: Connection, organisation: UUID, slug: str, name: str) -> UUID:
    query = "SELECT tenancy.create_workspace(%s, %s, %s)"
    return UUID(str(_one(conn, query, [organisation, slug, name])))


def create_project(conn: Connection, workspace: UUID, slug: str, name: str) -> UUID:
    query = "SELECT tenancy.create_project(%s, %s, %s)"
    return UUID(str(_one(conn, query, [workspace, slug, name])))


def create_environment(conn: Connection, project: UUID, name: str, is_production: bool) -> UUID:
    query = "SELECT tenancy.create_environment(%s, %s, %s)"
    return UUID(str(_one(conn, query, [project, name, is_production])))


def set_environment_production(
    conn: Connection, environment: UUID, is_production: bool
) -> AuditEvent | None:
    """Flip is_production; returns the environment_policy audit row (None if unchanged)."""
    query = "SELECT * FROM tenancy.set_environment_production(%s, %s)"
    return _event(conn, query, [environment, is_production])


def delete_project(conn: Connection, project: UUID) -> None:
    _one(conn, "SELECT tenancy.delete_project(%s)", [project])


def delete_workspace(conn: Connection, workspace: UUID) -> None:
    _one(conn, "SELECT tenancy.delete_workspace(%s)", [workspace])


# Roles
def grant_role(
    conn: Connection,
    principal: UUID,
    role: str,
    resource: UUID,
    valid_until: datetime | None = None,
    valid_from: datetime | None = None,
) -> AuditEvent | None:
    """Bind `role`; returns the audit row at `resource` (None when no effective set changed)."""
    query = "SELECT * FROM iam.grant_role(%s, %s, %s, %s, %s)"
    return _event(conn, query, [principal, role, resource, valid_until, valid_from])


def revoke_role(conn: Connection, principal: UUID, resource: UUID) -> AuditEvent | None:
    return _event(conn, "SELECT * FROM iam.revoke_role(%s, %s)", [principal, resource])


def explain(conn: Connection, principal: UUID, resource: UUID, permission: str) -> list[Explanation]:
    rows = _dicts(conn, "SELECT * FROM iam.explain(%s, %s, %s)", [principal, resource, permission])
    return [Explanation(**row) for row in rows]


def role_matrix(conn: Connection, organisation: UUID) -> list[dict[str, Any]]:
    return _dicts(conn, "SELECT * FROM iam.role_matrix(%s)", [organisation])


# Audit
def audit_feed(
    conn: Connection, resource: UUID, event_type: str | None = None
) -> list[AuditEvent]:
    rows = _dicts(conn, "SELECT * FROM audit.feed(%s, %s)", [resource, event_type])
    return [event for event in map(AuditEvent.from_row, rows) if event is not None]


def sweep_expired(conn: Connection) -> int:
    """Back office: record expired bindings and keys; returns the audit rows written."""
    return int(_one(conn, "SELECT iam.sweep_expired()"))


def purge_expired(conn: Connection) -> int:
    """Back office: delete audit rows older than five years; returns how many."""
    return int(_one(conn, "SELECT audit.purge_expired()"))


def delete_user(conn: Connection, user: UUID) -> int:
    """Back office: remove a user; returns the audit rows written."""
    return int(_one(conn, "SELECT iam.delete_user(%s)", [user]))


def effective_permissions(conn: Connection, principal: UUID, resource: UUID) -> frozenset[str]:
    value = _one(conn, "SELECT iam.effective_permissions(%s, %s)", [principal, resource])
    return frozenset(value or ())


# API keys
def create_api_key(
    conn: Connection,
    name: str,
    resource: UUID,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
) -> ApiKey:
    rows = _rows(
        conn,
        "SELECT key_id, secret, audit_event FROM iam.create_api_key(%s, %s, %s, %s)",
        [name, resource, list(scopes), expires_at],
    )
    key_id, secret, event = rows[0]
    return ApiKey(
        id=UUID(str(key_id)),
        secret=secret,
        audit_event=AuditEvent.from_row(event) if event else None,
    )


def set_api_key_scopes(conn: Connection, key_id: UUID, scopes: Iterable[str]) -> AuditEvent | None:
    return _event(conn, "SELECT * FROM iam.set_api_key_scopes(%s, %s)", [key_id, list(scopes)])


def revoke_api_key(conn: Connection, key_id: UUID) -> AuditEvent | None:
    return _event(conn, "SELECT * FROM iam.revoke_api_key(%s)", [key_id])


# Telemetry
def trace_access(conn: Connection, project: UUID) -> dict[str, bool]:
    rows = _rows(conn, "SELECT permission, granted FROM telemetry.trace_access(%s)", [project])
    return {permission: granted for permission, granted in rows}

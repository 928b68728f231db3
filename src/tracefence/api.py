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

from tracefence.errors import from_database

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    secret: str


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


def set_environment_production(conn: Connection, environment: UUID, is_production: bool) -> None:
    _one(conn, "SELECT tenancy.set_environment_production(%s, %s)", [environment, is_production])


# Roles
def grant_role(
    conn: Connection,
    principal: UUID,
    role: str,
    resource: UUID,
    valid_until: datetime | None = None,
    valid_from: datetime | None = None,
) -> None:
    query = "SELECT iam.grant_role(%s, %s, %s, %s, %s)"
    _one(conn, query, [principal, role, resource, valid_until, valid_from])


def revoke_role(conn: Connection, principal: UUID, resource: UUID) -> None:
    _one(conn, "SELECT iam.revoke_role(%s, %s)", [principal, resource])


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
        "SELECT key_id, secret FROM iam.create_api_key(%s, %s, %s, %s)",
        [name, resource, list(scopes), expires_at],
    )
    key_id, secret = rows[0]
    return ApiKey(id=UUID(str(key_id)), secret=secret)


def set_api_key_scopes(conn: Connection, key_id: UUID, scopes: Iterable[str]) -> None:
    _one(conn, "SELECT iam.set_api_key_scopes(%s, %s)", [key_id, list(scopes)])


def revoke_api_key(conn: Connection, key_id: UUID) -> None:
    _one(conn, "SELECT iam.revoke_api_key(%s)", [key_id])


# Telemetry
def trace_access(conn: Connection, project: UUID) -> dict[str, bool]:
    rows = _rows(conn, "SELECT permission, granted FROM telemetry.trace_access(%s)", [project])
    return {permission: granted for permission, granted in rows}

"""Attacks on the fence: what an application role with an SQL-injection bug (or a curious
developer) can try, and proof that each attempt yields nothing.

Every test shows both halves: the attacker gets nothing (or a specific SQLSTATE) and, where
it matters, a legitimate principal does see the rows, so no test passes vacuously.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.world import Database, Org, Project, build_org, visible_traces
from tracefence import (
    CredentialError,
    Fence,
    PermissionDenied,
    RequestStateError,
    TracefenceError,
    api,
    user_token,
)

Connection = psycopg.Connection[Any]

def _array(values: list[Any]) -> str:
    """A PostgreSQL array literal, as the context carries permissions and scopes."""
    return "{" + ",".join(str(v) for v in values) + "}"


ALL_PERMISSIONS = [
    "api-keys:read", "api-keys:write", "audit:read", "environments:write", "members:read",
    "members:write", "org:manage", "projects:manage", "projects:read", "traces:read",
    "traces:read:prod", "traces:write", "workspaces:manage",
]

INSERT_TRACE = "INSERT INTO telemetry.traces (project_id, environment_id, name) VALUES (%s, %s, %s)"


# --------------------------------------------------------------------------------------------
# The scene: one organisation, two projects in two workspaces, a trace of each classification
# in each project, and two project admins who may each read one project.
# --------------------------------------------------------------------------------------------


@dataclass
class Scene:
    org: Org
    a: Project
    b: Project
    traces: dict[str, UUID]  # a_prod, a_staging, b_prod, b_staging
    spans: dict[str, UUID]  # one per trace, same keys
    alice: UUID  # project_admin at a
    bob: UUID  # project_admin at b

    def of(self, project: str) -> set[UUID]:
        return {t for key, t in self.traces.items() if key.startswith(project + "_")}

    @property
    def everything(self) -> set[UUID]:
        return set(self.traces.values())


def scene(db: Database) -> Scene:
    org = build_org(db, workspaces=2, projects_per_workspace=1)
    a, b = org.projects
    traces = {
        "a_prod": db.insert_trace(a.id, a.production, "a-prod"),
        "a_staging": db.insert_trace(a.id, a.staging, "a-staging"),
        "b_prod": db.insert_trace(b.id, b.production, "b-prod"),
        "b_staging": db.insert_trace(b.id, b.staging, "b-staging"),
    }
    spans = {key: db.insert_span(t) for key, t in traces.items()}
    alice, bob = db.create_user("alice"), db.create_user("bob")
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, alice, "project_admin", a.id)
        api.grant_role(conn, bob, "project_admin", b.id)
    return Scene(org, a, b, traces, spans, alice, bob)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def token(db: Database, user: UUID) -> str:
    return user_token(db.token_secret, user)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_token(secret: bytes, claims: dict[str, Any]) -> str:
    """A user token with arbitrary claims, MAC'd with `secret` (as tracefence.tokens does)."""
    signed = "tfu_" + _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{signed}.{_b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())}"


def failure(conn: Connection, query: str | sql.Composable, params: Any = ()) -> psycopg.Error:
    """Run `query` in a savepoint (or its own transaction) and return the error it raised."""
    with pytest.raises(psycopg.Error) as caught, conn.transaction():
        conn.execute(query, params)
    return caught.value


def sqlstate(conn: Connection, query: str | sql.Composable, params: Any = ()) -> str:
    state = failure(conn, query, params).sqlstate
    assert state is not None
    return state


def denied_privilege(conn: Connection, query: str | sql.Composable, params: Any = ()) -> None:
    """The statement fails for lack of an SQL privilege (not for lack of a request)."""
    error = failure(conn, query, params)
    assert error.sqlstate == "42501", error
    assert (error.diag.message_primary or "").startswith("permission denied"), error


def ids(conn: Connection, query: str = "SELECT id FROM telemetry.traces") -> set[UUID]:
    return {row[0] for row in conn.execute(query).fetchall()}


def count(conn: Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def begin(conn: Connection, credential: str | None) -> UUID:
    row = conn.execute("SELECT iam.begin_request(%s)", [credential]).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def current_context(conn: Connection) -> str:
    row = conn.execute("SELECT current_setting('tracefence.request')").fetchone()
    assert row is not None and row[0]
    return str(row[0])


def principal(conn: Connection) -> UUID | None:
    row = conn.execute("SELECT iam.current_principal()").fetchone()
    assert row is not None
    return None if row[0] is None else UUID(str(row[0]))


def binding(conn: Connection) -> str:
    """What an attacker can compute about the current transaction: backend pid and start."""
    row = conn.execute(
        "SELECT pg_backend_pid()::text || ':' "
        "|| ((extract(EPOCH FROM transaction_timestamp()) * 1000000)::bigint)::text"
    ).fetchone()
    assert row is not None
    return str(row[0])


def assert_context_rejected(conn: Connection) -> None:
    """Inside the attacker's transaction: every fenced read fails with 28000."""
    for query in (
        "SELECT id FROM telemetry.traces",
        "SELECT id FROM telemetry.spans",
        "SELECT id FROM tenancy.projects",
        "SELECT iam.current_principal()",
    ):
        assert sqlstate(conn, query) == "28000", query


def _set_config(local: bool) -> Callable[[Connection, str], None]:
    def set_context(conn: Connection, value: str) -> None:
        conn.execute("SELECT set_config('tracefence.request', %s, %s)", [value, local])

    return set_context


def _set(scope: str) -> Callable[[Connection, str], None]:
    def set_context(conn: Connection, value: str) -> None:
        conn.execute(sql.SQL(scope + " tracefence.request = {}").format(sql.Literal(value)))

    return set_context


# Every way the application role can write the setting, transaction-local or for the session.
SET_CONTEXT: dict[str, Callable[[Connection, str], None]] = {
    "set_config local": _set_config(local=True),
    "set_config session": _set_config(local=False),
    "SET LOCAL": _set("SET LOCAL"),
    "SET": _set("SET"),
}


# --------------------------------------------------------------------------------------------
# 1. Forged, copied and edited request settings
# --------------------------------------------------------------------------------------------


def _hand_made_payload(s: Scene, bound_to: str) -> str:
    return json.dumps({
        "version": 1,
        "principal": str(s.org.owner),
        "kind": "user",
        "began_at": "2026-01-01T00:00:00+00:00",
        "grants": [
            {"resource": str(s.org.id), "role": "org_owner", "permissions": ALL_PERMISSIONS}
        ],
        "binding": bound_to,
    })


SIGNATURES: dict[str, Callable[[Database, str], str]] = {
    "zeros": lambda db, payload: "0" * 64,
    "unkeyed sha256": lambda db, payload: hashlib.sha256(payload.encode()).hexdigest(),
    "hmac with the empty key": lambda db, payload: hmac.new(
        b"", payload.encode(), hashlib.sha256
    ).hexdigest(),
    # The application knows the user-token secret: it must not be the context-signing key.
    "hmac with the user-token secret": lambda db, payload: hmac.new(
        db.token_secret, payload.encode(), hashlib.sha256
    ).hexdigest(),
}


@pytest.mark.parametrize("signature", list(SIGNATURES))
def test_hand_made_request_setting_is_rejected(db, signature):
    s = scene(db)
    attacker = db.app(autocommit=False)
    for how, set_context in SET_CONTEXT.items():
        payload = _hand_made_payload(s, binding(attacker))  # even the binding is right
        set_context(attacker, payload + "." + SIGNATURES[signature](db, payload))
        try:
            assert_context_rejected(attacker)
        except AssertionError as error:
            raise AssertionError(how) from error
        attacker.rollback()
    # Not vacuous: the principal the forgery names does see every trace.
    assert visible_traces(db, user=s.org.owner) == s.everything


GARBAGE = [
    "x",
    ".",
    "{}",
    "{}." + "0" * 64,
    "." + "0" * 64,
    "0" * 65,
    '{"principal": null}.' + "z" * 64,
    "\\x00" * 100,
]


def test_garbage_request_setting_is_rejected(db):
    s = scene(db)
    attacker = db.app(autocommit=False)
    for value in GARBAGE:
        SET_CONTEXT["set_config local"](attacker, value)
        try:
            assert_context_rejected(attacker)
        except AssertionError as error:
            raise AssertionError(value) from error
        attacker.rollback()
    assert visible_traces(db, user=s.alice) == s.of("a")


@pytest.mark.parametrize("how", list(SET_CONTEXT))
def test_context_copied_from_another_live_request_is_rejected(db, how):
    s = scene(db)
    with db.fence().request(user=s.org.owner) as victim:
        stolen = current_context(victim)
        # No request of its own.
        attacker = db.app(autocommit=False)
        SET_CONTEXT[how](attacker, stolen)
        assert_context_rejected(attacker)
        attacker.rollback()
        # A request of its own (bob's), swapped for the owner's.
        begin(attacker, token(db, s.bob))
        assert ids(attacker) == s.of("b")
        SET_CONTEXT[how](attacker, stolen)
        assert_context_rejected(attacker)
        attacker.rollback()
        # The victim's request is still open and unaffected.
        assert ids(victim) == s.everything


def test_context_copied_from_an_earlier_transaction_of_the_same_connection_is_rejected(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.org.owner))
    assert ids(conn) == s.everything
    saved = current_context(conn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    conn.commit()
    for how in ("set_config local", "SET LOCAL"):
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid  # same backend
        SET_CONTEXT[how](conn, saved)
        assert_context_rejected(conn)
        conn.rollback()
    # And it is gone by itself: a new transaction on the same connection sees nothing.
    assert principal(conn) is None
    assert ids(conn) == set()
    conn.rollback()


EDITS: dict[str, Callable[[Scene], dict[str, Any]]] = {
    "grants widened to the organisation": lambda s: {
        "grants": [{"r": "org_owner", "p": _array(ALL_PERMISSIONS), "s": _array([s.org.id])}]
    },
    "grants widened to project a": lambda s: {
        "grants": [
            {"r": "project_admin", "p": _array(ALL_PERMISSIONS), "s": _array([s.b.id, s.a.id])},
        ]
    },
    "window of a grant moved": lambda s: {
        "grants": [{"r": "project_developer", "p": _array(ALL_PERMISSIONS), "s": _array([s.b.id]),
                    "u": 99999999999999999}]
    },
    "principal swapped for the owner": lambda s: {"principal": str(s.org.owner)},
    "kind changed": lambda s: {"kind": "api_key"},
    "version bumped": lambda s: {"version": 4},
    "binding moved to no transaction": lambda s: {"binding": ""},
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_request_setting_with_kept_signature_is_rejected(db, edit):
    s = scene(db)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.bob))
    assert ids(conn) == s.of("b")
    row = conn.execute(
        "SELECT (left(r, -65)::jsonb || %s)::text || right(r, 65), right(r, 65) "
        "FROM current_setting('tracefence.request') AS r",
        [Jsonb(EDITS[edit](s))],
    ).fetchone()
    assert row is not None
    edited, signature = row
    assert edited.endswith(signature) and edited != current_context(conn)
    with conn.transaction():  # a savepoint, rolled back below: the edit is undone
        SET_CONTEXT["set_config local"](conn, edited)
        assert_context_rejected(conn)
        raise psycopg.Rollback()
    # Same transaction, same binding: only the edit made the difference.
    assert ids(conn) == s.of("b")
    conn.rollback()


def test_clearing_the_request_setting_mid_request_makes_nothing_visible(db):
    s = scene(db)
    clearings = [
        "SELECT set_config('tracefence.request', '', true)",
        "SET LOCAL tracefence.request = ''",
        "RESET tracefence.request",
    ]
    for clear in clearings:
        with db.fence().request(user=s.org.owner) as conn:
            assert ids(conn) == s.everything
            assert count(conn, "tenancy.projects") == 2
            conn.execute(clear)
            assert principal(conn) is None
            assert ids(conn) == set()
            assert count(conn, "telemetry.spans") == 0
            assert count(conn, "tenancy.organisations") == 0
            assert count(conn, "tenancy.projects") == 0
            assert count(conn, "tenancy.environments") == 0
            state = sqlstate(conn, INSERT_TRACE, [s.a.id, s.a.staging, "after clearing"])
            assert state == "42501", clear
            assert sqlstate(conn, "SELECT telemetry.trace_access(%s)", [s.a.id]) == "42501"


# --------------------------------------------------------------------------------------------
# 2. Internal functions and tables the application role must not reach
# --------------------------------------------------------------------------------------------

INTERNAL_CALLS = {
    "iam.store_request_context": "SELECT iam.store_request_context('{\"principal\": null}')",
    "iam.request_context": "SELECT iam.request_context()",
    "iam.transaction_identity": "SELECT iam.transaction_identity()",
    "iam.extend_request": "SELECT iam.extend_request(ROW('org_owner', '{}', '{}', NULL))",
    "iam.request_grants": "SELECT * FROM iam.request_grants(now())",
    "iam.compact_grant": "SELECT iam.compact_grant(ROW('org_owner', '{}', '{}', NULL))",
    "iam.verified_context": "SELECT iam.verified_context('x')",
    "iam.user_grants": "SELECT iam.user_grants(gen_random_uuid(), now())",
    "iam.key_grants": "SELECT iam.key_grants(gen_random_uuid(), now())",
    "iam.fence_key": "SELECT iam.fence_key('traces:read', true)",
    "iam.planned_tenants": "SELECT iam.planned_tenants('organisation_id')",
    "iam.install_fence": "SELECT iam.install_fence('telemetry.traces', 'x', NULL, 'x', true, 'x')",
    "iam.verify_user_token": "SELECT iam.verify_user_token('tfu_x.y')",
    "iam.effective_permission_set": (
        "SELECT iam.effective_permission_set(gen_random_uuid(), gen_random_uuid(), now())"
    ),
    "iam.hmac_pads": "SELECT iam.hmac_pads('\\x00'::bytea)",
    "iam.hmac_sha256": "SELECT iam.hmac_sha256('\\x00', '\\x00', '\\x00')",
    "iam.require_request": "SELECT iam.require_request()",
    "iam.require_user_request": "SELECT iam.require_user_request('x')",
    "iam.require_permission": "SELECT iam.require_permission(gen_random_uuid(), 'traces:read')",
    "iam.require_role_permissions": (
        "SELECT iam.require_role_permissions(gen_random_uuid(), 'org_owner', 'x')"
    ),
    "iam.require_other_owner": (
        "SELECT iam.require_other_owner(gen_random_uuid(), gen_random_uuid())"
    ),
    "iam.valid_scopes": "SELECT iam.valid_scopes('{traces:read}')",
    "iam.require_key_authority": (
        "SELECT iam.require_key_authority(gen_random_uuid(), '{traces:read}')"
    ),
    "iam.lock_api_key": "SELECT iam.lock_api_key(gen_random_uuid(), '{}')",
    "iam.create_user": "SELECT iam.create_user('mallory@example.test', 'Mallory')",
    "iam.set_token_secret": "SELECT iam.set_token_secret(convert_to(repeat('k', 40), 'UTF8'))",
    "iam.delete_user": "SELECT iam.delete_user(gen_random_uuid())",
    "iam.sweep_expired": "SELECT iam.sweep_expired()",
    "iam.lock_access": "SELECT iam.lock_access(gen_random_uuid(), gen_random_uuid())",
    "iam.sweep_principal": "SELECT iam.sweep_principal(gen_random_uuid(), gen_random_uuid())",
    "audit.purge_expired": "SELECT audit.purge_expired()",
    "telemetry.classify_trace": "SELECT telemetry.classify_trace()",
    "telemetry.stamp_span": "SELECT telemetry.stamp_span()",
    "telemetry.keep_capture_scope": "SELECT telemetry.keep_capture_scope()",
    "tenancy.require_slug": "SELECT tenancy.require_slug('x', 'y')",
    "tenancy.require_name": "SELECT tenancy.require_name('x')",
}


@pytest.mark.parametrize("function", list(INTERNAL_CALLS))
def test_internal_function_is_not_executable_by_the_app_role(db, function):
    s = scene(db)
    before = db.snapshot()
    assert db.scalar("SELECT count(*) FROM pg_proc WHERE oid::regproc::text = %s", [function])
    # Without a request, and inside the owner's request: privilege, not the request, stops it.
    denied_privilege(db.app(), INTERNAL_CALLS[function])
    with db.fence().request(user=s.org.owner) as conn:
        denied_privilege(conn, INTERNAL_CALLS[function])
        assert ids(conn) == s.everything
    assert db.snapshot() == before


# Every function the application role may call: the SQL API of SPEC §5 and the accessors its
# policies use. Anything else executable by it is a way around the fence.
PUBLISHED_TO_APP = {
    "iam.begin_request(text)",
    "iam.current_principal()",
    "iam.permitted_projects(text)",
    "iam.permitted_scopes(text)",
    "iam.visible_resources()",
    "iam.request_permissions(uuid)",
    "iam.effective_permissions(uuid,uuid)",
    "iam.explain(uuid,uuid,text)",
    "iam.role_matrix(uuid)",
    "iam.grant_role(uuid,text,uuid,timestamp with time zone,timestamp with time zone)",
    "iam.grant_role(uuid,text,uuid,timestamp with time zone)",
    "iam.revoke_role(uuid,uuid)",
    "iam.create_api_key(text,uuid,text[],timestamp with time zone)",
    "iam.set_api_key_scopes(uuid,text[])",
    "iam.revoke_api_key(uuid)",
    "tenancy.create_organisation(text,text)",
    "tenancy.create_workspace(uuid,text,text)",
    "tenancy.create_project(uuid,text,text)",
    "tenancy.create_environment(uuid,text,boolean)",
    "tenancy.set_environment_production(uuid,boolean)",
    "tenancy.delete_workspace(uuid)",
    "tenancy.delete_project(uuid)",
    "telemetry.trace_access(uuid)",
    "audit.feed(uuid,text)",
}


def test_app_role_can_execute_only_the_published_functions(db):
    executable = {
        row[0]
        for row in db.app().execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc AS p "
            "JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE n.nspname IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance') "
            "AND has_function_privilege(current_user, p.oid, 'EXECUTE')"
        ).fetchall()
    }
    assert "iam.begin_request(text)" in executable
    assert executable <= PUBLISHED_TO_APP, executable - PUBLISHED_TO_APP


SECRET_TABLES = [
    "iam.request_signing_key", "iam.token_secret", "iam.api_keys", "iam.api_key_scopes",
    "iam.role_bindings", "iam.users", "iam.principals", "tenancy.resources",
    "tenancy.descendant_projects",
]


@pytest.mark.parametrize("table", SECRET_TABLES)
def test_app_role_cannot_select_internal_table(db, table):
    s = scene(db)
    _key(db, s, ["traces:read"])
    assert db.scalar(f"SELECT count(*) FROM {table}") > 0  # rows exist behind the fence
    denied_privilege(db.app(), f"SELECT * FROM {table}")
    with db.fence().request(user=s.org.owner) as conn:
        denied_privilege(conn, f"SELECT * FROM {table}")
        denied_privilege(conn, f"SELECT count(*) FROM {table}")


def _writes(s: Scene, mallory: UUID) -> list[tuple[str, str, list[Any]]]:
    org, a, b = s.org, s.a, s.b
    new = uuid.uuid4()
    return [
        ("resources insert", "INSERT INTO tenancy.resources (id, tier, organisation_id) "
         "VALUES (%s, 'organisation', %s)", [new, new]),
        ("resources update", "UPDATE tenancy.resources SET workspace_id = %s WHERE id = %s",
         [b.workspace, a.id]),
        ("resources delete", "DELETE FROM tenancy.resources WHERE id = %s", [b.id]),
        ("organisations insert", "INSERT INTO tenancy.organisations (id, slug, name) "
         "VALUES (%s, 'evil', 'Evil')", [org.id]),
        ("organisations update", "UPDATE tenancy.organisations SET name = 'pwned'", []),
        ("organisations delete", "DELETE FROM tenancy.organisations", []),
        ("workspaces insert", "INSERT INTO tenancy.workspaces (id, organisation_id, slug, name) "
         "VALUES (%s, %s, 'evil', 'Evil')", [new, org.id]),
        ("workspaces update", "UPDATE tenancy.workspaces SET name = 'pwned'", []),
        ("workspaces delete", "DELETE FROM tenancy.workspaces", []),
        ("projects insert", "INSERT INTO tenancy.projects "
         "(id, organisation_id, workspace_id, slug, name) VALUES (%s, %s, %s, 'evil', 'Evil')",
         [new, org.id, a.workspace]),
        ("projects update", "UPDATE tenancy.projects SET workspace_id = %s", [a.workspace]),
        ("projects delete", "DELETE FROM tenancy.projects", []),
        ("environments insert", "INSERT INTO tenancy.environments (project_id, name, "
         "is_production) VALUES (%s, 'evil', false)", [b.id]),
        ("environments update", "UPDATE tenancy.environments SET is_production = false", []),
        ("environments delete", "DELETE FROM tenancy.environments", []),
        ("role_bindings insert", "INSERT INTO iam.role_bindings "
         "(principal_id, resource_id, tier, role) VALUES (%s, %s, 'organisation', 'org_owner')",
         [mallory, org.id]),
        ("role_bindings update", "UPDATE iam.role_bindings SET role = 'project_owner'", []),
        ("api_keys update", "UPDATE iam.api_keys SET revoked_at = NULL", []),
        ("api_key_scopes insert", "INSERT INTO iam.api_key_scopes (key_id, permission) "
         "SELECT id, 'members:write' FROM iam.api_keys", []),
        ("users update", "UPDATE iam.users SET disabled_at = NULL", []),
        ("token_secret update", "UPDATE iam.token_secret SET inner_pad = outer_pad", []),
        ("signing key update", "UPDATE iam.request_signing_key SET inner_pad = outer_pad", []),
        ("descendant projects widened", "UPDATE tenancy.descendant_projects SET projects = %s",
         [[a.id, b.id]]),
        ("traces update", "UPDATE telemetry.traces SET name = 'pwned'", []),
        ("traces update scope", "UPDATE telemetry.traces SET project_id = %s", [a.id]),
        ("traces delete", "DELETE FROM telemetry.traces", []),
        ("spans update", "UPDATE telemetry.spans SET name = 'pwned'", []),
        ("spans delete", "DELETE FROM telemetry.spans", []),
        ("traces truncate", "TRUNCATE telemetry.traces CASCADE", []),
        ("audit insert", "INSERT INTO audit.events DEFAULT VALUES", []),
        ("audit update", "UPDATE audit.events SET occurred_at = now()", []),
        ("audit delete", "DELETE FROM audit.events", []),
    ]


def test_app_role_cannot_write_tables_it_was_not_granted(db):
    s = scene(db)
    mallory = db.create_user("mallory")
    with db.fence().request(user=s.org.owner) as conn:
        api.create_api_key(conn, "k", s.a.id, ["traces:read"])
    before = db.snapshot()
    writes = _writes(s, mallory)
    for label, query, params in writes:
        denied_privilege(db.app(), query, params)  # no request
        # The organisation owner's request: RLS would admit these rows; privileges do not.
        with db.fence().request(user=s.org.owner) as conn:
            try:
                denied_privilege(conn, query, params)
            except AssertionError as error:
                raise AssertionError(label) from error
    assert db.snapshot() == before


def test_app_login_cannot_become_a_privileged_role(db):
    app = db.app()
    for role in ("tracefence_owner", "tracefence_service", db.server.user):
        denied_privilege(app, sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        denied_privilege(
            app, sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(role))
        )
    # A per-role default would plant a value in every later session of the login.
    denied_privilege(app, "ALTER ROLE CURRENT_USER SET tracefence.request = 'x'")
    # Only a leakproof function may see rows before the policy filters them.
    leakproof = "CREATE FUNCTION pg_temp.f(text) RETURNS bool LANGUAGE sql LEAKPROOF AS 'SELECT true'"
    assert sqlstate(app, leakproof) == "42501"
    row = app.execute(
        "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb "
        "FROM pg_roles AS r WHERE r.rolname = current_user"
    ).fetchone()
    assert row == (False, False, False, False)
    owned = app.execute(
        "SELECT (SELECT count(*) FROM pg_class WHERE pg_has_role(relowner, 'USAGE') "
        "AND relnamespace <> pg_my_temp_schema()) "
        "+ (SELECT count(*) FROM pg_proc WHERE pg_has_role(proowner, 'USAGE') "
        "AND pronamespace <> pg_my_temp_schema()) "
        "+ (SELECT count(*) FROM pg_namespace WHERE pg_has_role(nspowner, 'USAGE') "
        "AND nspname NOT LIKE 'pg\\_temp\\_%%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%%')"
    ).fetchone()
    assert owned == (0,)


# --------------------------------------------------------------------------------------------
# 3. search_path shadowing, leaky functions, statistics
# --------------------------------------------------------------------------------------------

SHADOWS = [
    # Tables named like those the definer functions read, filled to grant the attacker more.
    "CREATE TEMP TABLE resources (id uuid, tier text, organisation_id uuid, workspace_id uuid)",
    "CREATE TEMP TABLE role_bindings (principal_id uuid, resource_id uuid, tier text, "
    "role text, valid_from timestamptz, valid_until timestamptz)",
    "CREATE TEMP TABLE request_signing_key (singleton boolean, inner_pad bytea, "
    "outer_pad bytea, created_at timestamptz)",
    "CREATE TEMP TABLE token_secret (singleton boolean, inner_pad bytea, outer_pad bytea, "
    "set_at timestamptz)",
    "CREATE TEMP TABLE api_keys (id uuid, secret_hash bytea, revoked_at timestamptz, "
    "expires_at timestamptz, resource_id uuid)",
    "CREATE TEMP TABLE traces (id uuid, project_id uuid, is_production boolean)",
    # Functions named like those the definer functions call.
    "CREATE FUNCTION pg_temp.sha256(bytea) RETURNS bytea LANGUAGE sql "
    "AS $$ SELECT '\\x00'::bytea $$",
    "CREATE FUNCTION pg_temp.current_setting(text, boolean) RETURNS text LANGUAGE sql "
    "AS $$ SELECT NULL::text $$",
    "CREATE FUNCTION pg_temp.pg_backend_pid() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    "CREATE FUNCTION pg_temp.hmac_sha256(bytea, bytea, bytea) RETURNS bytea LANGUAGE sql "
    "AS $$ SELECT '\\x00'::bytea $$",
    "CREATE FUNCTION pg_temp.request_context() RETURNS jsonb LANGUAGE sql "
    "AS $$ SELECT '{}'::jsonb $$",
]


def test_temp_objects_shadowing_definer_names_do_not_move_the_fence(db):
    s = scene(db)
    attacker = db.app(autocommit=False)
    for statement in SHADOWS:
        attacker.execute(statement)
    key = b"k" * 64  # the attacker's own signing key, planted where a careless lookup finds it
    attacker.execute(
        "INSERT INTO pg_temp.request_signing_key VALUES (true, %s, %s, now())",
        [bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)],
    )
    attacker.execute(
        "INSERT INTO pg_temp.resources SELECT %s, 'project', %s, %s",
        [s.a.id, s.org.id, s.b.id],  # project a, listed under the resource bob holds
    )
    attacker.execute(
        "INSERT INTO pg_temp.role_bindings VALUES (%s, %s, 'organisation', 'org_owner', "
        "NULL, NULL)",
        [s.bob, s.org.id],
    )
    attacker.execute("SET search_path = pg_temp, iam, tenancy, telemetry, public")
    attacker.commit()

    # A real request as bob still sees only bob's project.
    assert begin(attacker, token(db, s.bob)) == s.bob
    assert principal(attacker) == s.bob
    assert ids(attacker, "SELECT id FROM telemetry.traces") == s.of("b")
    assert ids(attacker, "SELECT id FROM tenancy.projects") == {s.b.id}
    attacker.rollback()

    # A context signed with the planted key is still a forgery.
    payload = _hand_made_payload(s, binding(attacker))
    forged = payload + "." + hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    SET_CONTEXT["set_config local"](attacker, forged)
    assert_context_rejected(attacker)
    attacker.rollback()

    # Credentials still have to be real.
    for credential in ("tfk_" + "0" * 64, signed_token(b"", {"sub": str(s.org.owner),
                                                             "exp": time.time() + 60})):
        assert sqlstate(attacker, "SELECT iam.begin_request(%s)", [credential]) == "28000"
    attacker.rollback()
    assert visible_traces(db, user=s.org.owner) == s.everything


def test_security_definer_functions_pin_search_path_and_are_not_public(db):
    rows = db.admin().execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, "
        "has_function_privilege('public', p.oid, 'EXECUTE'), "
        "EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a "
        "        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'), "
        "r.rolname, r.rolsuper, r.rolcanlogin, "
        "pg_has_role(%s, r.oid, 'MEMBER') OR pg_has_role(%s, r.oid, 'MEMBER') "
        "FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        "JOIN pg_roles AS r ON r.oid = p.proowner "
        "WHERE n.nspname IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance') "
        "AND p.prosecdef ORDER BY 1",
        [db.app_login, db.service_login],
    ).fetchall()
    names = {row[0] for row in rows}
    assert {"iam.begin_request(text)", "iam.current_principal()",
            "telemetry.classify_trace()"} <= names  # not vacuous
    app = db.app()
    for name, config, public_has, public_acl, owner, superuser, login, assumable in rows:
        # Owned by a package role: no superuser, no login, not one the app or service can be.
        assert owner.startswith("tracefence_"), f"{name} is owned by {owner}"
        assert not (superuser or login or assumable), f"{name} is owned by {owner}"
        assert not public_has and not public_acl, f"{name} is executable by PUBLIC"
        paths = [c for c in config or [] if c.startswith("search_path=")]
        assert len(paths) == 1, f"{name} does not pin search_path"
        schemas = [part.strip().strip('"') for part in paths[0].split("=", 1)[1].split(",")]
        # pg_temp must be listed, and last: left out, it would be searched first.
        assert schemas[-1] == "pg_temp", f"{name}: {paths[0]}"
        for schema in schemas[:-1]:
            row = app.execute(
                "SELECT has_schema_privilege(%s, 'CREATE')", [schema]
            ).fetchone()
            assert row == (False,), f"{name}: the app role can create objects in {schema}"


def test_leaky_function_in_a_where_clause_sees_only_permitted_rows(db):
    s = scene(db)
    attacker = db.app(autocommit=False)
    attacker.execute("CREATE TEMP TABLE loot (id uuid, name text)")
    attacker.execute(
        "CREATE FUNCTION pg_temp.leak(id uuid, name text) RETURNS boolean "
        "LANGUAGE plpgsql COST 0.0000001 AS $$ "
        "BEGIN INSERT INTO pg_temp.loot VALUES (id, name); RETURN true; END $$"
    )
    attacker.commit()
    for table in ("telemetry.traces", "telemetry.spans"):
        begin(attacker, token(db, s.alice))
        seen = ids(attacker, f"SELECT id FROM {table} AS t WHERE pg_temp.leak(t.id, t.name)")
        assert len(seen) == 2
        attacker.commit()
    looted = ids(attacker, "SELECT id FROM pg_temp.loot")
    assert looted == s.of("a") | {s.spans["a_prod"], s.spans["a_staging"]}
    # Without a request, nothing reaches the function.
    attacker.execute("TRUNCATE pg_temp.loot")
    assert ids(attacker, "SELECT id FROM telemetry.traces AS t "
                         "WHERE pg_temp.leak(t.id, t.name)") == set()
    assert ids(attacker, "SELECT id FROM pg_temp.loot") == set()
    attacker.rollback()


def test_planner_statistics_do_not_reveal_hidden_values(db):
    s = scene(db)
    admin = db.admin()
    admin.execute("ANALYZE telemetry.traces")
    query = ("SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats "
             "WHERE schemaname IN ('telemetry', 'tenancy', 'iam')")
    assert "b-prod" in str(admin.execute(query).fetchall())  # the statistics hold the names
    app = db.app()
    assert app.execute(query).fetchall() == []
    with db.fence().request(user=s.alice) as conn:
        assert conn.execute(query).fetchall() == []


# --------------------------------------------------------------------------------------------
# 4. Capture-time classification and scope cannot be changed
# --------------------------------------------------------------------------------------------

TRACE_UPDATES: dict[str, Callable[[Scene], tuple[str, list[Any]]]] = {
    "is_production flipped": lambda s: ("is_production = NOT is_production", []),
    "moved to another project": lambda s: ("project_id = %s", [s.b.id]),
    "moved to another environment": lambda s: ("environment_id = %s", [s.a.staging]),
    "moved to another project's environment": lambda s: (
        "project_id = %s, environment_id = %s", [s.b.id, s.b.production]
    ),
    "moved and reclassified": lambda s: (
        "project_id = %s, environment_id = %s, is_production = false", [s.b.id, s.b.staging]
    ),
}


@pytest.mark.parametrize("as_owner_role", [False, True], ids=["superuser", "tracefence_owner"])
@pytest.mark.parametrize("change", list(TRACE_UPDATES))
def test_captured_trace_cannot_be_reclassified_or_moved_even_by_the_owner(
    db, change, as_owner_role
):
    s = scene(db)
    admin = db.admin()
    if as_owner_role:
        admin.execute("SET ROLE tracefence_owner")
    assignments, params = TRACE_UPDATES[change](s)
    before = db.snapshot()
    query = f"UPDATE telemetry.traces SET {assignments} WHERE id = %s"
    assert sqlstate(admin, query, [*params, s.traces["a_prod"]]) == "23514"
    assert db.snapshot() == before
    # Not a blanket block: other columns of a captured trace can be updated behind the fence.
    admin.execute("UPDATE telemetry.traces SET name = 'renamed' WHERE id = %s",
                  [s.traces["a_prod"]])
    assert db.scalar("SELECT is_production FROM telemetry.traces WHERE id = %s",
                     [s.traces["a_prod"]]) is True


SPAN_UPDATES: dict[str, Callable[[Scene], tuple[str, list[Any]]]] = {
    "is_production flipped": lambda s: ("is_production = NOT is_production", []),
    "moved to another project": lambda s: ("project_id = %s", [s.b.id]),
    "moved to another environment": lambda s: ("environment_id = %s", [s.a.staging]),
    "moved to another trace of its project": lambda s: ("trace_id = %s", [s.traces["a_staging"]]),
    "moved to another project's trace": lambda s: (
        "trace_id = %s, project_id = %s, environment_id = %s",
        [s.traces["b_prod"], s.b.id, s.b.production],
    ),
}


@pytest.mark.parametrize("as_owner_role", [False, True], ids=["superuser", "tracefence_owner"])
@pytest.mark.parametrize("change", list(SPAN_UPDATES))
def test_captured_span_cannot_be_reclassified_or_moved_even_by_the_owner(
    db, change, as_owner_role
):
    s = scene(db)
    admin = db.admin()
    if as_owner_role:
        admin.execute("SET ROLE tracefence_owner")
    assignments, params = SPAN_UPDATES[change](s)
    before = db.snapshot()
    query = f"UPDATE telemetry.spans SET {assignments} WHERE id = %s"
    assert sqlstate(admin, query, [*params, s.spans["a_prod"]]) == "23514"
    assert db.snapshot() == before


@pytest.mark.parametrize("table", ["telemetry.traces", "telemetry.spans"])
def test_app_role_cannot_update_telemetry_even_with_write_permission(db, table):
    s = scene(db)
    before = db.snapshot()
    with db.fence().request(user=s.alice) as conn:  # traces:write at a
        assert count(conn, table) == 2
        for assignments in ("is_production = NOT is_production", "name = 'x'",
                            f"project_id = '{s.b.id}'"):
            denied_privilege(conn, f"UPDATE {table} SET {assignments}")
        denied_privilege(conn, f"DELETE FROM {table}")
    assert db.snapshot() == before


def test_trace_naming_a_contradicting_classification_is_rejected(db):
    s = scene(db)
    query = ("INSERT INTO telemetry.traces (project_id, environment_id, name, is_production) "
             "VALUES (%s, %s, 'lie', %s)")
    before = db.snapshot()
    with db.fence().request(user=s.alice) as conn:
        assert sqlstate(conn, query, [s.a.id, s.a.production, False]) == "23514"
        assert sqlstate(conn, query, [s.a.id, s.a.staging, True]) == "23514"
    admin = db.admin()
    assert sqlstate(admin, query, [s.a.id, s.a.production, False]) == "23514"
    assert db.snapshot() == before
    # Not vacuous: the same insert with the true value, or none, is accepted and stamped.
    with db.fence().request(user=s.alice) as conn:
        conn.execute(query, [s.a.id, s.a.production, True])
        conn.execute(INSERT_TRACE, [s.a.id, s.a.production, "omitted"])
    assert db.scalar("SELECT bool_and(is_production) FROM telemetry.traces "
                     "WHERE name IN ('lie', 'omitted')") is True


def test_trace_cannot_be_written_into_another_project(db):
    s = scene(db)
    before = db.snapshot()
    with db.fence().request(user=s.alice) as conn:
        # Another project, with its own environment: the write policy refuses.
        assert sqlstate(conn, INSERT_TRACE, [s.b.id, s.b.staging, "x"]) == "42501"
        # Alice's project with another project's environment: the foreign key refuses.
        assert sqlstate(conn, INSERT_TRACE, [s.a.id, s.b.staging, "x"]) == "23503"
    assert db.snapshot() == before


def test_span_cannot_point_at_another_projects_trace(db):
    s = scene(db)
    foreign = s.traces["b_staging"]
    before = db.snapshot()
    with db.fence().request(user=s.alice) as conn:
        # Stamped from bob's trace, the span belongs to bob's project: refused.
        assert sqlstate(conn, "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'x')",
                        [foreign]) == "42501"
        # Naming alice's project against bob's trace: refused by the foreign key, exactly as
        # for a trace id that does not exist (nothing says bob's trace is there).
        named = "INSERT INTO telemetry.spans (trace_id, project_id, name) VALUES (%s, %s, 'x')"
        assert sqlstate(conn, named, [foreign, s.a.id]) == "23503"
        assert sqlstate(conn, named, [uuid.uuid4(), s.a.id]) == "23503"
        # A parent span of another trace: refused.
        assert sqlstate(
            conn, "INSERT INTO telemetry.spans (trace_id, parent_span_id, name) "
            "VALUES (%s, %s, 'x')", [s.traces["a_staging"], s.spans["b_staging"]],
        ) == "23503"
    # Behind the fence too: trace ids are unique per project, and project a has no such trace.
    assert sqlstate(
        db.admin(),
        "INSERT INTO telemetry.spans (trace_id, project_id, environment_id, name) "
        "VALUES (%s, %s, %s, 'x')", [foreign, s.a.id, s.a.staging],
    ) == "23503"
    assert db.snapshot() == before
    # Not vacuous: a span on alice's own trace is accepted and stamped from it.
    with db.fence().request(user=s.alice) as conn:
        row = conn.execute(
            "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'ok') "
            "RETURNING project_id, environment_id, is_production", [s.traces["a_prod"]],
        ).fetchone()
    assert row == (s.a.id, s.a.production, True)


# --------------------------------------------------------------------------------------------
# 5. No request: deny by default
# --------------------------------------------------------------------------------------------

FENCED_TABLES = [
    "telemetry.traces", "telemetry.spans", "tenancy.organisations", "tenancy.workspaces",
    "tenancy.projects", "tenancy.environments",
]


def test_without_a_request_the_app_role_sees_no_row(db):
    scene(db)
    admin, app = db.admin(), db.app()
    for table in FENCED_TABLES:
        assert count(admin, table) > 0, table
        assert count(app, table) == 0, table
    assert principal(app) is None
    row = app.execute(
        "SELECT iam.visible_resources(), iam.permitted_projects('traces:read'), "
        "iam.permitted_projects('traces:read:prod'), iam.permitted_projects('traces:write')"
    ).fetchone()
    assert row == ([], [], [], [])


def test_without_a_request_the_app_role_writes_nothing(db):
    s = scene(db)
    app = db.app()
    before = db.snapshot()
    attempts: list[tuple[str, list[Any]]] = [
        (INSERT_TRACE, [s.a.id, s.a.staging, "x"]),
        (INSERT_TRACE, [s.a.id, s.a.production, "x"]),
        ("INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'x')", [s.traces["a_prod"]]),
        ("SELECT tenancy.create_organisation('evil', 'Evil')", []),
        ("SELECT tenancy.create_workspace(%s, 'evil', 'Evil')", [s.org.id]),
        ("SELECT tenancy.create_project(%s, 'evil', 'Evil')", [s.a.workspace]),
        ("SELECT tenancy.create_environment(%s, 'evil', false)", [s.a.id]),
        ("SELECT tenancy.set_environment_production(%s, false)", [s.a.production]),
        ("SELECT iam.grant_role(%s, 'org_owner', %s)", [s.alice, s.org.id]),
        ("SELECT iam.revoke_role(%s, %s)", [s.org.owner, s.org.id]),
        ("SELECT iam.create_api_key('k', %s, '{traces:read}')", [s.org.id]),
        ("SELECT telemetry.trace_access(%s)", [s.a.id]),
        ("SELECT iam.effective_permissions(%s, %s)", [s.org.owner, s.org.id]),
    ]
    for query, params in attempts:
        assert sqlstate(app, query, params) == "42501", query
    assert db.snapshot() == before


def test_trace_insert_without_a_request_reveals_nothing_about_a_foreign_environment(db):
    s = scene(db)
    app = db.app()
    query = ("INSERT INTO telemetry.traces (project_id, environment_id, name, is_production) "
             "VALUES (%s, %s, 'probe', %s)")
    unknown = failure(app, query, [uuid.uuid4(), uuid.uuid4(), False])
    real = failure(app, query, [s.b.id, s.b.staging, False])
    contradicting = failure(app, query, [s.b.id, s.b.production, False])
    assert db.scalar("SELECT count(*) FROM telemetry.traces WHERE name = 'probe'") == 0
    # The three probes must be indistinguishable to a caller that may see nothing.
    assert real.sqlstate == unknown.sqlstate == contradicting.sqlstate
    assert "is_production is t" not in (contradicting.diag.message_primary or "")


def test_span_insert_reveals_nothing_about_another_projects_trace(db):
    s = scene(db)
    with db.fence().request(user=s.alice) as conn:  # traces:write at a only
        query = "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, 'probe')"
        unknown = sqlstate(conn, query, [uuid.uuid4()])
        foreign = sqlstate(conn, query, [s.traces["b_prod"]])
    assert foreign == unknown


# --------------------------------------------------------------------------------------------
# 6. Pooled connections
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pool(db: Database) -> Any:
    with ConnectionPool(db.app_conninfo, min_size=1, max_size=1, open=True) as pool:
        yield pool


def _checkout_state(pool: ConnectionPool[Any]) -> tuple[int, UUID | None, int, int]:
    with pool.connection() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        return (
            int(pid[0]),
            principal(conn),
            count(conn, "telemetry.traces"),
            count(conn, "tenancy.projects"),
        )


def _pid(conn: Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_pooled_connection_forgets_the_request_after_it_ends(db, pool):
    s = scene(db)
    fence = Fence(pool, user_token_secret=db.token_secret)
    with fence.request(user=s.org.owner) as conn:
        assert ids(conn) == s.everything
        pid = _pid(conn)
    assert _checkout_state(pool) == (pid, None, 0, 0)


def _insert_into_b(conn: Connection, s: Scene) -> None:
    conn.execute(INSERT_TRACE, [s.b.id, s.b.staging, "x"])


def _python_error(conn: Connection, s: Scene) -> None:
    raise RuntimeError("application bug")


def _aborted_then_python_error(conn: Connection, s: Scene) -> None:
    with contextlib.suppress(psycopg.Error):  # swallowed: the transaction is now aborted
        conn.execute("SELECT 1 / 0")
    raise RuntimeError("application bug after a swallowed error")


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_insert_into_b, PermissionDenied),
        (_python_error, RuntimeError),
        (_aborted_then_python_error, RuntimeError),
    ],
    ids=["database error", "python error", "python error in an aborted transaction"],
)
def test_pooled_connection_forgets_the_request_after_an_error(db, pool, fail, expected):
    s = scene(db)
    fence = Fence(pool, user_token_secret=db.token_secret)
    pid = None
    with pytest.raises(expected) as caught, fence.request(user=s.alice) as conn:
        assert ids(conn) == s.of("a")
        pid = _pid(conn)
        fail(conn, s)
    if isinstance(caught.value, TracefenceError):
        assert caught.value.sqlstate == "42501"
    assert _checkout_state(pool) == (pid, None, 0, 0)
    assert db.scalar("SELECT count(*) FROM telemetry.traces") == 4  # nothing half-done


def test_next_user_of_a_pooled_connection_sees_only_their_rows(db, pool):
    s = scene(db)
    fence = Fence(pool, user_token_secret=db.token_secret)
    with fence.request(user=s.alice) as conn:
        assert ids(conn) == s.of("a")
        pid = _pid(conn)
    with fence.request(user=s.bob) as conn:
        assert _pid(conn) == pid
        assert principal(conn) == s.bob
        assert ids(conn) == s.of("b")
        assert ids(conn, "SELECT id FROM tenancy.projects") == {s.b.id}
    with pytest.raises(RequestStateError), fence.request(user=s.alice) as conn:
        conn.execute("SELECT iam.begin_request(%s)", [token(db, s.bob)])
    with fence.request(user=s.bob) as conn:
        assert ids(conn) == s.of("b")


@pytest.mark.parametrize("planted", ["copy of the context", "garbage"])
def test_setting_planted_at_session_level_does_not_break_the_next_pooled_request(
    db, pool, planted
):
    s = scene(db)
    fence = Fence(pool, user_token_secret=db.token_secret)
    with fence.request(user=s.alice) as conn:
        value = current_context(conn) if planted == "copy of the context" else "x"
        conn.execute("SELECT set_config('tracefence.request', %s, false)", [value])
    # The planted value is dead (nobody sees anything through it) ...
    with pool.connection() as conn:
        assert sqlstate(conn, "SELECT id FROM telemetry.traces") == "28000"
    # ... but the next user of the connection must still be able to open a request.
    with fence.request(user=s.bob) as conn:
        assert ids(conn) == s.of("b")


# --------------------------------------------------------------------------------------------
# 7. Changes committed while a request is in flight
# --------------------------------------------------------------------------------------------


def test_role_revoked_during_a_request_holds_only_until_it_ends(db):
    s = scene(db)
    fence = db.fence()
    with fence.request(user=s.alice) as in_flight:
        assert ids(in_flight) == s.of("a")
        with fence.request(user=s.org.owner) as owner:
            api.revoke_role(owner, s.alice, s.a.id)
        assert db.scalar("SELECT count(*) FROM iam.role_bindings WHERE principal_id = %s",
                         [s.alice]) == 0  # committed
        assert ids(in_flight) == s.of("a")  # the set was fixed at begin
        assert s.traces["a_prod"] in ids(in_flight)
    assert visible_traces(db, user=s.alice) == set()
    with fence.request(user=s.alice) as conn:
        assert count(conn, "tenancy.projects") == 0
        assert sqlstate(conn, INSERT_TRACE, [s.a.id, s.a.staging, "x"]) == "42501"


def test_role_granted_during_a_request_does_not_widen_it(db):
    s = scene(db)
    fence = db.fence()
    with fence.request(user=s.alice) as in_flight:
        assert ids(in_flight) == s.of("a")
        with fence.request(user=s.org.owner) as owner:
            api.grant_role(owner, s.alice, "org_admin", s.org.id)
        assert ids(in_flight) == s.of("a")
    assert visible_traces(db, user=s.alice) == s.everything


def _key(db: Database, s: Scene, scopes: list[str]) -> api.ApiKey:
    with db.fence().request(user=s.org.owner) as conn:
        return api.create_api_key(conn, "ingest", s.a.id, scopes)


def test_api_key_sees_only_its_resource(db):
    s = scene(db)
    key = _key(db, s, ["traces:read", "traces:read:prod"])
    assert visible_traces(db, api_key=key.secret) == s.of("a")
    with db.fence().request(api_key=key.secret) as conn:
        assert principal(conn) == key.id
        assert sqlstate(conn, "SELECT tenancy.create_organisation('k', 'K')") == "42501"


def test_api_key_revoked_during_a_request_holds_only_until_it_ends(db):
    s = scene(db)
    key = _key(db, s, ["traces:read", "traces:read:prod"])
    fence = db.fence()
    with fence.request(api_key=key.secret) as in_flight:
        assert ids(in_flight) == s.of("a")
        with fence.request(user=s.org.owner) as owner:
            api.revoke_api_key(owner, key.id)
        assert ids(in_flight) == s.of("a")
    with pytest.raises(CredentialError) as caught, fence.request(api_key=key.secret):
        pass
    assert caught.value.sqlstate == "28000"


def test_api_key_scopes_edited_during_a_request_hold_only_until_it_ends(db):
    s = scene(db)
    key = _key(db, s, ["traces:read", "traces:read:prod"])
    fence = db.fence()
    with fence.request(api_key=key.secret) as in_flight:
        assert ids(in_flight) == s.of("a")
        with fence.request(user=s.org.owner) as owner:
            api.set_api_key_scopes(owner, key.id, ["traces:read"])
        assert ids(in_flight) == s.of("a")  # production still visible in flight
    assert visible_traces(db, api_key=key.secret) == {s.traces["a_staging"]}


# --------------------------------------------------------------------------------------------
# 8. Re-beginning a request
# --------------------------------------------------------------------------------------------


def test_second_begin_request_in_one_transaction_fails_25001(db):
    s = scene(db)
    conn = db.app(autocommit=False)
    assert begin(conn, token(db, s.alice)) == s.alice
    for credential in (token(db, s.bob), token(db, s.alice), token(db, s.org.owner)):
        assert sqlstate(conn, "SELECT iam.begin_request(%s)", [credential]) == "25001"
    assert principal(conn) == s.alice  # unchanged by the attempts
    assert ids(conn) == s.of("a")
    conn.rollback()
    with pytest.raises(RequestStateError) as caught, \
            db.fence().request(user=s.alice) as fenced:
        fenced.execute("SELECT iam.begin_request(%s)", [token(db, s.org.owner)])
    assert caught.value.sqlstate == "25001"


def _bad_credentials(db: Database, s: Scene) -> dict[str, str | None]:
    now = time.time()
    alice_token = token(db, s.alice)
    bob_claims = {"sub": str(s.bob), "exp": int(now + 60)}
    owner_claims = {"sub": str(s.org.owner), "exp": int(now + 60)}
    swapped_body = signed_token(b"x", owner_claims).split(".")[0]
    with db.fence().request(user=s.org.owner) as conn:
        revoked = api.create_api_key(conn, "revoked", s.org.id, ["traces:read"])
        expired = api.create_api_key(conn, "expired", s.org.id, ["traces:read"])
        live = api.create_api_key(conn, "live", s.org.id, ["traces:read"])
        api.revoke_api_key(conn, revoked.id)
    db.admin().execute("UPDATE iam.api_keys SET expires_at = now() - interval '1 second' "
                       "WHERE id = %s", [expired.id])
    disabled = db.create_user("disabled")
    db.admin().execute("UPDATE iam.users SET disabled_at = now() WHERE id = %s", [disabled])
    return {
        "owner token signed with a wrong secret": signed_token(b"w" * 40, owner_claims),
        "owner claims with alice's mac": swapped_body + "." + alice_token.split(".")[1],
        "expired owner token": signed_token(db.token_secret, {**owner_claims, "exp": now - 5}),
        "token without exp": signed_token(db.token_secret, {"sub": str(s.org.owner)}),
        "token with string exp": signed_token(
            db.token_secret, {"sub": str(s.org.owner), "exp": "99999999999"}
        ),
        "token for an unknown user": signed_token(
            db.token_secret, {**bob_claims, "sub": str(uuid.uuid4())}
        ),
        "token for a disabled user": signed_token(
            db.token_secret, {"sub": str(disabled), "exp": int(now + 60)}
        ),
        "token for an api key id": signed_token(
            db.token_secret, {"sub": str(live.id), "exp": int(now + 60)}
        ),
        "token with a padded mac": alice_token + "=",
        "guessed api key": "tfk_" + uuid.uuid4().hex + uuid.uuid4().hex,
        "revoked api key": revoked.secret,
        "expired api key": expired.secret,
        "api key in upper case": "tfk_" + live.secret[4:].upper(),
        "api key with a suffix": live.secret + "0",
        "api key hash as secret": "tfk_" + hashlib.sha256(live.secret.encode()).hexdigest(),
        "empty": "",
        "null": None,
        "sql injection": "tfk_' OR true --",
    }


def test_attacker_cannot_begin_as_someone_else_without_a_valid_credential(db):
    s = scene(db)
    credentials = _bad_credentials(db, s)
    conn = db.app(autocommit=False)
    begin(conn, token(db, s.alice))
    # With alice's request open, every re-begin is refused before the credential is looked at.
    for label, credential in credentials.items():
        state = sqlstate(conn, "SELECT iam.begin_request(%s)", [credential])
        assert state == "25001", label
    # Clearing the setting does not make room for a second request in the transaction.
    conn.execute("SELECT set_config('tracefence.request', '', true)")
    assert sqlstate(conn, "SELECT iam.begin_request(%s)", [token(db, s.bob)]) == "25001"
    conn.rollback()
    # In a transaction of its own, every bad credential is refused with one generic error.
    for label, credential in credentials.items():
        error = failure(conn, "SELECT iam.begin_request(%s)", [credential])
        assert error.sqlstate == "28000", label
        assert error.diag.message_primary == "invalid credential", label
        assert principal(conn) is None, label
        assert ids(conn) == set(), label
        conn.rollback()
    # Not vacuous: the good credentials still work.
    assert visible_traces(db, user=s.org.owner) == s.everything
    with db.fence().request(user=s.alice) as fenced:
        assert principal(fenced) == s.alice

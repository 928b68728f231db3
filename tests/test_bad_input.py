"""Bad input: a clear error with a stable SQLSTATE, a message naming the problem, and no
change to any table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.world import Database, Org, build_org
from tracefence import (
    ConstraintViolation,
    CredentialError,
    InvalidInput,
    TracefenceError,
    api,
    user_token,
)


def _assert_rejected_unchanged(
    db: Database,
    call: Callable[[], Any],
    error: type[TracefenceError],
    sqlstate: str,
    message: str,
) -> None:
    before = db.snapshot()
    with pytest.raises(error) as raised:
        call()
    assert raised.value.sqlstate == sqlstate
    assert message in str(raised.value)
    assert db.snapshot() == before


def _as_owner(db: Database, org: Org, action: Callable[[Any], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with db.fence().request(user=org.owner) as conn:
            return action(conn)
    return run


@pytest.fixture
def org(db: Database) -> Org:
    return build_org(db, workspaces=1, projects_per_workspace=1)


def test_unknown_role_is_invalid_parameter(db: Database, org: Org) -> None:
    user = db.create_user()
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.grant_role(c, user, "project_superhero", org.id)),
        InvalidInput, "22023", "unknown role: 'project_superhero'",
    )


def test_role_at_the_wrong_tier_is_invalid_parameter(db: Database, org: Org) -> None:
    user = db.create_user()
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.grant_role(c, user, "project_admin", org.workspaces[0])),
        InvalidInput, "22023", "role project_admin is bound at the project tier",
    )


def test_role_for_an_unknown_user_is_invalid_parameter(db: Database, org: Org) -> None:
    ghost = "00000000-0000-4000-8000-000000000000"
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.grant_role(c, ghost, "project_admin", org.projects[0].id)),
        InvalidInput, "22023", "unknown user",
    )


def test_grant_that_already_expired_is_invalid_parameter(db: Database, org: Org) -> None:
    user = db.create_user()
    past = datetime.now(UTC) - timedelta(minutes=1)
    _assert_rejected_unchanged(
        db,
        _as_owner(db, org, lambda c: api.grant_role(c, user, "org_member", org.id, valid_until=past)),
        InvalidInput, "22023", "valid_until must be in the future",
    )


@pytest.mark.parametrize("scopes, message", [
    (["traces:read", "traces:delete"], "unknown permission: 'traces:delete'"),
    (["members:write"], "permission members:write cannot be given to an API key"),
    (["api-keys:write"], "permission api-keys:write cannot be given to an API key"),
    (["projects:manage"], "permission projects:manage cannot be given to an API key"),
    ([], "an API key needs at least one scope"),
])
def test_bad_key_scopes_are_invalid_parameters(
    db: Database, org: Org, scopes: list[str], message: str
) -> None:
    project = org.projects[0].id
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.create_api_key(c, "k", project, scopes)),
        InvalidInput, "22023", message,
    )


def test_editing_a_key_to_an_unknown_scope_changes_nothing(db: Database, org: Org) -> None:
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "k", org.projects[0].id, ["traces:read"])
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.set_api_key_scopes(c, key.id, ["traces:read", "x:y"])),
        InvalidInput, "22023", "unknown permission: 'x:y'",
    )


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme_corp", "a" * 64, "", "acme corp"])
def test_malformed_slug_is_invalid_parameter(db: Database, slug: str) -> None:
    user = db.create_user()

    def create() -> None:
        with db.fence().request(user=user) as conn:
            api.create_organisation(conn, slug, "Acme")

    _assert_rejected_unchanged(db, create, InvalidInput, "22023", "invalid organisation slug")


def test_duplicate_slug_is_a_unique_violation(db: Database, org: Org) -> None:
    ws = org.workspaces[0]
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.create_project(c, ws, "p-0", "Again")),
        ConstraintViolation, "23505", "project slug p-0 is taken in this workspace",
    )


def test_workspace_under_a_project_is_invalid_parameter(db: Database, org: Org) -> None:
    project = org.projects[0].id
    _assert_rejected_unchanged(
        db, _as_owner(db, org, lambda c: api.create_project(c, project, "nested", "Nested")),
        InvalidInput, "22023", "is not a workspace",
    )


def _forge_token(secret: bytes, claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    signed = "tfu_" + body
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _credentials(db: Database, org: Org) -> dict[str, str]:
    """Every kind of bad credential, each for a principal that would otherwise see data."""
    owner = str(org.owner)
    with db.fence().request(user=org.owner) as conn:
        revoked = api.create_api_key(conn, "revoked", org.id, ["traces:read"])
        expiring = api.create_api_key(
            conn, "expiring", org.id, ["traces:read"],
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        api.revoke_api_key(conn, revoked.id)
    db.scalar(
        "UPDATE iam.api_keys SET expires_at = now() - interval '1 second' WHERE id = %s "
        "RETURNING id", [expiring.id],
    )
    disabled = db.create_user("disabled")
    db.scalar("UPDATE iam.users SET disabled_at = now() WHERE id = %s RETURNING id", [disabled])
    return {
        "empty": "",
        "garbage": "let me in",
        "unknown key": "tfk_" + "0" * 64,
        "revoked key": revoked.secret,
        "expired key": expiring.secret,
        "key with a changed character": revoked.secret[:-1] + ("0" if revoked.secret[-1] != "0" else "1"),
        "token for another secret": user_token(b"not-the-secret-" * 3, owner),
        "expired token": _forge_token(db.token_secret, {"sub": owner, "exp": int(time.time()) - 1}),
        "token without expiry": _forge_token(db.token_secret, {"sub": owner}),
        "token for an unknown user": user_token(db.token_secret, "00000000-0000-4000-8000-000000000001"),
        "token for a disabled user": user_token(db.token_secret, disabled),
        "token with a non-uuid subject": _forge_token(
            db.token_secret, {"sub": "root", "exp": int(time.time()) + 60}
        ),
        "token with its body edited": user_token(db.token_secret, owner).replace("tfu_e", "tfu_f", 1),
        "token cut short": user_token(db.token_secret, owner)[:-3],
    }


def test_every_bad_credential_gets_one_generic_error(db: Database) -> None:
    org = build_org(db, workspaces=1, projects_per_workspace=1)
    project = org.projects[0]
    db.insert_trace(project.id, project.staging)
    for label, credential in _credentials(db, org).items():
        before = db.snapshot()
        conn = db.app()
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT iam.begin_request(%s)", [credential])
        assert raised.value.sqlstate == "28000", label
        assert raised.value.diag.message_primary == "invalid credential", label
        assert db.snapshot() == before, label


def test_bad_credential_through_fence_is_a_credential_error(db: Database) -> None:
    with pytest.raises(CredentialError) as raised, db.fence().request(api_key="tfk_nope"):
        pass
    assert raised.value.sqlstate == "28000"


def test_short_token_secret_is_invalid_parameter(db: Database) -> None:
    _assert_rejected_unchanged(
        db, lambda: api.set_token_secret(db.service(), b"short"),
        InvalidInput, "22023", "at least 32 bytes",
    )


def test_malformed_email_is_invalid_parameter(db: Database) -> None:
    _assert_rejected_unchanged(
        db, lambda: api.create_user(db.service(), "not-an-email", "Nobody"),
        InvalidInput, "22023", "invalid email address",
    )

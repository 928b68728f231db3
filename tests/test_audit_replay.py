"""The audit log replays to the present (SPEC §3).

A hypothesis state machine builds, inside the one database of the test, a fresh organisation
(2 workspaces x 2 projects), its owner, three users and API keys, then applies random
operations through the real API as the org owner: granting roles of each tier (new, changed,
re-granted, redundant through the cascade, time-bounded, deferred), revoking them, creating
API keys, editing and revoking them, creating and deleting workspaces and projects, removing
users (back office), and the passing of time: an admin moves a binding's `valid_until`, a
deferred binding's `valid_from` or a key's `expires_at` into the past, after which the sweep
runs either at once or later (other changes may come first, and record the principal's
pending expiries before their own rows).

After every step, with a sweep run inside a transaction that is rolled back:
(a) replaying the organisation's rbac_grant rows from empty, in id order — state[(principal,
    scope)] = new_permissions, each row's prior_permissions being the state so far —
    reconstructs exactly iam.effective_permission_set(principal, resource, now()) for every
    principal of the example (deleted users and keys included) at every resource the
    organisation ever had (deleted ones must replay to the empty set, as must deleted users,
    revoked or expired keys and keys whose resource was deleted);
(b) no row has prior_permissions = new_permissions;
and around every operation:
(c) the rows it wrote, besides the catch-up rows recording pending expiries / starts, are
    exactly one per (principal, scope) whose effective set it changed, with prior / new equal
    to the sets measured before / after and the cause of that kind of operation; an operation
    that changes no effective set writes none and, where the API returns an audit event,
    returns None. A sweep brings the log to the present; a second sweep writes nothing.

Earlier examples' rows stay in the database; every query is scoped to the example's
organisation and principals. The regression tests at the end are minimal reproductions of
replay breaks this file found in the SQL (fixed in ec67a62 and 70fd6b7).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.world import Database, Org, build_org
from tracefence import ConstraintViolation, InvalidInput, PermissionDenied, api
from tracefence.api import AuditEvent

Connection = psycopg.Connection[Any]
Pair = tuple[UUID, UUID]  # (principal, scope)
Sets = dict[Pair, frozenset[str]]  # only non-empty sets

EMPTY: frozenset[str] = frozenset()
TIERS = ("organisation", "workspace", "project")
ROLES = {
    "organisation": ("org_owner", "org_admin", "org_member"),
    "workspace": ("workspace_owner", "workspace_admin", "workspace_member"),
    "project": ("project_owner", "project_admin", "project_developer", "project_member"),
}
# Every permission an API key may carry.
KEY_SCOPES = (
    "traces:read", "traces:read:prod", "traces:write", "projects:read", "environments:write",
    "audit:read",
)
GRANT_CAUSES = frozenset({"binding_created", "binding_changed"})
# What a sweep records; any access-changing call first records its principals' pending ones.
SWEEP_CAUSES = frozenset({"binding_expired", "binding_started", "key_expired"})

index = st.integers(min_value=0, max_value=1_000)
scope_sets = st.frozensets(st.sampled_from(KEY_SCOPES), min_size=1)
thens = st.sampled_from(["sweep", "later", "change"])


@dataclass(frozen=True)
class Row:
    id: int
    principal: UUID
    scope: UUID
    prior: frozenset[str]
    new: frozenset[str]
    cause: str

    @property
    def pair(self) -> Pair:
        return (self.principal, self.scope)


@dataclass(frozen=True)
class Binding:
    principal: UUID
    resource: UUID
    role: str
    tier: str
    valid_from: datetime | None
    valid_until: datetime | None


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)]


def later(days: int = 1) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}@replay.example"


# Database probes (as the superuser, behind the fence), scoped to one organisation.
def audit_rows(admin: Connection, organisation: UUID, after_id: int = 0) -> list[Row]:
    rows = admin.execute(
        "SELECT id, principal_id, scope_id, prior_permissions, new_permissions, cause "
        "FROM audit.events WHERE organisation_id = %s AND event_type = 'rbac_grant' AND id > %s "
        "ORDER BY id",
        [organisation, after_id],
    ).fetchall()
    return [Row(r[0], r[1], r[2], frozenset(r[3]), frozenset(r[4]), r[5]) for r in rows]


def last_audit_id(admin: Connection, organisation: UUID) -> int:
    row = admin.execute(
        "SELECT coalesce(max(id), 0) FROM audit.events WHERE organisation_id = %s", [organisation]
    ).fetchone()
    assert row is not None
    return int(row[0])


def effective_sets(admin: Connection, principals: list[UUID], resources: list[UUID]) -> Sets:
    """iam.effective_permission_set(P, X, now()) for every pair, keeping the non-empty ones."""
    rows = admin.execute(
        "SELECT p, r, iam.effective_permission_set(p, r, now()) "
        "FROM unnest(%s::uuid[]) AS p, unnest(%s::uuid[]) AS r",
        [principals, resources],
    ).fetchall()
    return {(p, r): frozenset(perms) for p, r, perms in rows if perms}


def replay(rows: list[Row], start: Sets | None = None) -> Sets:
    """Replay rows from `start` (empty by default), checking (b) and each row's prior set."""
    state: Sets = dict(start or {})
    for row in rows:
        assert row.prior != row.new, f"row {row.id} ({row.cause}) changes nothing: {sorted(row.new)}"
        assert row.prior == state.get(row.pair, EMPTY), (
            f"row {row.id} ({row.cause}) of {row.pair}: prior {sorted(row.prior)}, "
            f"but the log so far says {sorted(state.get(row.pair, EMPTY))}"
        )
        if row.new:
            state[row.pair] = row.new
        else:
            state.pop(row.pair, None)
    return state


def bindings_of(admin: Connection, organisation: UUID) -> list[Binding]:
    rows = admin.execute(
        "SELECT b.principal_id, b.resource_id, b.role, b.tier, b.valid_from, b.valid_until "
        "FROM iam.role_bindings AS b INNER JOIN tenancy.resources AS r ON r.id = b.resource_id "
        "WHERE r.organisation_id = %s ORDER BY b.principal_id, b.resource_id",
        [organisation],
    ).fetchall()
    return [Binding(*row) for row in rows]


def expire_bindings(admin: Connection, principal: UUID, resources: list[UUID]) -> None:
    """Move bindings' end into the past, as time would (the sweep has not run yet)."""
    admin.execute(
        "UPDATE iam.role_bindings SET valid_until = now() - interval '1 second' "
        "WHERE principal_id = %s AND resource_id = ANY(%s)",
        [principal, resources],
    )


def expire_key(admin: Connection, key: UUID) -> None:
    admin.execute(
        "UPDATE iam.api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", [key]
    )


def start_binding(admin: Connection, principal: UUID, resource: UUID) -> None:
    """A deferred binding's start comes (moved to just now; the sweep has not run yet)."""
    admin.execute(
        "UPDATE iam.role_bindings SET valid_from = now() - interval '1 microsecond' "
        "WHERE principal_id = %s AND resource_id = %s",
        [principal, resource],
    )


def slug() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


class AuditReplay(RuleBasedStateMachine):
    """One organisation per example; the actor of every request is its owner."""

    db: Database  # set by the test function

    def __init__(self) -> None:
        super().__init__()
        self.admin = self.db.admin()
        self.service = self.db.service()
        self.fence = self.db.fence()
        owner = api.create_user(self.service, email("owner"), "Owner")
        self.org: Org = build_org(self.db, owner=owner)
        self.tier_of: dict[UUID, str] = {self.org.id: "organisation"}
        self.tier_of.update({w: "workspace" for w in self.org.workspaces})
        self.tier_of.update({p.id: "project" for p in self.org.projects})
        self.workspace_of = {p.id: p.workspace for p in self.org.projects}
        self.alive: set[UUID] = set(self.tier_of)
        self.users = [api.create_user(self.service, email("user"), f"User {i}") for i in range(3)]
        self.deleted_users: set[UUID] = set()
        self.keys: list[UUID] = []
        self.role_permissions = {
            role: frozenset(perms) for role, perms in self.admin.execute(
                "SELECT role, array_agg(permission) FROM iam.role_permissions GROUP BY role"
            ).fetchall()
        }

    def teardown(self) -> None:
        self.admin.close()
        self.service.close()

    # What the example holds now
    @property
    def principals(self) -> list[UUID]:
        return [self.org.owner, *self.users, *self.keys]

    @property
    def live_users(self) -> list[UUID]:
        return [u for u in self.users if u not in self.deleted_users]

    def eff(self) -> Sets:
        return effective_sets(self.admin, self.principals, list(self.tier_of))

    def alive_of(self, tier: str | None = None) -> list[UUID]:
        return [r for r in self.tier_of if r in self.alive and tier in (None, self.tier_of[r])]

    def rank(self, item: UUID) -> int:
        """Creation order: uuids are random, hypothesis needs the same choices on replay."""
        return [*self.tier_of, *self.principals].index(item)

    def bindings(self) -> list[Binding]:
        """The organisation's bindings, but never the owner's own org_owner binding."""
        return sorted(
            (
                b for b in bindings_of(self.admin, self.org.id)
                if not (b.principal == self.org.owner and b.resource == self.org.id)
            ),
            key=lambda b: (self.rank(b.principal), self.rank(b.resource)),
        )

    def current_bindings(self) -> list[Binding]:
        now = datetime.now(UTC)
        return [b for b in self.bindings() if b.valid_until is None or b.valid_until > now]

    def bounded_bindings(self) -> list[Binding]:
        now = datetime.now(UTC)
        return [b for b in self.bindings() if b.valid_until is not None and b.valid_until > now]

    def deferred_bindings(self) -> list[Binding]:
        now = datetime.now(UTC)
        return [b for b in self.bindings() if b.valid_from is not None and b.valid_from > now]

    def key_state(self, key: UUID) -> tuple[UUID, datetime | None, datetime | None] | None:
        """(resource, revoked_at, expires_at), or None once its resource was deleted."""
        row = self.admin.execute(
            "SELECT resource_id, revoked_at, expires_at FROM iam.api_keys WHERE id = %s", [key]
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def live_keys(self, *, unexpired: bool = False) -> list[UUID]:
        """Keys neither revoked nor gone with their resource (and, if asked, not expired)."""
        now = datetime.now(UTC)
        return [
            k for k in self.keys
            if (s := self.key_state(k)) is not None and s[1] is None
            and not (unexpired and s[2] is not None and s[2] <= now)
        ]

    def dead_keys(self) -> list[UUID]:
        live = set(self.live_keys())
        return [k for k in self.keys if k not in live]

    def key_scopes(self, key: UUID) -> list[str]:
        rows = self.admin.execute(
            "SELECT permission FROM iam.api_key_scopes WHERE key_id = %s ORDER BY 1", [key]
        ).fetchall()
        return [r[0] for r in rows]

    def as_owner(self, call: Callable[[Connection], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with self.fence.request(user=self.org.owner) as conn:
                return call(conn)
        return run

    def apply(
        self,
        call: Callable[[], Any],
        *,
        causes: frozenset[str],
        returns: str = "event",
        resource: UUID | None = None,
        noop: bool = False,
        expect: type[Exception] | None = None,
    ) -> Any:
        """Run one operation and check (c): its rows are exactly its changes."""
        before = self.eff()
        last = last_audit_id(self.admin, self.org.id)
        if expect is not None:
            with pytest.raises(expect):
                call()
            assert self.eff() == before
            assert audit_rows(self.admin, self.org.id, last) == []
            return None
        result = call()
        if returns == "key":
            self.keys.append(result.id)  # a new principal, measured from now on
        elif returns == "resource":
            self.tier_of[result] = "workspace" if resource == self.org.id else "project"
            self.alive.add(result)
            if resource != self.org.id:
                self.workspace_of[result] = resource
        after = self.eff()
        rows = audit_rows(self.admin, self.org.id, last)
        own = [row for row in rows if row.cause not in SWEEP_CAUSES]
        for row in own:  # a principal's pending expiries / starts are recorded before its change
            assert not [r for r in rows if r.id > row.id and r.principal == row.principal and r not in own]
        changed = {pair for pair in before.keys() | after.keys() if before.get(pair) != after.get(pair)}
        pairs = [row.pair for row in own]
        assert len(pairs) == len(set(pairs)), f"more than one row for a scope: {own}"
        assert set(pairs) == changed, f"rows {own} for changes {changed}"
        for row in own:
            assert row.prior == before.get(row.pair, EMPTY), row
            assert row.new == after.get(row.pair, EMPTY), row
            assert row.cause in causes, row
        if noop:
            assert not changed, f"expected no change, got {changed}"
        if returns == "event":
            if changed:
                assert isinstance(result, AuditEvent)
                assert result.id in {row.id for row in own}
                assert (result.principal_id, result.scope_id) == (own[0].principal, resource)
            else:
                assert result is None, result
        elif returns == "key":
            assert result.audit_event is not None
            assert result.audit_event.id in {row.id for row in own}
            assert result.audit_event.scope_id == resource
        elif returns == "count":
            assert result == len(own)
        return result

    def sweep(self) -> None:
        """The sweep records what time did (no effective set changes by it): afterwards the
        log replays to the present. Run again at once, it writes nothing."""
        last = last_audit_id(self.admin, self.org.id)
        logged = replay(audit_rows(self.admin, self.org.id))
        now = self.eff()
        written = api.sweep_expired(self.service)
        rows = audit_rows(self.admin, self.org.id, last)
        assert self.eff() == now
        assert {row.cause for row in rows} <= SWEEP_CAUSES, rows
        assert written >= len(rows)  # it also sweeps what earlier examples left pending
        assert replay(rows, logged) == now
        last = last_audit_id(self.admin, self.org.id)
        api.sweep_expired(self.service)
        assert audit_rows(self.admin, self.org.id, last) == []

    # A populated start: every user gets one or two grants, and there are one or two keys.
    @initialize(
        grants=st.lists(
            st.tuples(index, st.sampled_from(TIERS), index, st.booleans()), min_size=3, max_size=6
        ),
        keys=st.lists(st.tuples(index, scope_sets, st.booleans()), min_size=1, max_size=2),
    )
    def populate(self, grants: list[tuple[int, str, int, bool]],
                 keys: list[tuple[int, frozenset[str], bool]]) -> None:
        for n, (where, tier, role, bounded) in enumerate(grants):
            self.grant(tier, n, where, role, bounded)
        for where, scopes, bounded in keys:
            self.create_key(where, scopes, bounded)

    # Roles
    def _grant(self, principal: UUID, role: str, resource: UUID, until: datetime | None,
               since: datetime | None = None, noop: bool = False) -> None:
        self.apply(
            self.as_owner(lambda c: api.grant_role(c, principal, role, resource, until, since)),
            causes=GRANT_CAUSES, resource=resource, noop=noop,
            expect=InvalidInput if principal in self.deleted_users else None,
        )

    @precondition(lambda self: self.live_users)
    @rule(tier=st.sampled_from(TIERS), who=index, where=index, role=index, bounded=st.booleans())
    def grant(self, tier: str, who: int, where: int, role: int, bounded: bool) -> None:
        resources = self.alive_of(tier)
        if resources:
            role_name = pick(list(ROLES[tier]), role)
            self._grant(pick(self.live_users, who), role_name, pick(resources, where),
                        later() if bounded else None)

    @precondition(lambda self: self.current_bindings())
    @rule(which=index, role=index, bounded=st.booleans())
    def change_role(self, which: int, role: int, bounded: bool) -> None:
        """Bind another role (or the same one with another window) where one is bound."""
        b = pick(self.current_bindings(), which)
        self._grant(b.principal, pick(list(ROLES[b.tier]), role), b.resource, later(2) if bounded else None)

    @precondition(lambda self: self.current_bindings())
    @rule(which=index)
    def regrant_same(self, which: int) -> None:
        """Granting exactly the binding that exists changes nothing: None, no row."""
        b = pick(self.current_bindings(), which)
        self._grant(b.principal, b.role, b.resource, b.valid_until, b.valid_from, noop=True)

    @rule(who=index, where=index, role=index)
    def grant_redundant(self, who: int, where: int, role: int) -> None:
        """A role whose permissions are all held there already (through the cascade, or the
        owner's everything) changes nothing: None, no row."""
        principal = pick([self.org.owner, *self.live_users], who)
        bound = {b.resource for b in bindings_of(self.admin, self.org.id) if b.principal == principal}
        resources = [r for r in self.alive_of() if self.tier_of[r] != "organisation" and r not in bound]
        if not resources:
            return
        resource = pick(resources, where)
        held = self.eff().get((principal, resource), EMPTY)
        redundant = [r for r in ROLES[self.tier_of[resource]] if self.role_permissions[r] <= held]
        if redundant:
            self._grant(principal, pick(redundant, role), resource, None, noop=True)

    @precondition(lambda self: self.bindings())
    @rule(which=index)
    def revoke(self, which: int) -> None:
        self._revoke(pick(self.bindings(), which))

    def _revoke(self, b: Binding) -> None:
        self.apply(
            self.as_owner(lambda c: api.revoke_role(c, b.principal, b.resource)),
            causes=frozenset({"binding_removed"}), resource=b.resource,
        )

    @rule(who=index, where=index)
    def revoke_nothing(self, who: int, where: int) -> None:
        """Revoking where nothing is bound: None, no row."""
        bound = {(b.principal, b.resource) for b in bindings_of(self.admin, self.org.id)}
        pairs = [(p, r) for p in self.users for r in self.alive_of() if (p, r) not in bound]
        if pairs:
            principal, resource = pick(pairs, who + where)
            self.apply(
                self.as_owner(lambda c: api.revoke_role(c, principal, resource)),
                causes=frozenset(), resource=resource, noop=True,
            )

    @precondition(lambda self: self.deleted_users)
    @rule(which=index, role=index)
    def touch_deleted_user(self, which: int, role: int) -> None:
        """A removed user can be neither granted a role (22023) nor removed again (22023)."""
        user = pick([u for u in self.users if u in self.deleted_users], which)
        if role % 2:
            self._grant(user, pick(list(ROLES["organisation"]), role), self.org.id, None)
        else:
            self.apply(lambda: api.delete_user(self.service, user), causes=frozenset(), expect=InvalidInput)

    @precondition(lambda self: self.live_users)
    @rule(who=index, where=index, role=index)
    def grant_deferred(self, who: int, where: int, role: int) -> None:
        """A binding that starts tomorrow changes nothing now, unless it replaces one."""
        resource = pick(self.alive_of(), where)
        role_name = pick(list(ROLES[self.tier_of[resource]]), role)
        self._grant(pick(self.live_users, who), role_name, resource, None, later())

    # Time passes. Then the sweep runs at once, or later, or first a change comes to a
    # principal whose expiry or start is pending (`then`).
    def _after(self, then: str, which: int, action: int, scopes: frozenset[str]) -> None:
        if then == "sweep":
            self.sweep()
        elif then == "change" and self.stale():
            self.change_before_the_sweep(which, action, scopes)

    @precondition(lambda self: self.deferred_bindings())
    @rule(which=index, then=thens, action=index, scopes=scope_sets)
    def start_deferred(self, which: int, then: str, action: int, scopes: frozenset[str]) -> None:
        """A deferred binding's start comes."""
        b = pick(self.deferred_bindings(), which)
        start_binding(self.admin, b.principal, b.resource)
        self._after(then, which, action, scopes)

    @precondition(lambda self: self.bounded_bindings())
    @rule(which=index, then=thens, action=index, scopes=scope_sets)
    def expire_binding(self, which: int, then: str, action: int, scopes: frozenset[str]) -> None:
        """A time-bounded binding ends."""
        b = pick(self.bounded_bindings(), which)
        expire_bindings(self.admin, b.principal, [b.resource])
        self._after(then, which, action, scopes)

    @precondition(lambda self: self.live_keys(unexpired=True))
    @rule(which=index, then=thens, action=index, scopes=scope_sets)
    def expire_a_key(self, which: int, then: str, action: int, scopes: frozenset[str]) -> None:
        """A key's end comes."""
        expire_key(self.admin, pick(self.live_keys(unexpired=True), which))
        self._after(then, which, action, scopes)

    @rule()
    def sweep_now(self) -> None:
        self.sweep()

    def stale(self) -> list[Pair]:
        """Pairs where time changed the set and no sweep has recorded it yet."""
        logged, now = replay(audit_rows(self.admin, self.org.id)), self.eff()
        pairs = {pair for pair in logged.keys() | now.keys() if logged.get(pair) != now.get(pair)}
        return sorted(pairs, key=lambda pair: (self.rank(pair[0]), self.rank(pair[1])))

    @precondition(lambda self: self.stale())
    @rule(which=index, action=index, scopes=scope_sets)
    def change_before_the_sweep(self, which: int, action: int, scopes: frozenset[str]) -> None:
        """Change a principal whose expiry or start is pending, where it is pending: the call
        records the pending rows first, then its own."""
        principal, scope = pick(self.stale(), which)
        if principal in self.keys:
            if action % 2:
                self._set_scopes(principal, scopes, same=False)
            else:
                self._revoke_key(principal)
        elif action % 4 < 2 and not (principal == self.org.owner and scope == self.org.id):
            self._grant(principal, pick(list(ROLES[self.tier_of[scope]]), action // 4), scope, None)
        elif action % 4 == 2 or principal == self.org.owner:
            self._revoke(pick([b for b in self.bindings() if b.principal == principal], action))
        else:
            self._delete_user(principal)

    # The last owner stays
    @rule(delete=st.booleans())
    def owner_cannot_leave(self, delete: bool) -> None:
        now = datetime.now(UTC)
        if any(
            b.role == "org_owner" and b.resource == self.org.id and b.valid_until is None
            and (b.valid_from is None or b.valid_from <= now)
            for b in self.bindings()
        ):
            return  # another permanent owner: removing this one would succeed
        snapshot = self.db.snapshot()
        if delete:
            call = lambda: api.delete_user(self.service, self.org.owner)  # noqa: E731
        else:
            call = self.as_owner(lambda c: api.revoke_role(c, self.org.owner, self.org.id))
        self.apply(call, causes=frozenset(), expect=ConstraintViolation)
        assert self.db.snapshot() == snapshot

    # API keys
    @rule(where=index, scopes=scope_sets, bounded=st.booleans())
    def create_key(self, where: int, scopes: frozenset[str], bounded: bool) -> None:
        resource = pick(self.alive_of(), where)
        until = later() if bounded else None
        self.apply(
            self.as_owner(lambda c: api.create_api_key(c, "replay key", resource, sorted(scopes), until)),
            causes=frozenset({"key_created"}), returns="key", resource=resource,
        )

    @precondition(lambda self: self.live_keys())
    @rule(which=index, scopes=scope_sets, same=st.booleans())
    def set_scopes(self, which: int, scopes: frozenset[str], same: bool) -> None:
        """Edit a key's scopes; to the ones it has: None, no row (so too for an expired key)."""
        self._set_scopes(pick(self.live_keys(), which), scopes, same)

    def _set_scopes(self, key: UUID, scopes: frozenset[str], same: bool) -> None:
        state = self.key_state(key)
        assert state is not None
        new_scopes = self.key_scopes(key) if same else sorted(scopes)
        self.apply(
            self.as_owner(lambda c: api.set_api_key_scopes(c, key, new_scopes)),
            causes=frozenset({"key_scopes_edited"}), resource=state[0], noop=same,
        )

    @precondition(lambda self: self.live_keys())
    @rule(which=index)
    def revoke_key(self, which: int) -> None:
        self._revoke_key(pick(self.live_keys(), which))

    def _revoke_key(self, key: UUID) -> None:
        state = self.key_state(key)
        assert state is not None
        self.apply(
            self.as_owner(lambda c: api.revoke_api_key(c, key)),
            causes=frozenset({"key_revoked"}), resource=state[0],
        )

    @precondition(lambda self: self.dead_keys())
    @rule(which=index, scopes=scope_sets, edit=st.booleans())
    def touch_dead_key(self, which: int, scopes: frozenset[str], edit: bool) -> None:
        """A revoked key: revoking again is a no-op, editing it is refused (22023). A key whose
        resource was deleted no longer exists: refused like any key the caller may not manage
        (42501), so errors never confirm whether a key id exists."""
        key = pick(self.dead_keys(), which)
        gone = self.key_state(key) is None
        if edit:
            call = self.as_owner(lambda c: api.set_api_key_scopes(c, key, sorted(scopes)))
            self.apply(call, causes=frozenset(), expect=PermissionDenied if gone else InvalidInput)
        else:
            self.apply(
                self.as_owner(lambda c: api.revoke_api_key(c, key)), causes=frozenset(),
                noop=True, expect=PermissionDenied if gone else None,
            )

    # Resources
    @rule()
    def create_workspace(self) -> None:
        self.apply(
            self.as_owner(lambda c: api.create_workspace(c, self.org.id, slug(), "New workspace")),
            causes=frozenset({"workspace_created"}), returns="resource", resource=self.org.id,
        )

    @precondition(lambda self: self.alive_of("workspace"))
    @rule(which=index)
    def create_project(self, which: int) -> None:
        workspace = pick(self.alive_of("workspace"), which)
        self.apply(
            self.as_owner(lambda c: api.create_project(c, workspace, slug(), "New project")),
            causes=frozenset({"project_created"}), returns="resource", resource=workspace,
        )

    @precondition(lambda self: self.alive_of("project"))
    @rule(which=index)
    def delete_project(self, which: int) -> None:
        project = pick(self.alive_of("project"), which)
        self.apply(
            self.as_owner(lambda c: api.delete_project(c, project)),
            causes=frozenset({"project_deleted"}), returns="none",
        )
        self.alive.discard(project)

    @precondition(lambda self: self.alive_of("workspace"))
    @rule(which=index)
    def delete_workspace(self, which: int) -> None:
        workspace = pick(self.alive_of("workspace"), which)
        self.apply(
            self.as_owner(lambda c: api.delete_workspace(c, workspace)),
            causes=frozenset({"workspace_deleted"}), returns="none",
        )
        self.alive -= {workspace, *(p for p, w in self.workspace_of.items() if w == workspace)}

    @precondition(lambda self: self.live_users)
    @rule(which=index)
    def delete_user(self, which: int) -> None:
        self._delete_user(pick(self.live_users, which))

    def _delete_user(self, user: UUID) -> None:
        self.apply(
            lambda: api.delete_user(self.service, user),
            causes=frozenset({"principal_removed"}), returns="count",
        )
        self.deleted_users.add(user)

    # (a) and (b)
    @invariant()
    def log_replays_to_the_present(self) -> None:
        # Whatever is pending, the rows so far replay (each prior is what came before).
        replay(audit_rows(self.admin, self.org.id))
        # Sweeping first (in a transaction rolled back, so that pending expiries stay
        # pending for the next steps), the log replays to every effective set now.
        with self.admin.transaction(force_rollback=True):
            self.admin.execute("SELECT iam.sweep_expired()")
            rows = audit_rows(self.admin, self.org.id)
            now = self.eff()
        principals = set(self.principals)
        for row in rows:
            assert row.principal in principals, row
            assert row.scope in self.tier_of, row
        assert replay(rows) == now
        live = self.live_keys(unexpired=True)
        gone = set(self.deleted_users) | {k for k in self.keys if k not in live}
        assert not [(p, r) for p, r in now if p in gone or r not in self.alive]


def test_audit_log_replays_to_every_effective_set(db: Database) -> None:
    AuditReplay.db = db
    run_state_machine_as_test(
        AuditReplay,
        settings=settings(
            max_examples=20,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


# Regression tests: minimal reproductions of replay breaks this file found in the SQL (the
# first five before commit ec67a62, the last in ec67a62 itself); each failed then.
def assert_log_replays(db: Database, organisation: UUID, principal: UUID) -> None:
    """(a) for one principal: its rows of the organisation replay to its sets now."""
    admin = db.admin()
    resources = [r for (r,) in admin.execute(
        "SELECT DISTINCT scope_id FROM audit.events WHERE organisation_id = %s "
        "UNION SELECT id FROM tenancy.resources WHERE organisation_id = %s",
        [organisation, organisation],
    ).fetchall()]
    rows = [row for row in audit_rows(admin, organisation) if row.principal == principal]
    assert replay(rows) == effective_sets(admin, [principal], resources)


def small_org(db: Database, projects: int = 1) -> tuple[Org, UUID]:
    org = build_org(db, workspaces=1, projects_per_workspace=projects)
    user = api.create_user(db.service(), email("user"), "User")
    return org, user


def test_creating_a_resource_is_audited(db: Database) -> None:
    """Was: create_workspace / create_project wrote no row, though every principal whose role
    cascades into the new scope holds a set there (deletion did record the change to empty)."""
    org, user = small_org(db, projects=0)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "org_member", org.id)  # rows at the org and its workspace
        project = api.create_project(conn, org.workspaces[0], "late", "Late")
    assert effective_sets(db.admin(), [user], [project]) == {(user, project): {"projects:read"}}
    assert_log_replays(db, org.id, user)
    assert_log_replays(db, org.id, org.owner)


def test_two_expiries_in_one_sweep_replay(db: Database) -> None:
    """Was: the sweep recorded each ended binding with a prior set computed without the
    principal's other ended-but-unrecorded bindings, so at a scope two of them shared the
    first row's prior lacked the other's permissions."""
    org, user = small_org(db)
    project = org.projects[0].id
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "org_member", org.id, later())
        api.grant_role(conn, user, "project_developer", project, later())
    expire_bindings(db.admin(), user, [org.id, project])
    api.sweep_expired(db.service())
    assert_log_replays(db, org.id, user)


def test_change_between_expiry_and_sweep_replays(db: Database) -> None:
    """Was: a change between a binding's end and the sweep computed its prior set without the
    ended binding, and the sweep then computed the expiry's new set with the later change."""
    org, user = small_org(db)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "workspace_admin", org.workspaces[0], later())
    expire_bindings(db.admin(), user, [org.workspaces[0]])  # ended; not swept yet
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "project_member", org.projects[0].id)
    api.sweep_expired(db.service())
    assert_log_replays(db, org.id, user)


def test_removing_a_user_with_an_unswept_expiry_is_audited(db: Database) -> None:
    """Was: delete_user recorded only the bindings valid now and deleted the rest, so an
    ended-but-unswept binding was never recorded: the removed user kept it in the log."""
    org, user = small_org(db)
    with db.fence().request(user=org.owner) as conn:
        api.grant_role(conn, user, "workspace_admin", org.workspaces[0], later())
    expire_bindings(db.admin(), user, [org.workspaces[0]])  # ended; not swept yet
    api.delete_user(db.service(), user)
    api.sweep_expired(db.service())
    assert_log_replays(db, org.id, user)


def test_revoking_a_key_with_an_unswept_expiry_is_audited(db: Database) -> None:
    """Was: revoking an expired-but-unswept key wrote no row (its set was already empty) and
    the sweep skips revoked keys: the key kept its scopes in the log for ever."""
    org, _ = small_org(db)
    with db.fence().request(user=org.owner) as conn:
        key = api.create_api_key(conn, "ci", org.projects[0].id, ["traces:read"], later())
    expire_key(db.admin(), key.id)  # ended; not swept yet
    with db.fence().request(user=org.owner) as conn:
        assert api.revoke_api_key(conn, key.id) is None
    api.sweep_expired(db.service())
    assert_log_replays(db, org.id, key.id)


@pytest.mark.parametrize("pending", ["binding_expired", "key_expired", "binding_started"])
def test_creating_a_scope_with_a_pending_expiry_replays(db: Database, pending: str) -> None:
    """Was (found at ec67a62, fixed in 70fd6b7): tenancy.record_new_scope swept the principals
    bound above a new workspace / project after the scope existed, so a pending expiry was
    recorded over a subtree that included it — an expiry row there whose prior set the log
    never held (or a start row, then project_created with prior {} where the log held more)."""
    org, user = small_org(db, projects=0)
    workspace = org.workspaces[0]
    with db.fence().request(user=org.owner) as conn:
        if pending == "key_expired":
            principal = api.create_api_key(conn, "ci", workspace, ["traces:read"], later()).id
        else:
            principal = user
            deferred = pending == "binding_started"
            api.grant_role(conn, user, "workspace_member", workspace,
                           None if deferred else later(), later() if deferred else None)
    if pending == "binding_expired":
        expire_bindings(db.admin(), user, [workspace])
    elif pending == "key_expired":
        expire_key(db.admin(), principal)
    else:
        start_binding(db.admin(), user, workspace)
    with db.fence().request(user=org.owner) as conn:  # not swept yet
        api.create_project(conn, workspace, "late", "Late")
    assert_log_replays(db, org.id, principal)

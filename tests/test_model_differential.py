"""Differential tests: random organisations, bindings, API keys and telemetry are built in the
database and in the reference model (tests/model.py, written from SPEC §2); then, for every
principal, what the database lets it see must be exactly what the model says.

Compared for each principal, inside its own request:
- the ids of the traces and of the spans it can SELECT (the read rule);
- iam.effective_permissions(itself, X) for every resource X of the example (eff);
- telemetry.trace_access(project) wherever the model says it can see the project.
Each org owner also asks iam.effective_permissions about every user and key of the example at
every resource of its organisation. A key the model says is revoked or expired must not open a
request at all.

Every hypothesis example builds fresh organisations and principals in the one database of the
test function, so rows of earlier examples are present: a principal sees none of them, since
none are within its bindings, and the exact-equality comparison proves it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.model import (
    KEY_ALLOWED,
    ROLE_PERMISSIONS,
    ApiKey,
    Binding,
    Model,
    Span,
    Tier,
    Trace,
    roles_of_tier,
)
from tests.world import Database
from tracefence import CredentialError, Fence, PermissionDenied, api

Connection = psycopg.Connection[Any]

# The scopes the brief asks keys to be drawn from; they are exactly the key-allowed ones.
KEY_SCOPES = (
    "traces:read", "traces:read:prod", "traces:write", "projects:read", "environments:write",
    "audit:read",
)

HOURS_MAX = 24 * 60  # offsets of time windows: 1 hour to 60 days from the example's moment


# Abstract scenarios, drawn by hypothesis before any database row exists. Resources are
# referred to by their index in the example's slot list; times by hour offsets from `base`.
@dataclass(frozen=True)
class Slot:
    tier: Tier
    org: int
    workspace: int | None
    project: int | None


@dataclass(frozen=True)
class BindingSpec:
    slot: int
    role: str
    valid_from: int | None  # hours from base
    valid_until: int | None


@dataclass(frozen=True)
class KeySpec:
    slot: int
    scopes: frozenset[str]
    status: str  # live | expiring | revoked | expired


@dataclass(frozen=True)
class TraceSpec:
    project: int  # index into the example's project slots
    production: bool


@dataclass(frozen=True)
class Scenario:
    shape: tuple[tuple[int, ...], ...]  # per organisation, per workspace: its project count
    slots: tuple[Slot, ...]
    users: tuple[tuple[BindingSpec, ...], ...]
    keys: tuple[KeySpec, ...]
    traces: tuple[TraceSpec, ...]

    @property
    def project_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.tier == "project"]


def slots_of(shape: tuple[tuple[int, ...], ...]) -> tuple[Slot, ...]:
    slots: list[Slot] = []
    for o, workspaces in enumerate(shape):
        slots.append(Slot("organisation", o, None, None))
        for w, projects in enumerate(workspaces):
            slots.append(Slot("workspace", o, w, None))
            slots.extend(Slot("project", o, w, p) for p in range(projects))
    return tuple(slots)


hours = st.integers(min_value=1, max_value=HOURS_MAX)
windows: st.SearchStrategy[tuple[int | None, int | None]] = st.one_of(
    st.just((None, None)),  # permanent
    # expired: valid_until in the past (valid_from, if any, before it)
    st.tuples(st.one_of(st.none(), hours), hours).map(
        lambda w: (None if w[0] is None else -(w[0] + w[1]), -w[1])
    ),
    # not yet valid: valid_from in the future (valid_until, if any, after it)
    st.tuples(hours, st.one_of(st.none(), hours)).map(
        lambda w: (w[0], None if w[1] is None else w[0] + w[1])
    ),
    # current and time-bounded: valid_until in the future (valid_from, if any, in the past)
    st.tuples(st.one_of(st.none(), hours), hours).map(
        lambda w: (None if w[0] is None else -w[0], w[1])
    ),
)


def binding_specs(slots: tuple[Slot, ...]) -> st.SearchStrategy[BindingSpec]:
    def at(slot: int) -> st.SearchStrategy[BindingSpec]:
        return st.builds(
            lambda role, window: BindingSpec(slot, role, window[0], window[1]),
            st.sampled_from(roles_of_tier(slots[slot].tier)),
            windows,
        )

    return st.integers(0, len(slots) - 1).flatmap(at)


# Key scopes: the trace permissions drawn evenly (none, either, both), then any of the others.
key_scopes: st.SearchStrategy[frozenset[str]] = st.builds(
    lambda trace, other: trace | other or frozenset({"projects:read"}),
    st.sampled_from([
        frozenset(), frozenset({"traces:read"}), frozenset({"traces:read:prod"}),
        frozenset({"traces:read", "traces:read:prod"}),
    ]),
    st.frozensets(st.sampled_from([s for s in KEY_SCOPES if not s.startswith("traces:read")])),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    shape = draw(st.lists(
        st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple), min_size=1, max_size=2,
    ).map(tuple))
    slots = slots_of(shape)
    n_projects = sum(1 for s in slots if s.tier == "project")
    users = draw(st.lists(
        st.lists(binding_specs(slots), max_size=4, unique_by=lambda b: b.slot).map(tuple),
        min_size=2, max_size=4,
    ))
    keys = draw(st.lists(
        st.builds(
            KeySpec,
            st.integers(0, len(slots) - 1),
            key_scopes,
            st.sampled_from(["live", "expiring", "live", "revoked", "expired"]),
        ),
        min_size=1, max_size=5,
    ))
    # Every project gets a production and a non-production trace, so that every difference in
    # trace permissions shows in the rows; then a few more traces in random environments.
    baseline = [TraceSpec(p, prod) for p in range(n_projects) for prod in (True, False)]
    extra = draw(st.lists(
        st.builds(TraceSpec, st.integers(0, n_projects - 1), st.booleans()), max_size=6,
    ))
    return Scenario(shape, slots, tuple(users), tuple(keys), tuple(baseline + extra))


# Building a scenario in the database and in the model.
@dataclass(frozen=True)
class Principal:
    id: UUID
    label: str
    user: UUID | None = None
    secret: str | None = None

    def request(self, fence: Fence) -> Any:
        if self.secret is not None:
            return fence.request(api_key=self.secret)
        return fence.request(user=self.user)


@dataclass
class World:
    model: Model
    principals: list[Principal]
    owners: list[UUID]  # per organisation
    org_resources: list[list[UUID]]  # per organisation: its organisation, workspaces, projects
    base: datetime


def build(db: Database, scenario: Scenario) -> World:
    base = datetime.now(UTC)
    model = Model()
    fence = db.fence()
    tag = uuid.uuid4().hex[:10]
    ids: list[UUID | None] = [None] * len(scenario.slots)
    environments: dict[int, tuple[UUID, UUID]] = {}  # project slot -> (production, staging)
    principals: list[Principal] = []
    owners: list[UUID] = []
    org_resources: list[list[UUID]] = []
    key_ids: list[UUID | None] = [None] * len(scenario.keys)

    def hours_from_base(offset: int | None) -> datetime | None:
        return None if offset is None else base + timedelta(hours=offset)

    with psycopg.connect(db.service_conninfo, autocommit=True) as service:
        owners = [
            api.create_user(service, f"owner-{tag}-{o}@example.test", f"Owner {o}")
            for o in range(len(scenario.shape))
        ]
        users = [
            api.create_user(service, f"user-{tag}-{u}@example.test", f"User {u}")
            for u in range(len(scenario.users))
        ]

    # Organisations through the SQL API, one request per organisation by its owner, which
    # then creates the organisation's API keys.
    for o, owner in enumerate(owners):
        resources: list[UUID] = []
        with fence.request(user=owner) as conn:
            for i, slot in enumerate(scenario.slots):
                if slot.org != o:
                    continue
                if slot.tier == "organisation":
                    rid = api.create_organisation(conn, f"dm-{tag}-{o}", f"Org {tag} {o}")
                    model.add_resource(rid, "organisation")
                elif slot.tier == "workspace":
                    org_id = ids[scenario.slots.index(Slot("organisation", o, None, None))]
                    assert org_id is not None
                    rid = api.create_workspace(conn, org_id, f"ws-{slot.workspace}", "Workspace")
                    model.add_resource(rid, "workspace", org_id)
                else:
                    ws_id = ids[scenario.slots.index(Slot("workspace", o, slot.workspace, None))]
                    assert ws_id is not None
                    rid = api.create_project(conn, ws_id, f"p-{slot.project}", "Project")
                    model.add_resource(rid, "project", ws_id)
                    environments[i] = (
                        api.create_environment(conn, rid, "production", True),
                        api.create_environment(conn, rid, "staging", False),
                    )
                ids[i] = rid
                resources.append(rid)
            for k, key_spec in enumerate(scenario.keys):
                if scenario.slots[key_spec.slot].org != o:
                    continue
                resource = ids[key_spec.slot]
                assert resource is not None
                expires = base + timedelta(days=30) if key_spec.status == "expiring" else None
                key = api.create_api_key(
                    conn, f"key {k}", resource, sorted(key_spec.scopes), expires
                )
                key_ids[k] = key.id
                principals.append(Principal(key.id, f"key {k} {key_spec}", secret=key.secret))
        org_id = resources[0]
        model.bind(Binding(owner, org_id, "org_owner"))
        principals.append(Principal(owner, f"owner of org {o}", user=owner))
        org_resources.append(resources)

    with psycopg.connect(db.admin_conninfo, autocommit=True) as admin, admin.transaction():
        # Bindings directly, expired and not-yet-valid ones included (grant_role refuses those).
        for u, (user, specs) in enumerate(zip(users, scenario.users, strict=True)):
            for spec in specs:
                resource = ids[spec.slot]
                assert resource is not None
                tier = scenario.slots[spec.slot].tier
                granted_by = owners[scenario.slots[spec.slot].org]
                binding = Binding(
                    user, resource, spec.role,
                    hours_from_base(spec.valid_from), hours_from_base(spec.valid_until),
                )
                model.bind(binding)
                admin.execute(
                    "INSERT INTO iam.role_bindings (principal_id, resource_id, tier, role,"
                    " valid_from, valid_until, granted_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [user, resource, tier, spec.role, binding.valid_from, binding.valid_until,
                     granted_by],
                )
            principals.append(Principal(user, f"user {u} {list(specs)}", user=user))

        # Keys revoked or expired behind the fence.
        for k, key_spec in enumerate(scenario.keys):
            key_id, resource = key_ids[k], ids[key_spec.slot]
            assert key_id is not None and resource is not None
            revoked = key_spec.status == "revoked"
            expires_at = {
                "expiring": base + timedelta(days=30),
                "expired": base - timedelta(hours=1 + k),
            }.get(key_spec.status)
            if revoked:
                admin.execute(
                    "UPDATE iam.api_keys SET revoked_at = %s WHERE id = %s",
                    [base - timedelta(minutes=1), key_id],
                )
            if key_spec.status == "expired":
                admin.execute(
                    "UPDATE iam.api_keys SET expires_at = %s WHERE id = %s", [expires_at, key_id]
                )
            model.add_key(ApiKey(key_id, resource, key_spec.scopes, revoked, expires_at))

        # Telemetry, captured behind the fence (classification still applies) with one span each.
        for t, trace_spec in enumerate(scenario.traces):
            project_slot = scenario.project_slots[trace_spec.project]
            project = ids[project_slot]
            assert project is not None
            production, staging = environments[project_slot]
            row = admin.execute(
                "INSERT INTO telemetry.traces (project_id, environment_id, name)"
                " VALUES (%s, %s, %s) RETURNING id",
                [project, production if trace_spec.production else staging, f"trace {t}"],
            ).fetchone()
            assert row is not None
            trace = Trace(row[0], project, trace_spec.production)
            model.add_trace(trace)
            row = admin.execute(
                "INSERT INTO telemetry.spans (trace_id, name) VALUES (%s, %s) RETURNING id",
                [trace.id, f"span {t}"],
            ).fetchone()
            assert row is not None
            model.add_span(Span(row[0], trace.id))

    return World(model, principals, owners, org_resources, base)


# Comparing.
def _ids(conn: Connection, query: str) -> set[UUID]:
    return {row[0] for row in conn.execute(query).fetchall()}


def _eff_rows(
    conn: Connection, principals: list[UUID], resources: list[UUID]
) -> dict[tuple[UUID, UUID], frozenset[str]]:
    rows = conn.execute(
        "SELECT p, r, iam.effective_permissions(p, r)"
        " FROM unnest(%s::uuid[]) AS p, unnest(%s::uuid[]) AS r",
        [principals, resources],
    ).fetchall()
    return {(p, r): frozenset(perms or ()) for p, r, perms in rows}


def compare(db: Database, world: World) -> list[str]:
    """Every disagreement between the database and the model, described; empty when none."""
    model, fence = world.model, db.fence()
    problems: list[str] = []
    resources = list(model.resources)
    # Every window edge is at least an hour from base, so the exact moment does not matter.
    now = datetime.now(UTC)
    assert now - world.base < timedelta(minutes=30)

    def differ(principal: Principal, what: str, expected: object, actual: object) -> None:
        if expected != actual:
            problems.append(
                f"{principal.label} ({principal.id}): {what}\n"
                f"    expected (model): {expected}\n    actual (database): {actual}"
            )

    def check_own_view(principal: Principal, conn: Connection) -> None:
        p = principal.id
        differ(principal, "visible traces", model.visible_traces(p, now),
               _ids(conn, "SELECT id FROM telemetry.traces"))
        differ(principal, "visible spans", model.visible_spans(p, now),
               _ids(conn, "SELECT id FROM telemetry.spans"))
        # Every row it reads carries its project's tier path, as the model places the project.
        for table in ("traces", "spans"):
            rows = conn.execute(
                f"SELECT project_id, organisation_id, workspace_id FROM telemetry.{table}"
            ).fetchall()
            differ(principal, f"tier path of visible {table}",
                   sorted(model.tier_path(r[0]) for r in rows), sorted((r[1], r[2], r[0]) for r in rows))
        actual_eff = _eff_rows(conn, [p], resources)
        for r in resources:
            differ(principal, f"eff at {model.resources[r].tier} {r}",
                   sorted(model.eff(p, r, now)), sorted(actual_eff[(p, r)]))
        for project in model.projects():
            expected = model.trace_access(p, project, now)
            try:
                actual = api.trace_access(conn, project)
            except PermissionDenied as error:
                if model.can_see(p, project, now):
                    differ(principal, f"trace_access({project})", expected, repr(error))
                continue
            # Wherever it answers (it must where P can see the project) it must be right.
            differ(principal, f"trace_access({project})", expected, actual)

    for principal in world.principals:
        p = principal.id
        key = model.keys.get(p)
        if key is not None and not key.usable_at(now):
            # A revoked or expired key holds nothing anywhere and must not open a request.
            assert not model.visible_traces(p, now) and not any(
                model.eff(p, r, now) for r in resources
            )
            try:
                with principal.request(fence):
                    pass
            except CredentialError:
                continue
            differ(principal, "opening a request", "CredentialError", "request opened")
            continue

        try:
            with principal.request(fence) as conn:
                check_own_view(principal, conn)
        except CredentialError as error:
            differ(principal, "opening a request", "request opened", repr(error))

    # Each owner asks about every other principal of the example at every resource of its org.
    for o, owner in enumerate(world.owners):
        others = [q.id for q in world.principals if q.id != owner]
        asker = Principal(owner, f"owner of org {o} asking about others")
        with fence.request(user=owner) as conn:
            actual_eff = _eff_rows(conn, others, world.org_resources[o])
        for q in others:
            for r in world.org_resources[o]:
                differ(asker, f"eff of {q} at {model.resources[r].tier} {r}",
                       sorted(model.eff(q, r, now)), sorted(actual_eff[(q, r)]))
    return problems


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_database_agrees_with_model(db: Database, scenario: Scenario) -> None:
    world = build(db, scenario)
    problems = compare(db, world)
    assert not problems, f"{len(problems)} mismatch(es):\n" + "\n".join(problems)


# The model itself, on cases written out by hand from SPEC §2, so that a differential pass
# cannot come from the model and the database sharing a mistake in these basics.
def _small_model() -> tuple[Model, dict[str, UUID]]:
    m = Model()
    n = {name: uuid.uuid4() for name in ("org", "ws", "ws2", "p", "p2", "q")}
    m.add_resource(n["org"], "organisation")
    m.add_resource(n["ws"], "workspace", n["org"])
    m.add_resource(n["ws2"], "workspace", n["org"])
    m.add_resource(n["p"], "project", n["ws"])
    m.add_resource(n["p2"], "project", n["ws"])
    m.add_resource(n["q"], "project", n["ws2"])
    return m, n


def test_model_role_table() -> None:
    assert frozenset(KEY_SCOPES) == KEY_ALLOWED
    assert "org:manage" in ROLE_PERMISSIONS["org_owner"]
    assert ROLE_PERMISSIONS["org_owner"] - ROLE_PERMISSIONS["org_admin"] == {"org:manage"}
    assert "workspaces:manage" in ROLE_PERMISSIONS["workspace_owner"]
    assert "workspaces:manage" not in ROLE_PERMISSIONS["workspace_admin"]
    assert ROLE_PERMISSIONS["project_owner"] - ROLE_PERMISSIONS["project_admin"] == {
        "projects:manage"
    }
    assert "traces:read:prod" not in ROLE_PERMISSIONS["project_developer"]
    for member in ("org_member", "workspace_member", "project_member"):
        assert ROLE_PERMISSIONS[member] == {"projects:read"}


def test_model_cascade_windows_and_read_rule() -> None:
    m, n = _small_model()
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    m.bind(Binding(alice, n["ws"], "workspace_member"))
    m.bind(Binding(alice, n["p"], "project_developer"))
    m.bind(Binding(bob, n["org"], "org_admin", valid_until=now - hour))  # expired
    m.bind(Binding(bob, n["q"], "project_owner", valid_from=now + hour))  # not yet valid
    m.bind(Binding(carol, n["org"], "org_member", valid_from=now - hour, valid_until=now + hour))
    prod, staging = Trace(uuid.uuid4(), n["p"], True), Trace(uuid.uuid4(), n["p"], False)
    for t in (prod, staging):
        m.add_trace(t)
    # Cascade and union: a workspace role reaches its projects, not its siblings' or its parent.
    assert m.eff(alice, n["p"], now) == ROLE_PERMISSIONS["project_developer"]
    assert m.eff(alice, n["p2"], now) == {"projects:read"}
    assert m.eff(alice, n["org"], now) == frozenset()
    assert m.eff(alice, n["q"], now) == frozenset()
    assert m.visible_traces(alice, now) == {staging.id}
    # Windows: nothing from valid_until on, nothing before valid_from.
    assert m.eff(bob, n["q"], now) == frozenset()
    assert m.eff(bob, n["q"], now + 2 * hour) == ROLE_PERMISSIONS["project_owner"]
    assert m.eff(bob, n["p"], now - 2 * hour) == ROLE_PERMISSIONS["org_admin"]
    assert m.eff(carol, n["q"], now) == {"projects:read"}
    assert m.eff(carol, n["q"], now + hour) == frozenset()
    # traces:read:prod alone does not grant non-production traces.
    key = ApiKey(uuid.uuid4(), n["ws"], frozenset({"traces:read:prod"}))
    m.add_key(key)
    assert m.visible_traces(key.id, now) == {prod.id}
    assert m.eff(key.id, n["org"], now) == frozenset()
    assert m.eff(key.id, n["ws2"], now) == frozenset()
    assert m.eff(key.id, n["p2"], now) == {"traces:read:prod"}
    m.add_key(ApiKey(uuid.uuid4(), n["p"], frozenset({"traces:read"}), revoked=True))
    m.add_key(ApiKey(uuid.uuid4(), n["p"], frozenset({"traces:read"}), expires_at=now))
    for dead in list(m.keys)[1:]:
        assert m.visible_traces(dead, now) == set()
        assert m.eff(dead, n["p"], now) == frozenset()

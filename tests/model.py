"""A pure-Python reference model of tracefence's access semantics, written from SPEC §2 (model,
effective permission set, read rule) and deliberately NOT from the SQL: the differential tests
compare what the database lets a principal see with what this model says it should.

Nothing here talks to a database. Resources, bindings, API keys and telemetry are plain values;
`Model` answers `eff(P, X)`, the read rule and the boundary state at a given moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

Tier = Literal["organisation", "workspace", "project"]

# The tiers, outermost first: organisation ⊃ workspace ⊃ project.
TIERS: tuple[Tier, ...] = ("organisation", "workspace", "project")

# SPEC §2, "Permissions".
PERMISSIONS: frozenset[str] = frozenset({
    "traces:read",
    "traces:read:prod",
    "traces:write",
    "projects:read",
    "projects:manage",
    "workspaces:manage",
    "org:manage",
    "environments:write",
    "members:read",
    "members:write",
    "api-keys:read",
    "api-keys:write",
    "audit:read",
})

# "API keys may carry any permission except members:*, api-keys:*, *:manage and org:manage."
KEY_ALLOWED: frozenset[str] = frozenset(
    p for p in PERMISSIONS
    if not p.startswith(("members:", "api-keys:")) and not p.endswith(":manage")
)

_PROJECT_OWNER = frozenset({
    "traces:read", "traces:read:prod", "traces:write", "projects:read", "projects:manage",
    "environments:write", "members:read", "members:write", "api-keys:read", "api-keys:write",
    "audit:read",
})

# SPEC §2, "Built-in roles": the tier each role is bound at and the permissions it carries.
ROLE_TIER: dict[str, Tier] = {
    "org_owner": "organisation",
    "org_admin": "organisation",
    "org_member": "organisation",
    "workspace_owner": "workspace",
    "workspace_admin": "workspace",
    "workspace_member": "workspace",
    "project_owner": "project",
    "project_admin": "project",
    "project_developer": "project",
    "project_member": "project",
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "org_owner": PERMISSIONS,
    "org_admin": PERMISSIONS - {"org:manage"},
    "org_member": frozenset({"projects:read"}),
    "workspace_owner": PERMISSIONS - {"org:manage"},
    "workspace_admin": PERMISSIONS - {"org:manage", "workspaces:manage"},
    "workspace_member": frozenset({"projects:read"}),
    "project_owner": _PROJECT_OWNER,
    "project_admin": _PROJECT_OWNER - {"projects:manage"},
    "project_developer": frozenset({
        "traces:read", "traces:write", "projects:read", "members:read", "api-keys:read",
    }),
    "project_member": frozenset({"projects:read"}),
}

TRACE_PERMISSIONS: tuple[str, str] = ("traces:read", "traces:read:prod")


def roles_of_tier(tier: Tier) -> list[str]:
    return [role for role, role_tier in ROLE_TIER.items() if role_tier == tier]


@dataclass(frozen=True)
class Resource:
    id: UUID
    tier: Tier
    parent: UUID | None  # None for an organisation


@dataclass(frozen=True)
class Binding:
    """A role bound to a user at a resource of the role's tier, optionally time-bounded."""

    principal: UUID
    resource: UUID
    role: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        # "An expired time-bounded binding grants nothing from valid_until on."
        started = self.valid_from is None or self.valid_from <= now
        ended = self.valid_until is not None and now >= self.valid_until
        return started and not ended


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    resource: UUID
    scopes: frozenset[str]
    revoked: bool = False
    expires_at: datetime | None = None

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class Trace:
    id: UUID
    project: UUID
    is_production: bool


@dataclass(frozen=True)
class Span:
    id: UUID
    trace: UUID


@dataclass
class Model:
    resources: dict[UUID, Resource] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    keys: dict[UUID, ApiKey] = field(default_factory=dict)
    traces: dict[UUID, Trace] = field(default_factory=dict)
    spans: dict[UUID, Span] = field(default_factory=dict)

    # Building
    def add_resource(self, id: UUID, tier: Tier, parent: UUID | None = None) -> None:
        expected_parent = None if tier == "organisation" else TIERS[TIERS.index(tier) - 1]
        if expected_parent is None:
            assert parent is None, "an organisation has no parent"
        else:
            assert parent is not None and self.resources[parent].tier == expected_parent, (
                f"a {tier} must sit in a {expected_parent}"
            )
        self.resources[id] = Resource(id, tier, parent)

    def bind(self, binding: Binding) -> None:
        assert self.resources[binding.resource].tier == ROLE_TIER[binding.role], (
            "a role is bound at a resource of its own tier"
        )
        assert not any(
            b.principal == binding.principal and b.resource == binding.resource
            for b in self.bindings
        ), "at most one role per principal per resource"
        self.bindings.append(binding)

    def add_key(self, key: ApiKey) -> None:
        assert key.scopes <= KEY_ALLOWED, f"not key-allowed: {sorted(key.scopes - KEY_ALLOWED)}"
        self.keys[key.id] = key

    def add_trace(self, trace: Trace) -> None:
        assert self.resources[trace.project].tier == "project"
        self.traces[trace.id] = trace

    def add_span(self, span: Span) -> None:
        assert span.trace in self.traces
        self.spans[span.id] = span

    # Hierarchy
    def lineage(self, resource: UUID) -> list[UUID]:
        """The resource and every ancestor of it, innermost first."""
        chain: list[UUID] = []
        current: UUID | None = resource
        while current is not None:
            chain.append(current)
            current = self.resources[current].parent
        return chain

    def tier_path(self, project: UUID) -> tuple[UUID, UUID, UUID]:
        """(organisation, workspace, project) of a project: what a row of it carries (Fence v2)."""
        project_id, workspace, organisation = self.lineage(project)
        return organisation, workspace, project_id

    def principals(self) -> set[UUID]:
        return {b.principal for b in self.bindings} | set(self.keys)

    def projects(self) -> list[UUID]:
        return [r.id for r in self.resources.values() if r.tier == "project"]

    # eff(P, X)
    def eff(self, principal: UUID, resource: UUID, now: datetime) -> frozenset[str]:
        if resource not in self.resources:
            return frozenset()
        if principal in self.keys:
            key = self.keys[principal]
            # Scopes at the bound resource and every descendant, nothing elsewhere.
            if key.usable_at(now) and key.resource in self.lineage(resource):
                return key.scopes
            return frozenset()
        lineage = set(self.lineage(resource))
        held: set[str] = set()
        for b in self.bindings:
            if b.principal == principal and b.resource in lineage and b.valid_at(now):
                held |= ROLE_PERMISSIONS[b.role]
        return frozenset(held)

    # Read rule
    def can_read(self, principal: UUID, trace: Trace, now: datetime) -> bool:
        held = self.eff(principal, trace.project, now)
        if trace.is_production:
            return "traces:read:prod" in held
        return "traces:read" in held

    def visible_traces(self, principal: UUID, now: datetime) -> set[UUID]:
        return {t.id for t in self.traces.values() if self.can_read(principal, t, now)}

    def visible_spans(self, principal: UUID, now: datetime) -> set[UUID]:
        readable = self.visible_traces(principal, now)
        return {s.id for s in self.spans.values() if s.trace in readable}

    # Boundary state
    def can_see(self, principal: UUID, resource: UUID, now: datetime) -> bool:
        """Whether P may see that a project exists: projects:read there (cascade applied)."""
        return "projects:read" in self.eff(principal, resource, now)

    def trace_access(self, principal: UUID, project: UUID, now: datetime) -> dict[str, bool]:
        held = self.eff(principal, project, now)
        return {permission: permission in held for permission in TRACE_PERMISSIONS}


"""The dynamic probe of SPEC §4 item 9: proof by experiment that a principal of one project
can neither read, update, delete nor insert another project's rows, and that a connection with
no request open sees and writes nothing.

Everything happens in ONE transaction on a DBA connection that is always rolled back: two
organisations (each with a workspace, a project, an environment, a user and an API key holding
every permission of the catalog at its project) and canary rows for both projects in every
table the manifest classifies as project-scoped, filled from the tables' defaults and
constraints. Then the transaction becomes ``tracefence_app``, opens a request for project A's
key through ``iam.begin_request`` (the real request path) and runs each check in a savepoint
that is rolled back. A table the probe cannot fill is reported as not probed, never passed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

Connection = psycopg.Connection[Any]

#: The probe's finding codes: (level, title, remediation).
CODES: dict[str, tuple[str, str, str]] = {
    "TF100": (
        "error",
        "not probed",
        "Give every NOT NULL column a default or a type the probe can generate, make foreign "
        "keys point at tables the probe can fill, or fix the error shown; a table that cannot "
        "be probed is not proven fenced.",
    ),
    "TF101": (
        "error",
        "probe is vacuous: the project's own principal cannot read its own canary",
        "Key the SELECT policy to the project through the package's access functions "
        "(conformance.fence_table does) and grant SELECT to tracefence_app; check the "
        "manifest's read permission.",
    ),
    "TF102": (
        "error",
        "a principal reads another project's rows",
        "Filter the SELECT policy by the row's project: project_id = ANY((SELECT "
        "iam.permitted_projects('<read permission>'))::uuid[]) (conformance.fence_table).",
    ),
    "TF103": (
        "error",
        "a principal updates another project's rows",
        "Give the UPDATE policy a USING clause keyed to the project (conformance.fence_table).",
    ),
    "TF104": (
        "error",
        "a principal deletes another project's rows",
        "Give the DELETE policy a USING clause keyed to the project (conformance.fence_table).",
    ),
    "TF105": (
        "error",
        "a principal inserts rows into another project",
        "Give the INSERT policy a WITH CHECK clause keyed to the project (conformance.fence_table).",
    ),
    "TF106": (
        "error",
        "rows are visible with no request open",
        "Deny by default: policies must compare the scope column with the request's permitted "
        "projects, which are empty when no request is open; enable and force RLS.",
    ),
    "TF107": (
        "error",
        "an UPDATE moves a row to another project",
        "Give the UPDATE policy a WITH CHECK clause with the same scope as its USING clause, or "
        "forbid changing the scope column.",
    ),
    "TF108": (
        "error",
        "writes succeed with no request open",
        "Deny by default: key INSERT, UPDATE and DELETE policies to the request's permitted "
        "projects; enable and force RLS.",
    ),
    "TF109": (
        "warning",
        "cross-project insert rejected by something other than the fence",
        "The insert failed before or after the row-level security check with another error, so "
        "the probe cannot tell whether the INSERT policy admits other projects' rows; make the "
        "table's INSERT policy reject them (42501).",
    ),
}

#: The checks, in the order they run, with what "passed" means.
CHECKS: dict[str, str] = {
    "own_read": "A reads its own canary",
    "cross_read": "A reads no row of another project",
    "cross_update": "A updates no row of project B",
    "cross_delete": "A deletes no row of project B",
    "cross_insert": "A cannot insert a row for project B",
    "move": "A cannot move its row to project B",
    "no_request_read": "no row visible with no request",
    "no_request_write": "no write succeeds with no request",
}

INSUFFICIENT_PRIVILEGE = "42501"
MAX_PARENT_DEPTH = 3


@dataclass
class ProbeFinding:
    code: str
    level: str
    object: str
    detail: str
    remediation: str


@dataclass
class ProbeResult:
    """The outcome of the probe on one table; `checks` maps each check to what happened."""

    relation: str
    status: str = "not probed"  # "passed" | "failed" | "not probed"
    checks: dict[str, str] = field(default_factory=dict)
    findings: list[ProbeFinding] = field(default_factory=list)

    def add(self, code: str, detail: str) -> None:
        level, title, remediation = CODES[code]
        self.findings.append(
            ProbeFinding(code, level, self.relation, f"probe: {title}: {detail}", remediation)
        )


@dataclass(frozen=True)
class ProbeTarget:
    """A project-scoped table from conformance.manifest."""

    relation: str
    scope_column: str | None = None
    read_permission: str | None = None
    write_permission: str | None = None


class CannotFill(Exception):
    """The probe cannot make a row for a table."""


class ProbeAborted(Exception):
    """The probe could not set itself up (roles, tenancy rows, request)."""


# ----------------------------------------------------------------------------------------
# What a table looks like


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str
    base_type: str
    category: str
    not_null: bool
    has_default: bool
    skip: bool  # generated, or identity GENERATED ALWAYS: never named in an INSERT
    enum_label: str | None
    typmod: int
    literal: str | None  # a literal from a CHECK (col = ANY (ARRAY['a', ...])) constraint


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_oid: int
    ref_columns: tuple[str, ...]


@dataclass
class Shape:
    oid: int
    schema: str
    name: str
    relkind: str
    columns: dict[str, Column]
    foreign_keys: list[ForeignKey]
    primary_key: tuple[str, ...]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"


_COLUMNS = """
WITH RECURSIVE chain AS (
    SELECT a.attnum, a.atttypid AS typid, false AS domain_default, 0 AS depth
    FROM pg_attribute AS a
    WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT c.attnum, t.typbasetype, c.domain_default OR t.typdefault IS NOT NULL, c.depth + 1
    FROM chain AS c JOIN pg_type AS t ON t.oid = c.typid
    WHERE t.typtype = 'd'
),
base AS (
    SELECT DISTINCT ON (attnum) attnum, typid, domain_default
    FROM chain ORDER BY attnum, depth DESC
)
SELECT
    a.attname AS name,
    format_type(a.atttypid, a.atttypmod) AS type_sql,
    bt.typname AS base_type,
    bt.typcategory AS category,
    a.attnotnull AS not_null,
    a.atthasdef OR b.domain_default OR a.attidentity = 'd' AS has_default,
    a.attidentity = 'a' OR a.attgenerated <> '' AS skip,
    (SELECT e.enumlabel FROM pg_enum AS e WHERE e.enumtypid = bt.oid
     ORDER BY e.enumsortorder LIMIT 1) AS enum_label,
    a.atttypmod AS typmod,
    (SELECT pg_get_constraintdef(k.oid) FROM pg_constraint AS k
     WHERE k.conrelid = a.attrelid AND k.contype = 'c' AND k.conkey = ARRAY[a.attnum]
     ORDER BY k.conname LIMIT 1) AS check_def
FROM pg_attribute AS a
JOIN base AS b ON b.attnum = a.attnum
JOIN pg_type AS bt ON bt.oid = b.typid
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_FOREIGN_KEYS = """
SELECT
    c.conname AS name,
    c.confrelid::oid AS ref_oid,
    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k (n, i)
          JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)
        AS columns,
    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k (n, i)
          JOIN pg_attribute AS a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
        AS ref_columns
FROM pg_constraint AS c
WHERE c.conrelid = %(oid)s AND c.contype = 'f'
ORDER BY c.conname
"""

_LITERAL = re.compile(r"= (?:ANY \(ARRAY\[)?'((?:[^']|'')*)'::")


def _check_literal(check_def: str | None) -> str | None:
    """The first allowed value of a `col IN ('a', 'b')` or `col = 'a'` CHECK, if it is one."""
    if not check_def:
        return None
    match = _LITERAL.search(check_def)
    return match.group(1).replace("''", "'") if match else None


def load_shape(conn: Connection, oid: int) -> Shape:
    with conn.cursor(row_factory=dict_row) as cur:
        rel = cur.execute(
            "SELECT n.nspname AS schema, c.relname AS name, c.relkind AS relkind, "
            "ARRAY(SELECT a.attname::text FROM pg_index AS i "
            "      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (n, o) "
            "      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.n "
            "      WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.o) AS pk "
            "FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s",
            [oid],
        ).fetchone()
        if rel is None:
            raise CannotFill(f"relation {oid} does not exist")
        columns = {
            row["name"]: Column(
                name=row["name"],
                type_sql=row["type_sql"],
                base_type=row["base_type"],
                category=row["category"],
                not_null=row["not_null"],
                has_default=row["has_default"],
                skip=row["skip"],
                enum_label=row["enum_label"],
                typmod=row["typmod"],
                literal=_check_literal(row["check_def"]),
            )
            for row in cur.execute(_COLUMNS, {"oid": oid}).fetchall()
        }
        fkeys = [
            ForeignKey(r["name"], tuple(r["columns"]), int(r["ref_oid"]), tuple(r["ref_columns"]))
            for r in cur.execute(_FOREIGN_KEYS, {"oid": oid}).fetchall()
        ]
    return Shape(oid, rel["schema"], rel["name"], rel["relkind"], columns, fkeys, tuple(rel["pk"]))


# ----------------------------------------------------------------------------------------
# Generating values


@dataclass(frozen=True)
class Value:
    """A value for one column: a parameter cast to the column's type, or an SQL expression.
    `generated` values are made up by type and are made up afresh for a second row."""

    param: Any = None
    expression: sql.Composable | None = None
    generated: bool = False

    def render(self, column: Column) -> tuple[sql.Composable, list[Any]]:
        if self.expression is not None:
            return self.expression, []
        if self.param is None:
            return sql.SQL("NULL"), []
        return sql.SQL("%s::{}").format(sql.SQL(column.type_sql)), [self.param]


NULL = Value()

_INTEGER_LIMITS = {"int2": 32_000, "int4": 2_000_000_000, "int8": 9_000_000_000_000_000}
_OID_LIKE = {"oid", "regclass", "regproc", "regprocedure", "regoper", "regoperator", "regtype",
             "regconfig", "regdictionary", "regnamespace", "regrole", "regcollation", "xid",
             "xid8", "cid", "tid"}


def value_for_type(column: Column) -> Value:
    """A made-up value that fits the column's type, or CannotFill."""
    tag = secrets.token_hex(6)
    base, category = column.base_type, column.category
    if column.literal is not None:
        return Value(column.literal, generated=True)
    if column.enum_label is not None:
        return Value(column.enum_label, generated=True)
    if category == "A":
        return Value("{}", generated=True)
    if base == "uuid":
        return Value(str(uuid4()), generated=True)
    if base in ("json", "jsonb"):
        return Value("{}", generated=True)
    if base == "bytea":
        return Value(hashlib.sha256(tag.encode()).digest(), generated=True)
    if category == "S":
        text = f"canary-{tag}@example.invalid" if "email" in column.name else f"canary-{tag}"
        limit = column.typmod - 4 if base in ("varchar", "bpchar") and column.typmod > 4 else None
        if base == "char":
            limit = 1
        if limit is not None and limit < len(text):
            text = secrets.token_hex(limit)[:limit]  # short codes: random, not a common prefix
        return Value(text, generated=True)
    if base in _INTEGER_LIMITS:
        return Value(str(random.randint(1, _INTEGER_LIMITS[base])), generated=True)
    if base == "numeric":
        digits = 9
        if column.typmod > 4:
            precision, scale = ((column.typmod - 4) >> 16) & 0xFFFF, (column.typmod - 4) & 0xFFFF
            digits = max(precision - scale, 0)
        return Value(str(random.randint(1, 10**digits - 1) if digits else 0), generated=True)
    if category == "N" and base not in _OID_LIKE:
        return Value(str(random.randint(1, 30_000)), generated=True)
    if category == "B":
        return Value("false", generated=True)
    if category == "D":
        return Value(
            expression=sql.SQL("now()::{}").format(sql.SQL(column.type_sql)), generated=True
        )
    if category == "T":
        return Value("1 second", generated=True)
    if category == "I":
        return Value("192.0.2.1", generated=True)
    if category == "R":
        return Value("empty", generated=True)
    if base == "tsvector":
        return Value("canary", generated=True)
    if base == "xml":
        return Value("<canary/>", generated=True)
    raise CannotFill(
        f"column {column.name} ({column.type_sql}) is NOT NULL without a default and the probe "
        "cannot make up a value of its type"
    )


# ----------------------------------------------------------------------------------------
# The two tenants


@dataclass
class Tenant:
    """One organisation > workspace > project > environment, a user and an API key."""

    label: str
    organisation: UUID = field(default_factory=uuid4)
    workspace: UUID = field(default_factory=uuid4)
    project: UUID = field(default_factory=uuid4)
    environment: UUID | None = None
    user: UUID = field(default_factory=uuid4)
    key: UUID = field(default_factory=uuid4)
    secret: str = field(default_factory=lambda: "tfk_" + secrets.token_hex(32))
    #: rows of the package's tenancy and iam tables, by table oid: what foreign keys point at
    known_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: canary rows of the probed tables, by table oid
    canaries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def by_name(self, column: str) -> UUID | None:
        """The tenant's id for a column named like a tier's id."""
        return {
            "project_id": self.project,
            "environment_id": self.environment,
            "workspace_id": self.workspace,
            "organisation_id": self.organisation,
            "organization_id": self.organisation,
            "org_id": self.organisation,
        }.get(column)


_TENANT_ROWS = {
    # table: (key column, attribute of Tenant)
    "tenancy.organisations": ("id", "organisation"),
    "tenancy.workspaces": ("id", "workspace"),
    "tenancy.projects": ("id", "project"),
    "tenancy.environments": ("id", "environment"),
    "tenancy.resources": ("id", "project"),
    "iam.principals": ("id", "user"),
    "iam.users": ("id", "user"),
    "iam.api_keys": ("id", "key"),
}


def _create_tenant(conn: Connection, tenant: Tenant, run: str) -> None:
    """The tenancy and iam rows of one tenant, inserted directly (we are the owner)."""
    o, w, p = tenant.organisation, tenant.workspace, tenant.project
    slug = f"tf-probe-{run}-{tenant.label}"
    conn.execute(
        "INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id) "
        "VALUES (%s, 'organisation', %s, NULL), (%s, 'workspace', %s, %s), "
        "(%s, 'project', %s, %s)",
        [o, o, w, o, w, p, o, w],
    )
    conn.execute(
        "INSERT INTO tenancy.organisations (id, slug, name) VALUES (%s, %s, %s)",
        [o, slug, f"conformance probe {tenant.label}"],
    )
    conn.execute(
        "INSERT INTO tenancy.workspaces (id, organisation_id, slug, name) "
        "VALUES (%s, %s, 'probe', 'probe')",
        [w, o],
    )
    conn.execute(
        "INSERT INTO tenancy.projects (id, organisation_id, workspace_id, slug, name) "
        "VALUES (%s, %s, %s, 'probe', 'probe')",
        [p, o, w],
    )
    row = conn.execute(
        "INSERT INTO tenancy.environments (project_id, name, is_production) "
        "VALUES (%s, 'probe', false) RETURNING id",
        [p],
    ).fetchone()
    assert row is not None
    tenant.environment = row[0]
    conn.execute(
        "INSERT INTO iam.principals (id, kind) VALUES (%s, 'user'), (%s, 'api_key')",
        [tenant.user, tenant.key],
    )
    conn.execute(
        "INSERT INTO iam.users (id, email, display_name) VALUES (%s, %s, 'conformance probe')",
        [tenant.user, f"{slug}@example.invalid"],
    )
    conn.execute(
        "INSERT INTO iam.role_bindings (principal_id, resource_id, tier, role) "
        "VALUES (%s, %s, 'project', 'project_admin')",
        [tenant.user, p],
    )
    conn.execute(
        "INSERT INTO iam.api_keys (id, name, resource_id, secret_hash, created_by) "
        "VALUES (%s, 'conformance probe', %s, %s, %s)",
        [tenant.key, p, hashlib.sha256(tenant.secret.encode()).digest(), tenant.user],
    )
    # Every permission of the catalog, at this project only: the strongest principal of one
    # project, so that whatever read or write permission a table's policies ask for, it has it.
    conn.execute(
        "INSERT INTO iam.api_key_scopes (key_id, permission) SELECT %s, name FROM iam.permissions",
        [tenant.key],
    )
    with conn.cursor(row_factory=dict_row) as cur:
        for table, (column, attribute) in _TENANT_ROWS.items():
            oid_row = cur.execute("SELECT to_regclass(%s)::oid AS oid", [table]).fetchone()
            if not oid_row or oid_row["oid"] is None:
                continue
            known = cur.execute(
                sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
                    sql.Identifier(*table.split(".")), sql.Identifier(column)
                ),
                [getattr(tenant, attribute)],
            ).fetchone()
            if known is not None:
                tenant.known_rows[int(oid_row["oid"])] = known


# ----------------------------------------------------------------------------------------
# Filling a table


@dataclass
class Plan:
    """The values of one row to insert: column -> Value (absent columns take their default)."""

    shape: Shape
    values: dict[str, Value]

    def fresh(self) -> Plan:
        """The same row with every made-up value made up again (for a second insert)."""
        values = {
            name: value_for_type(self.shape.columns[name]) if value.generated else value
            for name, value in self.values.items()
        }
        return Plan(self.shape, values)

    def insert(self, returning: bool = True) -> tuple[sql.Composed, list[Any]]:
        suffix = sql.SQL(" RETURNING tableoid::oid AS tableoid, ctid::text AS ctid, *")
        if not self.values:
            query = sql.SQL("INSERT INTO {} DEFAULT VALUES").format(self.shape.ident)
            return (query + suffix if returning else query), []
        names, parts, params = [], [], []
        for name, value in self.values.items():
            names.append(sql.Identifier(name))
            part, part_params = value.render(self.shape.columns[name])
            parts.append(part)
            params.extend(part_params)
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self.shape.ident, sql.SQL(", ").join(names), sql.SQL(", ").join(parts)
        )
        return (query + suffix if returning else query), params


class Filler:
    """Makes rows for tables, as the setup role, from defaults, constraints and types."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._shapes: dict[int, Shape] = {}

    def shape(self, oid: int) -> Shape:
        if oid not in self._shapes:
            self._shapes[oid] = load_shape(self.conn, oid)
        return self._shapes[oid]

    def plan(self, shape: Shape, tenant: Tenant, scope_column: str | None, depth: int = 0) -> Plan:
        values: dict[str, Value] = {}
        columns = shape.columns
        if scope_column is not None:
            values[scope_column] = Value(str(tenant.project))

        def rank(fk: ForeignKey) -> int:
            if fk.ref_oid in tenant.known_rows:
                return 0
            if fk.ref_oid in tenant.canaries:
                return 1
            return 3 if fk.ref_oid == shape.oid else 2

        for fk in sorted(shape.foreign_keys, key=rank):
            unassigned = [c for c in fk.columns if c not in values]
            if not unassigned:
                continue
            parent = tenant.known_rows.get(fk.ref_oid) or tenant.canaries.get(fk.ref_oid)
            if parent is None:
                nullable = [c for c in unassigned if not columns[c].not_null]
                if nullable:
                    # MATCH SIMPLE: a NULL in the key means the key is not checked.
                    for c in nullable:
                        values[c] = NULL
                    continue
                if fk.ref_oid == shape.oid:
                    raise CannotFill(
                        f"foreign key {fk.name} points at the table itself with NOT NULL columns"
                    )
                if depth >= MAX_PARENT_DEPTH:
                    raise CannotFill(f"foreign key {fk.name}: parent rows nested too deep")
                parent = self.insert_parent(fk.ref_oid, tenant, depth + 1, fk.name)
            for name, ref_name in zip(fk.columns, fk.ref_columns, strict=True):
                if name not in values:
                    values[name] = Value(
                        None if parent[ref_name] is None else _as_param(parent[ref_name])
                    )

        for column in columns.values():
            if column.name in values or column.skip or column.has_default:
                continue
            tier_id = tenant.by_name(column.name)
            if tier_id is not None and column.base_type in ("uuid", "text", "varchar"):
                values[column.name] = Value(str(tier_id))
            elif column.not_null:
                values[column.name] = value_for_type(column)
        return Plan(shape, values)

    def insert_parent(self, oid: int, tenant: Tenant, depth: int, via: str) -> dict[str, Any]:
        """A row in a table a foreign key needs (not one of the probed tables): a new one made
        up like a canary, else an existing one (a global table's row, say)."""
        shape = self.shape(oid)
        scope = "project_id" if "project_id" in shape.columns else None
        try:
            return self.insert(self.plan(shape, tenant, scope, depth))
        except CannotFill as error:
            with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
                existing = cur.execute(
                    sql.SQL("SELECT * FROM {} LIMIT 1").format(shape.ident)
                ).fetchone()
            if existing is None:
                raise CannotFill(
                    f"foreign key {via} needs a row in {shape.qualname}: {error}"
                ) from error
            return dict(existing)

    def insert(self, plan: Plan) -> dict[str, Any]:
        query, params = plan.insert()
        try:
            with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(query, params).fetchone()
        except psycopg.Error as error:
            raise CannotFill(
                f"inserting a canary into {plan.shape.qualname} failed: {_describe(error)}"
            ) from error
        assert row is not None
        return dict(row)


def _as_param(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _describe(error: psycopg.Error) -> str:
    message = error.diag.message_primary or str(error).splitlines()[0]
    return f"{error.sqlstate or '?'} {message}"


# ----------------------------------------------------------------------------------------
# Running the probe


def _dependency_order(shapes: dict[int, Shape]) -> list[int]:
    """Probed tables with the tables they reference first (cycles: in name order)."""
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(oid: int) -> None:
        if state.get(oid) in ("done", "visiting"):
            return
        state[oid] = "visiting"
        for fk in shapes[oid].foreign_keys:
            if fk.ref_oid in shapes and fk.ref_oid != oid:
                visit(fk.ref_oid)
        state[oid] = "done"
        order.append(oid)

    for oid in sorted(shapes, key=lambda o: shapes[o].qualname):
        visit(oid)
    return order


@dataclass
class _Attempt:
    rowcount: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    sqlstate: str | None = None
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.sqlstate is not None

    def blocked(self) -> str:
        return f"rejected ({self.sqlstate} {self.message})"


def _attempt(conn: Connection, query: sql.Composed, params: list[Any] | None = None) -> _Attempt:
    """Run one statement in a savepoint that is always rolled back."""
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(query, params or [])
            rows = cur.fetchall() if cur.description else []
            return _Attempt(rowcount=cur.rowcount, rows=list(rows))
    except psycopg.Error as error:
        return _Attempt(
            sqlstate=error.sqlstate or "?",
            message=error.diag.message_primary or str(error).splitlines()[0],
        )


def _scope_column(shape: Shape, target: ProbeTarget, projects_oid: int | None) -> str | None:
    if target.scope_column:
        return target.scope_column if target.scope_column in shape.columns else None
    if "project_id" in shape.columns:
        return "project_id"
    for fk in shape.foreign_keys:
        if fk.ref_oid == projects_oid and len(fk.columns) == 1:
            return fk.columns[0]
    return None


def run(conn: Connection, targets: list[ProbeTarget]) -> list[ProbeResult]:
    """Probe every target; `conn` is an autocommit connection of a superuser (or of a member
    of tracefence_owner and tracefence_app). Nothing it does is ever committed."""
    results = {t.relation: ProbeResult(t.relation) for t in targets}
    if not targets:
        return []
    try:
        with conn.transaction(force_rollback=True):
            _run(conn, targets, results)
    except ProbeAborted as error:
        for result in results.values():
            if result.status == "not probed" and not result.findings:
                result.add("TF100", f"the probe could not run: {error}")
    for result in results.values():
        if result.status == "not probed" and not result.findings:
            result.add("TF100", "the probe did not reach this table")
    return list(results.values())


def _setup(conn: Connection, statement: str, params: list[Any] | None = None) -> None:
    try:
        conn.execute(statement.encode(), params or [])
    except psycopg.Error as error:
        raise ProbeAborted(f"{statement.split('(')[0]}: {_describe(error)}") from error


def _run(conn: Connection, targets: list[ProbeTarget], results: dict[str, ProbeResult]) -> None:
    row = conn.execute(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    superuser = bool(row and row[0])
    _setup(conn, "SET LOCAL statement_timeout = '60s'")
    _setup(conn, "SET LOCAL lock_timeout = '10s'")
    if not superuser:
        _setup(conn, "SET LOCAL ROLE tracefence_owner")
    run_tag = secrets.token_hex(4)
    tenants = (Tenant("a"), Tenant("b"))
    a, b = tenants
    try:
        for tenant in tenants:
            _create_tenant(conn, tenant, run_tag)
    except psycopg.Error as error:
        raise ProbeAborted(f"creating the probe's organisations: {_describe(error)}") from error

    filler = Filler(conn)
    projects_row = conn.execute("SELECT to_regclass('tenancy.projects')::oid").fetchone()
    projects_oid = int(projects_row[0]) if projects_row and projects_row[0] else None
    shapes: dict[int, Shape] = {}
    chosen: dict[int, tuple[ProbeTarget, str]] = {}
    for target in targets:
        result = results[target.relation]
        found = conn.execute("SELECT to_regclass(%s)::oid", [target.relation]).fetchone()
        if not found or found[0] is None:
            result.add("TF100", "the table does not exist")
            continue
        shape = filler.shape(int(found[0]))
        if shape.relkind not in ("r", "p"):
            kinds = {"v": "view", "m": "materialized view", "f": "foreign table"}
            result.add("TF100", f"a {kinds.get(shape.relkind, 'relation')} cannot be probed")
            continue
        scope = _scope_column(shape, target, projects_oid)
        if scope is None:
            result.add(
                "TF100",
                f"no scope column: the manifest names {target.scope_column!r}"
                if target.scope_column
                else "no scope column: no project_id column and no foreign key to tenancy.projects",
            )
            continue
        shapes[shape.oid] = shape
        chosen[shape.oid] = (target, scope)

    # Canary rows for both projects, parents first.
    plans: dict[int, dict[str, Plan]] = {}
    for oid in _dependency_order(shapes):
        target, scope = chosen[oid]
        result = results[target.relation]
        try:
            plans[oid] = {}
            for tenant in tenants:
                plan = filler.plan(shapes[oid], tenant, scope)
                plans[oid][tenant.label] = plan
                if oid not in tenant.known_rows:
                    tenant.canaries[oid] = filler.insert(plan)
                else:  # a tenancy row the probe made itself: it is the canary
                    tenant.canaries[oid] = tenant.known_rows[oid]
        except CannotFill as error:
            result.add("TF100", str(error))
            plans.pop(oid, None)
            for tenant in tenants:
                tenant.canaries.pop(oid, None)
    # Rows for the insert checks, made up now, while the probe may still read the catalog.
    fresh = {oid: {label: plan.fresh() for label, plan in by.items()} for oid, by in plans.items()}
    second = {oid: by["a"].fresh() for oid, by in plans.items()}

    # Through the real request path, as the application.
    _setup(conn, "SET LOCAL ROLE tracefence_app")
    _setup(conn, "SELECT iam.begin_request(%s)", [a.secret])
    for oid in plans:
        target, scope = chosen[oid]
        _check_table(
            conn, shapes[oid], scope, a, b, fresh[oid]["b"], second[oid], results[target.relation]
        )


def _check_table(
    conn: Connection, shape: Shape, scope: str, a: Tenant, b: Tenant,
    row_for_b: Plan, row_for_a: Plan, result: ProbeResult,
) -> None:
    table, column = shape.ident, sql.Identifier(scope)
    is_key = sql.SQL("{} = %s::{}").format(column, sql.SQL(shape.columns[scope].type_sql))
    A, B = str(a.project), str(b.project)
    checks = result.checks

    own = _attempt(conn, sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, is_key), [A])
    if own.failed:
        checks["own_read"] = own.blocked()
        result.add("TF101", f"reading project A's canary was {own.blocked()}")
    elif not own.rows[0][0]:
        checks["own_read"] = "no row visible"
        result.add("TF101", "project A's principal sees none of project A's canary rows")
    else:
        checks["own_read"] = f"{own.rows[0][0]} row(s) visible"

    cross = _attempt(
        conn,
        sql.SQL(
            "SELECT EXISTS (SELECT FROM {t} WHERE {b}), "
            "EXISTS (SELECT FROM {t} WHERE {c} IS DISTINCT FROM %s::{ty})"
        ).format(t=table, b=is_key, c=column, ty=sql.SQL(shape.columns[scope].type_sql)),
        [B, A],
    )
    if cross.failed:
        checks["cross_read"] = cross.blocked()
    elif cross.rows[0][0]:
        checks["cross_read"] = "LEAK: project B's canary is visible"
        result.add("TF102", "project A's principal reads project B's canary row")
    elif cross.rows[0][1]:
        checks["cross_read"] = "LEAK: rows of other projects are visible"
        result.add("TF102", "project A's principal reads rows whose project is not A")
    else:
        checks["cross_read"] = "nothing visible"

    update = _attempt(
        conn, sql.SQL("UPDATE {t} SET {c} = {c} WHERE {k}").format(t=table, c=column, k=is_key), [B]
    )
    checks["cross_update"] = _write_outcome(update)
    if _reached(update):
        result.add("TF103", f"project A's principal {_reached(update, 'of project B')}")

    delete = _attempt(conn, sql.SQL("DELETE FROM {} WHERE {}").format(table, is_key), [B])
    checks["cross_delete"] = _write_outcome(delete)
    if _reached(delete):
        result.add("TF104", f"project A's principal {_reached(delete, 'of project B')}")

    query, params = row_for_b.insert(returning=False)
    insert = _attempt(conn, query, params)
    if not insert.failed:
        checks["cross_insert"] = "LEAK: inserted"
        result.add("TF105", "project A's principal inserted a row for project B")
    elif insert.sqlstate == INSUFFICIENT_PRIVILEGE:
        checks["cross_insert"] = insert.blocked()
    else:
        checks["cross_insert"] = f"inconclusive: {insert.blocked()}"
        result.add("TF109", f"inserting a row for project B was {insert.blocked()}")

    query, params = row_for_a.insert(returning=False)
    own_insert = _attempt(conn, query, params)
    checks["own_insert"] = own_insert.blocked() if own_insert.failed else "inserted"

    move = _attempt(
        conn,
        sql.SQL("UPDATE {t} SET {c} = %s::{ty} WHERE {k}").format(
            t=table, c=column, ty=sql.SQL(shape.columns[scope].type_sql), k=is_key
        ),
        [B, A],
    )
    checks["move"] = _write_outcome(move)
    if not move.failed and move.rowcount > 0:
        result.add("TF107", f"project A's principal moved {move.rowcount} row(s) into project B")

    # No request: a cleared setting means no request is open.
    either = sql.SQL("{} = ANY(%s::{}[])").format(column, sql.SQL(shape.columns[scope].type_sql))
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('tracefence.request', '', true)")
        seen = _attempt(conn, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table))
        if seen.failed:
            checks["no_request_read"] = seen.blocked()
        elif seen.rows[0][0]:
            checks["no_request_read"] = "LEAK: rows visible"
            result.add("TF106", "rows are visible to tracefence_app with no request open")
        else:
            checks["no_request_read"] = "nothing visible"
        leaks = []
        changed = _attempt(
            conn,
            sql.SQL("UPDATE {t} SET {c} = {c} WHERE {e}").format(t=table, c=column, e=either),
            [[A, B]],
        )
        if _reached(changed):
            leaks.append("UPDATE " + _reached(changed, "of the canaries"))
        deleted = _attempt(conn, sql.SQL("DELETE FROM {} WHERE {}").format(table, either), [[A, B]])
        if _reached(deleted):
            leaks.append("DELETE " + _reached(deleted, "of the canaries"))
        query, params = row_for_a.fresh().insert(returning=False)
        inserted = _attempt(conn, query, params)
        if not inserted.failed:
            leaks.append("INSERT added a row")
        if leaks:
            checks["no_request_write"] = "LEAK: " + ", ".join(leaks)
            result.add("TF108", "with no request open: " + "; ".join(leaks))
        else:
            checks["no_request_write"] = "nothing written"

    errors = [f for f in result.findings if f.level == "error"]
    result.status = "failed" if errors else "passed"


def _write_outcome(attempt: _Attempt) -> str:
    if attempt.failed:
        if attempt.sqlstate != INSUFFICIENT_PRIVILEGE:
            return f"LEAK: row reached, then {attempt.blocked()}"
        return attempt.blocked()
    if attempt.rowcount > 0:
        return f"LEAK: {attempt.rowcount} row(s) affected"
    return "0 rows affected"


def _reached(attempt: _Attempt, whose: str = "") -> str:
    """What an UPDATE or DELETE of rows the principal must not reach did to them, or "".

    Row-level security filters those rows out silently, so any error but 42501 (a missing
    privilege or a failed WITH CHECK) means the statement reached a row: a foreign key or a
    trigger stopped it, not the fence."""
    if attempt.failed:
        if attempt.sqlstate == INSUFFICIENT_PRIVILEGE:
            return ""
        return f"reached row(s) {whose}, stopped only by {attempt.sqlstate} {attempt.message}"
    if attempt.rowcount > 0:
        return f"changed {attempt.rowcount} row(s) {whose}"
    return ""


def iter_checks(result: ProbeResult) -> Iterator[tuple[str, str, str]]:
    """(check, what it proves, what happened) in the order the checks run."""
    for name, meaning in CHECKS.items():
        if name in result.checks:
            yield name, meaning, result.checks[name]
    if "own_insert" in result.checks:
        yield "own_insert", "A inserts into its own project (informational)", result.checks[
            "own_insert"
        ]

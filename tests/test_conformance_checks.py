"""The conformance checks of sql/conformance (SPEC §4): the package's own schema has zero
findings; a corpus of deliberately broken host tables, one per check, each flagged with its
stable code in conformance.findings and conformance.isolation, and each fixed version passing;
conformance.fence_table is idempotent and rejects bad input with 22023, changing nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.rows import dict_row

from tests.world import Database, build_org
from tracefence import migrate
from tracefence.errors import ConstraintViolation

Connection = psycopg.Connection[Any]

NOTES = "public.notes"
READ, WRITE = "traces:read", "traces:write"
KEY_READ = "project_id = ANY ((SELECT iam.permitted_projects('traces:read'))::uuid[])"
KEY_WRITE = "project_id = ANY ((SELECT iam.permitted_projects('traces:write'))::uuid[])"


# ------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def admin(db: Database) -> Connection:
    """A superuser connection in autocommit: builds the broken schemas."""
    return db.admin()


def findings(conn: Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM conformance.findings").fetchall()


def codes(conn: Connection, obj: str) -> set[str]:
    return {f["code"] for f in findings(conn) if f["object"] == obj}


def isolation(conn: Connection, relation: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM conformance.isolation WHERE relation = %s", [relation]
        ).fetchone()
    assert row is not None, f"{relation} has no row in conformance.isolation"
    return row


def problem_codes(conn: Connection, relation: str) -> set[str]:
    return {p["code"] for p in isolation(conn, relation)["problems"]}


def assert_clean(conn: Connection) -> None:
    found = findings(conn)
    assert found == [], "\n".join(f"{f['code']} {f['object']}: {f['detail']}" for f in found)


def flagged(conn: Connection, code: str, obj: str, *, level: str = "error") -> dict[str, Any]:
    """The finding `code` on `obj`; fails listing everything found when there is none."""
    found = findings(conn)
    for f in found:
        if f["code"] == code and f["object"] == obj and f["level"] == level:
            assert f["detail"] and f["remediation"]
            return f
    listing = "\n".join(f"{f['code']} {f['level']} {f['object']}: {f['detail']}" for f in found)
    raise AssertionError(f"no {level} {code} on {obj}; found:\n{listing}")


def make_notes(conn: Connection, name: str = NOTES, *, nullable: bool = False,
               grant: bool = True) -> None:
    """A host application's project-scoped table, as an application would create it."""
    conn.execute(
        f"CREATE TABLE {name} ("
        " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        f" project_id uuid {'' if nullable else 'NOT NULL'}"
        "  REFERENCES tenancy.projects (id) ON DELETE CASCADE,"
        " organisation_id uuid,"
        " author_id uuid,"
        " body text NOT NULL DEFAULT '')"
    )
    if grant:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO tracefence_app")


def fence(conn: Connection, name: str = NOTES, read: str = READ, write: str = WRITE) -> None:
    conn.execute("SELECT conformance.fence_table(%s, %s, %s)", [name, read, write])


@pytest.fixture
def fenced_notes(admin: Connection) -> Connection:
    """public.notes fenced by conformance.fence_table: the fixed version every case returns to."""
    make_notes(admin)
    fence(admin)
    assert_clean(admin)
    assert isolation(admin, NOTES)["status"] == "fenced"
    return admin


@pytest.fixture
def scratch_role(admin: Connection) -> Iterator[str]:
    """A cluster role for one test, dropped afterwards with what it holds in the test database."""
    name = f"tf_test_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------------------
# The package's own schema


def test_package_schema_has_zero_findings(admin: Connection) -> None:
    assert_clean(admin)


def test_package_schema_has_zero_findings_for_the_owner(db: Database) -> None:
    """The checks run, and find nothing, as tracefence_owner (not only as a superuser)."""
    with db.admin(autocommit=False) as conn:
        conn.execute("SET LOCAL ROLE tracefence_owner")
        assert_clean(conn)
        rows = conn.execute("SELECT count(*) FROM conformance.isolation").fetchone()
        assert rows is not None and rows[0] > 0


def test_every_table_of_the_package_is_classified(admin: Connection) -> None:
    rows = admin.execute(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname !~ '^pg_'"
    ).fetchall()
    tables = {r[0] for r in rows}
    manifest = {r[0] for r in admin.execute("SELECT relation FROM conformance.manifest").fetchall()}
    assert tables == manifest
    assert {"public._yoyo_migration", "telemetry.traces", "audit.events"} <= manifest


def test_isolation_reports_the_package_tables_by_tier(admin: Connection) -> None:
    for relation in ("telemetry.traces", "telemetry.spans", "tenancy.environments"):
        row = isolation(admin, relation)
        assert (row["tier"], row["status"], row["problems"]) == ("project", "fenced", [])
    assert isolation(admin, "audit.events")["tier"] == "organisation"
    for relation in ("iam.permissions", "iam.users", "conformance.manifest", "public._yoyo_log"):
        assert isolation(admin, relation)["status"] == "not applicable"
    readers = {r[0] for r in admin.execute(
        "SELECT role_name FROM conformance.cross_tenant_readers").fetchall()}
    assert readers == {"tracefence_owner", "tracefence_audit"}


def test_the_application_role_gets_nothing_of_the_checker(db: Database) -> None:
    with db.app() as conn:
        for query in (
            "SELECT * FROM conformance.findings",
            "SELECT * FROM conformance.isolation",
            "SELECT * FROM conformance.manifest",
            "SELECT conformance.fence_table('telemetry.traces', 'traces:read', 'traces:write')",
            "SELECT conformance.add_cross_tenant_reader('tracefence_app', 'no')",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(query)
    admin = db.admin()
    for function in ("fence_table(regclass, text, text)", "classify(regclass, text, text, text)",
                     "add_cross_tenant_reader(name, text)"):
        executable = admin.execute(
            "SELECT has_function_privilege('tracefence_app', %s, 'EXECUTE'),"
            " has_function_privilege('public', %s, 'EXECUTE')",
            [f"conformance.{function}"] * 2,
        ).fetchone()
        assert executable == (False, False), function


# ------------------------------------------------------------------------------------------
# TF001 unclassified


def test_tf001_unclassified_project_table(admin: Connection) -> None:
    make_notes(admin)
    finding = flagged(admin, "TF001", NOTES)
    assert "presumed project-scoped" in finding["detail"]
    assert "conformance.fence_table" in finding["remediation"]
    fence(admin)
    assert_clean(admin)
    assert isolation(admin, NOTES)["tier"] == "project"


def test_tf001_table_linked_to_a_project_table_classified_internal(admin: Connection) -> None:
    # Trace ids are unique per project only, so the tags point at an environment's global id.
    admin.execute(
        "CREATE TABLE public.trace_tags (environment_id uuid PRIMARY KEY"
        " REFERENCES tenancy.environments (id) ON DELETE CASCADE, tag text)"
    )
    assert "TF001" in codes(admin, "public.trace_tags")
    admin.execute("SELECT conformance.classify('public.trace_tags', 'internal', 'tags')")
    finding = flagged(admin, "TF001", "public.trace_tags")
    assert "tenancy.environments" in finding["detail"]
    assert isolation(admin, "public.trace_tags")["status"] == "violations"
    # Fixed: the tags carry their project and are fenced by it.
    admin.execute("DROP TABLE public.trace_tags")
    admin.execute(
        "CREATE TABLE public.trace_tags (project_id uuid NOT NULL, trace_id uuid PRIMARY KEY,"
        " tag text, FOREIGN KEY (project_id, trace_id)"
        " REFERENCES telemetry.traces (project_id, id) ON DELETE CASCADE)"
    )
    fence(admin, "public.trace_tags")
    assert_clean(admin)


def test_tf001_and_tf021_renamed_table(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("ALTER TABLE public.notes RENAME TO memos")
    flagged(admin, "TF021", NOTES, level="warning")
    flagged(admin, "TF001", "public.memos")
    admin.execute("DELETE FROM conformance.manifest WHERE relation = 'public.notes'")
    admin.execute("DELETE FROM conformance.canonical_policies WHERE relation = 'public.notes'")
    fence(admin, "public.memos")
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF002, TF003 row-level security off, not forced


def test_tf002_rls_disabled(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("ALTER TABLE public.notes DISABLE ROW LEVEL SECURITY")
    flagged(admin, "TF002", NOTES)
    row = isolation(admin, NOTES)
    assert row["status"] == "violations" and "TF002" in problem_codes(admin, NOTES)
    admin.execute("ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY")
    assert_clean(admin)


def test_tf002_rls_disabled_on_a_package_table(admin: Connection) -> None:
    admin.execute("ALTER TABLE telemetry.spans DISABLE ROW LEVEL SECURITY")
    flagged(admin, "TF002", "telemetry.spans")
    admin.execute("ALTER TABLE telemetry.spans ENABLE ROW LEVEL SECURITY")
    assert_clean(admin)


def test_tf003_rls_not_forced(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("ALTER TABLE public.notes NO FORCE ROW LEVEL SECURITY")
    flagged(admin, "TF003", NOTES)
    assert "TF003" in problem_codes(admin, NOTES)
    fence(admin)
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF004..TF008 policies


def test_tf004_no_policy_for_one_command(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("DROP POLICY tracefence_delete ON public.notes")
    finding = flagged(admin, "TF004", NOTES)
    assert "DELETE" in finding["detail"]
    assert "TF004" in problem_codes(admin, NOTES)
    fence(admin)
    assert_clean(admin)


def test_tf004_no_policy_at_all_on_a_reachable_table(admin: Connection) -> None:
    make_notes(admin)
    admin.execute("SELECT conformance.classify('public.notes', 'project', 'notes')")
    admin.execute("ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY")
    admin.execute("ALTER TABLE public.notes FORCE ROW LEVEL SECURITY")
    admin.execute("CREATE INDEX ON public.notes (project_id)")
    missing = {f["detail"].split()[2] for f in findings(admin)
               if f["code"] == "TF004" and f["object"] == NOTES}
    assert missing == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    # Without any privilege for the application, no policy is needed: RLS denies by default.
    admin.execute("REVOKE ALL ON public.notes FROM tracefence_app")
    assert "TF004" not in codes(admin, NOTES)
    admin.execute("GRANT SELECT ON public.notes TO tracefence_app")
    fence(admin)
    assert_clean(admin)


@pytest.mark.parametrize(
    "using",
    [
        "true",
        f"{KEY_READ} OR true",
        "(SELECT iam.current_principal()) IS NOT NULL",
    ],
    ids=["true", "or-true", "no-column"],
)
def test_tf005_unconditional_policy(fenced_notes: Connection, using: str) -> None:
    admin = fenced_notes
    admin.execute(f"ALTER POLICY tracefence_read ON public.notes USING ({using})")
    finding = flagged(admin, "TF005", NOTES)
    assert "tracefence_read" in finding["detail"]
    assert "TF005" in problem_codes(admin, NOTES)
    fence(admin)
    assert_clean(admin)


def test_tf005_unconditional_policy_added_beside_the_fence(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("CREATE POLICY everyone ON public.notes FOR SELECT TO public USING (true)")
    flagged(admin, "TF005", NOTES)
    fence(admin)  # drops policies that apply to the application role but are not its own
    assert admin.execute(
        "SELECT count(*) FROM pg_policy WHERE polrelid = 'public.notes'::regclass"
    ).fetchone() == (4,)
    assert_clean(admin)


@pytest.mark.parametrize(
    "using",
    [
        "organisation_id = ANY ((SELECT iam.visible_resources())::uuid[])",
        "author_id = (SELECT iam.current_principal())",
        "project_id = current_setting('app.project')::uuid",
        f"{KEY_READ} OR author_id = (SELECT iam.current_principal())",
        f"NOT ({KEY_READ})",
    ],
    ids=["organisation", "user", "setting", "or-user", "negated"],
)
def test_tf006_policy_not_keyed_to_the_project(fenced_notes: Connection, using: str) -> None:
    admin = fenced_notes
    admin.execute(f"ALTER POLICY tracefence_read ON public.notes USING ({using})")
    flagged(admin, "TF006", NOTES)
    assert "TF006" in problem_codes(admin, NOTES)
    fence(admin)
    assert_clean(admin)


def test_tf006_tier_path_key_counts_only_where_a_foreign_key_holds_the_tier_path(
    admin: Connection,
) -> None:
    """iam.fence_key's tier-path form tests organisation_id and workspace_id: keyed only where
    a foreign key to tenancy.projects' tier path makes the row tell the truth about them."""
    make_notes(admin)
    admin.execute("ALTER TABLE public.notes ADD COLUMN workspace_id uuid")
    fence(admin)
    tier_key = (
        "(project_id = ANY ((SELECT iam.permitted_scopes('traces:read'))::uuid[]) "
        "OR workspace_id = ANY ((SELECT iam.permitted_scopes('traces:read'))::uuid[]) "
        "OR organisation_id = ANY ((SELECT iam.permitted_scopes('traces:read'))::uuid[]))"
    )
    # Without the foreign key a writer could name any organisation: flagged.
    admin.execute(f"ALTER POLICY tracefence_read ON public.notes USING ({tier_key})")
    flagged(admin, "TF006", NOTES)
    # With it, the same policy is keyed (only the hand edit is reported, as drift).
    admin.execute("UPDATE public.notes SET organisation_id = NULL")
    admin.execute(
        "ALTER TABLE public.notes ADD FOREIGN KEY (organisation_id, workspace_id, project_id)"
        " REFERENCES tenancy.projects (organisation_id, workspace_id, id)"
    )
    assert "TF006" not in codes(admin, NOTES)
    # And conformance.fence_table installs the tier-path form there itself: clean.
    fence(admin)
    assert_clean(admin)
    policy = admin.execute(
        "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = 'tracefence_read'"
        " AND polrelid = 'public.notes'::regclass"
    ).fetchone()
    assert policy is not None and "permitted_scopes" in policy[0]


def test_tf006_narrower_policies_are_still_keyed(fenced_notes: Connection) -> None:
    """A policy that adds conditions to the project key is fine (only drift is reported)."""
    admin = fenced_notes
    admin.execute(
        f"ALTER POLICY tracefence_read ON public.notes USING "
        f"(({KEY_READ} AND body <> '') OR ({KEY_WRITE} AND author_id IS NULL))"
    )
    assert codes(admin, NOTES) == {"TF018"}


def test_tf007_insert_check_not_carrying_the_scope(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("ALTER POLICY tracefence_insert ON public.notes WITH CHECK (project_id IS NOT NULL)")
    flagged(admin, "TF007", NOTES)
    fence(admin)
    assert_clean(admin)


def test_tf007_with_check_weaker_than_using(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute(
        "ALTER POLICY tracefence_update ON public.notes WITH CHECK "
        "(organisation_id = ANY ((SELECT iam.visible_resources())::uuid[]))"
    )
    finding = flagged(admin, "TF007", NOTES)
    assert "weaker than its USING" in finding["detail"]
    assert "TF008" in codes(admin, NOTES)  # and so an UPDATE can move the row
    fence(admin)
    assert_clean(admin)


def _move_note(db: Database, note: uuid.UUID, owner: uuid.UUID, to: uuid.UUID) -> None:
    with db.fence().request(user=owner) as conn:
        conn.execute("UPDATE public.notes SET project_id = %s WHERE id = %s", [to, note])


def test_tf008_update_can_move_a_row_across_projects(db: Database,
                                                      fenced_notes: Connection) -> None:
    admin = fenced_notes
    org = build_org(db, workspaces=1, projects_per_workspace=2)
    a, b = (p.id for p in org.projects)
    note = admin.execute(
        "INSERT INTO public.notes (project_id, body) VALUES (%s, 'x') RETURNING id", [a]
    ).fetchone()[0]
    with pytest.raises(ConstraintViolation, match="cannot change"):
        _move_note(db, note, org.owner, b)

    admin.execute("DROP TRIGGER tracefence_keep_scope ON public.notes")
    finding = flagged(admin, "TF008", NOTES)
    assert "move a row" in finding["detail"]
    assert "TF008" in problem_codes(admin, NOTES)
    _move_note(db, note, org.owner, b)  # the finding is real: the row changed project
    assert admin.execute("SELECT project_id FROM public.notes").fetchone() == (b,)

    fence(admin)
    assert_clean(admin)
    with pytest.raises(ConstraintViolation, match="cannot change"):
        _move_note(db, note, org.owner, a)


def test_tf008_update_policy_without_project_check(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("DROP POLICY tracefence_update ON public.notes")
    admin.execute(
        "CREATE POLICY tracefence_update ON public.notes FOR UPDATE TO tracefence_app "
        "USING (author_id = (SELECT iam.current_principal()))"
    )
    flagged(admin, "TF008", NOTES)
    fence(admin)
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF009, TF010 scope columns and keys


def test_tf009_nullable_scope_column(admin: Connection) -> None:
    make_notes(admin, nullable=True)
    fence(admin)
    flagged(admin, "TF009", NOTES)
    admin.execute("ALTER TABLE public.notes ALTER COLUMN project_id SET NOT NULL")
    assert_clean(admin)


def test_tf010_foreign_key_without_the_scope_column(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute(
        "CREATE TABLE public.replies (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " project_id uuid NOT NULL, note_id uuid NOT NULL REFERENCES public.notes (id), body text)"
    )
    fence(admin, "public.replies")
    finding = flagged(admin, "TF010", "public.replies")
    assert "public.notes" in finding["detail"]
    admin.execute("ALTER TABLE public.notes ADD UNIQUE (project_id, id)")
    admin.execute("ALTER TABLE public.replies DROP CONSTRAINT replies_note_id_fkey")
    admin.execute(
        "ALTER TABLE public.replies ADD FOREIGN KEY (project_id, note_id)"
        " REFERENCES public.notes (project_id, id)"
    )
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF011 the application role


def test_tf011_application_role_owns_a_table(admin: Connection) -> None:
    admin.execute("CREATE TABLE public.app_cache (k text PRIMARY KEY, v text)")
    admin.execute("SELECT conformance.classify('public.app_cache', 'global', 'a cache')")
    admin.execute("ALTER TABLE public.app_cache OWNER TO tracefence_app")
    finding = flagged(admin, "TF011", "role:tracefence_app")
    assert "public.app_cache" in finding["detail"]
    # A problem of the role weakens every scoped table.
    assert "TF011" in problem_codes(admin, "telemetry.traces")
    assert isolation(admin, "telemetry.traces")["status"] == "violations"
    assert isolation(admin, "public.app_cache")["status"] == "not applicable"
    admin.execute("ALTER TABLE public.app_cache OWNER TO CURRENT_USER")
    assert_clean(admin)


def test_tf011_application_login_owns_a_large_object(db: Database, admin: Connection) -> None:
    """Issue 14: lo_from_bytea is executable by PUBLIC; a large object the application login
    makes is shared by every tenant on it and survives DISCARD ALL."""
    app = db.app()
    (oid,) = app.execute("SELECT lo_from_bytea(0, 'left for the next tenant')").fetchone()
    app.execute("DISCARD ALL")
    finding = flagged(admin, "TF011", f"role:{db.app_login}")
    assert f"large object {oid}" in finding["detail"]
    app.execute("SELECT lo_unlink(%s)", [oid])
    assert_clean(admin)


def test_tf011_application_role_with_bypassrls(admin: Connection) -> None:
    try:
        admin.execute("ALTER ROLE tracefence_app BYPASSRLS")
        finding = flagged(admin, "TF011", "role:tracefence_app")
        assert "BYPASSRLS" in finding["detail"]
        assert "TF011" in problem_codes(admin, "telemetry.spans")
    finally:
        admin.execute("ALTER ROLE tracefence_app NOBYPASSRLS")
    assert_clean(admin)


def test_tf011_application_login_can_set_role_into_a_bypassrls_role(
    db: Database, admin: Connection, scratch_role: str
) -> None:
    role = sql.Identifier(scratch_role)
    try:
        admin.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(role))
        admin.execute(sql.SQL("GRANT {} TO {}").format(role, sql.Identifier(db.app_login)))
        finding = flagged(admin, "TF011", f"role:{db.app_login}")
        assert scratch_role in finding["detail"]
    finally:
        admin.execute(sql.SQL("REVOKE {} FROM {}").format(role, sql.Identifier(db.app_login)))
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF012..TF015 indirect paths


def test_tf012_view_without_security_invoker(admin: Connection) -> None:
    admin.execute("CREATE VIEW public.trace_names AS SELECT id, project_id, name FROM telemetry.traces")
    flagged(admin, "TF012", "public.trace_names")
    assert "TF012" in problem_codes(admin, "telemetry.traces")
    assert "TF012" not in problem_codes(admin, "telemetry.spans")
    # A view over that view is flagged too; fixing the inner one fixes neither.
    admin.execute("CREATE VIEW public.trace_names_2 WITH (security_invoker = true) AS "
                  "SELECT * FROM public.trace_names")
    assert "TF012" not in codes(admin, "public.trace_names_2")
    admin.execute("ALTER VIEW public.trace_names SET (security_invoker = true)")
    assert_clean(admin)


def test_tf013_security_definer_function(admin: Connection) -> None:
    admin.execute(
        "CREATE FUNCTION public.count_traces() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT count(*) FROM telemetry.traces'"
    )
    obj = "public.count_traces()"
    details = {f["detail"] for f in findings(admin) if f["code"] == "TF013" and f["object"] == obj}
    assert any("search_path" in d for d in details)
    assert any("PUBLIC" in d for d in details)
    assert "TF013" in problem_codes(admin, "telemetry.traces")
    admin.execute("ALTER FUNCTION public.count_traces() SET search_path = public")
    assert {f["level"] for f in findings(admin) if f["code"] == "TF013"} == {"error", "warning"}
    admin.execute("ALTER FUNCTION public.count_traces() SET search_path = pg_catalog, pg_temp")
    admin.execute("REVOKE EXECUTE ON FUNCTION public.count_traces() FROM PUBLIC")
    assert_clean(admin)


def test_tf013_search_path_naming_a_writable_schema(admin: Connection) -> None:
    admin.execute("CREATE SCHEMA scratch")
    admin.execute("GRANT CREATE ON SCHEMA scratch TO tracefence_app")
    admin.execute(
        "CREATE FUNCTION public.tidy() RETURNS void LANGUAGE sql SECURITY DEFINER "
        "SET search_path = scratch, pg_temp AS 'SELECT'"
    )
    admin.execute("REVOKE EXECUTE ON FUNCTION public.tidy() FROM PUBLIC")
    finding = flagged(admin, "TF013", "public.tidy()")
    assert "scratch" in finding["detail"]
    admin.execute("REVOKE CREATE ON SCHEMA scratch FROM tracefence_app")
    assert_clean(admin)


def test_tf014_unfenced_partition(admin: Connection) -> None:
    admin.execute(
        "CREATE TABLE public.events (project_id uuid NOT NULL, at timestamptz NOT NULL, body text)"
        " PARTITION BY RANGE (at)"
    )
    admin.execute("GRANT SELECT, INSERT ON public.events TO tracefence_app")
    fence(admin, "public.events")
    assert_clean(admin)
    admin.execute(
        "CREATE TABLE public.events_2025 PARTITION OF public.events"
        " FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
    )
    finding = flagged(admin, "TF014", "public.events_2025")
    assert "public.events" in finding["detail"]
    # The partition is classified through its parent: its problem is the parent's.
    assert "TF014" in problem_codes(admin, "public.events")
    assert isolation(admin, "public.events")["status"] == "violations"
    fence(admin, "public.events")  # fences the parent and every partition
    assert_clean(admin)
    # A partition with its own, different policy is not fenced like its parent either.
    admin.execute("ALTER POLICY tracefence_read ON public.events_2025 USING (" + KEY_WRITE + ")")
    assert "TF014" in codes(admin, "public.events_2025")
    fence(admin, "public.events")
    assert_clean(admin)


def test_tf014_unfenced_inheritance_child(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute("CREATE TABLE public.archived_notes () INHERITS (public.notes)")
    flagged(admin, "TF014", "public.archived_notes")
    fence(admin)
    assert_clean(admin)


def test_tf015_materialized_view_over_scoped_data(admin: Connection) -> None:
    admin.execute(
        "CREATE MATERIALIZED VIEW public.trace_counts AS"
        " SELECT project_id, count(*) AS n FROM telemetry.traces GROUP BY project_id"
    )
    flagged(admin, "TF015", "public.trace_counts")
    assert "TF015" in problem_codes(admin, "telemetry.traces")
    admin.execute("DROP MATERIALIZED VIEW public.trace_counts")
    assert_clean(admin)


def test_tf015_scoped_foreign_table(admin: Connection) -> None:
    admin.execute("CREATE FOREIGN DATA WRAPPER tf_test_wrapper")
    admin.execute("CREATE SERVER tf_test_server FOREIGN DATA WRAPPER tf_test_wrapper")
    admin.execute(
        "CREATE FOREIGN TABLE public.remote_notes (project_id uuid NOT NULL, body text)"
        " SERVER tf_test_server"
    )
    assert "TF001" in codes(admin, "public.remote_notes")
    admin.execute("SELECT conformance.classify('public.remote_notes', 'project', 'remote')")
    flagged(admin, "TF015", "public.remote_notes")
    admin.execute("DROP FOREIGN TABLE public.remote_notes")
    admin.execute("DELETE FROM conformance.manifest WHERE relation = 'public.remote_notes'")
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF016, TF017 accessors and indexes


def test_tf016_volatile_principal_accessor(admin: Connection) -> None:
    admin.execute("ALTER FUNCTION iam.permitted_projects(text) VOLATILE")
    flagged(admin, "TF016", "iam.permitted_projects(text)")
    assert "TF016" in problem_codes(admin, "telemetry.traces")
    admin.execute("ALTER FUNCTION iam.permitted_projects(text) STABLE")
    assert_clean(admin)


def test_tf016_accessor_not_wrapped_in_a_subselect(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute(
        "ALTER POLICY tracefence_read ON public.notes"
        " USING (project_id = ANY (iam.permitted_projects('traces:read')))"
    )
    finding = flagged(admin, "TF016", NOTES, level="warning")
    assert "iam.permitted_projects(text)" in finding["detail"]
    assert "TF006" not in codes(admin, NOTES)  # still keyed to the project
    fence(admin)
    assert_clean(admin)


def test_tf017_missing_index_on_the_scope_column(fenced_notes: Connection) -> None:
    admin = fenced_notes
    index = admin.execute(
        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = 'public.notes'::regclass AND a.attname = 'project_id'"
    ).fetchone()[0]
    admin.execute(f"DROP INDEX {index}")
    flagged(admin, "TF017", NOTES, level="warning")
    row = isolation(admin, NOTES)
    assert row["status"] == "fenced" and "TF017" in problem_codes(admin, NOTES)  # a warning
    fence(admin)
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF018 drift


def test_tf018_hand_edited_package_policy(db: Database, admin: Connection) -> None:
    admin.execute(
        "ALTER POLICY traces_read ON telemetry.traces USING"
        " (project_id = ANY ((SELECT iam.permitted_projects('projects:read'))::uuid[]))"
    )
    finding = flagged(admin, "TF018", "telemetry.traces")
    assert "traces_read" in finding["detail"] and "projects:read" in finding["detail"]
    assert codes(admin, "telemetry.traces") == {"TF018"}  # keyed, but not the package's
    assert isolation(admin, "telemetry.traces")["status"] == "violations"
    migrate.apply_sql(db.admin_conninfo, force=True)
    assert_clean(admin)


def test_tf018_policies_added_or_dropped_by_hand(db: Database, admin: Connection) -> None:
    admin.execute(
        f"CREATE POLICY side_door ON telemetry.spans FOR SELECT TO tracefence_app USING ({KEY_WRITE})"
    )
    admin.execute("DROP POLICY spans_delete ON telemetry.spans")
    details = {f["detail"] for f in findings(admin)
               if f["code"] == "TF018" and f["object"] == "telemetry.spans"}
    assert any("side_door" in d for d in details)
    assert any("spans_delete" in d and "dropped" in d for d in details)
    # Re-applying the package restores its policies but does not adopt the hand-made one.
    migrate.apply_sql(db.admin_conninfo, force=True)
    assert [f["detail"] for f in findings(admin)] == [
        d for d in details if "side_door" in d
    ]
    admin.execute("DROP POLICY side_door ON telemetry.spans")
    assert_clean(admin)


def test_tf018_hand_edited_fenced_host_table(fenced_notes: Connection) -> None:
    admin = fenced_notes
    admin.execute(f"ALTER POLICY tracefence_read ON public.notes USING ({KEY_WRITE})")
    assert codes(admin, NOTES) == {"TF018"}
    fence(admin)
    assert_clean(admin)


# ------------------------------------------------------------------------------------------
# TF019 server version, TF020 cross-tenant readers


def test_tf019_this_server_has_both_fixes(db: Database, admin: Connection) -> None:
    assert db.server.version >= 150014
    assert not any(f["code"] == "TF019" for f in findings(admin))


@pytest.mark.parametrize(
    ("version", "missing"),
    [
        (180000, set()),
        (170006, set()),
        (170005, {("CVE-2025-8713", "17.6")}),
        (170000, {("CVE-2024-10976", "17.1"), ("CVE-2025-8713", "17.6")}),
        (160009, {("CVE-2025-8713", "16.10")}),
        (150018, set()),
        (150013, {("CVE-2025-8713", "15.14")}),
        (150008, {("CVE-2024-10976", "15.9"), ("CVE-2025-8713", "15.14")}),
        (140018, {("CVE-2025-8713", "14.19")}),
        (130021, {("CVE-2025-8713", "13.22")}),
        (120022, {("CVE-2024-10976", None), ("CVE-2025-8713", None)}),
    ],
)
def test_tf019_missing_security_fixes(admin: Connection, version: int,
                                      missing: set[tuple[str, str | None]]) -> None:
    rows = admin.execute(
        "SELECT cve, fixed_in FROM conformance.missing_security_fixes(%s)", [version]
    ).fetchall()
    assert set(rows) == missing


def test_tf020_unlisted_bypassrls_reader(admin: Connection, scratch_role: str) -> None:
    role = sql.Identifier(scratch_role)
    admin.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(role))
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA telemetry TO {}").format(role))
    admin.execute(sql.SQL("GRANT SELECT ON telemetry.traces TO {}").format(role))
    finding = flagged(admin, "TF020", f"role:{scratch_role}")
    assert "telemetry.traces" in finding["detail"]
    assert "TF020" in problem_codes(admin, "telemetry.traces")
    admin.execute("SELECT conformance.add_cross_tenant_reader(%s, 'nightly export')", [scratch_role])
    assert_clean(admin)
    admin.execute("DELETE FROM conformance.cross_tenant_readers WHERE role_name = %s", [scratch_role])


def test_tf020_unlisted_owner_and_members(admin: Connection, scratch_role: str) -> None:
    make_notes(admin)
    fence(admin)
    admin.execute(sql.SQL("ALTER TABLE public.notes OWNER TO {}").format(sql.Identifier(scratch_role)))
    finding = flagged(admin, "TF020", f"role:{scratch_role}")
    assert "owns public.notes" in finding["detail"]
    admin.execute("SELECT conformance.add_cross_tenant_reader(%s, 'the host''s owner')", [scratch_role])
    assert_clean(admin)
    admin.execute("ALTER TABLE public.notes OWNER TO CURRENT_USER")
    admin.execute("DELETE FROM conformance.cross_tenant_readers WHERE role_name = %s", [scratch_role])
    assert_clean(admin)


def test_tf020_policy_for_another_role_reads_every_project(fenced_notes: Connection,
                                                           scratch_role: str) -> None:
    admin = fenced_notes
    role = sql.Identifier(scratch_role)
    admin.execute(sql.SQL("GRANT SELECT ON public.notes TO {}").format(role))
    admin.execute(
        sql.SQL("CREATE POLICY support_read ON public.notes FOR SELECT TO {} USING (true)").format(role)
    )
    finding = flagged(admin, "TF020", NOTES)
    assert scratch_role in finding["detail"]
    admin.execute("SELECT conformance.add_cross_tenant_reader(%s, 'support desk')", [scratch_role])
    fence(admin)  # keeps the support policy (not the application's) and records it as canonical
    assert_clean(admin)
    admin.execute("DROP POLICY support_read ON public.notes")
    admin.execute("DELETE FROM conformance.cross_tenant_readers WHERE role_name = %s", [scratch_role])


# ------------------------------------------------------------------------------------------
# fence_table and the manifest API


def _fence_state(conn: Connection, relation: str) -> dict[str, Any]:
    queries = {
        "table": "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %(r)s::regclass",
        "policies": "SELECT polname, polcmd, polroles::regrole[]::text[],"
        " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)"
        " FROM pg_policy WHERE polrelid = %(r)s::regclass ORDER BY polname",
        "triggers": "SELECT tgname, tgfoid::regproc::text FROM pg_trigger"
        " WHERE tgrelid = %(r)s::regclass ORDER BY tgname",
        "indexes": "SELECT pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = %(r)s::regclass ORDER BY 1",
        "manifest": "SELECT relation, tier, scope_column, read_permission, write_permission,"
        " reason, classified_at FROM conformance.manifest WHERE relation = %(r)s",
        "canonical": "SELECT policy_name, command, permissive, roles, using_expression,"
        " check_expression FROM conformance.canonical_policies WHERE relation = %(r)s"
        " ORDER BY policy_name",
    }
    return {k: conn.execute(q, {"r": relation}).fetchall() for k, q in queries.items()}


def test_fence_table_is_idempotent(admin: Connection) -> None:
    make_notes(admin)
    fence(admin)
    first = _fence_state(admin, NOTES)
    fence(admin)
    fence(admin)
    assert _fence_state(admin, NOTES) == first
    assert len(first["policies"]) == 4 and len(first["canonical"]) == 4
    assert [r[:5] for r in first["manifest"]] == [(NOTES, "project", "project_id", READ, WRITE)]
    assert len([i for i in first["indexes"] if "(project_id)" in i[0]]) == 1
    assert first["table"] == [(True, True)]
    assert_clean(admin)


def test_fence_table_keeps_an_existing_index_led_by_project_id(admin: Connection) -> None:
    make_notes(admin)
    admin.execute("CREATE INDEX notes_by_project ON public.notes (project_id, id)")
    fence(admin)
    indexes = [i[0] for i in _fence_state(admin, NOTES)["indexes"]]
    assert [i for i in indexes if "project_id" in i] == [
        "CREATE INDEX notes_by_project ON public.notes USING btree (project_id, id)"
    ]


def test_fence_table_changes_the_permissions_it_keys_to(admin: Connection) -> None:
    make_notes(admin)
    fence(admin)
    fence(admin, read="traces:read:prod", write="traces:write")
    state = _fence_state(admin, NOTES)
    policies = {row[0]: row for row in state["policies"]}
    assert "traces:read:prod" in policies["tracefence_read"][3]
    assert "traces:read:prod" not in policies["tracefence_update"][3]
    assert state["manifest"][0][3] == "traces:read:prod"
    assert_clean(admin)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((NOTES, "traces:reed", WRITE), "unknown read permission"),
        ((NOTES, READ, None), "unknown write permission"),
        ((NOTES, "org:manage", WRITE), "does not apply at the project tier"),
        (("public.plain", READ, WRITE), "no project_id column"),
        (("public.text_scope", READ, WRITE), "no project_id column of type uuid"),
        (("public.note_view", READ, WRITE), "is not a table"),
        (("telemetry.traces", READ, WRITE), "is a table of the package"),
        ((None, READ, WRITE), "is not a table"),
    ],
    ids=["read", "write-null", "tier", "no-column", "wrong-type", "view", "package", "null"],
)
def test_fence_table_rejects_bad_input_and_changes_nothing(
    admin: Connection, args: tuple[str | None, ...], message: str
) -> None:
    make_notes(admin)
    admin.execute("CREATE TABLE public.plain (id int PRIMARY KEY)")
    admin.execute("CREATE TABLE public.text_scope (id int PRIMARY KEY, project_id text NOT NULL)")
    admin.execute("CREATE VIEW public.note_view AS SELECT * FROM public.notes")
    relations = [NOTES, "public.plain", "public.text_scope", "telemetry.traces"]
    before = {r: _fence_state(admin, r) for r in relations}
    manifest = admin.execute("SELECT * FROM conformance.manifest ORDER BY relation").fetchall()
    with pytest.raises(errors.InvalidParameterValue, match=message):
        admin.execute("SELECT conformance.fence_table(%s, %s, %s)", list(args))
    assert {r: _fence_state(admin, r) for r in relations} == before
    assert admin.execute("SELECT * FROM conformance.manifest ORDER BY relation").fetchall() == manifest


@pytest.mark.parametrize(
    ("call", "args", "message"),
    [
        ("classify(%s, %s, %s)", (NOTES, "tenant", "x"), "unknown tier"),
        ("classify(%s, %s, %s)", (NOTES, "project", " "), "needs a reason"),
        ("classify(%s, %s, %s, %s)", (NOTES, "project", "x", "tenant_id"), "no scope column"),
        ("classify(%s, %s, %s)", (NOTES, "workspace", "x"), "no scope column"),
        ("classify(%s, %s, %s, %s)", (NOTES, "global", "x", "project_id"), "has no scope column"),
        ("add_cross_tenant_reader(%s, %s)", ("no_such_role_tf", "x"), "unknown role"),
        ("add_cross_tenant_reader(%s, %s)", ("tracefence_service", ""), "needs a reason"),
    ],
)
def test_manifest_api_rejects_bad_input(admin: Connection, call: str, args: tuple[str, ...],
                                        message: str) -> None:
    make_notes(admin)
    manifest = admin.execute("SELECT * FROM conformance.manifest ORDER BY relation").fetchall()
    readers = admin.execute("SELECT * FROM conformance.cross_tenant_readers ORDER BY 1").fetchall()
    with pytest.raises(errors.InvalidParameterValue, match=message):
        admin.execute(f"SELECT conformance.{call}", list(args))
    assert admin.execute("SELECT * FROM conformance.manifest ORDER BY relation").fetchall() == manifest
    assert admin.execute(
        "SELECT * FROM conformance.cross_tenant_readers ORDER BY 1").fetchall() == readers


def test_classify_records_the_scope_column(admin: Connection) -> None:
    make_notes(admin, grant=False)
    admin.execute("SELECT conformance.classify('public.notes', 'organisation', 'per org')")
    row = isolation(admin, NOTES)
    assert row["tier"] == "organisation"
    assert admin.execute(
        "SELECT scope_column FROM conformance.manifest WHERE relation = 'public.notes'"
    ).fetchone() == ("organisation_id",)
    # organisation_id is nullable, has no index, and the table has no row-level security
    assert {"TF002", "TF009", "TF017"} <= codes(admin, NOTES)

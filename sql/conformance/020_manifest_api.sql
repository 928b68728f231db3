-- Editing the manifest, and fencing a host application's table. Owner-only: nothing here is
-- executable by PUBLIC or by tracefence_app. The manifest tables are forced under row-level
-- security with no policy, so the internal writers below run as their owner.

-- Record a classification; internal (callers validate first).
CREATE OR REPLACE FUNCTION conformance.record_classification(
    relation text,
    tier text,
    scope_column text,
    read_permission text,
    write_permission text,
    reason text
)
RETURNS void
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO conformance.manifest AS m (
        relation, tier, scope_column, read_permission, write_permission, reason
    )
    VALUES (relation, tier, scope_column, read_permission, write_permission, reason)
    ON CONFLICT ON CONSTRAINT manifest_pkey DO UPDATE
    SET
        tier = excluded.tier,
        scope_column = excluded.scope_column,
        read_permission = excluded.read_permission,
        write_permission = excluded.write_permission,
        reason = excluded.reason,
        classified_at = CASE
            WHEN (m.tier, m.scope_column, m.read_permission, m.write_permission, m.reason)
                IS NOT DISTINCT FROM (
                    excluded.tier, excluded.scope_column, excluded.read_permission,
                    excluded.write_permission, excluded.reason
                )
                THEN m.classified_at
            ELSE now()
        END
$$;

-- Record the policies a relation has now as its canonical ones (conformance.check_policy_drift
-- compares against them). Internal.
CREATE OR REPLACE FUNCTION conformance.record_canonical_policies(target regclass)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target_name text := target::text;
BEGIN
    DELETE FROM conformance.canonical_policies AS c WHERE c.relation = target_name;
    INSERT INTO conformance.canonical_policies (
        relation, policy_name, command, permissive, roles, using_expression, check_expression
    )
    SELECT
        target_name,
        p.polname,
        conformance.command_name(p.polcmd::text),
        p.polpermissive,
        ARRAY(
            SELECT CASE WHEN r.oid = 0 THEN 'public' ELSE r.oid::regrole::text END
            FROM unnest(p.polroles) AS r (oid)
            ORDER BY 1
        ),
        conformance.policy_expression(p.polqual, p.polrelid),
        conformance.policy_expression(p.polwithcheck, p.polrelid)
    FROM pg_policy AS p
    WHERE p.polrelid = target;
END
$$;

-- Raise 22023 unless `permission` is in the catalog and applies at the project tier.
CREATE OR REPLACE FUNCTION conformance.require_project_permission(kind text, permission text)
RETURNS void
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF permission IS NULL OR NOT EXISTS (SELECT FROM iam.permissions AS p WHERE p.name = permission) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown %s permission: %L', kind, permission),
            HINT = 'name a permission of iam.permissions, e.g. traces:read and traces:write';
    END IF;
    IF NOT EXISTS (
        SELECT FROM iam.permissions AS p WHERE p.name = permission AND 'project' = ANY(p.tiers)
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('%s permission %s does not apply at the project tier', kind, permission);
    END IF;
END
$$;

-- Classify a table in the manifest. Scoped tiers need a scope column (default: <tier>_id).
CREATE OR REPLACE FUNCTION conformance.classify(
    target regclass, tier text, reason text, scope_column text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    scope text := scope_column;
BEGIN
    SELECT c.relkind INTO kind FROM pg_class AS c WHERE c.oid = target;
    IF kind IS NULL OR kind NOT IN ('r', 'p', 'f') THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = format('%s is not a table', coalesce(target::text, 'NULL'));
    END IF;
    IF tier IS NULL OR tier NOT IN ('project', 'workspace', 'organisation', 'global', 'internal') THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown tier: %L', tier),
            HINT = 'tiers: project, workspace, organisation, global, internal';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'a classification needs a reason';
    END IF;
    IF tier IN ('global', 'internal') THEN
        IF scope IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = '22023', MESSAGE = format('a %s table has no scope column', tier);
        END IF;
    ELSE
        scope := coalesce(scope, tier || '_id');
        IF NOT EXISTS (
            SELECT FROM pg_attribute AS a
            WHERE a.attrelid = target AND a.attname = scope AND a.attnum > 0 AND NOT a.attisdropped
        ) THEN
            RAISE EXCEPTION USING
                ERRCODE = '22023',
                MESSAGE = format('%s has no scope column %I', target, scope);
        END IF;
    END IF;
    PERFORM conformance.record_classification(target::text, tier, scope, NULL, NULL, reason);
END
$$;
COMMENT ON FUNCTION conformance.classify(regclass, text, text, text) IS
'Classify a table in the manifest (project, workspace, organisation, global, internal) with a reason.';

CREATE OR REPLACE FUNCTION conformance.add_cross_tenant_reader(role name, reason text)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_roles AS r WHERE r.rolname = role) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown role: %L', role);
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'a cross-tenant reader needs a reason';
    END IF;
    INSERT INTO conformance.cross_tenant_readers AS c (role_name, reason)
    VALUES (role, reason)
    ON CONFLICT (role_name) DO UPDATE SET reason = excluded.reason;
END
$$;
COMMENT ON FUNCTION conformance.add_cross_tenant_reader(name, text) IS
'List a role that may read across tenants (BYPASSRLS, a table owner), with the reason.';

-- Keeps a row in its project: the scope column named by the trigger argument never changes.
CREATE OR REPLACE FUNCTION conformance.keep_scope()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_jsonb(NEW) -> TG_ARGV[0] IS DISTINCT FROM to_jsonb(OLD) -> TG_ARGV[0] THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'the %s of a row of %I.%I cannot change: rows never move between tenants',
                TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME
            );
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION conformance.keep_scope() IS
'Trigger: the scope column given as argument never changes on UPDATE.';

-- Fence a host application's project-scoped table, and its partitions or inheritance
-- children: row-level security enabled and forced; one canonical policy per command TO
-- tracefence_app keyed to project_id through iam.permitted_projects (policies of the table
-- that apply to the application role are replaced); a trigger that keeps project_id; an index
-- led by project_id; classified as project-scoped; its policies recorded as canonical.
-- Idempotent. Runs as the caller, who must own the table.
CREATE OR REPLACE FUNCTION conformance.fence_table(
    target regclass, read_permission text, write_permission text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
    stale record;
BEGIN
    IF target IS NULL OR NOT EXISTS (
        SELECT FROM pg_class AS c WHERE c.oid = target AND c.relkind IN ('r', 'p')
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = format('%s is not a table', coalesce(target::text, 'NULL'));
    END IF;
    IF EXISTS (
        SELECT FROM pg_class AS c
        INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = target AND n.nspname IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance')
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('%s is a table of the package: its policies are installed by sql/', target);
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_attribute AS a
        WHERE
            a.attrelid = target AND a.attname = 'project_id' AND a.attnum > 0 AND NOT a.attisdropped
            AND a.atttypid = 'uuid'::regtype
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('%s has no project_id column of type uuid', target),
            HINT = 'a project-scoped table names its project in project_id uuid NOT NULL';
    END IF;
    PERFORM conformance.require_project_permission('read', read_permission);
    PERFORM conformance.require_project_permission('write', write_permission);

    FOR rel IN
        WITH RECURSIVE tree (oid) AS (
            SELECT target::oid
            UNION
            SELECT i.inhrelid FROM pg_inherits AS i INNER JOIN tree ON i.inhparent = tree.oid
        )

        SELECT tree.oid::regclass FROM tree
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', rel);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', rel);
        FOR stale IN
            SELECT p.policy_name
            FROM conformance.policies AS p
            WHERE
                p.relation_oid = rel AND p.applies_to_app
                AND p.policy_name NOT IN (
                    'tracefence_read', 'tracefence_insert', 'tracefence_update', 'tracefence_delete'
                )
        LOOP
            RAISE NOTICE 'conformance.fence_table: dropping policy % on %, which applies to tracefence_app',
                stale.policy_name, rel;
            EXECUTE format('DROP POLICY %I ON %s', stale.policy_name, rel);
        END LOOP;
        PERFORM iam.install_fence(
            rel, read_permission, NULL, write_permission, conformance.has_tier_path(rel), 'tracefence'
        );
        -- A partition already has its parent's trigger, cloned (and not replaceable).
        IF NOT EXISTS (
            SELECT FROM pg_trigger AS g
            WHERE g.tgrelid = rel AND g.tgname = 'tracefence_keep_scope' AND g.tgparentid <> 0
        ) THEN
            EXECUTE format(
                'CREATE OR REPLACE TRIGGER tracefence_keep_scope BEFORE UPDATE ON %s '
                'FOR EACH ROW EXECUTE FUNCTION conformance.keep_scope(''project_id'')',
                rel
            );
        END IF;
        IF NOT EXISTS (
            SELECT FROM pg_index AS i
            INNER JOIN pg_attribute AS a ON i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
            WHERE i.indrelid = rel AND a.attname = 'project_id' AND i.indpred IS NULL
        ) THEN
            EXECUTE format('CREATE INDEX ON %s (project_id)', rel);
        END IF;
        PERFORM conformance.record_classification(
            rel::text, 'project', 'project_id', read_permission, write_permission,
            'Fenced by conformance.fence_table.'
        );
        PERFORM conformance.record_canonical_policies(rel);
    END LOOP;
END
$$;
COMMENT ON FUNCTION conformance.fence_table(regclass, text, text) IS
'Fence a host table by project_id: forced RLS, canonical policies, scope trigger, index, manifest.';

REVOKE ALL ON FUNCTION conformance.record_classification(text, text, text, text, text, text) FROM public;
REVOKE ALL ON FUNCTION conformance.record_canonical_policies(regclass) FROM public;
REVOKE ALL ON FUNCTION conformance.require_project_permission(text, text) FROM public;
REVOKE ALL ON FUNCTION conformance.classify(regclass, text, text, text) FROM public;
REVOKE ALL ON FUNCTION conformance.add_cross_tenant_reader(name, text) FROM public;
REVOKE ALL ON FUNCTION conformance.keep_scope() FROM public;
REVOKE ALL ON FUNCTION conformance.fence_table(regclass, text, text) FROM public;

-- The one shape of a fence: the condition every policy of a project-scoped table puts on its
-- rows, for the package's telemetry tables and for host tables fenced by
-- conformance.fence_table alike. The accessor is wrapped in (SELECT ...) so the planner makes
-- it an initPlan: it runs once per statement, in the backend that plans it, and parallel
-- workers receive its answer as a parameter.
--
-- A table that carries its tier path (organisation_id, workspace_id and project_id, with a
-- foreign key to tenancy.projects' tier path) is tested on all three columns against the
-- request's scopes, so an organisation- or workspace-wide grant costs one comparison per row
-- and each arm can use an index that leads with its column. The project arm comes first: an
-- initPlan runs when its arm is first evaluated, so a row of a project-tier grant (the common,
-- cheap queries) costs one accessor call, not three. A table that names only its project is
-- tested against the projects below the scopes.
CREATE OR REPLACE FUNCTION iam.fence_key(permission text, tier_path boolean)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN tier_path THEN format(
            '(project_id = ANY ((SELECT iam.permitted_scopes(%1$L))::uuid[]) '
            'OR workspace_id = ANY ((SELECT iam.permitted_scopes(%1$L))::uuid[]) '
            'OR organisation_id = ANY ((SELECT iam.permitted_scopes(%1$L))::uuid[]))',
            permission
        )
        ELSE format('project_id = ANY ((SELECT iam.permitted_projects(%L))::uuid[])', permission)
    END
$$;
COMMENT ON FUNCTION iam.fence_key(text, boolean) IS
'The condition a fenced table''s policies put on rows for a permission (SQL text).';

-- How many organisations and workspaces the planner assumes a tier-path table holds (see
-- iam.install_fence).
CREATE OR REPLACE FUNCTION iam.planned_tenants(tier_column name)
RETURNS integer
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE tier_column WHEN 'organisation_id' THEN 10000 WHEN 'workspace_id' THEN 100000 END
$$;

-- Install the four policies of a fenced table: read (split by classification when the table
-- has is_production and a production permission is given), insert, update, delete.
--
-- A tier-path table also gets the planner's assumption the fence is built on: a request sees
-- few of a shared table's tenants. The scopes reach the plan only at run time, so the planner
-- estimates `organisation_id = ANY($scopes)` from the column's distinct count; with one or a
-- few organisations in the table (a new installation, a benchmark) it expects every row and
-- plans a sequential scan for every principal. n_distinct is set as for many organisations
-- and workspaces: estimates of a known id (a DBA's own `organisation_id = '...'`) still come
-- from the most common values ANALYZE keeps, so only unknown ids are planned as narrow. The
-- table is analyzed once, when the setting changes.
CREATE OR REPLACE FUNCTION iam.install_fence(
    target regclass, read_permission text, read_prod_permission text, write_permission text,
    tier_path boolean, prefix text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    read_key text := iam.fence_key(read_permission, tier_path);
    write_key text := iam.fence_key(write_permission, tier_path);
BEGIN
    IF read_prod_permission IS NOT NULL THEN
        read_key := format(
            '(NOT is_production AND %s) OR (is_production AND %s)',
            read_key, iam.fence_key(read_prod_permission, tier_path)
        );
    END IF;
    EXECUTE format('DROP POLICY IF EXISTS %I ON %s', prefix || '_read', target);
    EXECUTE format(
        'CREATE POLICY %I ON %s FOR SELECT TO tracefence_app USING (%s)', prefix || '_read', target, read_key
    );
    EXECUTE format('DROP POLICY IF EXISTS %I ON %s', prefix || '_insert', target);
    EXECUTE format(
        'CREATE POLICY %I ON %s FOR INSERT TO tracefence_app WITH CHECK (%s)',
        prefix || '_insert', target, write_key
    );
    EXECUTE format('DROP POLICY IF EXISTS %I ON %s', prefix || '_update', target);
    EXECUTE format(
        'CREATE POLICY %I ON %s FOR UPDATE TO tracefence_app USING (%s) WITH CHECK (%s)',
        prefix || '_update', target, write_key, write_key
    );
    EXECUTE format('DROP POLICY IF EXISTS %I ON %s', prefix || '_delete', target);
    EXECUTE format(
        'CREATE POLICY %I ON %s FOR DELETE TO tracefence_app USING (%s)', prefix || '_delete', target, write_key
    );
    IF tier_path AND EXISTS (
        SELECT FROM pg_attribute AS a
        WHERE
            a.attrelid = target
            AND a.attname IN ('organisation_id', 'workspace_id')
            AND NOT coalesce(a.attoptions, '{}') @> ARRAY[format('n_distinct=%s', iam.planned_tenants(a.attname))]
    ) THEN
        EXECUTE format(
            'ALTER TABLE %s ALTER COLUMN organisation_id SET (n_distinct = %s), '
            'ALTER COLUMN workspace_id SET (n_distinct = %s)',
            target, iam.planned_tenants('organisation_id'), iam.planned_tenants('workspace_id')
        );
        EXECUTE format('ANALYZE %s', target);
    END IF;
END
$$;
COMMENT ON FUNCTION iam.install_fence(regclass, text, text, text, boolean, text) IS
'Create the read, insert, update and delete policies of a fenced table from iam.fence_key.';

REVOKE ALL ON FUNCTION iam.fence_key(text, boolean) FROM public;
REVOKE ALL ON FUNCTION iam.planned_tenants(name) FROM public;
REVOKE ALL ON FUNCTION iam.install_fence(regclass, text, text, text, boolean, text) FROM public;

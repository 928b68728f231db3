-- depends: 0007_audit
-- The tenancy manifest (SPEC §4): every table of the database classified by tier, the roles
-- that may legitimately read across tenants, and the canonical policies the package (or
-- conformance.fence_table) installed, so that a hand edit shows as drift. The checks that read
-- these tables live in sql/conformance/.
SET LOCAL ROLE tracefence_owner;

CREATE TABLE conformance.manifest (
    -- Schema-qualified, quoted as regclass prints it with search_path = pg_catalog.
    relation text PRIMARY KEY,
    tier text NOT NULL CHECK (tier IN ('project', 'workspace', 'organisation', 'global', 'internal')),
    -- The column that names the row's tenant; required for the three scoped tiers.
    scope_column text,
    read_permission text,
    write_permission text,
    reason text NOT NULL CHECK (length(reason) > 0),
    classified_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT manifest_scope_column CHECK (tier IN ('global', 'internal') OR scope_column IS NOT NULL)
);
COMMENT ON TABLE conformance.manifest IS
'Every table classified as project, workspace or organisation scoped, global, or internal.';
COMMENT ON COLUMN conformance.manifest.scope_column IS
'The tenant column of a scoped table (project_id for a project-scoped one).';

CREATE TABLE conformance.cross_tenant_readers (
    role_name text PRIMARY KEY,
    reason text NOT NULL CHECK (length(reason) > 0)
);
COMMENT ON TABLE conformance.cross_tenant_readers IS
'Roles allowed to read across tenants (BYPASSRLS, table owners), each with the reason.';

CREATE TABLE conformance.canonical_policies (
    relation text NOT NULL,
    policy_name text NOT NULL,
    command text NOT NULL CHECK (command IN ('ALL', 'SELECT', 'INSERT', 'UPDATE', 'DELETE')),
    permissive boolean NOT NULL,
    roles text[] NOT NULL,
    using_expression text,
    check_expression text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relation, policy_name)
);
COMMENT ON TABLE conformance.canonical_policies IS
'Each policy as the package or conformance.fence_table installed it: a later edit is drift.';

ALTER TABLE conformance.manifest ENABLE ROW LEVEL SECURITY;
ALTER TABLE conformance.manifest FORCE ROW LEVEL SECURITY;
ALTER TABLE conformance.cross_tenant_readers ENABLE ROW LEVEL SECURITY;
ALTER TABLE conformance.cross_tenant_readers FORCE ROW LEVEL SECURITY;
ALTER TABLE conformance.canonical_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE conformance.canonical_policies FORCE ROW LEVEL SECURITY;

INSERT INTO conformance.manifest (relation, tier, scope_column, read_permission, write_permission, reason)
VALUES
(
    'telemetry.traces', 'project', 'project_id', 'traces:read', 'traces:write',
    'Traces of a project; production ones need traces:read:prod.'
),
(
    'telemetry.spans', 'project', 'project_id', 'traces:read', 'traces:write',
    'Spans inherit project and classification from their trace.'
),
(
    'tenancy.environments', 'project', 'project_id', 'projects:read', 'environments:write',
    'Environments of a project; written through tenancy.create_environment.'
),
(
    'audit.events', 'organisation', 'organisation_id', 'audit:read', NULL,
    'Audit rows of an organisation and its workspaces and projects; read only through '
    || 'audit.feed (audit:read), written only by the package''s definer functions.'
);

INSERT INTO conformance.manifest (relation, tier, reason)
VALUES
(
    'tenancy.resources', 'internal',
    'The tenancy hierarchy the role cascade walks; no privilege for the application.'
),
(
    'tenancy.organisations', 'internal',
    'The tenancy directory: each row is a tenant, written only by checked definer functions; '
    || 'the application may only list what iam.visible_resources() allows.'
),
(
    'tenancy.workspaces', 'internal',
    'The tenancy directory: each row is a tenant, written only by checked definer functions; '
    || 'the application may only list what iam.visible_resources() allows.'
),
(
    'tenancy.projects', 'internal',
    'The tenancy directory: each row is a tenant, written only by checked definer functions; '
    || 'the application may only list what iam.visible_resources() allows.'
),
('iam.permissions', 'global', 'The permission catalog: the same for every tenant.'),
('iam.roles', 'global', 'The built-in roles: the same for every tenant.'),
('iam.role_permissions', 'global', 'Which permissions each built-in role carries.'),
('iam.principals', 'internal', 'Users and API keys; reached only through definer functions.'),
('iam.users', 'internal', 'People; managed by tracefence_service through definer functions.'),
('iam.api_keys', 'internal', 'API keys (secret hashes); reached only through definer functions.'),
('iam.api_key_scopes', 'internal', 'Scopes of API keys; reached only through definer functions.'),
('iam.role_bindings', 'internal', 'Role bindings; reached only through definer functions.'),
('iam.request_signing_key', 'internal', 'Signs request contexts; readable by the owner only.'),
('iam.token_secret', 'internal', 'The user-token secret as HMAC pads; readable by the owner only.'),
('conformance.installed_sql', 'internal', 'Digests of the applied sql/ files.'),
('conformance.manifest', 'internal', 'This manifest.'),
('conformance.cross_tenant_readers', 'internal', 'Roles allowed to read across tenants.'),
('conformance.canonical_policies', 'internal', 'The policies as the package installed them.');

-- yoyo's bookkeeping, created by the migrating login next to the migrations it records.
INSERT INTO conformance.manifest (relation, tier, reason)
SELECT
    format('%I.%I', n.nspname, c.relname) AS relation,
    'internal' AS tier,
    'Migration bookkeeping of yoyo; no privilege for the application.' AS reason
FROM pg_catalog.pg_class AS c
INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
WHERE
    c.relname IN ('_yoyo_migration', '_yoyo_log', '_yoyo_version', 'yoyo_lock')
    AND c.relkind IN ('r', 'p')
ON CONFLICT (relation) DO NOTHING;

INSERT INTO conformance.cross_tenant_readers (role_name, reason)
VALUES
(
    'tracefence_owner',
    'Owns every package object and carries BYPASSRLS; reads across tenants only inside '
    || 'SECURITY DEFINER functions that check the request first.'
),
(
    'tracefence_audit',
    'Owns the append-only audit log (audit.events); audit.feed filters it by audit:read.'
);

-- Policies that exist now (the audit log's, and on an upgrade every package policy) are the
-- canonical ones; the last sql/conformance file records those the sql/ files (re)create.
DO $record$
DECLARE
    caller_path text := pg_catalog.current_setting('search_path');
BEGIN
    -- Deparse with qualified names, as the checks do, whatever the migrating login's path.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    INSERT INTO conformance.canonical_policies (
        relation, policy_name, command, permissive, roles, using_expression, check_expression
    )
    SELECT
        p.polrelid::regclass::text,
        p.polname,
        CASE p.polcmd
            WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
            WHEN 'd' THEN 'DELETE' ELSE 'ALL'
        END,
        p.polpermissive,
        ARRAY(
            SELECT CASE WHEN r.oid = 0 THEN 'public' ELSE r.oid::regrole::text END
            FROM unnest(p.polroles) AS r (oid)
            ORDER BY 1
        ),
        pg_get_expr(p.polqual, p.polrelid),
        pg_get_expr(p.polwithcheck, p.polrelid)
    FROM pg_policy AS p
    INNER JOIN pg_class AS c ON p.polrelid = c.oid
    INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
    WHERE n.nspname IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance');
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END
$record$;

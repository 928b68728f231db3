-- TF020: only the roles listed in conformance.cross_tenant_readers (with a reason) can read
-- across tenants. Superusers are the cluster's administrators and are not reported; the
-- application role is checked by TF011. Anything else is a finding: a role with BYPASSRLS and
-- SELECT on a scoped table, a role owning a scoped table (an owner can switch row-level
-- security off), a role that can SET ROLE into either, or a role a policy on a project-scoped
-- table lets read rows without the project key.
CREATE OR REPLACE VIEW conformance.check_cross_tenant_readers AS
WITH scoped AS (
    SELECT t.*
    FROM conformance.tables AS t
    WHERE t.tier IN ('project', 'workspace', 'organisation')
),

candidates AS (
    SELECT
        r.oid,
        r.rolname::text AS role_name,
        r.rolbypassrls
    FROM pg_catalog.pg_roles AS r
    WHERE
        NOT r.rolsuper
        AND r.rolname NOT IN (SELECT c.role_name FROM conformance.cross_tenant_readers AS c)
        AND r.oid NOT IN (SELECT a.oid FROM conformance.app_roles AS a)
),

readers (oid, how) AS (
    SELECT
        c.oid,
        format(
            'has BYPASSRLS and SELECT on %s', string_agg(s.relation, ', ' ORDER BY s.relation)
        )
    FROM candidates AS c
    INNER JOIN scoped AS s ON pg_catalog.has_table_privilege(c.oid, s.oid, 'SELECT')
    WHERE c.rolbypassrls
    GROUP BY c.oid
    UNION ALL
    SELECT
        c.oid,
        format(
            'owns %s (an owner can switch row-level security off)',
            string_agg(s.relation, ', ' ORDER BY s.relation)
        )
    FROM candidates AS c
    INNER JOIN scoped AS s ON c.oid = s.relowner
    GROUP BY c.oid
),

powerful AS (
    SELECT r.oid
    FROM pg_catalog.pg_roles AS r
    WHERE
        r.rolbypassrls AND EXISTS (
            SELECT
            FROM scoped AS s
            WHERE pg_catalog.has_table_privilege(r.oid, s.oid, 'SELECT')
        )
    UNION
    SELECT s.relowner
    FROM scoped AS s
)

SELECT
    'TF020'::text AS code,
    'error'::text AS level,
    'role:' || c.role_name AS object,
    format('role %s reads across tenants: it %s', c.role_name, r.how) AS detail,
    format(
        'If that is intended, list it: SELECT conformance.add_cross_tenant_reader(%L, ''<reason>''); '
        'otherwise ALTER ROLE %I NOBYPASSRLS, or give the tables to tracefence_owner.',
        c.role_name, c.role_name
    ) AS remediation
FROM readers AS r
INNER JOIN candidates AS c ON r.oid = c.oid
UNION ALL
SELECT
    'TF020'::text AS code,
    'error'::text AS level,
    'role:' || c.role_name AS object,
    format(
        'role %s can SET ROLE %s, which reads across tenants', c.role_name, string_agg(
            x.rolname, ', ' ORDER BY x.rolname
        )
    ) AS detail,
    format(
        'If that is intended, list it: SELECT conformance.add_cross_tenant_reader(%L, ''<reason>''); '
        'otherwise REVOKE the membership.',
        c.role_name
    ) AS remediation
FROM candidates AS c
INNER JOIN powerful AS w ON c.oid <> w.oid AND pg_catalog.pg_has_role(c.oid, w.oid, 'MEMBER')
INNER JOIN pg_catalog.pg_roles AS x ON w.oid = x.oid
GROUP BY c.role_name
UNION ALL
SELECT
    'TF020'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'policy %I lets role %s read rows of every project: USING %s is not keyed to %I',
        p.policy_name, x.rolname, coalesce(p.using_expression, '-'), t.scope_column
    ) AS detail,
    format(
        'Key policy %I to the project, or list %s: SELECT conformance.add_cross_tenant_reader(%L, '
        '''<reason>'').',
        p.policy_name, x.rolname, x.rolname
    ) AS remediation
FROM conformance.policies AS p
INNER JOIN scoped AS t ON p.relation_oid = t.oid
CROSS JOIN
    LATERAL unnest(
        (
            SELECT q.polroles FROM pg_catalog.pg_policy AS q
            WHERE q.oid = p.policy_oid
        )
    ) AS pr (oid)
INNER JOIN pg_catalog.pg_roles AS x ON pr.oid = x.oid
WHERE
    t.tier = 'project'
    AND t.scope_attnum IS NOT NULL
    AND NOT t.is_child
    AND p.permissive
    AND p.command IN ('SELECT', 'ALL')
    AND NOT x.rolsuper
    AND x.oid NOT IN (SELECT a.oid FROM conformance.app_roles AS a)
    AND x.rolname NOT IN (SELECT c.role_name FROM conformance.cross_tenant_readers AS c)
    AND pg_catalog.has_table_privilege(x.oid, t.oid, 'SELECT')
    AND NOT conformance.is_keyed(p.using_expression, t.scope_column, conformance.has_tier_path(t.oid));
COMMENT ON VIEW conformance.check_cross_tenant_readers IS
'TF020: a role that is not a listed cross-tenant reader but can read across tenants.';

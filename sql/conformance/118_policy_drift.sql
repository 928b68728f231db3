-- TF018: the policies are the canonical ones: as the package's sql/ files installed them
-- (recorded at the end of every apply) or as conformance.fence_table installed them. A policy
-- edited, dropped or added by hand afterwards is drift. On the package's own tables every
-- policy must be canonical; on a host table, once it has canonical policies.
CREATE OR REPLACE VIEW conformance.check_policy_drift AS
WITH live AS (
    SELECT
        p.relation,
        p.policy_name,
        p.command,
        p.permissive,
        p.roles,
        p.using_expression,
        p.check_expression,
        t.schema_name IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance') AS package_table
    FROM conformance.policies AS p
    INNER JOIN conformance.tables AS t ON p.relation_oid = t.oid
),

remedy AS (
    SELECT
        t.relation,
        CASE
            WHEN t.schema_name IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance')
                THEN
                    'Re-apply the package''s sql/ files (tracefence.migrate.apply_sql(dsn, force=True)) '
                    || 'to restore the installed policies; change policies in sql/, never by hand.'
            ELSE format(
                'Run SELECT conformance.fence_table(%L, %L, %L) again to restore the canonical '
                'policies; change them through it, never by hand.',
                t.relation, coalesce(t.read_permission, '<read permission>'),
                coalesce(t.write_permission, '<write permission>')
            )
        END AS remediation
    FROM conformance.tables AS t
)

SELECT
    'TF018'::text AS code,
    'error'::text AS level,
    c.relation AS object,
    format(
        'policy %I differs from the one installed: it is %s %s to %s USING %s WITH CHECK %s; it was '
        '%s %s to %s USING %s WITH CHECK %s',
        c.policy_name,
        CASE WHEN l.permissive THEN 'permissive' ELSE 'restrictive' END, l.command,
        array_to_string(l.roles, ', '), coalesce(l.using_expression, '-'),
        coalesce(l.check_expression, '-'),
        CASE WHEN c.permissive THEN 'permissive' ELSE 'restrictive' END, c.command,
        array_to_string(c.roles, ', '), coalesce(c.using_expression, '-'),
        coalesce(c.check_expression, '-')
    ) AS detail,
    r.remediation
FROM conformance.canonical_policies AS c
INNER JOIN live AS l ON c.relation = l.relation AND c.policy_name = l.policy_name
INNER JOIN remedy AS r ON c.relation = r.relation
WHERE
    (c.command, c.permissive, c.roles, c.using_expression, c.check_expression)
    IS DISTINCT FROM (l.command, l.permissive, l.roles, l.using_expression, l.check_expression)
UNION ALL
SELECT
    'TF018'::text AS code,
    'error'::text AS level,
    c.relation AS object,
    format('policy %I (%s) was installed and has been dropped', c.policy_name, c.command) AS detail,
    r.remediation
FROM conformance.canonical_policies AS c
INNER JOIN remedy AS r ON c.relation = r.relation
WHERE
    NOT EXISTS (
        SELECT
        FROM live AS l
        WHERE l.relation = c.relation AND l.policy_name = c.policy_name
    )
UNION ALL
SELECT
    'TF018'::text AS code,
    'error'::text AS level,
    l.relation AS object,
    format(
        'policy %I (%s to %s) was not installed by the package or conformance.fence_table',
        l.policy_name, l.command, array_to_string(l.roles, ', ')
    ) AS detail,
    r.remediation
FROM live AS l
INNER JOIN remedy AS r ON l.relation = r.relation
WHERE
    (l.package_table OR EXISTS (
        SELECT
        FROM conformance.canonical_policies AS c
        WHERE c.relation = l.relation
    ))
    AND NOT EXISTS (
        SELECT
        FROM conformance.canonical_policies AS c
        WHERE c.relation = l.relation AND c.policy_name = l.policy_name
    );
COMMENT ON VIEW conformance.check_policy_drift IS
'TF018: a policy that differs from, is missing from, or was added to the canonical ones.';

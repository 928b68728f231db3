-- TF006: on a project-scoped table, every policy that applies to the application role and
-- filters rows (USING) is keyed to the project: each OR branch compares the scope column with
-- iam.permitted_projects('<permission>') or iam.visible_resources() — not an organisation or
-- workspace id, a user id, or a setting the caller can write.
CREATE OR REPLACE VIEW conformance.check_policies_not_keyed AS
SELECT
    'TF006'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'policy %I (%s) is not filtered by the project: USING %s does not compare %I with '
        'iam.permitted_projects(...) or iam.visible_resources() in every branch',
        p.policy_name, p.command, p.using_expression, t.scope_column
    ) AS detail,
    format(
        'Key the USING clause of %I to the project: %I = ANY ((SELECT '
        'iam.permitted_projects(''<permission>''))::uuid[]) (conformance.fence_table installs such '
        'policies); a wider tier''s id or a user id alone does not fence a project.',
        p.policy_name, t.scope_column
    ) AS remediation
FROM conformance.policies AS p
INNER JOIN conformance.tables AS t ON p.relation_oid = t.oid
WHERE
    t.tier = 'project'
    AND t.scope_attnum IS NOT NULL
    AND NOT t.is_child
    AND p.applies_to_app
    AND p.permissive
    AND p.command IN ('SELECT', 'UPDATE', 'DELETE', 'ALL')
    AND p.using_expression IS NOT NULL
    AND NOT conformance.is_always_true(p.using_expression)
    AND NOT conformance.is_keyed(p.using_expression, t.scope_column, conformance.has_tier_path(t.oid));
COMMENT ON VIEW conformance.check_policies_not_keyed IS
'TF006: a policy on a project-scoped table not filtered by the project through the package.';

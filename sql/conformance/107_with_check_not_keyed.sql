-- TF007: the write side carries the scope: the WITH CHECK clause of every INSERT, UPDATE or
-- ALL policy that applies to the application role on a project-scoped table is keyed to the
-- project, like its USING clause.
CREATE OR REPLACE VIEW conformance.check_with_check_not_keyed AS
SELECT
    'TF007'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'policy %I (%s): WITH CHECK %s does not carry the project scope%s',
        p.policy_name, p.command, p.check_expression,
        CASE
            WHEN conformance.is_keyed(p.using_expression, t.scope_column, conformance.has_tier_path(t.oid))
                THEN
                    ' and is weaker than its USING clause: rows can be written into projects '
                    || 'the principal may not write'
            ELSE ': rows can be written into any project'
        END
    ) AS detail,
    format(
        'Make WITH CHECK of %I repeat the project key: %I = ANY ((SELECT '
        'iam.permitted_projects(''<write permission>''))::uuid[]).',
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
    AND p.command IN ('INSERT', 'UPDATE', 'ALL')
    AND p.check_expression IS NOT NULL
    AND NOT conformance.is_always_true(p.check_expression)
    AND NOT conformance.is_keyed(p.check_expression, t.scope_column, conformance.has_tier_path(t.oid));
COMMENT ON VIEW conformance.check_with_check_not_keyed IS
'TF007: a WITH CHECK clause on a project-scoped table that does not carry the project scope.';

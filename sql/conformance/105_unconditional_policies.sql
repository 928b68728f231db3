-- TF005: no policy that applies to the application role admits every row: USING (true),
-- "... OR true", or a clause that references no column of the table (a deny-all "false" is
-- not unconditional).
CREATE OR REPLACE VIEW conformance.check_unconditional_policies AS
SELECT
    'TF005'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'policy %I (%s, to %s) admits every tenant''s rows: %s',
        p.policy_name, p.command, array_to_string(p.roles, ', '),
        CASE
            WHEN conformance.is_always_true(p.using_expression)
                THEN 'USING ' || p.using_expression || ' is always true'
            WHEN conformance.is_always_true(p.check_expression)
                THEN 'WITH CHECK ' || p.check_expression || ' is always true'
            ELSE
                'it references no column of the table: '
                || coalesce('USING ' || p.using_expression, '')
                || coalesce(' WITH CHECK ' || p.check_expression, '')
        END
    ) AS detail,
    format(
        'Key policy %I to the row''s %I (for a project-scoped table: %I = ANY ((SELECT '
        'iam.permitted_projects(''<permission>''))::uuid[])), or drop it.',
        p.policy_name, t.scope_column, t.scope_column
    ) AS remediation
FROM conformance.policies AS p
INNER JOIN conformance.tables AS t ON p.relation_oid = t.oid
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND NOT t.is_child
    AND p.applies_to_app
    AND p.permissive
    AND (
        conformance.is_always_true(p.using_expression)
        OR conformance.is_always_true(p.check_expression)
        OR (
            NOT p.references_columns
            AND (
                coalesce(conformance.strip_parentheses(p.using_expression), 'false') <> 'false'
                OR coalesce(conformance.strip_parentheses(p.check_expression), 'false') <> 'false'
            )
        )
    );
COMMENT ON VIEW conformance.check_unconditional_policies IS
'TF005: a policy for the application that admits every row.';

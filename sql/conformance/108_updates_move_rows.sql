-- TF008: no UPDATE moves a row to another project. Either an UPDATE policy's new-row check
-- (WITH CHECK, or USING when it has none) is not keyed to the project, or the application
-- role may update the scope column and no trigger keeps it (conformance.keep_scope, or the
-- package's telemetry.keep_capture_scope): then a principal that may write two projects moves
-- rows between them.
CREATE OR REPLACE VIEW conformance.check_updates_move_rows AS
SELECT
    'TF008'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'policy %I (%s) checks updated rows with %s, which is not keyed to the project: an UPDATE '
        'can move a row into a project the principal may not write',
        p.policy_name, p.command, coalesce(p.check_expression, p.using_expression)
    ) AS detail,
    format(
        'Give %I a WITH CHECK keyed to the project: %I = ANY ((SELECT '
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
    AND p.command IN ('UPDATE', 'ALL')
    AND NOT conformance.is_keyed(
        coalesce(p.check_expression, p.using_expression), t.scope_column, conformance.has_tier_path(t.oid)
    )
UNION ALL
SELECT
    'TF008'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'the application role may UPDATE %I and no trigger keeps it: a principal that may write '
        'two projects can move a row from one to the other',
        t.scope_column
    ) AS detail,
    format(
        'CREATE TRIGGER tracefence_keep_scope BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION '
        'conformance.keep_scope(%L) (conformance.fence_table does), or grant UPDATE on the other '
        'columns only.',
        t.relation, t.scope_column
    ) AS remediation
FROM conformance.tables AS t
WHERE
    t.tier = 'project'
    AND t.scope_attnum IS NOT NULL
    AND t.relkind IN ('r', 'p')
    AND NOT t.is_child
    AND EXISTS (
        SELECT
        FROM conformance.app_roles AS a
        WHERE pg_catalog.has_column_privilege(a.oid, t.oid, t.scope_attnum, 'UPDATE')
    )
    AND NOT EXISTS (
        SELECT
        FROM pg_catalog.pg_trigger AS g
        WHERE
            g.tgrelid = t.oid
            AND g.tgenabled <> 'D'
            -- a row-level BEFORE UPDATE trigger
            AND g.tgtype::integer & 1 = 1
            AND g.tgtype::integer & 2 = 2
            AND g.tgtype::integer & 16 = 16
            AND (
                (
                    g.tgfoid = to_regprocedure('conformance.keep_scope()')
                    AND split_part(encode(g.tgargs, 'escape'), '\000', 1) = t.scope_column
                )
                OR (
                    g.tgfoid = to_regprocedure('telemetry.keep_capture_scope()')
                    AND t.scope_column = 'project_id'
                )
            )
    );
COMMENT ON VIEW conformance.check_updates_move_rows IS
'TF008: an UPDATE can move a row of a project-scoped table to another project.';

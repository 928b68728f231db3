-- TF004: a scoped table the application role can reach (any privilege on it) has a permissive
-- policy for SELECT, INSERT, UPDATE and DELETE (or ALL) that applies to tracefence_app, so
-- that every command is decided by a policy written for it, should a privilege be added later.
CREATE OR REPLACE VIEW conformance.check_missing_policies AS
SELECT
    'TF004'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'no permissive %s policy applies to tracefence_app on this %s-scoped table, which the '
        'application role can reach',
        c.command, t.tier
    ) AS detail,
    CASE
        WHEN t.tier = 'project'
            THEN format(
                'SELECT conformance.fence_table(%L, ''<read permission>'', ''<write permission>''), '
                'or CREATE POLICY ... ON %s FOR %s TO tracefence_app keyed to %I through '
                'iam.permitted_projects(...).',
                t.relation, t.relation, c.command, t.scope_column
            )
        ELSE format(
            'CREATE POLICY ... ON %s FOR %s TO tracefence_app keyed to %I.',
            t.relation, c.command, t.scope_column
        )
    END AS remediation
FROM conformance.tables AS t
CROSS JOIN (VALUES (1, 'SELECT'), (2, 'INSERT'), (3, 'UPDATE'), (4, 'DELETE')) AS c (n, command)
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND t.relkind IN ('r', 'p')
    AND NOT t.is_child
    AND EXISTS (
        SELECT
        FROM conformance.app_roles AS a
        WHERE
            pg_catalog.has_table_privilege(a.oid, t.oid, 'SELECT, INSERT, UPDATE, DELETE')
            OR pg_catalog.has_any_column_privilege(a.oid, t.oid, 'SELECT, INSERT, UPDATE')
    )
    AND NOT EXISTS (
        SELECT
        FROM conformance.policies AS p
        WHERE
            p.relation_oid = t.oid AND p.applies_to_app AND p.permissive
            AND p.command IN (c.command, 'ALL')
    );
COMMENT ON VIEW conformance.check_missing_policies IS
'TF004: a scoped table the application can reach without a policy for every command.';

-- TF002: row-level security is enabled on every scoped table.
CREATE OR REPLACE VIEW conformance.check_rls_disabled AS
SELECT
    'TF002'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        '%s-scoped table without row-level security: every role with a privilege on it reads and '
        'writes every tenant''s rows',
        t.tier
    ) AS detail,
    format(
        'ALTER TABLE %s ENABLE ROW LEVEL SECURITY (a project-scoped table: SELECT '
        'conformance.fence_table(%L, ''<read permission>'', ''<write permission>'')).',
        t.relation, t.relation
    ) AS remediation
FROM conformance.tables AS t
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND t.relkind IN ('r', 'p')
    AND NOT t.is_child
    AND NOT t.relrowsecurity;
COMMENT ON VIEW conformance.check_rls_disabled IS 'TF002: a scoped table without row-level security.';

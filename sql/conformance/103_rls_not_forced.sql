-- TF003: row-level security is forced on every scoped table, so that it binds the table's
-- owner too (only BYPASSRLS roles, listed as cross-tenant readers, pass it).
CREATE OR REPLACE VIEW conformance.check_rls_not_forced AS
SELECT
    'TF003'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        '%s-scoped table whose row-level security is not forced: its owner (%s) and the roles '
        'that inherit it bypass the policies',
        t.tier, t.relowner::regrole
    ) AS detail,
    format('ALTER TABLE %s FORCE ROW LEVEL SECURITY.', t.relation) AS remediation
FROM conformance.tables AS t
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND t.relkind IN ('r', 'p')
    AND NOT t.is_child
    AND t.relrowsecurity
    AND NOT t.relforcerowsecurity;
COMMENT ON VIEW conformance.check_rls_not_forced IS
'TF003: a scoped table whose row-level security is not forced.';

-- TF015: materialized views and foreign tables cannot be fenced by row-level security: a
-- materialized view over scoped data, or a foreign table classified as scoped, is flagged.
CREATE OR REPLACE VIEW conformance.check_materialized_views_and_foreign_tables AS
SELECT
    'TF015'::text AS code,
    'error'::text AS level,
    s.view_name AS object,
    format(
        'materialized view holding rows of the scoped table(s) %s: row-level security does not '
        'apply to it, so whoever may select from it reads every tenant''s rows',
        string_agg(DISTINCT s.table_name, ', ')
    ) AS detail,
    format(
        'Replace %s by a view WITH (security_invoker = true), or by a table fenced with '
        'conformance.fence_table and refreshed by the owner.',
        s.view_name
    ) AS remediation
FROM conformance.view_sources AS s
WHERE s.relkind = 'm' AND s.tier IN ('project', 'workspace', 'organisation')
GROUP BY s.view_name
UNION ALL
SELECT
    'TF015'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'foreign table classified %s-scoped: row-level security cannot be enabled on a foreign '
        'table, so whoever may select from it reads every tenant''s rows',
        t.tier
    ) AS detail,
    format(
        'Keep scoped rows out of foreign tables: copy them into a table fenced with '
        'conformance.fence_table, or grant %s to no role but its owner and classify it internal.',
        t.relation
    ) AS remediation
FROM conformance.tables AS t
WHERE t.relkind = 'f' AND t.tier IN ('project', 'workspace', 'organisation');
COMMENT ON VIEW conformance.check_materialized_views_and_foreign_tables IS
'TF015: a materialized view over scoped data, or a scoped foreign table.';

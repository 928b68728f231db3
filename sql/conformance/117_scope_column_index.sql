-- TF017: the scope column leads an index on every scoped table and partition, so the policy
-- key (scope column = ANY (permitted projects)) is an index condition, not a full scan.
CREATE OR REPLACE VIEW conformance.check_scope_column_index AS
SELECT
    'TF017'::text AS code,
    'warning'::text AS level,
    t.relation AS object,
    format(
        'no index leads with the scope column %I: every read under the policies scans the whole table',
        t.scope_column
    ) AS detail,
    format('CREATE INDEX ON %s (%I).', t.relation, t.scope_column) AS remediation
FROM conformance.tables AS t
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND t.relkind IN ('r', 'p')
    AND t.scope_attnum IS NOT NULL
    AND NOT EXISTS (
        SELECT
        FROM pg_catalog.pg_index AS i
        WHERE
            i.indrelid = t.oid
            AND i.indkey[0] = t.scope_attnum
            AND i.indpred IS NULL
            AND (i.indisvalid OR t.relkind = 'p')
    );
COMMENT ON VIEW conformance.check_scope_column_index IS 'TF017: no index led by the scope column.';

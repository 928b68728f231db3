-- TF009: the scope column of every scoped table (and partition) is NOT NULL: a row without a
-- tenant matches no policy key, but it also belongs to no one and escapes every foreign key.
CREATE OR REPLACE VIEW conformance.check_nullable_scope_columns AS
SELECT
    'TF009'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format('the scope column %I of this %s-scoped table is nullable', t.scope_column, t.tier) AS detail,
    format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL.', t.relation, t.scope_column) AS remediation
FROM conformance.tables AS t
WHERE
    t.tier IN ('project', 'workspace', 'organisation')
    AND t.relkind IN ('r', 'p')
    AND t.scope_attnum IS NOT NULL
    AND NOT t.scope_not_null;
COMMENT ON VIEW conformance.check_nullable_scope_columns IS 'TF009: a nullable scope column.';

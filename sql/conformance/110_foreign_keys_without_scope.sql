-- TF010: a foreign key between two project-scoped tables includes the scope column (a span
-- cannot point at another project's trace). Also accepted: the key shares a column c with the
-- referenced row, and both tables tie (scope, c) to the same table where c's counterpart is
-- unique on its own (spans (trace_id, parent_span_id) -> spans: both spans belong to one
-- trace, and (project_id, trace_id) -> traces (project_id, id) puts that trace in one project).
CREATE OR REPLACE VIEW conformance.check_foreign_keys_without_scope AS
WITH foreign_keys AS (
    SELECT
        c.conname::text AS constraint_name,
        c.conrelid,
        c.confrelid,
        c.conkey,
        c.confkey
    FROM pg_catalog.pg_constraint AS c
    WHERE c.contype = 'f' AND c.conparentid = 0
),

project_tables AS (
    SELECT t.*
    FROM conformance.tables AS t
    WHERE t.tier = 'project' AND t.scope_attnum IS NOT NULL
)

SELECT
    'TF010'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    format(
        'foreign key %I references the project-scoped table %s without the scope column %I: a row '
        'can point at a row of another project',
        f.constraint_name, r.relation, t.scope_column
    ) AS detail,
    format(
        'Make the key include the project: FOREIGN KEY (%I, ...) REFERENCES %s (%I, ...), with a '
        'unique constraint on %s (%I, ...).',
        t.scope_column, r.relation, r.scope_column, r.relation, r.scope_column
    ) AS remediation
FROM foreign_keys AS f
INNER JOIN project_tables AS t ON f.conrelid = t.oid
INNER JOIN project_tables AS r ON f.confrelid = r.oid
WHERE
    NOT EXISTS (
        SELECT
        FROM unnest(f.conkey, f.confkey) AS k (col, ref)
        WHERE k.col = t.scope_attnum AND k.ref = r.scope_attnum
    )
    AND NOT EXISTS (
        SELECT
        FROM unnest(f.conkey, f.confkey) AS k (col, ref)
        INNER JOIN foreign_keys AS g ON t.oid = g.conrelid
        INNER JOIN foreign_keys AS h ON r.oid = h.conrelid AND g.confrelid = h.confrelid
        WHERE
            EXISTS (
                SELECT
                FROM unnest(g.conkey, g.confkey) AS gs (col, ref)
                INNER JOIN unnest(h.conkey, h.confkey) AS hs (col, ref) ON gs.ref = hs.ref
                WHERE gs.col = t.scope_attnum AND hs.col = r.scope_attnum
            )
            AND EXISTS (
                SELECT
                FROM unnest(g.conkey, g.confkey) AS gk (col, ref)
                INNER JOIN unnest(h.conkey, h.confkey) AS hk (col, ref) ON gk.ref = hk.ref
                WHERE
                    gk.col = k.col
                    AND hk.col = k.ref
                    AND EXISTS (
                        SELECT
                        FROM pg_catalog.pg_index AS i
                        WHERE
                            i.indrelid = g.confrelid AND i.indisunique AND i.indpred IS NULL
                            AND i.indnkeyatts = 1 AND i.indkey[0] = gk.ref
                    )
            )
    );
COMMENT ON VIEW conformance.check_foreign_keys_without_scope IS
'TF010: a foreign key between project-scoped tables that does not keep both rows in one project.';

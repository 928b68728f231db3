-- TF001: every table is classified ("nothing uncategorised"), and a table that looks
-- project-scoped (a project_id column, or a foreign key to tenancy.projects or to a
-- project-scoped table) is not classified global or internal.
CREATE OR REPLACE VIEW conformance.check_unclassified_tables AS
WITH presumption AS (
    SELECT
        t.oid,
        string_agg(x.reason, '; ' ORDER BY x.reason) AS reasons
    FROM conformance.tables AS t
    CROSS JOIN
        LATERAL (
            SELECT 'it has a project_id column' AS reason
            WHERE
                EXISTS (
                    SELECT
                    FROM pg_catalog.pg_attribute AS a
                    WHERE
                        a.attrelid = t.oid AND a.attname = 'project_id' AND a.attnum > 0
                        AND NOT a.attisdropped
                )
            UNION
            SELECT format('its foreign key %I references %s', c.conname, r.relation) AS reason
            FROM pg_catalog.pg_constraint AS c
            INNER JOIN conformance.tables AS r ON c.confrelid = r.oid
            WHERE
                c.contype = 'f' AND c.conrelid = t.oid AND c.conparentid = 0
                AND (r.relation = 'tenancy.projects' OR r.tier = 'project')
        ) AS x
    GROUP BY t.oid
)

SELECT
    'TF001'::text AS code,
    'error'::text AS level,
    t.relation AS object,
    CASE
        WHEN t.tier IS NULL
            THEN
                'not classified in conformance.manifest'
                || coalesce(' and presumed project-scoped: ' || p.reasons, '')
        WHEN t.tier IN ('global', 'internal') AND p.reasons IS NOT NULL
            THEN format(
                'classified %s (by %s) but presumed project-scoped: %s', t.tier, t.classified_by, p.reasons
            )
        ELSE format(
            'classified %s (by %s) with scope column %I, which the table does not have',
            t.tier, t.classified_by, t.scope_column
        )
    END AS detail,
    CASE
        WHEN t.tier IS NULL OR p.reasons IS NOT NULL
            THEN format(
                'Fence and classify a project-scoped table with SELECT conformance.fence_table(%L, '
                '''<read permission>'', ''<write permission>''); classify any other table with '
                'SELECT conformance.classify(%L, ''<tier>'', ''<reason>'').',
                t.relation, t.relation
            )
        ELSE format(
            'Name the column that holds the tenant: SELECT conformance.classify(%L, %L, '
            '''<reason>'', ''<scope column>'').',
            t.relation, t.tier
        )
    END AS remediation
FROM conformance.tables AS t
LEFT JOIN presumption AS p ON t.oid = p.oid
WHERE
    t.tier IS NULL
    OR (t.tier IN ('global', 'internal') AND p.reasons IS NOT NULL)
    OR (t.tier IN ('project', 'workspace', 'organisation') AND t.scope_attnum IS NULL);
COMMENT ON VIEW conformance.check_unclassified_tables IS
'TF001: a table that is not classified, or classified global/internal though presumed project-scoped.';

-- The results: every finding of every check, and one row per classified table.

CREATE OR REPLACE VIEW conformance.findings AS
SELECT
    f.code,
    f.level,
    f.object,
    f.detail,
    f.remediation
FROM (
    SELECT * FROM conformance.check_unclassified_tables
    UNION ALL
    SELECT * FROM conformance.check_rls_disabled
    UNION ALL
    SELECT * FROM conformance.check_rls_not_forced
    UNION ALL
    SELECT * FROM conformance.check_missing_policies
    UNION ALL
    SELECT * FROM conformance.check_unconditional_policies
    UNION ALL
    SELECT * FROM conformance.check_policies_not_keyed
    UNION ALL
    SELECT * FROM conformance.check_with_check_not_keyed
    UNION ALL
    SELECT * FROM conformance.check_updates_move_rows
    UNION ALL
    SELECT * FROM conformance.check_nullable_scope_columns
    UNION ALL
    SELECT * FROM conformance.check_foreign_keys_without_scope
    UNION ALL
    SELECT * FROM conformance.check_unsafe_application_role
    UNION ALL
    SELECT * FROM conformance.check_views_without_security_invoker
    UNION ALL
    SELECT * FROM conformance.check_security_definer_functions
    UNION ALL
    SELECT * FROM conformance.check_unfenced_children
    UNION ALL
    SELECT * FROM conformance.check_materialized_views_and_foreign_tables
    UNION ALL
    SELECT * FROM conformance.check_principal_accessors
    UNION ALL
    SELECT * FROM conformance.check_scope_column_index
    UNION ALL
    SELECT * FROM conformance.check_policy_drift
    UNION ALL
    SELECT * FROM conformance.check_server_version
    UNION ALL
    SELECT * FROM conformance.check_cross_tenant_readers
    UNION ALL
    SELECT * FROM conformance.check_stale_manifest
) AS f
ORDER BY f.code, f.object, f.detail;
COMMENT ON VIEW conformance.findings IS
'Every finding of every conformance check: code, level (error | warning), object, detail, remediation.';

-- One row per manifest row. A finding belongs to a row when its object is that table, a
-- partition or child it classifies, or a view reading it; a finding about no relation (a role,
-- a function, the server) weakens every scoped table and belongs to each of them.
CREATE OR REPLACE VIEW conformance.isolation AS
WITH findings AS (
    SELECT f.*
    FROM conformance.findings AS f
),

attributed AS (
    SELECT
        m.relation,
        f.code,
        f.level,
        f.object,
        f.detail,
        f.remediation
    FROM findings AS f
    INNER JOIN conformance.manifest AS m ON f.object = m.relation
    UNION
    SELECT
        t.classified_by,
        f.code,
        f.level,
        f.object,
        f.detail,
        f.remediation
    FROM findings AS f
    INNER JOIN conformance.tables AS t ON f.object = t.relation
    WHERE t.classified_by IS NOT NULL AND t.classified_by <> t.relation
    UNION
    SELECT
        t.classified_by,
        f.code,
        f.level,
        f.object,
        f.detail,
        f.remediation
    FROM findings AS f
    INNER JOIN conformance.view_sources AS s ON f.object = s.view_name
    INNER JOIN conformance.tables AS t ON s.table_oid = t.oid
    WHERE t.classified_by IS NOT NULL
    UNION
    SELECT
        m.relation,
        f.code,
        f.level,
        f.object,
        f.detail,
        f.remediation
    FROM findings AS f
    CROSS JOIN conformance.manifest AS m
    WHERE
        m.tier IN ('project', 'workspace', 'organisation')
        AND NOT EXISTS (
            SELECT FROM conformance.manifest AS o
            WHERE o.relation = f.object
        )
        AND NOT EXISTS (
            SELECT FROM conformance.tables AS t
            WHERE t.relation = f.object
        )
        AND NOT EXISTS (
            SELECT FROM conformance.view_sources AS s
            WHERE s.view_name = f.object
        )
)

SELECT
    m.relation,
    m.tier,
    CASE
        WHEN bool_or(a.level = 'error') THEN 'violations'
        WHEN m.tier IN ('global', 'internal') THEN 'not applicable'
        ELSE 'fenced'
    END AS status,
    coalesce(
        jsonb_agg(
            jsonb_build_object(
                'code', a.code, 'level', a.level, 'detail', a.detail, 'remediation', a.remediation
            )
            ORDER BY a.code, a.object, a.detail
        ) FILTER (WHERE a.code IS NOT NULL),
        '[]'
    ) AS problems
FROM conformance.manifest AS m
LEFT JOIN attributed AS a ON m.relation = a.relation
GROUP BY m.relation, m.tier
ORDER BY
    array_position(ARRAY['project', 'workspace', 'organisation', 'global', 'internal'], m.tier),
    m.relation;
COMMENT ON VIEW conformance.isolation IS
'One row per classified table: tier, status (fenced | violations | not applicable), problems.';

REVOKE ALL ON conformance.findings, conformance.isolation FROM public;

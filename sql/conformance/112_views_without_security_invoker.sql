-- TF012: a view over a scoped table reads it as the caller (security_invoker), so the
-- caller's policies apply; otherwise it reads as the view's owner, often one that bypasses
-- row-level security.
CREATE OR REPLACE VIEW conformance.check_views_without_security_invoker AS
SELECT
    'TF012'::text AS code,
    'error'::text AS level,
    s.view_name AS object,
    format(
        'view reads the scoped table(s) %s with the privileges of its owner %s, not of the caller: '
        'the caller''s row-level security policies do not apply',
        string_agg(DISTINCT s.table_name, ', '), min(v.relowner::regrole::text)
    ) AS detail,
    format('ALTER VIEW %s SET (security_invoker = true).', s.view_name) AS remediation
FROM conformance.view_sources AS s
INNER JOIN pg_catalog.pg_class AS v ON s.view_oid = v.oid
WHERE
    s.relkind = 'v'
    AND s.tier IN ('project', 'workspace', 'organisation')
    AND NOT EXISTS (
        SELECT
        FROM pg_catalog.pg_options_to_table(v.reloptions) AS o
        WHERE o.option_name = 'security_invoker' AND lower(o.option_value) IN ('true', 'on', '1', 'yes', 't')
    )
GROUP BY s.view_name;
COMMENT ON VIEW conformance.check_views_without_security_invoker IS
'TF012: a view over a scoped table that does not run as the caller.';

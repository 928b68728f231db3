-- TF019: the server runs a release that fixes the row-level security vulnerabilities
-- CVE-2024-10976 (policies below subqueries could apply as the wrong role; fixed in 17.1,
-- 16.5, 15.9, 14.14, 13.17) and CVE-2025-8713 (optimizer statistics could expose rows hidden by
-- policies through views, partitions and children; fixed in 17.6, 16.10, 15.14, 14.19, 13.22).
-- 18.0 and later include both fixes; versions before 13 get neither.

-- The fixes a server_version_num lacks: one row per missing fix (fixed_in NULL: no release of
-- that major version has it).
CREATE OR REPLACE FUNCTION conformance.missing_security_fixes(version_num integer)
RETURNS TABLE (cve text, what text, fixed_in text)
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH fixes (cve, what, major, fixed) AS (
        VALUES
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes', 17, 170001),
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes', 16, 160005),
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes', 15, 150009),
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes', 14, 140014),
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes', 13, 130017),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies', 17, 170006),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies', 16, 160010),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies', 15, 150014),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies', 14, 140019),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies', 13, 130022)
    )

    SELECT
        f.cve,
        f.what,
        f.major || '.' || f.fixed % 100
    FROM fixes AS f
    WHERE version_num / 10000 = f.major AND version_num < f.fixed
    UNION ALL
    SELECT
        c.cve,
        c.what,
        NULL
    FROM (
        VALUES
        ('CVE-2024-10976', 'row security below subqueries disregards user ID changes'),
        ('CVE-2025-8713', 'optimizer statistics expose sampled rows hidden by policies')
    ) AS c (cve, what)
    WHERE version_num < 130000
$$;
COMMENT ON FUNCTION conformance.missing_security_fixes(integer) IS
'The row-level security fixes (CVE-2024-10976, CVE-2025-8713) a server_version_num lacks.';

CREATE OR REPLACE VIEW conformance.check_server_version AS
SELECT
    'TF019'::text AS code,
    'error'::text AS level,
    'server'::text AS object,
    CASE
        WHEN m.fixed_in IS NULL
            THEN format(
                'PostgreSQL %s is not supported: no release of it fixes %s (%s)',
                pg_catalog.current_setting('server_version'), m.cve, m.what
            )
        ELSE format(
            'PostgreSQL %s predates the fix of %s (%s), released in %s',
            pg_catalog.current_setting('server_version'), m.cve, m.what, m.fixed_in
        )
    END AS detail,
    CASE
        WHEN m.fixed_in IS NULL
            THEN 'Upgrade the server to a supported major version (15 to 18), at its latest minor release.'
        ELSE format('Upgrade the server to %s or later, best its latest minor release.', m.fixed_in)
    END AS remediation
FROM conformance.missing_security_fixes(pg_catalog.current_setting('server_version_num')::integer) AS m;
COMMENT ON VIEW conformance.check_server_version IS
'TF019: a server release older than the fixes of CVE-2024-10976 and CVE-2025-8713.';

REVOKE ALL ON FUNCTION conformance.missing_security_fixes(integer) FROM public;

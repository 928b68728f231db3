-- TF013: every SECURITY DEFINER function pins search_path (to schemas neither PUBLIC nor the
-- application role can create objects in, pg_temp last) and is not executable by PUBLIC.
CREATE OR REPLACE VIEW conformance.check_security_definer_functions AS
WITH definers AS (
    SELECT
        p.oid,
        conformance.function_name(p.oid) AS name,
        (
            SELECT substr(c.setting, length('search_path=') + 1)
            FROM unnest(p.proconfig) AS c (setting)
            WHERE c.setting LIKE 'search_path=%'
        ) AS search_path,
        exists(
            SELECT
            FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
            WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'
        ) AS public_execute
    FROM pg_catalog.pg_proc AS p
    INNER JOIN pg_catalog.pg_namespace AS n ON p.pronamespace = n.oid
    WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
),

path_entries AS (
    SELECT
        d.oid,
        e.n,
        e.entry,
        max(e.n) OVER (PARTITION BY d.oid) AS last_n
    FROM definers AS d
    CROSS JOIN
        LATERAL (
            SELECT
                x.n,
                btrim(x.entry, ' "') AS entry
            FROM regexp_split_to_table(d.search_path, ',') WITH ORDINALITY AS x (entry, n)
        ) AS e
    WHERE d.search_path IS NOT NULL
)

SELECT
    'TF013'::text AS code,
    'error'::text AS level,
    d.name AS object,
    'SECURITY DEFINER function without a pinned search_path: a caller''s search_path can make it '
    || 'run the caller''s functions and operators with the owner''s rights' AS detail,
    format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp (and qualify every name).', d.name)
        AS remediation
FROM definers AS d
WHERE d.search_path IS NULL
UNION ALL
SELECT
    'TF013'::text AS code,
    'error'::text AS level,
    d.name AS object,
    'SECURITY DEFINER function executable by PUBLIC: every role, the application''s included, '
    || 'runs it with the rights of its owner' AS detail,
    format(
        'REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, then GRANT EXECUTE to the role that needs it.', d.name
    ) AS remediation
FROM definers AS d
WHERE d.public_execute
UNION ALL
SELECT
    'TF013'::text AS code,
    'error'::text AS level,
    d.name AS object,
    format(
        'SECURITY DEFINER function whose search_path names schema %I, where PUBLIC or the '
        'application role can create objects',
        e.entry
    ) AS detail,
    format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp (and qualify every name).', d.name)
        AS remediation
FROM definers AS d
INNER JOIN path_entries AS e ON d.oid = e.oid
INNER JOIN pg_catalog.pg_namespace AS n ON e.entry = n.nspname
WHERE
    pg_catalog.has_schema_privilege('public', n.oid, 'CREATE')
    OR EXISTS (
        SELECT
        FROM conformance.app_roles AS a
        WHERE pg_catalog.has_schema_privilege(a.oid, n.oid, 'CREATE')
    )
UNION ALL
SELECT
    'TF013'::text AS code,
    'warning'::text AS level,
    d.name AS object,
    format(
        'SECURITY DEFINER function whose search_path (%s) does not end with pg_temp: temporary '
        'tables are then searched first for unqualified names',
        d.search_path
    ) AS detail,
    format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp.', d.name) AS remediation
FROM definers AS d
WHERE
    d.search_path IS NOT NULL
    AND NOT EXISTS (
        SELECT
        FROM path_entries AS e
        WHERE e.oid = d.oid AND e.entry = 'pg_temp' AND e.n = e.last_n
    );
COMMENT ON VIEW conformance.check_security_definer_functions IS
'TF013: a SECURITY DEFINER function without a safe pinned search_path, or executable by PUBLIC.';

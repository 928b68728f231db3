-- TF011: the application role, and every login that is a member of it, is not a superuser,
-- has no BYPASSRLS, owns nothing in this database (large objects included), and cannot SET ROLE
-- into a role that is or does any of these.
CREATE OR REPLACE VIEW conformance.check_unsafe_application_role AS
WITH owned AS (
    SELECT
        c.relowner AS owner,
        format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_catalog.pg_class AS c
    INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL
    SELECT
        p.proowner AS owner,
        conformance.function_name(p.oid) AS name
    FROM pg_catalog.pg_proc AS p
    INNER JOIN pg_catalog.pg_namespace AS n ON p.pronamespace = n.oid
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT
        n.nspowner AS owner,
        'schema ' || pg_catalog.quote_ident(n.nspname) AS name
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
    UNION ALL
    SELECT
        y.typowner AS owner,
        'type ' || format('%I.%I', n.nspname, y.typname) AS name
    FROM pg_catalog.pg_type AS y
    INNER JOIN pg_catalog.pg_namespace AS n ON y.typnamespace = n.oid
    WHERE y.typtype IN ('d', 'e', 'r') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT
        d.datdba AS owner,
        'database ' || pg_catalog.quote_ident(d.datname) AS name
    FROM pg_catalog.pg_database AS d
    WHERE d.datname = pg_catalog.current_database()
    UNION ALL
    -- lo_from_bytea and friends are executable by PUBLIC: a large object the application
    -- login makes is shared by every tenant that uses the login, and DISCARD ALL keeps it.
    SELECT
        m.lomowner AS owner,
        'large object ' || m.oid::text AS name
    FROM pg_catalog.pg_largeobject_metadata AS m
),

unsafe (oid, problem) AS (
    SELECT
        r.oid,
        'is a superuser'
    FROM pg_catalog.pg_roles AS r
    WHERE r.rolsuper
    UNION ALL
    SELECT
        r.oid,
        'has BYPASSRLS'
    FROM pg_catalog.pg_roles AS r
    WHERE r.rolbypassrls
    UNION ALL
    SELECT
        o.owner,
        format(
            'owns %s object(s) of this database (%s)',
            count(*), string_agg(o.name, ', ' ORDER BY o.name)
        )
    FROM owned AS o
    GROUP BY o.owner
)

SELECT
    'TF011'::text AS code,
    'error'::text AS level,
    'role:' || a.role_name AS object,
    format(
        'application role %s %s: row-level security no longer fences what it reads and writes',
        a.role_name, u.problem
    ) AS detail,
    CASE
        WHEN u.problem = 'is a superuser' THEN format('ALTER ROLE %I NOSUPERUSER.', a.role_name)
        WHEN u.problem = 'has BYPASSRLS' THEN format('ALTER ROLE %I NOBYPASSRLS.', a.role_name)
        ELSE format(
            'Give those objects to tracefence_owner or the host''s owner role: ALTER ... OWNER TO '
            '...; or REASSIGN OWNED BY %I TO <owner role>.',
            a.role_name
        )
    END AS remediation
FROM conformance.app_roles AS a
INNER JOIN unsafe AS u ON a.oid = u.oid
UNION ALL
SELECT
    'TF011'::text AS code,
    'error'::text AS level,
    'role:' || a.role_name AS object,
    format(
        'application role %s can SET ROLE %s, which %s',
        a.role_name, x.rolname, u.problem
    ) AS detail,
    format('REVOKE %I FROM %I.', x.rolname, a.role_name) AS remediation
FROM conformance.app_roles AS a
INNER JOIN pg_catalog.pg_roles AS ar ON a.oid = ar.oid
INNER JOIN pg_catalog.pg_roles AS x
    ON a.oid <> x.oid AND pg_catalog.pg_has_role(a.oid, x.oid, 'MEMBER')
INNER JOIN unsafe AS u ON x.oid = u.oid
WHERE NOT ar.rolsuper;
COMMENT ON VIEW conformance.check_unsafe_application_role IS
'TF011: the application role (or a login in it) is superuser, BYPASSRLS, owns objects, or can become one.';

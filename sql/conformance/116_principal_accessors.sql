-- TF016: the principal accessors policies call are STABLE (one answer per statement) and are
-- wrapped in (SELECT ...) so the planner evaluates them once, as an initPlan, not per row.
-- (That they fail closed with no request open is proved by the dynamic probe.)
CREATE OR REPLACE VIEW conformance.check_principal_accessors AS
WITH calls AS (
    SELECT
        t.relation,
        p.policy_name,
        c.function_oid,
        c.wrapped
    FROM conformance.policies AS p
    INNER JOIN conformance.tables AS t ON p.relation_oid = t.oid
    CROSS JOIN
        LATERAL (
            SELECT
                f.function_oid,
                f.wrapped
            FROM conformance.called_functions(p.polqual) AS f
            UNION ALL
            SELECT
                f.function_oid,
                f.wrapped
            FROM conformance.called_functions(p.polwithcheck) AS f
        ) AS c
    WHERE t.tier IN ('project', 'workspace', 'organisation') AND p.applies_to_app
),

accessors AS (
    SELECT p.oid
    FROM pg_catalog.pg_proc AS p
    INNER JOIN pg_catalog.pg_namespace AS n ON p.pronamespace = n.oid
    WHERE
        n.nspname = 'iam'
        AND p.proname IN (
            'current_principal', 'permitted_projects', 'permitted_scopes', 'visible_resources',
            'request_permissions', 'request_grants',
            'request_context'
        )
    UNION
    SELECT calls.function_oid
    FROM calls
)

SELECT
    'TF016'::text AS code,
    'error'::text AS level,
    conformance.function_name(p.oid) AS object,
    format(
        'principal accessor is %s, not STABLE: called from a policy it may answer differently for '
        'each row, and it cannot be evaluated once per statement',
        CASE p.provolatile WHEN 'v' THEN 'VOLATILE' ELSE 'IMMUTABLE' END
    ) AS detail,
    format('ALTER FUNCTION %s STABLE.', conformance.function_name(p.oid)) AS remediation
FROM accessors AS a
INNER JOIN pg_catalog.pg_proc AS p ON a.oid = p.oid
INNER JOIN pg_catalog.pg_namespace AS n ON p.pronamespace = n.oid
WHERE
    (n.nspname = 'iam' AND p.provolatile <> 's')
    OR p.provolatile = 'v'
UNION ALL
SELECT DISTINCT
    'TF016'::text AS code,
    'warning'::text AS level,
    c.relation AS object,
    format(
        'policy %I calls %s directly, not wrapped in (SELECT ...): it is evaluated for every row '
        'instead of once per statement',
        c.policy_name, conformance.function_name(c.function_oid)
    ) AS detail,
    format(
        'Wrap the call: (SELECT %s(...)) — e.g. project_id = ANY ((SELECT '
        'iam.permitted_projects(''<permission>''))::uuid[]).',
        c.function_oid::regproc
    ) AS remediation
FROM calls AS c
INNER JOIN pg_catalog.pg_proc AS p ON c.function_oid = p.oid
WHERE NOT c.wrapped AND p.provolatile <> 'i';
COMMENT ON VIEW conformance.check_principal_accessors IS
'TF016: a principal accessor that is not STABLE, or a policy call not wrapped in (SELECT ...).';

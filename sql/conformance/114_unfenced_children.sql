-- TF014: a partition or inheritance child of a scoped table is fenced like its parent: the
-- parent's policies do not apply when the child is queried directly.
CREATE OR REPLACE VIEW conformance.check_unfenced_children AS
WITH described AS (
    SELECT
        p.relation_oid,
        format(
            '%s %s to %s USING %s WITH CHECK %s',
            CASE WHEN p.permissive THEN 'permissive' ELSE 'restrictive' END, p.command,
            array_to_string(p.roles, ','), coalesce(p.using_expression, '-'),
            coalesce(p.check_expression, '-')
        ) AS policy
    FROM conformance.policies AS p
),

policy_sets AS (
    SELECT
        t.oid,
        coalesce(
            (
                SELECT array_agg(d.policy ORDER BY d.policy)
                FROM described AS d
                WHERE d.relation_oid = t.oid
            ),
            '{}'
        ) AS policies
    FROM conformance.tables AS t
),

children AS (
    SELECT
        c.relation,
        c.tier,
        c.relrowsecurity,
        c.relforcerowsecurity,
        p.relation AS parent,
        p.relrowsecurity AS parent_rowsecurity,
        p.relforcerowsecurity AS parent_forcerowsecurity,
        (
            SELECT s.policies FROM policy_sets AS s
            WHERE s.oid = c.oid
        ) AS policies,
        (
            SELECT s.policies FROM policy_sets AS s
            WHERE s.oid = p.oid
        ) AS parent_policies
    FROM conformance.tables AS c
    INNER JOIN conformance.tables AS p ON c.parent_oid = p.oid
    WHERE c.is_child AND c.tier IN ('project', 'workspace', 'organisation') AND c.relkind IN ('r', 'p')
)

SELECT
    'TF014'::text AS code,
    'error'::text AS level,
    c.relation AS object,
    format(
        'child of the %s-scoped table %s without row-level security: queried directly, it shows '
        'every tenant''s rows',
        c.tier, c.parent
    ) AS detail,
    format(
        'ALTER TABLE %s ENABLE ROW LEVEL SECURITY and FORCE it, with the parent''s policies '
        '(SELECT conformance.fence_table(%L, ...) fences the parent and all its children).',
        c.relation, c.parent
    ) AS remediation
FROM children AS c
WHERE NOT c.relrowsecurity
UNION ALL
SELECT
    'TF014'::text AS code,
    'error'::text AS level,
    c.relation AS object,
    format('child of the %s-scoped table %s whose row-level security is not forced', c.tier, c.parent)
        AS detail,
    format('ALTER TABLE %s FORCE ROW LEVEL SECURITY.', c.relation) AS remediation
FROM children AS c
WHERE c.relrowsecurity AND NOT c.relforcerowsecurity
UNION ALL
SELECT
    'TF014'::text AS code,
    'error'::text AS level,
    c.relation AS object,
    format(
        'child of the %s-scoped table %s with other policies than its parent: missing %s; extra %s',
        c.tier, c.parent,
        coalesce((
            SELECT string_agg(x, '; ')
            FROM unnest(c.parent_policies) AS x
            WHERE NOT x = ANY(c.policies)
        ), 'none'),
        coalesce((
            SELECT string_agg(x, '; ')
            FROM unnest(c.policies) AS x
            WHERE NOT x = ANY(c.parent_policies)
        ), 'none')
    ) AS detail,
    format(
        'Give %s the policies of %s (SELECT conformance.fence_table(%L, ...) fences the parent and '
        'all its children).',
        c.relation, c.parent, c.parent
    ) AS remediation
FROM children AS c
WHERE c.relrowsecurity AND c.policies IS DISTINCT FROM c.parent_policies;
COMMENT ON VIEW conformance.check_unfenced_children IS
'TF014: a partition or inheritance child not fenced like its scoped parent.';

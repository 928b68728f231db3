-- Runs last in every apply of the sql/ files: the policies this apply (re)created on the
-- package's tables are the canonical ones from now on. Policies it did not touch keep their
-- record (migrations created them, or a hand added them and they stay drift); records of
-- policies that no longer exist are dropped with them.
DELETE FROM conformance.canonical_policies AS c
WHERE
    split_part(c.relation, '.', 1) IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance')
    AND (
        NOT EXISTS (
            SELECT
            FROM conformance.policies AS p
            WHERE p.relation = c.relation AND p.policy_name = c.policy_name
        )
        OR EXISTS (
            SELECT
            FROM conformance.policies AS p
            INNER JOIN pg_catalog.pg_policy AS q ON p.policy_oid = q.oid
            WHERE
                p.relation = c.relation AND p.policy_name = c.policy_name
                AND conformance.written_in_this_transaction(q.xmin)
        )
    );

INSERT INTO conformance.canonical_policies (
    relation, policy_name, command, permissive, roles, using_expression, check_expression
)
SELECT
    p.relation,
    p.policy_name,
    p.command,
    p.permissive,
    p.roles,
    p.using_expression,
    p.check_expression
FROM conformance.policies AS p
INNER JOIN conformance.tables AS t ON p.relation_oid = t.oid
INNER JOIN pg_catalog.pg_policy AS q ON p.policy_oid = q.oid
WHERE
    t.schema_name IN ('iam', 'tenancy', 'telemetry', 'audit', 'conformance')
    AND conformance.written_in_this_transaction(q.xmin)
ON CONFLICT (relation, policy_name) DO NOTHING;

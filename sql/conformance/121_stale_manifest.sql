-- TF021: every manifest row names a table that exists (a renamed or dropped table leaves a
-- stale row, and the table under its new name is unclassified).
CREATE OR REPLACE VIEW conformance.check_stale_manifest AS
SELECT
    'TF021'::text AS code,
    'warning'::text AS level,
    m.relation AS object,
    format('the manifest classifies %s as %s, but no such table exists', m.relation, m.tier) AS detail,
    format(
        'Remove the row (DELETE FROM conformance.manifest WHERE relation = %L) or classify the '
        'table under its current name.',
        m.relation
    ) AS remediation
FROM conformance.manifest AS m
WHERE NOT EXISTS (
    SELECT
    FROM conformance.tables AS t
    WHERE t.relation = m.relation
);
COMMENT ON VIEW conformance.check_stale_manifest IS 'TF021: a manifest row for a table that does not exist.';

-- The read rule (SPEC §2): a trace and its spans are visible iff
--   (NOT is_production AND traces:read at the project)
--   OR (is_production AND traces:read:prod at the project).
-- Ingest needs traces:write. The application gets SELECT and INSERT only: traces are never
-- updated or deleted through it; the UPDATE and DELETE policies keep the tables fenced for
-- every command should such a privilege ever be granted. The policies come from the one
-- generator (iam.install_fence) that also fences host tables.

GRANT USAGE ON SCHEMA telemetry TO tracefence_app;
GRANT SELECT, INSERT ON telemetry.traces, telemetry.spans TO tracefence_app;

-- Names of the previous releases' policies.
DROP POLICY IF EXISTS traces_ingest ON telemetry.traces;
DROP POLICY IF EXISTS spans_ingest ON telemetry.spans;

SELECT iam.install_fence(
    'telemetry.traces', 'traces:read', 'traces:read:prod', 'traces:write', TRUE, 'traces'
);
SELECT iam.install_fence(
    'telemetry.spans', 'traces:read', 'traces:read:prod', 'traces:write', TRUE, 'spans'
);

-- The read rule (SPEC §2): a trace and its spans are visible iff
--   (NOT is_production AND traces:read at the project)
--   OR (is_production AND traces:read:prod at the project).
-- Ingest needs traces:write. The application gets SELECT and INSERT only: traces are never
-- updated or deleted through it; the UPDATE and DELETE policies keep the tables fenced for
-- every command should such a privilege ever be granted.

GRANT USAGE ON SCHEMA telemetry TO tracefence_app;
GRANT SELECT, INSERT ON telemetry.traces, telemetry.spans TO tracefence_app;

DROP POLICY IF EXISTS traces_read ON telemetry.traces;
CREATE POLICY traces_read ON telemetry.traces
FOR SELECT TO tracefence_app
USING (
    (NOT is_production AND project_id = ANY((SELECT iam.permitted_projects('traces:read'))::uuid[]))
    OR (is_production AND project_id = ANY((SELECT iam.permitted_projects('traces:read:prod'))::uuid[]))
);

DROP POLICY IF EXISTS traces_ingest ON telemetry.traces;
CREATE POLICY traces_ingest ON telemetry.traces
FOR INSERT TO tracefence_app
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

DROP POLICY IF EXISTS traces_update ON telemetry.traces;
CREATE POLICY traces_update ON telemetry.traces
FOR UPDATE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]))
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

DROP POLICY IF EXISTS traces_delete ON telemetry.traces;
CREATE POLICY traces_delete ON telemetry.traces
FOR DELETE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

DROP POLICY IF EXISTS spans_read ON telemetry.spans;
CREATE POLICY spans_read ON telemetry.spans
FOR SELECT TO tracefence_app
USING (
    (NOT is_production AND project_id = ANY((SELECT iam.permitted_projects('traces:read'))::uuid[]))
    OR (is_production AND project_id = ANY((SELECT iam.permitted_projects('traces:read:prod'))::uuid[]))
);

DROP POLICY IF EXISTS spans_ingest ON telemetry.spans;
CREATE POLICY spans_ingest ON telemetry.spans
FOR INSERT TO tracefence_app
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

DROP POLICY IF EXISTS spans_update ON telemetry.spans;
CREATE POLICY spans_update ON telemetry.spans
FOR UPDATE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]))
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

DROP POLICY IF EXISTS spans_delete ON telemetry.spans;
CREATE POLICY spans_delete ON telemetry.spans
FOR DELETE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[]));

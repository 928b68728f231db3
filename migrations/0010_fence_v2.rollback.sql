-- Back to the 0009 state: global ids, no tier columns, open requests kept in backend rows.
-- The functions of sql/ that use these objects go with them (CASCADE): after a rollback, apply
-- the sql/ files of the release rolled back to (its `tracefence migrate`), or apply again.
-- Traces or spans sharing an id across projects make the global keys impossible: then this
-- rollback fails whole and changes nothing.
SET LOCAL ROLE tracefence_owner;

-- The tier-path policies of sql/ name the columns dropped here; the tables stay fenced (RLS
-- forced, no policy: nothing visible) until the sql/ files are applied again.
DROP POLICY IF EXISTS traces_read ON telemetry.traces;
DROP POLICY IF EXISTS traces_insert ON telemetry.traces;
DROP POLICY IF EXISTS traces_update ON telemetry.traces;
DROP POLICY IF EXISTS traces_delete ON telemetry.traces;
DROP POLICY IF EXISTS spans_read ON telemetry.spans;
DROP POLICY IF EXISTS spans_insert ON telemetry.spans;
DROP POLICY IF EXISTS spans_update ON telemetry.spans;
DROP POLICY IF EXISTS spans_delete ON telemetry.spans;

DROP INDEX telemetry.spans_workspace_idx;
DROP INDEX telemetry.spans_organisation_idx;
DROP INDEX telemetry.spans_trace_idx;
DROP INDEX telemetry.traces_id_idx;
DROP INDEX telemetry.traces_workspace_started_idx;
DROP INDEX telemetry.traces_organisation_started_idx;

ALTER TABLE telemetry.spans
DROP CONSTRAINT spans_tier_path_fkey,
DROP CONSTRAINT spans_parent_fkey,
DROP CONSTRAINT spans_trace_fkey,
DROP CONSTRAINT spans_trace_key,
DROP CONSTRAINT spans_pkey;
ALTER TABLE telemetry.traces
DROP CONSTRAINT traces_tier_path_fkey,
DROP CONSTRAINT traces_pkey;

ALTER TABLE telemetry.traces
ADD CONSTRAINT traces_pkey PRIMARY KEY (id),
ADD CONSTRAINT traces_project_id_id_key UNIQUE (project_id, id),
ADD CONSTRAINT traces_project_id_fkey FOREIGN KEY (project_id)
REFERENCES tenancy.projects (id) ON DELETE CASCADE;
ALTER TABLE telemetry.spans
ADD CONSTRAINT spans_pkey PRIMARY KEY (id),
ADD CONSTRAINT spans_trace_id_id_key UNIQUE (trace_id, id),
ADD CONSTRAINT spans_project_id_trace_id_fkey FOREIGN KEY (project_id, trace_id)
REFERENCES telemetry.traces (project_id, id) ON DELETE CASCADE,
ADD CONSTRAINT spans_trace_id_parent_span_id_fkey FOREIGN KEY (trace_id, parent_span_id)
REFERENCES telemetry.spans (trace_id, id) ON DELETE CASCADE;

ALTER TABLE telemetry.spans DROP COLUMN organisation_id, DROP COLUMN workspace_id;
ALTER TABLE telemetry.traces DROP COLUMN organisation_id, DROP COLUMN workspace_id;
ALTER TABLE tenancy.projects DROP CONSTRAINT projects_tier_path_key;

DROP TYPE iam.request_grant CASCADE;

CREATE TYPE iam.held_role AS (
    role text,
    permissions text [],
    projects uuid [],
    above uuid []
);
CREATE UNLOGGED TABLE iam.open_requests (
    backend_pid integer PRIMARY KEY,
    transaction_id xid8 NOT NULL,
    signed text NOT NULL,
    context jsonb NOT NULL,
    roles iam.held_role[] NOT NULL
);
ALTER TABLE iam.open_requests ALTER COLUMN signed SET STORAGE EXTERNAL;
ALTER TABLE iam.open_requests ALTER COLUMN context SET STORAGE EXTERNAL;
ALTER TABLE iam.open_requests ALTER COLUMN roles SET STORAGE EXTERNAL;
COMMENT ON TABLE iam.open_requests IS
'The request each backend''s current transaction opened; written by iam.begin_request only.';
ALTER TABLE iam.open_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.open_requests FORCE ROW LEVEL SECURITY;
REVOKE ALL ON iam.open_requests FROM public;
INSERT INTO conformance.manifest (relation, tier, reason)
VALUES (
    'iam.open_requests', 'internal',
    'Open request contexts, one per backend; reached only through definer functions.'
);

-- depends: 0009_request_fast_path
-- Fence v2 (issue 10): a request context that any backend can verify, and telemetry rows that
-- carry their whole tier path.
--
-- * The open request is no longer kept in a backend's row (iam.open_requests): a standby
--   cannot read an unlogged table and a prepared transaction pinned the row. The context is
--   the signed setting alone, its grants as iam.request_grant values with their windows.
-- * Traces and spans carry organisation_id and workspace_id, stamped at capture and never
--   changed, so a grant at an organisation or workspace is checked on the row itself, with
--   indexes that lead with each tier.
-- * Keys of telemetry rows include project_id: an id says nothing about other tenants and
--   cannot be squatted for them.
SET LOCAL ROLE tracefence_owner;

DELETE FROM conformance.manifest
WHERE relation = 'iam.open_requests';
-- Takes iam.open_request(), which returns its rows.
DROP TABLE iam.open_requests CASCADE;
-- Takes the sql/ functions built on it; `migrate` applies sql/ again right after.
DROP TYPE iam.held_role CASCADE;

-- A grant a request holds: a role (or an API key's scopes, role "api_key") with the
-- resources it is bound at, of any tier, and the end of its window.
CREATE TYPE iam.request_grant AS (
    role text,
    permissions text [],
    scopes uuid [],
    valid_until timestamptz
);
COMMENT ON TYPE iam.request_grant IS
'One grant of an open request: role, permissions, where it is bound, until when.';

-- The tier path of a project, the target of the telemetry rows' foreign keys.
ALTER TABLE tenancy.projects
ADD CONSTRAINT projects_tier_path_key UNIQUE (organisation_id, workspace_id, id);

ALTER TABLE telemetry.traces
ADD COLUMN organisation_id uuid,
ADD COLUMN workspace_id uuid;
UPDATE telemetry.traces AS t
SET organisation_id = p.organisation_id, workspace_id = p.workspace_id
FROM tenancy.projects AS p
WHERE p.id = t.project_id;
ALTER TABLE telemetry.traces
ALTER COLUMN organisation_id SET NOT NULL,
ALTER COLUMN workspace_id SET NOT NULL;

ALTER TABLE telemetry.spans
ADD COLUMN organisation_id uuid,
ADD COLUMN workspace_id uuid;
UPDATE telemetry.spans AS s
SET organisation_id = p.organisation_id, workspace_id = p.workspace_id
FROM tenancy.projects AS p
WHERE p.id = s.project_id;
ALTER TABLE telemetry.spans
ALTER COLUMN organisation_id SET NOT NULL,
ALTER COLUMN workspace_id SET NOT NULL;

-- Keys scoped by project. Spans first: their foreign keys name the traces' unique key.
ALTER TABLE telemetry.spans
DROP CONSTRAINT spans_trace_id_parent_span_id_fkey,
DROP CONSTRAINT spans_project_id_trace_id_fkey,
DROP CONSTRAINT spans_trace_id_id_key,
DROP CONSTRAINT spans_pkey;
ALTER TABLE telemetry.traces
DROP CONSTRAINT traces_project_id_id_key,
DROP CONSTRAINT traces_pkey,
DROP CONSTRAINT traces_project_id_fkey;

ALTER TABLE telemetry.traces
ADD CONSTRAINT traces_pkey PRIMARY KEY (project_id, id),
ADD CONSTRAINT traces_tier_path_fkey FOREIGN KEY (organisation_id, workspace_id, project_id)
REFERENCES tenancy.projects (organisation_id, workspace_id, id) ON DELETE CASCADE;

ALTER TABLE telemetry.spans
ADD CONSTRAINT spans_pkey PRIMARY KEY (project_id, id),
ADD CONSTRAINT spans_trace_key UNIQUE (project_id, trace_id, id),
-- The scope column is part of every key, so a span cannot point at another project's trace.
ADD CONSTRAINT spans_trace_fkey FOREIGN KEY (project_id, trace_id)
REFERENCES telemetry.traces (project_id, id) ON DELETE CASCADE,
ADD CONSTRAINT spans_parent_fkey FOREIGN KEY (project_id, trace_id, parent_span_id)
REFERENCES telemetry.spans (project_id, trace_id, id) ON DELETE CASCADE,
ADD CONSTRAINT spans_tier_path_fkey FOREIGN KEY (organisation_id, workspace_id, project_id)
REFERENCES tenancy.projects (organisation_id, workspace_id, id) ON DELETE CASCADE;

-- What the common queries of a tier use: the latest rows of an organisation, a workspace or
-- a project, and a trace's spans by trace id.
CREATE INDEX traces_organisation_started_idx ON telemetry.traces (organisation_id, started_at DESC);
CREATE INDEX traces_workspace_started_idx ON telemetry.traces (workspace_id, started_at DESC);
-- Finds a span's trace when the writer names only the trace id.
CREATE INDEX traces_id_idx ON telemetry.traces (id);
CREATE INDEX spans_trace_idx ON telemetry.spans (trace_id);
CREATE INDEX spans_organisation_idx ON telemetry.spans (organisation_id);
CREATE INDEX spans_workspace_idx ON telemetry.spans (workspace_id);

COMMENT ON COLUMN telemetry.traces.organisation_id IS
'Stamped from the project at capture; never changes. Checked by organisation-wide grants.';
COMMENT ON COLUMN telemetry.traces.workspace_id IS
'Stamped from the project at capture; never changes. Checked by workspace-wide grants.';
COMMENT ON COLUMN telemetry.spans.organisation_id IS 'Stamped from the trace at capture; never changes.';
COMMENT ON COLUMN telemetry.spans.workspace_id IS 'Stamped from the trace at capture; never changes.';

-- depends: 0004_catalog
-- Traces and spans, classified as production or not at capture time.
SET LOCAL ROLE tracefence_owner;

CREATE SCHEMA telemetry;
COMMENT ON SCHEMA telemetry IS 'Project-scoped telemetry, fenced by row-level security.';

CREATE TABLE telemetry.traces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid NOT NULL REFERENCES tenancy.projects (id) ON DELETE CASCADE,
    environment_id uuid NOT NULL,
    -- Stamped from the environment by the database when the trace is inserted.
    is_production boolean NOT NULL,
    name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    attributes jsonb NOT NULL DEFAULT '{}',
    UNIQUE (project_id, id),
    FOREIGN KEY (project_id, environment_id)
    REFERENCES tenancy.environments (project_id, id) ON DELETE CASCADE,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX traces_project_started_idx
ON telemetry.traces (project_id, is_production, started_at DESC);
COMMENT ON TABLE telemetry.traces IS
'One row per trace; visible by traces:read (non-production) or traces:read:prod (production).';
COMMENT ON COLUMN telemetry.traces.is_production IS
'Capture-time classification from the environment; never changes afterwards.';

CREATE TABLE telemetry.spans (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    trace_id uuid NOT NULL,
    parent_span_id uuid,
    -- Scope and classification are stamped from the trace.
    project_id uuid NOT NULL,
    environment_id uuid NOT NULL,
    is_production boolean NOT NULL,
    name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    attributes jsonb NOT NULL DEFAULT '{}',
    UNIQUE (trace_id, id),
    -- The scope column is part of the key, so a span cannot point at another project's trace.
    FOREIGN KEY (project_id, trace_id) REFERENCES telemetry.traces (project_id, id) ON DELETE CASCADE,
    FOREIGN KEY (trace_id, parent_span_id) REFERENCES telemetry.spans (trace_id, id) ON DELETE CASCADE,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX spans_project_trace_idx ON telemetry.spans (project_id, trace_id);
COMMENT ON TABLE telemetry.spans IS 'Spans of a trace; inherit project, environment and classification.';

ALTER TABLE telemetry.traces ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry.traces FORCE ROW LEVEL SECURITY;
ALTER TABLE telemetry.spans ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry.spans FORCE ROW LEVEL SECURITY;

REVOKE ALL ON SCHEMA telemetry FROM public;

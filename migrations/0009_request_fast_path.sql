-- depends: 0008_conformance
-- What makes a fenced statement cheap (issue 5's benchmarks): the open request kept in a row
-- of its backend, so a statement reads its context instead of verifying a signature, and the
-- projects below each organisation and workspace kept as one array per row, so the role
-- cascade costs one index lookup per statement however many projects a scope holds.
SET LOCAL ROLE tracefence_owner;

-- One row per backend: the request its current transaction opened. Unlogged (a crash ends
-- every request anyway) and keyed by transaction id, so a row left by an earlier transaction
-- matches nothing. Read-only transactions and standbys cannot write it; their requests use
-- the signed setting alone.
-- A role the request holds, with the resources it is bound at, in native arrays: what the
-- per-statement accessors read, with nothing to parse.
CREATE TYPE iam.held_role AS (
    role text,
    permissions text [],
    -- project-tier resources, usable as they are
    projects uuid [],
    -- workspaces and organisations, whose projects tenancy.descendant_projects lists
    above uuid []
);

CREATE UNLOGGED TABLE iam.open_requests (
    backend_pid integer PRIMARY KEY,
    transaction_id xid8 NOT NULL,
    -- The signed tracefence.request value, which must still be the transaction's setting.
    signed text NOT NULL,
    context jsonb NOT NULL,
    roles iam.held_role[] NOT NULL
);
-- Stored uncompressed: read on every statement, a large context is cheaper to copy than to
-- decompress.
ALTER TABLE iam.open_requests ALTER COLUMN signed SET STORAGE EXTERNAL;
ALTER TABLE iam.open_requests ALTER COLUMN context SET STORAGE EXTERNAL;
ALTER TABLE iam.open_requests ALTER COLUMN roles SET STORAGE EXTERNAL;
COMMENT ON TABLE iam.open_requests IS
'The request each backend''s current transaction opened; written by iam.begin_request only.';
ALTER TABLE iam.open_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.open_requests FORCE ROW LEVEL SECURITY;
REVOKE ALL ON iam.open_requests FROM public;

CREATE TABLE tenancy.descendant_projects (
    resource_id uuid PRIMARY KEY REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    projects uuid[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE tenancy.descendant_projects IS
'Every project below an organisation or workspace; maintained by a trigger on tenancy.resources.';

ALTER TABLE tenancy.descendant_projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.descendant_projects FORCE ROW LEVEL SECURITY;
REVOKE ALL ON tenancy.descendant_projects FROM public;

INSERT INTO tenancy.descendant_projects (resource_id, projects)
SELECT
    scope.id,
    coalesce(array_agg(p.id ORDER BY p.id) FILTER (WHERE p.id IS NOT NULL), '{}') AS projects
FROM tenancy.resources AS scope
LEFT JOIN tenancy.resources AS p
    ON p.tier = 'project' AND scope.id IN (p.workspace_id, p.organisation_id)
WHERE scope.tier IN ('organisation', 'workspace')
GROUP BY scope.id;

INSERT INTO conformance.manifest (relation, tier, reason)
VALUES
(
    'tenancy.descendant_projects', 'internal',
    'The role cascade''s index of projects per scope; read only by iam.permitted_projects.'
),
(
    'iam.open_requests', 'internal',
    'Open request contexts, one per backend; reached only through definer functions.'
);

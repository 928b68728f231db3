-- depends: 0001_roles
-- Tiers: organisation ⊃ workspace ⊃ project ⊃ environment.
SET LOCAL ROLE tracefence_owner;

CREATE SCHEMA tenancy;
COMMENT ON SCHEMA tenancy IS 'Organisations, workspaces, projects and environments.';

-- One row per organisation, workspace and project: the hierarchy that role bindings and API
-- keys point at, and that the role cascade walks (a resource and its ancestors in one row).
CREATE TABLE tenancy.resources (
    id uuid PRIMARY KEY,
    tier text NOT NULL CHECK (tier IN ('organisation', 'workspace', 'project')),
    organisation_id uuid NOT NULL REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    workspace_id uuid REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    UNIQUE (id, tier),
    CONSTRAINT resources_ancestry CHECK (
        (tier = 'organisation' AND organisation_id = id AND workspace_id IS NULL)
        OR (tier = 'workspace' AND workspace_id = id AND organisation_id <> id)
        OR (tier = 'project' AND workspace_id IS NOT NULL AND workspace_id <> id AND organisation_id <> id)
    )
);
CREATE INDEX resources_organisation_idx ON tenancy.resources (organisation_id);
CREATE INDEX resources_workspace_idx ON tenancy.resources (workspace_id);
COMMENT ON TABLE tenancy.resources IS
'Every organisation, workspace and project with its ancestors: the role cascade reads this.';

CREATE TABLE tenancy.organisations (
    id uuid PRIMARY KEY REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tenancy.organisations IS 'Top tier; its creator becomes org_owner.';

CREATE TABLE tenancy.workspaces (
    id uuid PRIMARY KEY REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    organisation_id uuid NOT NULL REFERENCES tenancy.organisations (id) ON DELETE CASCADE,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, slug),
    UNIQUE (organisation_id, id)
);
COMMENT ON TABLE tenancy.workspaces IS 'Second tier: groups projects inside an organisation.';

CREATE TABLE tenancy.projects (
    id uuid PRIMARY KEY REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    organisation_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, slug),
    FOREIGN KEY (organisation_id, workspace_id)
    REFERENCES tenancy.workspaces (organisation_id, id) ON DELETE CASCADE
);
CREATE INDEX projects_organisation_idx ON tenancy.projects (organisation_id);
COMMENT ON TABLE tenancy.projects IS 'Third tier: owns environments and telemetry.';

CREATE TABLE tenancy.environments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid NOT NULL REFERENCES tenancy.projects (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    is_production boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name),
    UNIQUE (project_id, id)
);
COMMENT ON TABLE tenancy.environments IS
'Deployment environments; is_production classifies traces at capture time.';
COMMENT ON COLUMN tenancy.environments.is_production IS
'Read by the database when a trace is inserted; flipping it never reclassifies captured traces.';

-- Deny by default: the policies that open these tables live in sql/tenancy/visibility.sql.
ALTER TABLE tenancy.resources ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.resources FORCE ROW LEVEL SECURITY;
ALTER TABLE tenancy.organisations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.organisations FORCE ROW LEVEL SECURITY;
ALTER TABLE tenancy.workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.workspaces FORCE ROW LEVEL SECURITY;
ALTER TABLE tenancy.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.projects FORCE ROW LEVEL SECURITY;
ALTER TABLE tenancy.environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.environments FORCE ROW LEVEL SECURITY;

REVOKE ALL ON SCHEMA tenancy FROM public;

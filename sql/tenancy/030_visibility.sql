-- Who may list organisations, workspaces, projects and environments. Rows are only ever
-- written through the definer functions, so the application gets SELECT and nothing else.

GRANT USAGE ON SCHEMA tenancy TO tracefence_app;
GRANT SELECT ON tenancy.organisations, tenancy.workspaces, tenancy.projects, tenancy.environments
TO tracefence_app;

DROP POLICY IF EXISTS organisations_visible ON tenancy.organisations;
CREATE POLICY organisations_visible ON tenancy.organisations
FOR SELECT TO tracefence_app
USING (id = ANY((SELECT iam.visible_resources())::uuid[]));

DROP POLICY IF EXISTS workspaces_visible ON tenancy.workspaces;
CREATE POLICY workspaces_visible ON tenancy.workspaces
FOR SELECT TO tracefence_app
USING (id = ANY((SELECT iam.visible_resources())::uuid[]));

DROP POLICY IF EXISTS projects_visible ON tenancy.projects;
CREATE POLICY projects_visible ON tenancy.projects
FOR SELECT TO tracefence_app
USING (id = ANY((SELECT iam.visible_resources())::uuid[]));

-- An ingestion key that may write a project's traces must be able to name its environments.
DROP POLICY IF EXISTS environments_visible ON tenancy.environments;
CREATE POLICY environments_visible ON tenancy.environments
FOR SELECT TO tracefence_app
USING (
    project_id = ANY((SELECT iam.visible_resources())::uuid[])
    OR project_id = ANY((SELECT iam.permitted_projects('traces:write'))::uuid[])
);

-- Environments are changed through tenancy.create_environment and set_environment_production;
-- these policies keep the table fenced for every command should a write privilege be granted.
DROP POLICY IF EXISTS environments_insert ON tenancy.environments;
CREATE POLICY environments_insert ON tenancy.environments
FOR INSERT TO tracefence_app
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('environments:write'))::uuid[]));

DROP POLICY IF EXISTS environments_update ON tenancy.environments;
CREATE POLICY environments_update ON tenancy.environments
FOR UPDATE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('environments:write'))::uuid[]))
WITH CHECK (project_id = ANY((SELECT iam.permitted_projects('environments:write'))::uuid[]));

DROP POLICY IF EXISTS environments_delete ON tenancy.environments;
CREATE POLICY environments_delete ON tenancy.environments
FOR DELETE TO tracefence_app
USING (project_id = ANY((SELECT iam.permitted_projects('environments:write'))::uuid[]));

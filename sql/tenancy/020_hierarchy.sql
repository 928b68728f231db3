-- Creating organisations, workspaces, projects and environments through the request principal.

CREATE OR REPLACE FUNCTION tenancy.create_organisation(slug text, name text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor uuid := iam.require_user_request('create an organisation');
    org uuid := gen_random_uuid();
BEGIN
    PERFORM tenancy.require_slug('organisation slug', slug);
    PERFORM tenancy.require_name(name);
    IF EXISTS (SELECT FROM tenancy.organisations AS o WHERE o.slug = create_organisation.slug) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23505', MESSAGE = format('organisation slug %s is taken', slug);
    END IF;
    INSERT INTO tenancy.resources (id, tier, organisation_id) VALUES (org, 'organisation', org);
    INSERT INTO tenancy.organisations (id, slug, name) VALUES (org, slug, name);
    INSERT INTO iam.role_bindings (principal_id, resource_id, tier, role, granted_by)
    VALUES (actor, org, 'organisation', 'org_owner', actor);
    -- The creator may go on to set the organisation up in the same request.
    PERFORM iam.extend_request(jsonb_build_object(
        'resource', org,
        'role', 'org_owner',
        'permissions', (
            SELECT jsonb_agg(rp.permission ORDER BY rp.permission)
            FROM iam.role_permissions AS rp WHERE rp.role = 'org_owner'
        )
    ));
    RETURN org;
END
$$;
COMMENT ON FUNCTION tenancy.create_organisation(text, text) IS
'Create an organisation; the calling user becomes its org_owner.';

CREATE OR REPLACE FUNCTION tenancy.create_workspace(organisation uuid, slug text, name text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    workspace uuid := gen_random_uuid();
BEGIN
    PERFORM tenancy.require_slug('workspace slug', slug);
    PERFORM tenancy.require_name(name);
    PERFORM iam.require_permission(organisation, 'workspaces:manage');
    IF NOT EXISTS (SELECT FROM tenancy.organisations AS o WHERE o.id = organisation) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = format('resource %s is not an organisation', organisation);
    END IF;
    IF EXISTS (
        SELECT FROM tenancy.workspaces AS w
        WHERE w.organisation_id = organisation AND w.slug = create_workspace.slug
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23505', MESSAGE = format('workspace slug %s is taken in this organisation', slug);
    END IF;
    INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
    VALUES (workspace, 'workspace', organisation, workspace);
    INSERT INTO tenancy.workspaces (id, organisation_id, slug, name)
    VALUES (workspace, organisation, slug, name);
    RETURN workspace;
END
$$;
COMMENT ON FUNCTION tenancy.create_workspace(uuid, text, text) IS
'Create a workspace in an organisation (workspaces:manage there).';

CREATE OR REPLACE FUNCTION tenancy.create_project(workspace uuid, slug text, name text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    project uuid := gen_random_uuid();
    organisation uuid;
BEGIN
    PERFORM tenancy.require_slug('project slug', slug);
    PERFORM tenancy.require_name(name);
    PERFORM iam.require_permission(workspace, 'projects:manage');
    SELECT w.organisation_id INTO organisation FROM tenancy.workspaces AS w WHERE w.id = workspace;
    IF organisation IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = format('resource %s is not a workspace', workspace);
    END IF;
    IF EXISTS (
        SELECT FROM tenancy.projects AS p
        WHERE p.workspace_id = workspace AND p.slug = create_project.slug
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23505', MESSAGE = format('project slug %s is taken in this workspace', slug);
    END IF;
    INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
    VALUES (project, 'project', organisation, workspace);
    INSERT INTO tenancy.projects (id, organisation_id, workspace_id, slug, name)
    VALUES (project, organisation, workspace, slug, name);
    RETURN project;
END
$$;
COMMENT ON FUNCTION tenancy.create_project(uuid, text, text) IS
'Create a project in a workspace (projects:manage there).';

CREATE OR REPLACE FUNCTION tenancy.create_environment(project uuid, name text, is_production boolean)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    environment uuid := gen_random_uuid();
BEGIN
    PERFORM tenancy.require_slug('environment name', name);
    IF is_production IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'is_production must be true or false';
    END IF;
    PERFORM iam.require_permission(project, 'environments:write');
    IF NOT EXISTS (SELECT FROM tenancy.projects AS p WHERE p.id = project) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('resource %s is not a project', project);
    END IF;
    IF EXISTS (
        SELECT FROM tenancy.environments AS e
        WHERE e.project_id = project AND e.name = create_environment.name
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23505', MESSAGE = format('environment %s already exists in this project', name);
    END IF;
    INSERT INTO tenancy.environments (id, project_id, name, is_production)
    VALUES (environment, project, name, is_production);
    RETURN environment;
END
$$;
COMMENT ON FUNCTION tenancy.create_environment(uuid, text, boolean) IS
'Create an environment in a project (environments:write there).';

-- Flip an environment's production flag. Traces already captured keep their classification.
CREATE OR REPLACE FUNCTION tenancy.set_environment_production(environment uuid, is_production boolean)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    project uuid;
BEGIN
    IF is_production IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'is_production must be true or false';
    END IF;
    SELECT e.project_id INTO project FROM tenancy.environments AS e WHERE e.id = environment FOR UPDATE;
    PERFORM iam.require_permission(project, 'environments:write');
    UPDATE tenancy.environments AS e
    SET is_production = set_environment_production.is_production
    WHERE e.id = environment;
END
$$;
COMMENT ON FUNCTION tenancy.set_environment_production(uuid, boolean) IS
'Flip is_production (environments:write); affects only traces captured afterwards.';

REVOKE ALL ON FUNCTION tenancy.create_organisation(text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_workspace(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_project(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_environment(uuid, text, boolean) FROM public;
REVOKE ALL ON FUNCTION tenancy.set_environment_production(uuid, boolean) FROM public;
GRANT EXECUTE ON FUNCTION tenancy.create_organisation(text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_workspace(uuid, text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_project(uuid, text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_environment(uuid, text, boolean) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.set_environment_production(uuid, boolean) TO tracefence_app;

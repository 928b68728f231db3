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
    PERFORM audit.record_rbac_changes(
        actor, '{}', iam.effective_sets(actor, org, statement_timestamp()), 'binding_created',
        statement_timestamp(), actor, 'user',
        jsonb_build_object('role', 'org_owner', 'resource', org)
    );
    -- The creator may go on to set the organisation up in the same request.
    PERFORM iam.extend_request(ROW(
        'org_owner',
        ARRAY(SELECT rp.permission FROM iam.role_permissions AS rp WHERE rp.role = 'org_owner' ORDER BY 1),
        ARRAY[org],
        NULL
    )::iam.request_grant);
    RETURN org;
END
$$;
COMMENT ON FUNCTION tenancy.create_organisation(text, text) IS
'Create an organisation; the calling user becomes its org_owner.';

-- Principals bound (by a role or a key) at the given organisation or workspace: the ones a
-- new scope below it will cascade to.
CREATE OR REPLACE FUNCTION tenancy.principals_bound_at(organisation uuid, workspace uuid)
RETURNS SETOF uuid
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.principal_id FROM iam.role_bindings AS b
    WHERE b.resource_id IN (organisation, workspace)
    UNION
    SELECT k.id FROM iam.api_keys AS k
    WHERE k.resource_id IN (organisation, workspace)
$$;

-- A new workspace or project is a new scope: every principal whose role or key cascades into
-- it now holds a set there, and each such set is recorded (cause workspace_created or
-- project_created), so the log replays to the current sets at every scope. The callers sweep
-- those principals before the scope exists (tenancy.sweep_bound_at), so a pending expiry is
-- recorded over the subtree the log knew, not over the new scope.
CREATE OR REPLACE FUNCTION tenancy.sweep_bound_at(organisation uuid, workspace uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    principal uuid;
BEGIN
    FOR principal IN SELECT tenancy.principals_bound_at(organisation, workspace) LOOP
        PERFORM iam.sweep_principal(principal, organisation);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.record_new_scope(resource uuid, cause text)
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    scope tenancy.resources;
    principal uuid;
    recorded integer := 0;
    n integer;
BEGIN
    SELECT r.* INTO STRICT scope FROM tenancy.resources AS r WHERE r.id = resource;
    FOR principal IN SELECT tenancy.principals_bound_at(scope.organisation_id, scope.workspace_id) LOOP
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            principal, '{}', iam.effective_sets(principal, resource, at), cause, at,
            (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
            jsonb_build_object('created', resource)
        );
        recorded := recorded + n;
    END LOOP;
    RETURN recorded;
END
$$;

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
    PERFORM tenancy.sweep_bound_at(organisation, NULL);
    INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
    VALUES (workspace, 'workspace', organisation, workspace);
    INSERT INTO tenancy.workspaces (id, organisation_id, slug, name)
    VALUES (workspace, organisation, slug, name);
    PERFORM tenancy.record_new_scope(workspace, 'workspace_created');
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
    PERFORM tenancy.sweep_bound_at(organisation, workspace);
    INSERT INTO tenancy.resources (id, tier, organisation_id, workspace_id)
    VALUES (project, 'project', organisation, workspace);
    INSERT INTO tenancy.projects (id, organisation_id, workspace_id, slug, name)
    VALUES (project, organisation, workspace, slug, name);
    PERFORM tenancy.record_new_scope(project, 'project_created');
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
-- A real flip writes one environment_policy audit row; setting the value it has writes none.
CREATE OR REPLACE FUNCTION tenancy.set_environment_production(environment uuid, is_production boolean)
RETURNS audit.events
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    env tenancy.environments;
    allowed boolean;
    scope tenancy.resources;
    event audit.events;
BEGIN
    IF is_production IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'is_production must be true or false';
    END IF;
    SELECT e.* INTO env FROM tenancy.environments AS e WHERE e.id = environment;
    allowed := env.id IS NOT NULL AND 'environments:write' = ANY(iam.request_permissions(env.project_id));
    IF allowed THEN
        -- Locked only once the caller may change it, then read again: an environment deleted
        -- while this call waited (its project went) is gone.
        SELECT e.* INTO env FROM tenancy.environments AS e WHERE e.id = environment FOR UPDATE;
    END IF;
    -- Missing, gone, or not the caller's: one error naming only the id it passed.
    IF NOT allowed OR env.id IS NULL THEN
        PERFORM iam.require_request();
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('permission environments:write is required for environment %s', environment),
            DETAIL = 'missing permission: environments:write';
    END IF;
    IF env.is_production = set_environment_production.is_production THEN
        RETURN NULL;
    END IF;
    UPDATE tenancy.environments AS e
    SET is_production = set_environment_production.is_production
    WHERE e.id = environment;
    SELECT r.* INTO scope FROM tenancy.resources AS r WHERE r.id = env.project_id;
    INSERT INTO audit.events (
        event_type, actor_id, actor_kind, scope_id, scope_tier, organisation_id, workspace_id,
        project_id, cause, detail
    )
    SELECT
        'environment_policy', a.actor_id, a.actor_kind, scope.id, scope.tier,
        scope.organisation_id, scope.workspace_id, scope.id, 'environment_flipped',
        jsonb_build_object(
            'environment', env.id, 'environment_name', env.name,
            'prior_is_production', env.is_production,
            'new_is_production', set_environment_production.is_production
        )
    FROM audit.request_actor() AS a
    RETURNING * INTO event;
    RETURN event;
END
$$;
COMMENT ON FUNCTION tenancy.set_environment_production(uuid, boolean) IS
'Flip is_production (environments:write); affects only traces captured afterwards; audited.';

-- Delete a workspace or project with everything in it. Every principal whose effective set
-- at a deleted resource was not empty gets an audit row there (cause workspace_deleted or
-- project_deleted), written before the rows go.
CREATE OR REPLACE FUNCTION tenancy.delete_resource(resource uuid, permission text, cause text)
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    organisation uuid := iam.organisation_of(resource);
    doomed text[];
    principal uuid;
    before jsonb;
    recorded integer := 0;
    n integer;
BEGIN
    PERFORM iam.require_permission(resource, permission);
    -- Lock the subtree: a grant in flight there (it holds FOR SHARE) finishes first and is
    -- then recorded as lost, never silently cascaded away.
    PERFORM FROM tenancy.resources AS r WHERE resource IN (r.id, r.workspace_id) FOR UPDATE;
    SELECT array_agg(r.id::text) INTO doomed
    FROM tenancy.resources AS r
    WHERE resource IN (r.id, r.workspace_id);
    FOR principal IN
        SELECT b.principal_id FROM iam.role_bindings AS b
        INNER JOIN tenancy.resources AS r ON r.id = b.resource_id
        WHERE r.organisation_id = organisation
        UNION
        SELECT k.id FROM iam.api_keys AS k
        INNER JOIN tenancy.resources AS r ON r.id = k.resource_id
        WHERE r.organisation_id = organisation
    LOOP
        PERFORM iam.sweep_principal(principal, organisation);
        before := iam.effective_sets(principal, resource, at);
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            principal, before, before - doomed, cause, at,
            (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
            jsonb_build_object('deleted', resource)
        );
        recorded := recorded + n;
    END LOOP;
    DELETE FROM tenancy.resources AS r WHERE r.id = resource;
    RETURN recorded;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.delete_project(project uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM iam.require_permission(project, 'projects:manage');
    IF NOT EXISTS (SELECT FROM tenancy.projects AS p WHERE p.id = project) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('resource %s is not a project', project);
    END IF;
    PERFORM tenancy.delete_resource(project, 'projects:manage', 'project_deleted');
END
$$;
COMMENT ON FUNCTION tenancy.delete_project(uuid) IS
'Delete a project, its environments and telemetry (projects:manage there); audited.';

CREATE OR REPLACE FUNCTION tenancy.delete_workspace(workspace uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM iam.require_permission(workspace, 'workspaces:manage');
    IF NOT EXISTS (SELECT FROM tenancy.workspaces AS w WHERE w.id = workspace) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = format('resource %s is not a workspace', workspace);
    END IF;
    PERFORM tenancy.delete_resource(workspace, 'workspaces:manage', 'workspace_deleted');
END
$$;
COMMENT ON FUNCTION tenancy.delete_workspace(uuid) IS
'Delete a workspace with its projects (workspaces:manage there); audited.';

REVOKE ALL ON FUNCTION tenancy.create_organisation(text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_workspace(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_project(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.create_environment(uuid, text, boolean) FROM public;
REVOKE ALL ON FUNCTION tenancy.set_environment_production(uuid, boolean) FROM public;
REVOKE ALL ON FUNCTION tenancy.principals_bound_at(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION tenancy.sweep_bound_at(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION tenancy.record_new_scope(uuid, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.delete_resource(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.delete_project(uuid) FROM public;
REVOKE ALL ON FUNCTION tenancy.delete_workspace(uuid) FROM public;
GRANT EXECUTE ON FUNCTION tenancy.delete_project(uuid) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.delete_workspace(uuid) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_organisation(text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_workspace(uuid, text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_project(uuid, text, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.create_environment(uuid, text, boolean) TO tracefence_app;
GRANT EXECUTE ON FUNCTION tenancy.set_environment_production(uuid, boolean) TO tracefence_app;

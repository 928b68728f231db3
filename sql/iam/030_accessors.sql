-- What the open request may do. Policies call these wrapped in (SELECT ...) so the planner
-- evaluates each once per statement (an initPlan), not once per row. With no request open they
-- return NULL or an empty set: deny by default.

CREATE OR REPLACE FUNCTION iam.current_principal()
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT (iam.request_context() ->> 'principal')::uuid
    );
END
$$;
COMMENT ON FUNCTION iam.current_principal() IS 'The principal of the open request, or NULL.';

-- Organisations, workspaces and projects where the open request holds `permission` now:
-- the scopes its grants are bound at, in one array (ids are unique across tiers). A grant at
-- an organisation or workspace covers every project below it; tables that carry
-- organisation_id and workspace_id (telemetry) test those columns against this array, so the
-- cascade costs nothing per statement however many projects a scope holds.
CREATE OR REPLACE FUNCTION iam.permitted_scopes(permission text)
RETURNS uuid[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    context jsonb := iam.request_context();
    -- The clock, not the statement's start: a message, DO block or procedure that began before
    -- a window ended must not carry the grant past it (each statement reads this once).
    now_us bigint := (extract(EPOCH FROM clock_timestamp()) * 1000000)::bigint;
    scopes uuid[] := '{}';
    position integer;
    held jsonb;
BEGIN
    IF context IS NULL OR permission IS NULL OR NOT (context -> 'by') ? permission THEN
        RETURN scopes;
    END IF;
    -- Only the grants that carry the permission (the context indexes them), whose window holds.
    FOREACH position IN ARRAY (context -> 'by' ->> permission)::integer[] LOOP
        held := context -> 'grants' -> position;
        IF iam.grant_holds(held, now_us) THEN
            scopes := scopes || (held ->> 's')::uuid[];
        END IF;
    END LOOP;
    RETURN scopes;
END
$$;
COMMENT ON FUNCTION iam.permitted_scopes(text) IS
'Organisations, workspaces and projects where the open request holds the permission now.';

-- Projects where the open request holds `permission`, through the role cascade: for tables
-- that name only their project (host tables). A workspace or organisation contributes its
-- descendant_projects row (one index lookup, however many projects it has).
CREATE OR REPLACE FUNCTION iam.permitted_projects(permission text)
RETURNS uuid[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    scopes uuid[] := iam.permitted_scopes(permission);
    projects uuid[] := scopes;
    below uuid[];
BEGIN
    IF cardinality(scopes) > 0 THEN
        FOR below IN SELECT d.projects FROM tenancy.descendant_projects AS d WHERE d.resource_id = ANY(scopes)
        LOOP
            projects := projects || below;
        END LOOP;
    END IF;
    RETURN projects;
END
$$;
COMMENT ON FUNCTION iam.permitted_projects(text) IS
'Projects where the open request holds the permission (cascade applied); empty with no request.';

-- Organisations, workspaces and projects the open request may see: where it holds
-- projects:read, and the ancestors of those (a member of a project sees what contains it).
CREATE OR REPLACE FUNCTION iam.visible_resources()
RETURNS uuid[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        WITH g AS (
            SELECT iam.permitted_scopes('projects:read') AS ids
        ),

        readable AS (
            SELECT r.*
            FROM g, tenancy.resources AS r
            WHERE r.id = ANY(g.ids) OR r.workspace_id = ANY(g.ids) OR r.organisation_id = ANY(g.ids)
        )

        SELECT coalesce(array_agg(DISTINCT a.id), '{}')
        FROM readable
        CROSS JOIN LATERAL (
            VALUES (readable.id), (readable.workspace_id), (readable.organisation_id)
        ) AS a (id)
        WHERE a.id IS NOT NULL
    );
END
$$;
COMMENT ON FUNCTION iam.visible_resources() IS
'Resources the open request may list: projects:read, cascaded down, plus their ancestors.';

-- The permissions the open request holds at a resource: the union of its grants at the
-- resource and at every ancestor, as fixed when the request began (windows applied now).
CREATE OR REPLACE FUNCTION iam.request_permissions(resource uuid)
RETURNS text[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(DISTINCT p.permission ORDER BY p.permission), '{}')
        FROM
            tenancy.resources AS r,
            iam.request_grants(clock_timestamp()) AS g,
            unnest(g.permissions) AS p (permission)
        WHERE
            r.id = resource
            AND g.scopes && ARRAY[r.id, r.workspace_id, r.organisation_id]
    );
END
$$;
COMMENT ON FUNCTION iam.request_permissions(uuid) IS
'Permissions the open request holds at a resource (cascade applied), fixed at begin_request.';

-- The organisation a resource belongs to (itself for an organisation). Internal.
CREATE OR REPLACE FUNCTION iam.organisation_of(resource uuid)
RETURNS uuid
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.organisation_id FROM tenancy.resources AS r WHERE r.id = resource
$$;

-- The principal of the open request, or 42501 when none is open. Internal.
CREATE OR REPLACE FUNCTION iam.require_request()
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    principal uuid := iam.current_principal();
BEGIN
    IF principal IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = 'no request is open',
            HINT = 'call iam.begin_request(credential) first in this transaction';
    END IF;
    RETURN principal;
END
$$;

-- The principal of the open request if it is a user, else 42501. Internal.
CREATE OR REPLACE FUNCTION iam.require_user_request(action text)
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    principal uuid := iam.require_request();
BEGIN
    IF iam.request_context() ->> 'kind' <> 'user' THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('only a user request can %s', action);
    END IF;
    RETURN principal;
END
$$;

-- Raise 42501 naming the permission unless the open request holds it at the resource.
-- A resource that does not exist is reported the same way, so errors reveal nothing.
CREATE OR REPLACE FUNCTION iam.require_permission(resource uuid, permission text)
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    principal uuid := iam.require_request();
BEGIN
    IF resource IS NULL OR NOT permission = ANY(iam.request_permissions(resource)) THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('permission %s is required at resource %s', permission, resource),
            DETAIL = format('missing permission: %s', permission);
    END IF;
    RETURN principal;
END
$$;

REVOKE ALL ON FUNCTION iam.current_principal() FROM public;
REVOKE ALL ON FUNCTION iam.permitted_scopes(text) FROM public;
REVOKE ALL ON FUNCTION iam.permitted_projects(text) FROM public;
REVOKE ALL ON FUNCTION iam.visible_resources() FROM public;
REVOKE ALL ON FUNCTION iam.request_permissions(uuid) FROM public;
REVOKE ALL ON FUNCTION iam.organisation_of(uuid) FROM public;
REVOKE ALL ON FUNCTION iam.require_request() FROM public;
REVOKE ALL ON FUNCTION iam.require_user_request(text) FROM public;
REVOKE ALL ON FUNCTION iam.require_permission(uuid, text) FROM public;
-- Policies run with the querying role's privileges, so the application must be able to call
-- the accessors they use; each answers only about the caller's own request.
GRANT EXECUTE ON FUNCTION iam.current_principal() TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.permitted_scopes(text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.permitted_projects(text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.visible_resources() TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.request_permissions(uuid) TO tracefence_app;

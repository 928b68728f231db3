-- The audit feed of a resource: rows whose scope is the resource or one of its ancestors,
-- newest first, optionally of one event type, for principals with audit:read there.
CREATE OR REPLACE FUNCTION audit.feed(resource uuid, event_type text DEFAULT NULL)
RETURNS SETOF audit.events
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    scope tenancy.resources;
BEGIN
    IF event_type IS NOT NULL AND event_type NOT IN ('rbac_grant', 'environment_policy') THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown event type: %L', event_type),
            HINT = 'event types: rbac_grant, environment_policy';
    END IF;
    PERFORM iam.require_permission(resource, 'audit:read');
    SELECT r.* INTO STRICT scope FROM tenancy.resources AS r WHERE r.id = resource;
    RETURN QUERY
    SELECT e.*
    FROM audit.events AS e
    WHERE
        e.scope_id IN (scope.id, scope.workspace_id, scope.organisation_id)
        AND (feed.event_type IS NULL OR e.event_type = feed.event_type)
    ORDER BY e.occurred_at DESC, e.id DESC;
END
$$;
COMMENT ON FUNCTION audit.feed(uuid, text) IS
'Audit rows of a resource and its ancestors, newest first (audit:read there).';

REVOKE ALL ON FUNCTION audit.feed(uuid, text) FROM public;
GRANT EXECUTE ON FUNCTION audit.feed(uuid, text) TO tracefence_app;

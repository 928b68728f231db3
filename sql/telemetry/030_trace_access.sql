-- Boundary state: when the caller can see a project but lacks a trace permission there, say
-- so instead of returning a silent empty list. Reveals nothing about rows (no counts).
CREATE OR REPLACE FUNCTION telemetry.trace_access(project uuid)
RETURNS TABLE (permission text, granted boolean)
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held text[];
BEGIN
    PERFORM iam.require_request();
    held := iam.request_permissions(project);
    IF NOT EXISTS (SELECT FROM tenancy.projects AS p WHERE p.id = project)
        OR NOT (
            project = ANY(iam.visible_resources())
            OR held && ARRAY['traces:read', 'traces:read:prod', 'traces:write']
        )
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('permission projects:read is required at resource %s', project),
            DETAIL = 'missing permission: projects:read';
    END IF;
    RETURN QUERY
    SELECT t.permission, t.permission = ANY(held)
    FROM unnest(ARRAY['traces:read', 'traces:read:prod']) AS t (permission);
END
$$;
COMMENT ON FUNCTION telemetry.trace_access(uuid) IS
'Whether the caller holds traces:read and traces:read:prod at a project it can see.';

REVOKE ALL ON FUNCTION telemetry.trace_access(uuid) FROM public;
GRANT EXECUTE ON FUNCTION telemetry.trace_access(uuid) TO tracefence_app;

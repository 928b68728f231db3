-- Introspection: why a principal holds a permission (or not), and the team page's matrix.

-- May the open request look at `principal`'s access at `resource`? About itself, where it holds
-- anything at the resource; about another user, with members:read there; about an API key,
-- with api-keys:read there (explain also wants the key in the same organisation, since it
-- names the key's resource). Anything else — including
-- a resource or principal that does not exist — is the same 42501, naming only what was asked.
CREATE OR REPLACE FUNCTION iam.require_insight(principal uuid, resource uuid)
RETURNS void
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    needed text := 'projects:read';
    allowed boolean;
BEGIN
    IF principal IS NOT DISTINCT FROM iam.require_request() THEN
        allowed := cardinality(iam.request_permissions(resource)) > 0;
    ELSIF EXISTS (SELECT FROM iam.users AS u WHERE u.id = principal) THEN
        needed := 'members:read';
        allowed := needed = ANY(iam.request_permissions(resource));
    ELSE
        needed := 'api-keys:read';
        allowed := needed = ANY(iam.request_permissions(resource));
    END IF;
    IF NOT allowed THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format(
                'permission %s is required at resource %s to see the access of %s', needed, resource, principal
            ),
            DETAIL = format('missing permission: %s', needed);
    END IF;
END
$$;

-- The answer to "why can (not) P use `permission` at X?", without any caller check. Granted:
-- one row per binding or key scope that grants it. Denied: one row per tier of X's ancestry
-- saying what is bound there and why it does not grant it, then a row naming what would.
CREATE OR REPLACE FUNCTION iam.explain_access(principal uuid, resource uuid, permission text)
RETURNS TABLE (
    granted boolean, tier text, resource_id uuid, source text, role text,
    valid_from timestamptz, valid_until timestamptz, reason text
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    scope tenancy.resources;
    key iam.api_keys;
    holds boolean;
BEGIN
    resource := iam.scope_of(resource);
    IF NOT EXISTS (SELECT FROM iam.permissions AS p WHERE p.name = explain_access.permission) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown permission: %L', explain_access.permission);
    END IF;
    SELECT r.* INTO scope FROM tenancy.resources AS r WHERE r.id = resource;
    holds := explain_access.permission = ANY(iam.effective_permission_set(principal, resource, at));
    SELECT k.* INTO key FROM iam.api_keys AS k WHERE k.id = principal;

    IF key.id IS NOT NULL THEN
        RETURN QUERY SELECT
            holds,
            kr.tier,
            key.resource_id,
            'api_key'::text,
            NULL::text,
            NULL::timestamptz,
            key.expires_at,
            CASE
                WHEN key.revoked_at IS NOT NULL THEN format('the key was revoked at %s', key.revoked_at)
                WHEN key.expires_at <= at THEN format('the key expired at %s', key.expires_at)
                WHEN key.resource_id NOT IN (scope.id, scope.workspace_id, scope.organisation_id)
                    THEN format('the key is bound to %s %s, which does not contain this resource',
                        kr.tier, key.resource_id)
                WHEN holds THEN format('the key''s scopes include %s', explain_access.permission)
                ELSE format('the key''s scopes (%s) do not include %s',
                    (SELECT string_agg(s.permission, ', ' ORDER BY s.permission)
                     FROM iam.api_key_scopes AS s WHERE s.key_id = key.id), explain_access.permission)
            END
        FROM tenancy.resources AS kr WHERE kr.id = key.resource_id;
        RETURN;
    END IF;

    RETURN QUERY
    SELECT
        rp.permission IS NOT NULL
        AND (b.valid_from IS NULL OR b.valid_from <= at)
        AND (b.valid_until IS NULL OR b.valid_until > at),
        r.tier,
        r.id,
        CASE WHEN b.role IS NULL THEN 'none' ELSE 'binding' END,
        b.role,
        b.valid_from,
        b.valid_until,
        CASE
            WHEN b.role IS NULL THEN format('no role is bound at the %s', r.tier)
            WHEN b.valid_until <= at THEN format('role %s expired at %s', b.role, b.valid_until)
            WHEN b.valid_from > at THEN format('role %s starts at %s', b.role, b.valid_from)
            WHEN rp.permission IS NULL THEN format('role %s does not carry %s', b.role, explain_access.permission)
            ELSE format('role %s at the %s grants %s', b.role, r.tier, explain_access.permission)
        END
    FROM tenancy.resources AS r
    LEFT JOIN iam.role_bindings AS b ON b.resource_id = r.id AND b.principal_id = principal
    LEFT JOIN iam.role_permissions AS rp ON rp.role = b.role AND rp.permission = explain_access.permission
    WHERE r.id IN (scope.id, scope.workspace_id, scope.organisation_id)
        AND (NOT holds OR rp.permission IS NOT NULL)
    ORDER BY array_position(ARRAY['organisation', 'workspace', 'project'], r.tier);

    IF NOT holds THEN
        RETURN QUERY SELECT
            false, NULL::text, NULL::uuid, 'missing'::text, NULL::text, NULL::timestamptz,
            NULL::timestamptz,
            format('%s is held at no tier; roles that carry it: %s', explain_access.permission, coalesce((
                SELECT string_agg(ro.name, ', ' ORDER BY ro.name)
                FROM iam.roles AS ro
                INNER JOIN iam.role_permissions AS rp ON rp.role = ro.name
                WHERE rp.permission = explain_access.permission
                    AND ro.tier IN (
                        SELECT a.tier FROM tenancy.resources AS a
                        WHERE a.id IN (scope.id, scope.workspace_id, scope.organisation_id)
                    )
            ), 'none'));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION iam.explain(principal uuid, resource uuid, permission text)
RETURNS TABLE (
    granted boolean, tier text, resource_id uuid, source text, role text,
    valid_from timestamptz, valid_until timestamptz, reason text
)
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    resource := iam.scope_of(resource);
    PERFORM iam.require_insight(principal, resource);
    -- explain names a key's own resource: only for keys of the resource's organisation.
    IF EXISTS (
        SELECT FROM iam.api_keys AS k
        WHERE k.id = principal AND iam.organisation_of(k.resource_id) <> iam.organisation_of(resource)
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format(
                'permission api-keys:read is required at resource %s to see the access of %s',
                resource, principal
            ),
            DETAIL = 'missing permission: api-keys:read';
    END IF;
    RETURN QUERY SELECT * FROM iam.explain_access(principal, resource, permission);
END
$$;
COMMENT ON FUNCTION iam.explain(uuid, uuid, text) IS
'Which bindings or key scopes grant a permission at a resource, or why none does.';

-- The team page: each user's role at each resource of the organisation where the caller
-- holds members:read (org-wide for an org admin, one workspace for a workspace admin, ...).
CREATE OR REPLACE FUNCTION iam.role_matrix(organisation uuid)
RETURNS TABLE (
    principal_id uuid, email text, display_name text, tier text, resource_id uuid,
    resource_slug text, role text, valid_from timestamptz, valid_until timestamptz, active boolean
)
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    readable uuid[];
BEGIN
    PERFORM iam.require_request();
    SELECT array_agg(r.id) INTO readable
    FROM tenancy.resources AS r
    WHERE r.organisation_id = organisation AND 'members:read' = ANY(iam.request_permissions(r.id));
    IF readable IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('permission members:read is required at resource %s', organisation),
            DETAIL = 'missing permission: members:read';
    END IF;
    RETURN QUERY
    SELECT
        u.id, u.email, u.display_name, r.tier, r.id,
        coalesce(o.slug, w.slug, p.slug),
        b.role, b.valid_from, b.valid_until,
        (b.valid_from IS NULL OR b.valid_from <= at) AND (b.valid_until IS NULL OR b.valid_until > at)
    FROM iam.role_bindings AS b
    INNER JOIN iam.users AS u ON u.id = b.principal_id
    INNER JOIN tenancy.resources AS r ON r.id = b.resource_id
    LEFT JOIN tenancy.organisations AS o ON o.id = r.id
    LEFT JOIN tenancy.workspaces AS w ON w.id = r.id
    LEFT JOIN tenancy.projects AS p ON p.id = r.id
    WHERE r.id = ANY(readable)
    ORDER BY u.email, array_position(ARRAY['organisation', 'workspace', 'project'], r.tier), r.id;
END
$$;
COMMENT ON FUNCTION iam.role_matrix(uuid) IS
'Each user''s role at each tier and resource of an organisation (members:read).';

REVOKE ALL ON FUNCTION iam.require_insight(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION iam.explain_access(uuid, uuid, text) FROM public;
REVOKE ALL ON FUNCTION iam.explain(uuid, uuid, text) FROM public;
REVOKE ALL ON FUNCTION iam.role_matrix(uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.explain(uuid, uuid, text) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.role_matrix(uuid) TO tracefence_app;

-- eff(P, X): the union of the permissions of P's bindings valid at `at` on X and on every
-- ancestor of X; for an API key, its scopes when X is its resource or below it and the key
-- is neither revoked nor expired.
CREATE OR REPLACE FUNCTION iam.effective_permission_set(
    principal uuid, resource uuid, at timestamptz
)
RETURNS text[]
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT held.permission ORDER BY held.permission), '{}')
    FROM (
        SELECT rp.permission
        FROM tenancy.resources AS r
        INNER JOIN iam.role_bindings AS b
            ON b.resource_id IN (r.id, r.workspace_id, r.organisation_id)
        INNER JOIN iam.role_permissions AS rp ON b.role = rp.role
        WHERE
            r.id = resource
            AND b.principal_id = principal
            AND (b.valid_from IS NULL OR b.valid_from <= at)
            AND (b.valid_until IS NULL OR b.valid_until > at)
        UNION ALL
        SELECT s.permission
        FROM tenancy.resources AS r
        INNER JOIN iam.api_keys AS k ON k.resource_id IN (r.id, r.workspace_id, r.organisation_id)
        INNER JOIN iam.api_key_scopes AS s ON k.id = s.key_id
        WHERE
            r.id = resource
            AND k.id = principal
            AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > at)
    ) AS held
$$;
COMMENT ON FUNCTION iam.effective_permission_set(uuid, uuid, timestamptz) IS
'eff(P, X) at a moment: role cascade and union for users, scopes below the bound resource for keys.';

-- The API: a principal's effective permissions at a resource now. Anyone may ask about
-- themselves; asking about another user needs members:read there, about a key api-keys:read.
-- The scope a resource id stands for in the questions "what may P do at X" and "why": an
-- environment is answered for its project (SPEC §2: environments sit under projects and carry
-- no bindings of their own); any other id is itself. Internal.
CREATE OR REPLACE FUNCTION iam.scope_of(resource uuid)
RETURNS uuid
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT e.project_id FROM tenancy.environments AS e WHERE e.id = resource), resource)
$$;

CREATE OR REPLACE FUNCTION iam.effective_permissions(principal uuid, resource uuid)
RETURNS text[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    resource := iam.scope_of(resource);
    -- About itself the answer is empty both for a resource that does not exist and for one
    -- in another tenant: it says nothing, so no check is needed.
    IF principal IS DISTINCT FROM iam.require_request() THEN
        PERFORM iam.require_insight(principal, resource);
    END IF;
    RETURN iam.effective_permission_set(principal, resource, statement_timestamp());
END
$$;
COMMENT ON FUNCTION iam.effective_permissions(uuid, uuid) IS
'A principal''s effective permissions at a resource now (own, or with members:read / api-keys:read).';

REVOKE ALL ON FUNCTION iam.effective_permission_set(uuid, uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.scope_of(uuid) FROM public;
REVOKE ALL ON FUNCTION iam.effective_permissions(uuid, uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.effective_permissions(uuid, uuid) TO tracefence_app;

-- Opening a request: verify a credential, then fix the principal and its grants for the rest
-- of the transaction. Grants committed later do not reach a request already open; nothing is
-- cached across requests.

-- Superseded by binding_roles and api_key_roles.
DROP FUNCTION IF EXISTS iam.binding_grants(uuid, timestamptz);
DROP FUNCTION IF EXISTS iam.api_key_grants(uuid, timestamptz);

-- A user's bindings valid at `at`, one iam.held_role per role.
CREATE OR REPLACE FUNCTION iam.binding_roles(principal uuid, at timestamptz)
RETURNS iam.held_role[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- Planning the query costs more than running it: plan it once per session.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(ROW(
            g.role,
            ARRAY(SELECT rp.permission FROM iam.role_permissions AS rp WHERE rp.role = g.role ORDER BY 1),
            g.projects,
            g.above
        )::iam.held_role), '{}')
        FROM (
            SELECT
                b.role,
                coalesce(array_agg(b.resource_id) FILTER (WHERE b.tier = 'project'), '{}') AS projects,
                coalesce(array_agg(b.resource_id) FILTER (WHERE b.tier <> 'project'), '{}') AS above
            FROM iam.role_bindings AS b
            WHERE
                b.principal_id = principal
                AND (b.valid_from IS NULL OR b.valid_from <= at)
                AND (b.valid_until IS NULL OR b.valid_until > at)
            GROUP BY b.role
        ) AS g
    );
END
$$;

-- An API key's scopes at its resource, as one role named "api_key", if it is neither revoked
-- nor expired.
CREATE OR REPLACE FUNCTION iam.api_key_roles(key_id uuid, at timestamptz)
RETURNS iam.held_role[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- Planning the query costs more than running it: plan it once per session.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(ROW(
            'api_key',
            ARRAY(SELECT s.permission FROM iam.api_key_scopes AS s WHERE s.key_id = k.id ORDER BY 1),
            CASE WHEN r.tier = 'project' THEN ARRAY[k.resource_id] ELSE '{}' END,
            CASE WHEN r.tier = 'project' THEN '{}' ELSE ARRAY[k.resource_id] END
        )::iam.held_role), '{}')
        FROM iam.api_keys AS k
        INNER JOIN tenancy.resources AS r ON k.resource_id = r.id
        WHERE
            k.id = key_id
            AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > at)
    );
END
$$;

CREATE OR REPLACE FUNCTION iam.begin_request(credential text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    principal uuid;
    principal_kind text;
    roles iam.held_role[];
BEGIN
    -- Only a context this transaction really opened counts; anything else in the setting
    -- (a value planted at session level, say) is overwritten, not obeyed.
    IF iam.verified_context(current_setting('tracefence.request', true)) IS NOT NULL
        OR EXISTS (
            SELECT FROM iam.open_requests AS o
            WHERE o.backend_pid = pg_backend_pid() AND o.transaction_id = pg_current_xact_id_if_assigned()
        )
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '25001',
            MESSAGE = 'a request is already open in this transaction',
            HINT = 'one transaction serves one request; commit or roll back first';
    END IF;
    IF credential LIKE 'tfk\_%' THEN
        SELECT k.id INTO principal
        FROM iam.api_keys AS k
        WHERE
            k.secret_hash = sha256(convert_to(credential, 'UTF8'))
            AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > at);
        principal_kind := 'api_key';
        roles := iam.api_key_roles(principal, at);
    ELSIF credential LIKE 'tfu\_%' THEN
        principal := iam.verify_user_token(credential);
        principal_kind := 'user';
        roles := iam.binding_roles(principal, at);
    END IF;
    IF principal IS NULL THEN
        -- One message for every bad credential: say nothing about which check failed.
        RAISE EXCEPTION USING ERRCODE = '28000', MESSAGE = 'invalid credential';
    END IF;
    PERFORM iam.store_request_context(
        jsonb_build_object('version', 2, 'principal', principal, 'kind', principal_kind, 'began_at', at),
        roles
    );
    RETURN principal;
END
$$;
COMMENT ON FUNCTION iam.begin_request(text) IS
'Verify an API-key secret or a signed user token and fix the request principal for this transaction.';

REVOKE ALL ON FUNCTION iam.binding_roles(uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.api_key_roles(uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.begin_request(text) FROM public;
GRANT EXECUTE ON FUNCTION iam.begin_request(text) TO tracefence_app;

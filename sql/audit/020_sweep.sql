-- The expiry sweep: a binding or key past its end grants nothing from that moment whether or
-- not the sweep has run (the read path checks the window); the sweep only records it, once,
-- as expiry (system actor, occurred_at = the moment it ended). A binding whose valid_from has
-- come is recorded as started. Safe to run at any time, repeatedly and concurrently: each row
-- is claimed with FOR UPDATE SKIP LOCKED and marked in the same transaction.
CREATE OR REPLACE FUNCTION iam.sweep_expired()
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    binding record;
    key record;
    now_sets jsonb;
    recorded integer := 0;
    n integer;
BEGIN
    FOR binding IN
        SELECT b.principal_id, b.resource_id, b.role, b.valid_from, b.valid_until
        FROM iam.role_bindings AS b
        WHERE b.valid_until <= at AND b.expiry_recorded_at IS NULL
        ORDER BY b.valid_until
        FOR UPDATE SKIP LOCKED
    LOOP
        now_sets := iam.effective_sets(binding.principal_id, binding.resource_id, at);
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            binding.principal_id,
            iam.effective_sets(binding.principal_id, binding.resource_id, at, binding.resource_id),
            now_sets, 'binding_expired', binding.valid_until, NULL, 'system',
            jsonb_build_object('role', binding.role, 'resource', binding.resource_id,
                'valid_until', binding.valid_until)
        );
        recorded := recorded + n;
        UPDATE iam.role_bindings AS b SET expiry_recorded_at = at
        WHERE b.principal_id = binding.principal_id AND b.resource_id = binding.resource_id;
    END LOOP;

    FOR binding IN
        SELECT b.principal_id, b.resource_id, b.role, b.valid_from, b.valid_until
        FROM iam.role_bindings AS b
        WHERE
            b.valid_from <= at AND b.valid_from > b.granted_at AND b.start_recorded_at IS NULL
            AND (b.valid_until IS NULL OR b.valid_until > at)
        ORDER BY b.valid_from
        FOR UPDATE SKIP LOCKED
    LOOP
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            binding.principal_id,
            iam.effective_sets(binding.principal_id, binding.resource_id, at, NULL, binding.resource_id),
            iam.effective_sets(binding.principal_id, binding.resource_id, at),
            'binding_started', binding.valid_from, NULL, 'system',
            jsonb_build_object('role', binding.role, 'resource', binding.resource_id,
                'valid_from', binding.valid_from)
        );
        recorded := recorded + n;
        UPDATE iam.role_bindings AS b SET start_recorded_at = at
        WHERE b.principal_id = binding.principal_id AND b.resource_id = binding.resource_id;
    END LOOP;

    FOR key IN
        SELECT k.id, k.resource_id, k.expires_at
        FROM iam.api_keys AS k
        WHERE k.expires_at <= at AND k.expiry_recorded_at IS NULL AND k.revoked_at IS NULL
        ORDER BY k.expires_at
        FOR UPDATE SKIP LOCKED
    LOOP
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            key.id,
            iam.effective_sets(key.id, key.resource_id, key.expires_at - interval '1 microsecond'),
            '{}', 'key_expired', key.expires_at, NULL, 'system',
            jsonb_build_object('resource', key.resource_id, 'expires_at', key.expires_at)
        );
        recorded := recorded + n;
        UPDATE iam.api_keys AS k SET expiry_recorded_at = at WHERE k.id = key.id;
    END LOOP;
    RETURN recorded;
END
$$;
COMMENT ON FUNCTION iam.sweep_expired() IS
'Record each expired binding or key (and each deferred start) once; returns audit rows written.';

-- Remove a user and everything bound to it; every effective set it loses is recorded.
CREATE OR REPLACE FUNCTION iam.delete_user(principal uuid)
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    organisation uuid;
    recorded integer := 0;
    n integer;
BEGIN
    IF NOT EXISTS (SELECT FROM iam.users AS u WHERE u.id = principal) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown user: %s', principal);
    END IF;
    FOR organisation IN
        SELECT DISTINCT r.organisation_id
        FROM iam.role_bindings AS b
        INNER JOIN tenancy.resources AS r ON r.id = b.resource_id
        WHERE b.principal_id = principal
    LOOP
        -- The last non-expiring org_owner of an organisation cannot be removed this way either.
        IF EXISTS (
            SELECT FROM iam.role_bindings AS b
            WHERE b.principal_id = principal AND b.resource_id = organisation
                AND b.role = 'org_owner' AND b.valid_until IS NULL
        ) THEN
            PERFORM iam.require_other_owner(organisation, principal);
        END IF;
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            principal, iam.effective_sets(principal, organisation, at), '{}', 'principal_removed',
            at, NULL, 'service'
        );
        recorded := recorded + n;
    END LOOP;
    DELETE FROM iam.principals AS p WHERE p.id = principal;
    RETURN recorded;
END
$$;
COMMENT ON FUNCTION iam.delete_user(uuid) IS 'Back office: remove a user; its lost access is audited.';

REVOKE ALL ON FUNCTION iam.sweep_expired() FROM public;
REVOKE ALL ON FUNCTION iam.delete_user(uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.sweep_expired() TO tracefence_service;
GRANT EXECUTE ON FUNCTION iam.delete_user(uuid) TO tracefence_service;

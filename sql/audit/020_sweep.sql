-- The expiry sweep. A binding or key past its end grants nothing from that moment whether or
-- not the sweep has run (the read path checks the window); the sweep only records it, as
-- expiry, with the system actor and occurred_at = the moment it ended. A binding whose
-- valid_from has come is recorded as started.
--
-- The log must replay: every row's prior set is what the rows before it say. So a principal's
-- pending starts and expiries are recorded, in time order, before any other change to that
-- principal is recorded (every access-changing call sweeps its principal first), and the sets
-- compared are the ones the log knows (effective_sets(..., as_recorded)). A lock on the
-- principal's row (which the application role cannot take) serialises sweeps and changes of
-- one principal, and changes run at READ COMMITTED so each statement sees the last commit.

-- Lock a principal for an access change; refuse isolation levels under which two concurrent
-- changes could each compute their audit rows from a stale snapshot.
CREATE OR REPLACE FUNCTION iam.lock_principal(principal uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING
            ERRCODE = '25001',
            MESSAGE = format(
                'access changes run at READ COMMITTED, not %s', current_setting('transaction_isolation')
            ),
            HINT = 'open the request in a READ COMMITTED transaction';
    END IF;
    PERFORM FROM iam.principals AS p WHERE p.id = principal FOR UPDATE;
END
$$;

-- Starts and expiries that have happened but are not recorded yet: the one definition of
-- "pending", for one principal or (principal NULL) for all.
CREATE OR REPLACE FUNCTION iam.pending_transitions(principal uuid, at timestamptz)
RETURNS TABLE (principal_id uuid, cause text, resource_id uuid, happened_at timestamptz, role text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.principal_id, 'binding_started', b.resource_id, b.valid_from, b.role
    FROM iam.role_bindings AS b
    WHERE
        (principal IS NULL OR b.principal_id = principal)
        AND b.valid_from <= at AND b.valid_from > b.granted_at AND b.start_recorded_at IS NULL
    UNION ALL
    SELECT b.principal_id, 'binding_expired', b.resource_id, b.valid_until, b.role
    FROM iam.role_bindings AS b
    WHERE
        (principal IS NULL OR b.principal_id = principal)
        AND b.valid_until <= at AND b.expiry_recorded_at IS NULL
    UNION ALL
    SELECT k.id, 'key_expired', k.resource_id, k.expires_at, NULL
    FROM iam.api_keys AS k
    WHERE
        (principal IS NULL OR k.id = principal)
        AND k.expires_at <= at AND k.expiry_recorded_at IS NULL AND k.revoked_at IS NULL
$$;

CREATE OR REPLACE FUNCTION iam.sweep_principal(principal uuid)
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    pending record;
    before jsonb;
    recorded integer := 0;
    n integer;
BEGIN
    PERFORM iam.lock_principal(principal);
    FOR pending IN
        SELECT t.cause, t.resource_id, t.happened_at, t.role
        FROM iam.pending_transitions(principal, at) AS t
        ORDER BY t.happened_at, t.cause DESC
    LOOP
        before := iam.effective_sets(principal, pending.resource_id, at, TRUE);
        IF pending.cause = 'binding_started' THEN
            UPDATE iam.role_bindings AS b SET start_recorded_at = at
            WHERE b.principal_id = principal AND b.resource_id = pending.resource_id;
        ELSIF pending.cause = 'binding_expired' THEN
            UPDATE iam.role_bindings AS b SET expiry_recorded_at = at
            WHERE b.principal_id = principal AND b.resource_id = pending.resource_id;
        ELSE
            UPDATE iam.api_keys AS k SET expiry_recorded_at = at WHERE k.id = principal;
        END IF;
        SELECT count(*) INTO n FROM audit.record_rbac_changes(
            principal, before, iam.effective_sets(principal, pending.resource_id, at, TRUE),
            pending.cause, pending.happened_at, NULL, 'system',
            jsonb_build_object('role', pending.role, 'resource', pending.resource_id)
        );
        recorded := recorded + n;
    END LOOP;
    RETURN recorded;
END
$$;
COMMENT ON FUNCTION iam.sweep_principal(uuid) IS
'Record one principal''s pending starts and expiries, in time order; returns audit rows written.';

-- Safe at any time, repeatedly and concurrently: a principal another transaction is sweeping
-- or changing is skipped here and recorded there.
CREATE OR REPLACE FUNCTION iam.sweep_expired()
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    principal uuid;
    recorded integer := 0;
BEGIN
    FOR principal IN
        SELECT DISTINCT t.principal_id FROM iam.pending_transitions(NULL, at) AS t
    LOOP
        -- Skip a principal another transaction is sweeping or changing: it records it there.
        IF EXISTS (
            SELECT FROM iam.principals AS p WHERE p.id = principal FOR UPDATE SKIP LOCKED
        ) THEN
            recorded := recorded + iam.sweep_principal(principal);
        END IF;
    END LOOP;
    RETURN recorded;
END
$$;
COMMENT ON FUNCTION iam.sweep_expired() IS
'Record every pending expiry and deferred start once; returns audit rows written.';

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
    PERFORM iam.sweep_principal(principal);
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

REVOKE ALL ON FUNCTION iam.lock_principal(uuid) FROM public;
REVOKE ALL ON FUNCTION iam.pending_transitions(uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.sweep_principal(uuid) FROM public;
REVOKE ALL ON FUNCTION iam.sweep_expired() FROM public;
REVOKE ALL ON FUNCTION iam.delete_user(uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.sweep_expired() TO tracefence_service;
GRANT EXECUTE ON FUNCTION iam.delete_user(uuid) TO tracefence_service;

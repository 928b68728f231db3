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

-- Lock a principal's access in one organisation for a change; refuse isolation levels under
-- which two concurrent changes could each compute their audit rows from a stale snapshot.
-- The lock is a row of iam.access_locks (made on first use): only changes of this principal in
-- this organisation wait for it, so a tenant that binds a user into an organisation of its own
-- and holds the transaction open blocks nothing outside that organisation, and no foreign-key
-- check waits for it (nothing refers to the row). A wait longer than lock_timeout fails with
-- 55P03 naming the principal and the organisation, not silently later.
CREATE OR REPLACE FUNCTION iam.lock_access(principal uuid, organisation uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
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
    BEGIN
        INSERT INTO iam.access_locks (principal_id, organisation_id) VALUES (principal, organisation)
        ON CONFLICT DO NOTHING;
        PERFORM FROM iam.access_locks AS l
        WHERE l.principal_id = principal AND l.organisation_id = organisation
        FOR UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION USING
            ERRCODE = '55P03',
            MESSAGE = format(
                'another access change of principal %s in organisation %s is still running',
                principal, organisation
            ),
            HINT = 'retry when it has committed or rolled back';
    END;
END
$$;

-- Starts and expiries that have happened but are not recorded yet: the one definition of
-- "pending", for one principal or (principal NULL) for all, in one organisation or (NULL) in
-- all.
CREATE OR REPLACE FUNCTION iam.pending_transitions(principal uuid, organisation uuid, at timestamptz)
RETURNS TABLE (
    principal_id uuid, organisation_id uuid, cause text, resource_id uuid, happened_at timestamptz, role text
)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.principal_id, r.organisation_id, t.cause, t.resource_id, t.happened_at, t.role
    FROM (
        SELECT b.principal_id, 'binding_started' AS cause, b.resource_id, b.valid_from AS happened_at, b.role
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
    ) AS t
    INNER JOIN tenancy.resources AS r ON t.resource_id = r.id
    WHERE organisation IS NULL OR r.organisation_id = organisation
$$;

-- Record a principal's pending starts and expiries in one organisation, locking its access
-- there first (every access change sweeps its principal before changing anything).
CREATE OR REPLACE FUNCTION iam.sweep_principal(principal uuid, organisation uuid)
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
    PERFORM iam.lock_access(principal, organisation);
    FOR pending IN
        SELECT t.cause, t.resource_id, t.happened_at, t.role
        FROM iam.pending_transitions(principal, organisation, at) AS t
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
COMMENT ON FUNCTION iam.sweep_principal(uuid, uuid) IS
'Record a principal''s pending starts and expiries in an organisation, in time order; returns audit rows.';

-- Safe at any time, repeatedly and concurrently: a principal another transaction is sweeping
-- or changing in an organisation is skipped there and recorded by that transaction.
CREATE OR REPLACE FUNCTION iam.sweep_expired()
RETURNS integer
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    pending record;
    recorded integer := 0;
BEGIN
    FOR pending IN
        SELECT DISTINCT t.principal_id, t.organisation_id FROM iam.pending_transitions(NULL, NULL, at) AS t
    LOOP
        -- Take the lock only if it is free (a lock row made by a transaction still running is
        -- not visible: that transaction records the change).
        INSERT INTO iam.access_locks (principal_id, organisation_id)
        VALUES (pending.principal_id, pending.organisation_id)
        ON CONFLICT DO NOTHING;
        IF EXISTS (
            SELECT FROM iam.access_locks AS l
            WHERE l.principal_id = pending.principal_id AND l.organisation_id = pending.organisation_id
            FOR UPDATE SKIP LOCKED
        ) THEN
            recorded := recorded + iam.sweep_principal(pending.principal_id, pending.organisation_id);
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
    FOR organisation IN
        SELECT DISTINCT r.organisation_id
        FROM iam.role_bindings AS b
        INNER JOIN tenancy.resources AS r ON r.id = b.resource_id
        WHERE b.principal_id = principal
        ORDER BY r.organisation_id  -- one order for every deletion: no deadlock between two
    LOOP
        PERFORM iam.sweep_principal(principal, organisation);
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

REVOKE ALL ON FUNCTION iam.lock_access(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION iam.pending_transitions(uuid, uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.sweep_principal(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION iam.sweep_expired() FROM public;
REVOKE ALL ON FUNCTION iam.delete_user(uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.sweep_expired() TO tracefence_service;
GRANT EXECUTE ON FUNCTION iam.delete_user(uuid) TO tracefence_service;

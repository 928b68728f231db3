-- Opening a request: verify a credential, then fix the principal and its grants for the rest
-- of the transaction. Grants committed later do not reach a request already open; nothing is
-- cached across requests.

-- A user's bindings valid at `at`, one iam.request_grant per role and end of window.
CREATE OR REPLACE FUNCTION iam.user_grants(principal uuid, at timestamptz)
RETURNS iam.request_grant[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- Planning the query costs more than running it (measured: 0.33 ms against 0.42 ms per
-- request): plan it once per session.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(ROW(
            g.role,
            ARRAY(SELECT rp.permission FROM iam.role_permissions AS rp WHERE rp.role = g.role ORDER BY 1),
            g.scopes,
            g.valid_until
        )::iam.request_grant), '{}')
        FROM (
            SELECT b.role, b.valid_until, array_agg(b.resource_id ORDER BY b.resource_id) AS scopes
            FROM iam.role_bindings AS b
            WHERE
                b.principal_id = principal
                AND (b.valid_from IS NULL OR b.valid_from <= at)
                AND (b.valid_until IS NULL OR b.valid_until > at)
            GROUP BY b.role, b.valid_until
        ) AS g
    );
END
$$;

-- An API key's scopes at its resource, as one grant named "api_key" that ends when the key
-- expires, if it is neither revoked nor expired.
CREATE OR REPLACE FUNCTION iam.key_grants(key_id uuid, at timestamptz)
RETURNS iam.request_grant[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- Planning the query costs more than running it (measured: 0.33 ms against 0.42 ms per
-- request): plan it once per session.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(ROW(
            'api_key',
            ARRAY(SELECT s.permission FROM iam.api_key_scopes AS s WHERE s.key_id = k.id ORDER BY 1),
            ARRAY[k.resource_id],
            k.expires_at
        )::iam.request_grant), '{}')
        FROM iam.api_keys AS k
        WHERE
            k.id = key_id
            AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > at)
    );
END
$$;

-- Opening a request is refused where it could see anything but the latest committed state
-- (SPEC §1.7): a transaction at REPEATABLE READ or SERIALIZABLE may hold a snapshot taken
-- before a revocation (its first query, or SET TRANSACTION SNAPSHOT of an exported one).
-- At READ COMMITTED every statement of this function reads the latest commit, and one
-- transaction serves one request, so every access-changing call of the request runs at
-- READ COMMITTED too. On a primary the request takes the transaction's id: its context is
-- bound to it, and a transaction that already has one (it wrote, or opened a request that a
-- savepoint rolled back) cannot open a request — unless the session is a DBA's (a member of
-- tracefence_owner), who can read everything anyway. During recovery there is no transaction
-- id: a request rolled back by a savepoint can be followed by another there (docs/reference.md,
-- "Request lifecycle").
CREATE OR REPLACE FUNCTION iam.begin_request(credential text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The clock, not the statement's start, which a multi-statement message or a DO block
    -- that committed its way past an expiry would still report.
    at timestamptz := clock_timestamp();
    principal uuid;
    principal_kind text;
    grants iam.request_grant[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING
            ERRCODE = '25001',
            MESSAGE = format(
                'a request runs at READ COMMITTED, not %s', current_setting('transaction_isolation')
            ),
            HINT = 'a snapshot older than the request could outrun a revocation; '
                || 'begin the transaction at READ COMMITTED';
    END IF;
    -- Only a context this transaction really opened counts; anything else in the setting
    -- (a value planted at session level, say) is overwritten, not obeyed.
    IF iam.verified_context(current_setting('tracefence.request', true)) IS NOT NULL
        -- During recovery there is no transaction id to take: a transaction-level advisory
        -- lock of this backend's own key marks the request instead, which no setting can
        -- clear. Only a savepoint rolled back over the request releases it.
        OR (pg_is_in_recovery() AND EXISTS (
            SELECT FROM pg_locks AS l
            WHERE
                l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.classid = 1953392230
                AND l.objid = pg_backend_pid() AND l.objsubid = 2
        ))
        OR (
            NOT pg_is_in_recovery() AND pg_current_xact_id_if_assigned() IS NOT NULL
            -- The conformance probe, run by a DBA, sets its tenants up in the transaction it
            -- then opens requests in (and rolls back); an application login is never a member.
            AND NOT pg_has_role(session_user, 'tracefence_owner', 'MEMBER')
        )
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '25001',
            MESSAGE = 'a request must be the first thing its transaction does, and only one is open',
            HINT = 'one transaction serves one request: open it before any write, '
                || 'or commit or roll back first';
    END IF;
    IF credential LIKE 'tfk\_%' THEN
        SELECT k.id INTO principal
        FROM iam.api_keys AS k
        WHERE
            k.secret_hash = sha256(convert_to(credential, 'UTF8'))
            AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > at);
        principal_kind := 'api_key';
        grants := iam.key_grants(principal, at);
    ELSIF credential LIKE 'tfu\_%' THEN
        principal := iam.verify_user_token(credential);
        principal_kind := 'user';
        grants := iam.user_grants(principal, at);
    END IF;
    IF principal IS NULL THEN
        -- One message for every bad credential: say nothing about which check failed.
        RAISE EXCEPTION USING ERRCODE = '28000', MESSAGE = 'invalid credential';
    END IF;
    IF pg_is_in_recovery() THEN
        -- Key ('tfen', this backend), shared and never waited for: a lock another session
        -- holds on it must not stall this request (it would only leave it unmarked).
        PERFORM pg_try_advisory_xact_lock_shared(1953392230, pg_backend_pid());
    ELSE
        -- The context's binding (iam.transaction_identity) is this transaction's id.
        PERFORM pg_current_xact_id();
    END IF;
    PERFORM iam.store_request_context(iam.context_grants(
        jsonb_build_object('version', 3, 'principal', principal, 'kind', principal_kind, 'began_at', at),
        grants
    ));
    RETURN principal;
END
$$;
COMMENT ON FUNCTION iam.begin_request(text) IS
'Verify an API-key secret or a signed user token and fix the request principal for this transaction.';

REVOKE ALL ON FUNCTION iam.user_grants(uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.key_grants(uuid, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.begin_request(text) FROM public;
GRANT EXECUTE ON FUNCTION iam.begin_request(text) TO tracefence_app;

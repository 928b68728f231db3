-- The request context: who the request runs as and the grants it holds, fixed when the
-- request begins. It lives in the transaction-local setting tracefence.request, so it ends
-- with the transaction (commit, rollback or error) and never reaches the next user of a pooled
-- connection. Anyone can write a setting, so the value is signed with a key only the owner can
-- read and bound to this backend and this transaction: a forged, edited or copied value is
-- rejected, never believed.

-- What ties a context to the transaction that opened it. No SET clause, so the planner
-- inlines it into its definer callers, whose search_path is pinned.
CREATE OR REPLACE FUNCTION iam.request_binding()
RETURNS text
LANGUAGE sql
STABLE PARALLEL RESTRICTED
AS $$
    SELECT pg_catalog.pg_backend_pid()::text || ':'
        || ((extract(EPOCH FROM pg_catalog.transaction_timestamp()) * 1000000)::bigint)::text
$$;

-- Sign a context and make it the transaction's. Internal: only definer functions call it.
-- Where the transaction may write, the context is also kept in the backend's row of
-- iam.open_requests, so that statements read it there instead of verifying the signature.
CREATE OR REPLACE FUNCTION iam.store_request_context(context jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound jsonb := context || jsonb_build_object('binding', iam.request_binding());
    payload text := bound::text;
    signed text;
BEGIN
    SELECT payload || '.' || encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, convert_to(payload, 'UTF8')), 'hex')
    INTO STRICT signed
    FROM iam.request_signing_key AS k;
    PERFORM set_config('tracefence.request', signed, true);
    IF NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' THEN
        INSERT INTO iam.open_requests AS o (backend_pid, transaction_id, signed, context)
        VALUES (pg_backend_pid(), pg_current_xact_id(), signed, bound)
        ON CONFLICT (backend_pid) DO UPDATE
            SET transaction_id = excluded.transaction_id, signed = excluded.signed, context = excluded.context;
    END IF;
END
$$;

-- The context a setting value carries if this database signed it for this transaction, else
-- NULL. Never raises: begin_request uses it to tell an open request from a planted value.
-- Every fenced statement runs it, so it works on bytes (text functions count characters, a
-- pass over the value each), and, like request_context, it is neither SECURITY DEFINER nor
-- has a SET clause: each of those costs a switch of user and search_path per call. Only
-- definer functions, whose search_path is pinned, may call it (EXECUTE is revoked).
CREATE OR REPLACE FUNCTION iam.verified_context(raw text)
RETURNS jsonb
LANGUAGE plpgsql
STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    value bytea := convert_to(raw, 'UTF8');
    size integer := octet_length(value);
    payload bytea;
    authentic boolean;
    context jsonb;
BEGIN
    -- payload '.' 64 hex digits
    IF size IS NULL OR size < 66 OR get_byte(value, size - 65) <> 46 THEN
        RETURN NULL;
    END IF;
    payload := substring(value FROM 1 FOR size - 65);
    SELECT encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, payload), 'hex')
        = encode(substring(value FROM size - 63), 'escape')
    INTO STRICT authentic
    FROM iam.request_signing_key AS k;
    IF NOT authentic THEN
        RETURN NULL;
    END IF;
    context := convert_from(payload, 'UTF8')::jsonb;
    IF context ->> 'binding' IS DISTINCT FROM iam.request_binding() THEN
        RETURN NULL;
    END IF;
    RETURN context;
END
$$;

-- The verified context of the open request, or NULL when none is open. A value that is not
-- one this database signed for this transaction raises 28000 instead of being ignored, so a
-- tampering attempt is loud.
CREATE OR REPLACE FUNCTION iam.request_context()
RETURNS jsonb
LANGUAGE plpgsql
STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    raw text := pg_catalog.current_setting('tracefence.request', true);
    opened_in xid8;
    context jsonb;
BEGIN
    IF raw IS NULL OR raw = '' THEN
        RETURN NULL;
    END IF;
    -- The fast path: this transaction opened the request and kept it in the backend's row,
    -- and the setting is still the value it signed. An edited or replaced setting falls
    -- through to verification below, and fails it.
    opened_in := pg_catalog.pg_current_xact_id_if_assigned();
    IF opened_in IS NOT NULL THEN
        SELECT o.context INTO context
        FROM iam.open_requests AS o
        WHERE
            o.backend_pid = pg_catalog.pg_backend_pid()
            AND o.transaction_id = opened_in
            AND o.signed = raw;
        IF FOUND THEN
            RETURN context;
        END IF;
    END IF;
    context := iam.verified_context(raw);
    IF context IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '28000',
            MESSAGE = 'request context is not valid: it was not opened by iam.begin_request '
                || 'in this transaction',
            HINT = 'open a request with iam.begin_request(credential) in this transaction';
    END IF;
    RETURN context;
END
$$;

-- A context holds its grants grouped by role (an API key's scopes count as one role,
-- "api_key"): {"roles": {role: {"permissions": [...], "projects": "{...}", "above": "{...}"}}},
-- where "projects" lists the project-tier resources the role is bound at and "above" the
-- workspaces and organisations. Grouping keeps the signed value small (a user bound at 1,000
-- projects carries 1,000 ids, not 1,000 permission lists) and lets the per-statement accessors
-- use the project ids as they are.

-- Resources at which a context holds `permission` directly (before the cascade).
CREATE OR REPLACE FUNCTION iam.granting_resources(context jsonb, permission text)
RETURNS uuid[]
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT x.id), '{}')
    FROM
        jsonb_each(coalesce(context -> 'roles', '{}')) AS h (role, held),
        unnest((h.held ->> 'projects')::uuid[] || (h.held ->> 'above')::uuid[]) AS x (id)
    WHERE h.held -> 'permissions' ? permission
$$;

-- Add a role binding to the open request (the caller's own new organisation). Never removes one.
CREATE OR REPLACE FUNCTION iam.extend_request(grant_entry jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    context jsonb := iam.request_context();
    role text := grant_entry ->> 'role';
    resource uuid := (grant_entry ->> 'resource')::uuid;
    held jsonb;
    side text;
BEGIN
    IF context IS NULL THEN
        RETURN;
    END IF;
    held := coalesce(
        context -> 'roles' -> role,
        jsonb_build_object('permissions', grant_entry -> 'permissions', 'projects', '{}', 'above', '{}')
    );
    SELECT CASE r.tier WHEN 'project' THEN 'projects' ELSE 'above' END INTO STRICT side
    FROM tenancy.resources AS r WHERE r.id = resource;
    held := jsonb_set(held, ARRAY[side], to_jsonb(((held ->> side)::uuid[] || resource)::text));
    PERFORM iam.store_request_context(
        jsonb_set(context, '{roles}', coalesce(context -> 'roles', '{}') || jsonb_build_object(role, held))
    );
END
$$;

REVOKE ALL ON FUNCTION iam.request_binding() FROM public;
REVOKE ALL ON FUNCTION iam.store_request_context(jsonb) FROM public;
REVOKE ALL ON FUNCTION iam.verified_context(text) FROM public;
REVOKE ALL ON FUNCTION iam.request_context() FROM public;
REVOKE ALL ON FUNCTION iam.granting_resources(jsonb, text) FROM public;
REVOKE ALL ON FUNCTION iam.extend_request(jsonb) FROM public;

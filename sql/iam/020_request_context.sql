-- The request context: who the request runs as and the grants it holds, fixed when the
-- request begins. It lives in the transaction-local setting tracefence.request, so it ends
-- with the transaction (commit, rollback or error) and never reaches the next user of a pooled
-- connection. Anyone can write a setting, so the value is signed with a key only the owner can
-- read and bound to this backend and this transaction: a forged, edited or copied value is
-- rejected, never believed.
--
-- Where the transaction may write, the request is also kept in the backend's row of
-- iam.open_requests (migration 0009): the setting then carries only the signed header
-- (principal, kind, start) and the row the roles, in native arrays, so a fenced statement
-- reads one row instead of verifying and parsing a signature. Read-only transactions and
-- standbys cannot write the row; their setting carries the roles too, signed.
--
-- The roles of a request are iam.held_role values: one per role (an API key's scopes count as
-- one role, "api_key") with the resources it is bound at, project-tier ones apart from
-- workspaces and organisations. Grouping keeps a user bound at 1,000 projects at 1,000 ids.

-- Signature changes of this release (CREATE OR REPLACE cannot change one).
DROP FUNCTION IF EXISTS iam.store_request_context(jsonb);
DROP FUNCTION IF EXISTS iam.granting_resources(jsonb, text);

-- What ties a context to the transaction that opened it: the backend, the transaction's start
-- and its virtual transaction id. The start alone is not enough: every transaction of one
-- multi-statement message starts at the same instant, so a value saved in one could be
-- replayed in the next. The virtual transaction id is unique to each transaction of a backend,
-- read-only ones and those on a standby included. No SET clause, so the planner inlines it
-- into its definer callers, whose search_path is pinned.
CREATE OR REPLACE FUNCTION iam.request_binding()
RETURNS text
LANGUAGE sql
STABLE PARALLEL RESTRICTED
AS $$
    SELECT pg_catalog.pg_backend_pid()::text || ':'
        || ((extract(EPOCH FROM pg_catalog.transaction_timestamp()) * 1000000)::bigint)::text || ':'
        || coalesce((
            SELECT l.virtualxid
            FROM pg_catalog.pg_locks AS l
            WHERE
                l.locktype = 'virtualxid' AND l.pid = pg_catalog.pg_backend_pid()
                AND l.mode = 'ExclusiveLock' AND l.granted
            LIMIT 1
        ), '')
$$;

-- Sign a request's header and make it the transaction's, with its roles. Internal: only
-- definer functions call it.
CREATE OR REPLACE FUNCTION iam.store_request_context(header jsonb, roles iam.held_role[])
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kept boolean := NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off';
    bound jsonb := header || jsonb_build_object('binding', iam.request_binding());
    payload text;
    signed text;
BEGIN
    IF NOT kept THEN
        bound := bound || jsonb_build_object('roles', (
            SELECT coalesce(jsonb_object_agg(h.role, jsonb_build_object(
                'permissions', to_jsonb(h.permissions),
                'projects', h.projects::text,
                'above', h.above::text
            )), '{}')
            FROM unnest(roles) AS h
        ));
    END IF;
    payload := bound::text;
    SELECT payload || '.' || encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, convert_to(payload, 'UTF8')), 'hex')
    INTO STRICT signed
    FROM iam.request_signing_key AS k;
    PERFORM set_config('tracefence.request', signed, true);
    IF kept THEN
        INSERT INTO iam.open_requests AS o (backend_pid, transaction_id, signed, context, roles)
        VALUES (pg_backend_pid(), pg_current_xact_id(), signed, bound, roles)
        ON CONFLICT (backend_pid) DO UPDATE
        SET
            transaction_id = excluded.transaction_id,
            signed = excluded.signed,
            context = excluded.context,
            roles = excluded.roles;
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
    -- Compare digests, not the strings, so the comparison time says nothing about the key.
    SELECT sha256(convert_to(encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, payload), 'hex'), 'UTF8'))
        = sha256(substring(value FROM size - 63))
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

-- The backend's row of iam.open_requests if this transaction opened a request there and the
-- setting is still the value it signed; else no row. Like verified_context, neither SECURITY
-- DEFINER nor SET: only definer functions call it.
CREATE OR REPLACE FUNCTION iam.open_request()
RETURNS SETOF iam.open_requests
LANGUAGE sql
STABLE PARALLEL RESTRICTED
AS $$
    SELECT o.*
    FROM iam.open_requests AS o
    WHERE
        o.backend_pid = pg_catalog.pg_backend_pid()
        AND o.transaction_id = pg_catalog.pg_current_xact_id_if_assigned()
        AND o.signed = pg_catalog.current_setting('tracefence.request', true)
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
    context jsonb;
BEGIN
    IF raw IS NULL OR raw = '' THEN
        RETURN NULL;
    END IF;
    -- The fast path: the backend's row, with nothing to verify. An edited or replaced setting
    -- matches no row and falls through to verification below, and fails it.
    SELECT o.context INTO context FROM iam.open_request() AS o;
    IF FOUND THEN
        RETURN context;
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

-- The roles the open request holds: from the backend's row, or from the verified setting.
CREATE OR REPLACE FUNCTION iam.request_roles()
RETURNS SETOF iam.held_role
LANGUAGE plpgsql
STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    kept iam.held_role[];
BEGIN
    SELECT o.roles INTO kept FROM iam.open_request() AS o;
    IF FOUND THEN
        RETURN QUERY SELECT h.* FROM unnest(kept) AS h;
    ELSE
        RETURN QUERY
        SELECT
            h.key,
            ARRAY(SELECT jsonb_array_elements_text(h.value -> 'permissions')),
            (h.value ->> 'projects')::uuid[],
            (h.value ->> 'above')::uuid[]
        FROM jsonb_each(iam.request_context() -> 'roles') AS h;
    END IF;
END
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
    added iam.held_role;
    tier text;
BEGIN
    IF context IS NULL THEN
        RETURN;
    END IF;
    SELECT r.tier INTO STRICT tier FROM tenancy.resources AS r WHERE r.id = (grant_entry ->> 'resource')::uuid;
    added := ROW(
        grant_entry ->> 'role',
        ARRAY(SELECT jsonb_array_elements_text(grant_entry -> 'permissions')),
        CASE WHEN tier = 'project' THEN ARRAY[(grant_entry ->> 'resource')::uuid] ELSE '{}' END,
        CASE WHEN tier = 'project' THEN '{}' ELSE ARRAY[(grant_entry ->> 'resource')::uuid] END
    );
    PERFORM iam.store_request_context(
        context - 'roles' - 'binding',
        ARRAY(
            SELECT ROW(
                h.role,
                CASE WHEN h.role = added.role THEN added.permissions ELSE h.permissions END,
                h.projects || CASE WHEN h.role = added.role THEN added.projects ELSE '{}' END,
                h.above || CASE WHEN h.role = added.role THEN added.above ELSE '{}' END
            )::iam.held_role
            FROM iam.request_roles() AS h
            UNION ALL
            SELECT added WHERE NOT EXISTS (SELECT FROM iam.request_roles() AS h WHERE h.role = added.role)
        )
    );
END
$$;

REVOKE ALL ON FUNCTION iam.request_binding() FROM public;
REVOKE ALL ON FUNCTION iam.store_request_context(jsonb, iam.held_role[]) FROM public;
REVOKE ALL ON FUNCTION iam.verified_context(text) FROM public;
REVOKE ALL ON FUNCTION iam.open_request() FROM public;
REVOKE ALL ON FUNCTION iam.request_context() FROM public;
REVOKE ALL ON FUNCTION iam.request_roles() FROM public;
REVOKE ALL ON FUNCTION iam.extend_request(jsonb) FROM public;

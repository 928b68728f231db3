-- The request context: who the request runs as and the grants it holds, fixed when the
-- request begins. It lives in the transaction-local setting tracefence.request, so it ends
-- with the transaction (commit, rollback, error or PREPARE TRANSACTION) and never reaches the
-- next user of a pooled connection. Anyone can write a setting, so the value is signed with a
-- key only the owner can read and bound to the transaction that opened it: a forged, edited or
-- copied value is rejected, never believed.
--
-- The context is self-contained: verifying it needs only the signing key (a logged table) and
-- the transaction's own identity, so any backend that can read the key can verify it — a hot
-- standby included. No backend row holds the request, so nothing outlives its transaction and
-- a prepared transaction pins nothing. The accessors of 030_accessors.sql verify it once per
-- statement in the backend that plans the statement; parallel workers receive their verified
-- results as initPlan parameters and never verify anything themselves.
--
-- The grants of a request are iam.request_grant values (migration 0010): one per role and
-- validity window, with the organisations, workspaces and projects it is bound at. The window
-- travels with the grant, so a grant stops at valid_until inside a request already open.

-- Superseded by the self-contained context (0010 dropped the objects they used).
DROP FUNCTION IF EXISTS iam.open_request();
DROP FUNCTION IF EXISTS iam.request_roles();
DROP FUNCTION IF EXISTS iam.extend_request(jsonb);
DROP FUNCTION IF EXISTS iam.request_binding();

-- What ties a context to the one transaction that opened it. On a primary every request has a
-- transaction id (begin_request assigns it), unique for the life of the cluster; with the
-- transaction's start it stays unique across a restore to an earlier point. During recovery
-- there are no transaction ids: the backend, the start and the virtual transaction id, which
-- is unique to each transaction of a backend (the start alone is not: every transaction of
-- one multi-statement message starts at the same instant). No SET clause, so it costs nothing
-- to call from the definer functions that use it, whose search_path is pinned.
CREATE OR REPLACE FUNCTION iam.transaction_identity()
RETURNS text
LANGUAGE plpgsql
STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    xid xid8 := pg_catalog.pg_current_xact_id_if_assigned();
    started text := ((extract(EPOCH FROM pg_catalog.transaction_timestamp()) * 1000000)::bigint)::text;
BEGIN
    IF xid IS NOT NULL THEN
        RETURN 'x' || xid::text || '@' || started;
    END IF;
    RETURN 'v' || pg_catalog.pg_backend_pid()::text || ':' || coalesce((
        SELECT l.virtualxid
        FROM pg_catalog.pg_locks AS l
        WHERE
            l.locktype = 'virtualxid' AND l.pid = pg_catalog.pg_backend_pid()
            AND l.mode = 'ExclusiveLock' AND l.granted
        LIMIT 1
    ), '') || '@' || started;
END
$$;
COMMENT ON FUNCTION iam.transaction_identity() IS
'The identity a request context is bound to: transaction id (primary) or backend and virtual id.';

-- Sign a request context and make it the transaction's. Internal: only definer functions, whose
-- search_path is pinned, call it (EXECUTE is revoked), so it needs neither SECURITY DEFINER nor
-- a SET clause, each a cost per call.
CREATE OR REPLACE FUNCTION iam.store_request_context(context jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    payload text := (context || jsonb_build_object('binding', iam.transaction_identity()))::text;
    signed text;
BEGIN
    SELECT payload || '.' || encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, convert_to(payload, 'UTF8')), 'hex')
    INTO STRICT signed
    FROM iam.request_signing_key AS k;
    PERFORM set_config('tracefence.request', signed, true);
END
$$;

-- The context a setting value carries if this database signed it for this transaction, else
-- NULL. Never raises: begin_request uses it to tell an open request from a planted value.
-- Every fenced statement runs it, so it works on bytes (text functions count characters, a
-- pass over the value each), and it is neither SECURITY DEFINER nor has a SET clause: each
-- of those costs a switch of user and search_path per call. Only definer functions, whose
-- search_path is pinned, may call it (EXECUTE is revoked).
CREATE OR REPLACE FUNCTION iam.verified_context(raw text)
RETURNS jsonb
LANGUAGE plpgsql
STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    value bytea := pg_catalog.convert_to(raw, 'UTF8');
    size integer := pg_catalog.octet_length(value);
    payload bytea;
    k record;
    context jsonb;
BEGIN
    -- payload '.' 64 hex digits
    IF size IS NULL OR size < 66 OR pg_catalog.get_byte(value, size - 65) <> 46 THEN
        RETURN NULL;
    END IF;
    payload := pg_catalog.substr(value, 1, size - 65);
    SELECT s.inner_pad, s.outer_pad INTO STRICT k FROM iam.request_signing_key AS s;
    -- HMAC-SHA256 (iam.hmac_sha256, written out: plain expressions skip the executor). The
    -- digests are compared, not the strings, so the time says nothing about the key.
    IF pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(
        pg_catalog.sha256(k.outer_pad || pg_catalog.sha256(k.inner_pad || payload)), 'hex'
    ), 'UTF8')) <> pg_catalog.sha256(pg_catalog.substr(value, size - 63))
    THEN
        RETURN NULL;
    END IF;
    context := pg_catalog.convert_from(payload, 'UTF8')::jsonb;
    IF context ->> 'binding' IS DISTINCT FROM iam.transaction_identity() THEN
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
    context jsonb;
BEGIN
    IF raw IS NULL OR raw = '' THEN
        RETURN NULL;
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

-- Does a grant of the context (compact form) still hold at `at_us` (epoch microseconds)? The
-- one definition of a grant's window, used by request_grants and iam.permitted_scopes; an SQL
-- expression, so it is inlined where it is used.
CREATE OR REPLACE FUNCTION iam.grant_holds(held jsonb, at_us bigint)
RETURNS boolean
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT NOT held ? 'u' OR (held ->> 'u')::bigint > at_us
$$;

-- The grants of the open request whose window holds at `at` (every one for NULL; none with
-- no request open).
-- In the context each grant is compact: role, permissions and scopes as array literals, the
-- end of its window as epoch microseconds, so a statement parses only what it uses. A grant
-- whose window had not begun when the request began is not in it: only expiry reaches a
-- request in flight (SPEC §2).
CREATE OR REPLACE FUNCTION iam.request_grants(at timestamptz)
RETURNS SETOF iam.request_grant
LANGUAGE sql
STABLE PARALLEL RESTRICTED
AS $$
    SELECT
        g ->> 'r',
        (g ->> 'p')::text [],
        (g ->> 's')::uuid [],
        pg_catalog.to_timestamp((g ->> 'u')::double precision / 1000000)
    FROM pg_catalog.jsonb_array_elements(iam.request_context() -> 'grants') AS g
    WHERE at IS NULL OR iam.grant_holds(g, (extract(EPOCH FROM at) * 1000000)::bigint)
$$;

-- A grant in the context's compact form (see request_grants).
CREATE OR REPLACE FUNCTION iam.compact_grant(g iam.request_grant)
RETURNS jsonb
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'r', g.role,
        'p', g.permissions::text,
        's', g.scopes::text,
        'u', (extract(EPOCH FROM g.valid_until) * 1000000)::bigint
    ))
$$;

-- A context with its grants: the compact grants, and for each permission the positions of the
-- grants that carry it (a JSON object of array literals), so an accessor reads only those.
CREATE OR REPLACE FUNCTION iam.context_grants(header jsonb, grants iam.request_grant[])
RETURNS jsonb
LANGUAGE plpgsql
STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
-- PL/pgSQL with a generic plan, not LANGUAGE sql: a request builds its context once, in a new
-- transaction, where an SQL function would be planned again each time.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN header || jsonb_build_object(
        'grants', coalesce((
            SELECT jsonb_agg(
                iam.compact_grant(ROW(g.role, g.permissions, g.scopes, g.valid_until)::iam.request_grant)
                ORDER BY g.i
            )
            FROM unnest(grants) WITH ORDINALITY AS g (role, permissions, scopes, valid_until, i)
        ), '[]'),
        'by', coalesce((
            SELECT jsonb_object_agg(p.permission, p.positions)
            FROM (
                SELECT x.permission, array_agg(g.i - 1 ORDER BY g.i)::text AS positions
                FROM unnest(grants) WITH ORDINALITY AS g (role, permissions, scopes, valid_until, i)
                CROSS JOIN LATERAL unnest(g.permissions) AS x (permission)
                GROUP BY x.permission
            ) AS p
        ), '{}')
    );
END
$$;

-- Add a grant to the open request (the caller's own new organisation). Never removes one.
CREATE OR REPLACE FUNCTION iam.extend_request(added iam.request_grant)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    context jsonb := iam.request_context();
BEGIN
    IF context IS NULL THEN
        RETURN;
    END IF;
    PERFORM iam.store_request_context(iam.context_grants(
        context - 'binding' - 'grants' - 'by',
        ARRAY(SELECT g FROM iam.request_grants(NULL) AS g) || added
    ));
END
$$;

REVOKE ALL ON FUNCTION iam.transaction_identity() FROM public;
REVOKE ALL ON FUNCTION iam.store_request_context(jsonb) FROM public;
REVOKE ALL ON FUNCTION iam.verified_context(text) FROM public;
REVOKE ALL ON FUNCTION iam.request_context() FROM public;
REVOKE ALL ON FUNCTION iam.grant_holds(jsonb, bigint) FROM public;
REVOKE ALL ON FUNCTION iam.request_grants(timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.compact_grant(iam.request_grant) FROM public;
REVOKE ALL ON FUNCTION iam.context_grants(jsonb, iam.request_grant[]) FROM public;
REVOKE ALL ON FUNCTION iam.extend_request(iam.request_grant) FROM public;

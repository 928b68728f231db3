-- The request context: who the request runs as and the grants it holds, fixed when the
-- request begins. It lives in the transaction-local setting tracefence.request, so it ends
-- with the transaction (commit, rollback or error) and never reaches the next user of a pooled
-- connection. Anyone can write a setting, so the value is signed with a key only the owner can
-- read and bound to this backend and this transaction: a forged, edited or copied value is
-- rejected, never believed.

-- What ties a context to the transaction that opened it.
CREATE OR REPLACE FUNCTION iam.request_binding()
RETURNS text
LANGUAGE sql
STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_backend_pid()::text || ':'
        || ((extract(EPOCH FROM transaction_timestamp()) * 1000000)::bigint)::text
$$;

-- Sign a context and make it the transaction's. Internal: only definer functions call it.
CREATE OR REPLACE FUNCTION iam.store_request_context(context jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload text := (context || jsonb_build_object('binding', iam.request_binding()))::text;
    signature text;
BEGIN
    SELECT encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, convert_to(payload, 'UTF8')), 'hex')
    INTO STRICT signature
    FROM iam.request_signing_key AS k;
    PERFORM set_config('tracefence.request', payload || '.' || signature, true);
END
$$;

-- The context a setting value carries if this database signed it for this transaction, else
-- NULL. Never raises: begin_request uses it to tell an open request from a planted value.
CREATE OR REPLACE FUNCTION iam.verified_context(raw text)
RETURNS jsonb
LANGUAGE plpgsql
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload text := left(raw, -65);
    expected text;
    context jsonb;
BEGIN
    IF raw IS NULL OR length(raw) < 66 OR substr(raw, length(raw) - 64, 1) <> '.' THEN
        RETURN NULL;
    END IF;
    SELECT encode(iam.hmac_sha256(k.inner_pad, k.outer_pad, convert_to(payload, 'UTF8')), 'hex')
    INTO STRICT expected
    FROM iam.request_signing_key AS k;
    -- Compare digests, not the strings, so the comparison time says nothing about the key.
    IF sha256(convert_to(right(raw, 64), 'UTF8')) <> sha256(convert_to(expected, 'UTF8')) THEN
        RETURN NULL;
    END IF;
    context := payload::jsonb;
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
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := current_setting('tracefence.request', true);
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

-- Resources at which the open request holds `permission` directly (before the cascade).
CREATE OR REPLACE FUNCTION iam.granting_resources(context jsonb, permission text)
RETURNS uuid[]
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT (g ->> 'resource')::uuid), '{}')
    FROM jsonb_array_elements(coalesce(context -> 'grants', '[]')) AS g
    WHERE g -> 'permissions' ? permission
$$;

-- Add a grant to the open request (the caller's own new organisation). Never removes one.
CREATE OR REPLACE FUNCTION iam.extend_request(grant_entry jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    context jsonb := iam.request_context();
BEGIN
    IF context IS NOT NULL THEN
        PERFORM iam.store_request_context(
            jsonb_set(context, '{grants}', (context -> 'grants') || jsonb_build_array(grant_entry))
        );
    END IF;
END
$$;

REVOKE ALL ON FUNCTION iam.request_binding() FROM public;
REVOKE ALL ON FUNCTION iam.store_request_context(jsonb) FROM public;
REVOKE ALL ON FUNCTION iam.verified_context(text) FROM public;
REVOKE ALL ON FUNCTION iam.request_context() FROM public;
REVOKE ALL ON FUNCTION iam.granting_resources(jsonb, text) FROM public;
REVOKE ALL ON FUNCTION iam.extend_request(jsonb) FROM public;

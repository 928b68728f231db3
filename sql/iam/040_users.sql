-- Users and the secret their tokens are signed with: the back office (tracefence_service)
-- manages both; the application role can neither read the secret nor create users.

CREATE OR REPLACE FUNCTION iam.create_user(email text, display_name text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    user_id uuid := gen_random_uuid();
BEGIN
    IF email IS NULL OR email !~ '^[^@\s]+@[^@\s]+$' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid email address: %L', email);
    END IF;
    IF display_name IS NULL OR length(display_name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = 'display name must be 1 to 200 characters';
    END IF;
    IF EXISTS (SELECT FROM iam.users AS u WHERE u.email = create_user.email) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23505', MESSAGE = format('a user with email %s already exists', email);
    END IF;
    INSERT INTO iam.principals (id, kind) VALUES (user_id, 'user');
    INSERT INTO iam.users (id, email, display_name) VALUES (user_id, email, display_name);
    RETURN user_id;
END
$$;
COMMENT ON FUNCTION iam.create_user(text, text) IS 'Back office: create a user principal.';

CREATE OR REPLACE FUNCTION iam.set_token_secret(secret bytea)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF secret IS NULL OR length(secret) < 32 THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023', MESSAGE = 'the token secret must be at least 32 bytes';
    END IF;
    INSERT INTO iam.token_secret (inner_pad, outer_pad, set_at)
    SELECT p.inner_pad, p.outer_pad, now() FROM iam.hmac_pads(secret) AS p
    ON CONFLICT (singleton) DO UPDATE
        SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad, set_at = excluded.set_at;
END
$$;
COMMENT ON FUNCTION iam.set_token_secret(bytea) IS
'Back office: set the secret user tokens are signed with (stored as HMAC pads, owner-only).';

-- The user a token asserts, or NULL when the token is not one signed with the secret, has
-- expired, or names no active user. Tokens: tfu_<base64url JSON {"sub","exp"}>.<base64url MAC>,
-- the MAC being HMAC-SHA256 over everything before the dot.
CREATE OR REPLACE FUNCTION iam.verify_user_token(token text)
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    signed text := split_part(token, '.', 1);
    mac text := split_part(token, '.', 2);
    body text := substr(split_part(token, '.', 1), 5);
    expected text;
    claims jsonb;
    user_id uuid;
BEGIN
    IF token !~ '^tfu_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$' THEN
        RETURN NULL;
    END IF;
    SELECT rtrim(translate(encode(
        iam.hmac_sha256(s.inner_pad, s.outer_pad, convert_to(signed, 'UTF8')), 'base64'
    ), '+/', '-_'), '=')
    INTO expected
    FROM iam.token_secret AS s;
    IF expected IS NULL OR sha256(convert_to(mac, 'UTF8')) <> sha256(convert_to(expected, 'UTF8')) THEN
        RETURN NULL;
    END IF;
    BEGIN
        claims := convert_from(decode(
            translate(body, '-_', '+/') || repeat('=', (4 - length(body) % 4) % 4), 'base64'
        ), 'UTF8')::jsonb;
        user_id := (claims ->> 'sub')::uuid;
    EXCEPTION WHEN OTHERS THEN
        RETURN NULL;
    END;
    IF jsonb_typeof(claims -> 'exp') IS DISTINCT FROM 'number'
        OR (claims ->> 'exp')::numeric <= extract(EPOCH FROM clock_timestamp())
    THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT u.id FROM iam.users AS u WHERE u.id = user_id AND u.disabled_at IS NULL);
END
$$;

REVOKE ALL ON FUNCTION iam.create_user(text, text) FROM public;
REVOKE ALL ON FUNCTION iam.set_token_secret(bytea) FROM public;
REVOKE ALL ON FUNCTION iam.verify_user_token(text) FROM public;
GRANT EXECUTE ON FUNCTION iam.create_user(text, text) TO tracefence_service;
GRANT EXECUTE ON FUNCTION iam.set_token_secret(bytea) TO tracefence_service;

-- HMAC-SHA256 built on core sha256(): no pgcrypto, so the package installs on managed servers.

-- The two pads of RFC 2104 for a key; stored instead of the key so signing is two hashes.
CREATE OR REPLACE FUNCTION iam.hmac_pads(
    secret bytea, OUT inner_pad bytea, OUT outer_pad bytea
)
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT
        decode(string_agg(lpad(to_hex((get_byte(k.key, i) | 54) - (get_byte(k.key, i) & 54)), 2, '0'), '' ORDER BY i), 'hex'),
        decode(string_agg(lpad(to_hex((get_byte(k.key, i) | 92) - (get_byte(k.key, i) & 92)), 2, '0'), '' ORDER BY i), 'hex')
    FROM
        (SELECT CASE WHEN length(secret) > 64 THEN sha256(secret) ELSE secret END AS short) AS s,
        LATERAL (SELECT s.short || decode(repeat('00', 64 - length(s.short)), 'hex') AS key) AS k,
        generate_series(0, 63) AS i
$$;
COMMENT ON FUNCTION iam.hmac_pads(bytea) IS 'RFC 2104 inner and outer pads of an HMAC-SHA256 key.';

-- No SET clause, so the planner can inline it into its (definer, search_path-pinned) callers:
-- it runs on every statement of a request.
CREATE OR REPLACE FUNCTION iam.hmac_sha256(inner_pad bytea, outer_pad bytea, message bytea)
RETURNS bytea
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.sha256(outer_pad || pg_catalog.sha256(inner_pad || message))
$$;
COMMENT ON FUNCTION iam.hmac_sha256(bytea, bytea, bytea) IS 'HMAC-SHA256 from precomputed pads.';

REVOKE ALL ON FUNCTION iam.hmac_pads(bytea) FROM public;
REVOKE ALL ON FUNCTION iam.hmac_sha256(bytea, bytea, bytea) FROM public;

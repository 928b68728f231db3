-- Input checks shared by the tenancy calls: 22023 with a message naming the bad value.
CREATE OR REPLACE FUNCTION tenancy.require_slug(kind text, slug text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF slug IS NULL OR slug !~ '^[a-z0-9][a-z0-9-]{0,62}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('invalid %s: %L', kind, slug),
            HINT = 'use 1 to 63 characters: lowercase letters, digits and hyphens, not starting with a hyphen';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.require_name(name text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR length(name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'name must be 1 to 200 characters';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION tenancy.require_slug(text, text) FROM public;
REVOKE ALL ON FUNCTION tenancy.require_name(text) FROM public;

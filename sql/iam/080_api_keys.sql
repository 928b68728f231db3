-- API keys: machine principals bound to one resource, holding a set of scopes there and
-- below. The secret is shown once; only its sha256 is stored. Creating a key or editing its
-- scopes needs api-keys:write at the key's resource and every scope held by the caller there.

-- Validate a scope list; 22023 names the first bad entry. Returns it sorted and de-duplicated.
CREATE OR REPLACE FUNCTION iam.valid_scopes(scopes text[])
RETURNS text[]
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    IF scopes IS NULL OR cardinality(scopes) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'an API key needs at least one scope';
    END IF;
    SELECT min(coalesce(s.scope, '<null>')) INTO bad
    FROM unnest(scopes) AS s (scope)
    WHERE NOT EXISTS (SELECT FROM iam.permissions AS p WHERE p.name = s.scope);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown permission: %L', bad);
    END IF;
    SELECT min(p.name) INTO bad
    FROM iam.permissions AS p
    WHERE p.name = ANY(scopes) AND NOT p.key_allowed;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('permission %s cannot be given to an API key', bad);
    END IF;
    RETURN ARRAY(SELECT DISTINCT s FROM unnest(scopes) AS s ORDER BY s);
END
$$;

-- Raise 42501 unless the open request holds api-keys:write and every scope at the resource.
CREATE OR REPLACE FUNCTION iam.require_key_authority(resource uuid, scopes text[])
RETURNS uuid
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor uuid := iam.require_permission(resource, 'api-keys:write');
    missing text;
BEGIN
    SELECT min(s) INTO missing FROM unnest(scopes) AS s
    WHERE NOT s = ANY(iam.request_permissions(resource));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format(
                'scope %s needs permission %s at resource %s, which the caller does not hold',
                missing, missing, resource
            ),
            DETAIL = format('missing permission: %s', missing);
    END IF;
    RETURN actor;
END
$$;

CREATE OR REPLACE FUNCTION iam.create_api_key(
    name text, resource uuid, scopes text[], expires_at timestamptz DEFAULT NULL
)
RETURNS TABLE (key_id uuid, secret text, audit_event jsonb)
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    clean_scopes text[] := iam.valid_scopes(scopes);
    actor uuid;
BEGIN
    IF name IS NULL OR length(name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'API key name must be 1 to 200 characters';
    END IF;
    IF expires_at IS NOT NULL AND expires_at <= statement_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'expires_at must be in the future';
    END IF;
    actor := iam.require_key_authority(resource, clean_scopes);
    PERFORM FROM tenancy.resources AS r WHERE r.id = resource FOR SHARE;
    IF NOT FOUND THEN
        -- Deleted while this call waited for it: refused as a resource that does not exist.
        PERFORM iam.require_key_authority(resource, clean_scopes);
    END IF;
    key_id := gen_random_uuid();
    -- 244 random bits from two v4 UUIDs; tfk_ tells begin_request it is a key.
    secret := 'tfk_' || encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex');
    INSERT INTO iam.principals (id, kind) VALUES (key_id, 'api_key');
    INSERT INTO iam.api_keys (id, name, resource_id, secret_hash, created_by, expires_at)
    VALUES (
        key_id, create_api_key.name, resource, sha256(convert_to(secret, 'UTF8')), actor,
        create_api_key.expires_at
    );
    INSERT INTO iam.api_key_scopes (key_id, permission)
    SELECT create_api_key.key_id, s FROM unnest(clean_scopes) AS s;
    SELECT to_jsonb(c.*) INTO audit_event
    FROM audit.record_rbac_changes(
        create_api_key.key_id, '{}',
        iam.effective_sets(create_api_key.key_id, resource, at), 'key_created',
        at, (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
        jsonb_build_object('name', name, 'resource', resource, 'scopes', to_jsonb(clean_scopes))
    ) AS c
    WHERE c.scope_id = resource;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION iam.create_api_key(text, uuid, text[], timestamptz) IS
'Create an API key at a resource; the secret is returned once and stored only as a hash.';

-- Lock a live key and check the caller may change it with `scopes`; returns its resource.
CREATE OR REPLACE FUNCTION iam.lock_api_key(key_id uuid, scopes text[])
RETURNS uuid
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_key iam.api_keys;
    allowed boolean;
BEGIN
    PERFORM iam.require_request();
    SELECT k.* INTO found_key FROM iam.api_keys AS k WHERE k.id = key_id;
    allowed := found_key.id IS NOT NULL
        AND 'api-keys:write' = ANY(iam.request_permissions(found_key.resource_id));
    IF allowed THEN
        -- Locked only once the caller may manage it (no tenant locks another's key), then read
        -- again: a key deleted while this call waited (its project went) is gone.
        SELECT k.* INTO found_key FROM iam.api_keys AS k WHERE k.id = key_id FOR UPDATE;
    END IF;
    -- Missing, gone, or not the caller's to manage: one error naming only the id it passed.
    IF NOT allowed OR found_key.id IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format('permission api-keys:write is required for API key %s', key_id),
            DETAIL = 'missing permission: api-keys:write';
    END IF;
    PERFORM iam.require_key_authority(found_key.resource_id, scopes);
    RETURN found_key.resource_id;
END
$$;

CREATE OR REPLACE FUNCTION iam.set_api_key_scopes(key_id uuid, scopes text[])
RETURNS audit.events
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    clean_scopes text[] := iam.valid_scopes(scopes);
    resource uuid := iam.lock_api_key(key_id, clean_scopes);
    before jsonb;
    event audit.events;
BEGIN
    IF EXISTS (SELECT FROM iam.api_keys AS k WHERE k.id = key_id AND k.revoked_at IS NOT NULL) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('API key %s is revoked', key_id);
    END IF;
    PERFORM iam.sweep_principal(key_id, iam.organisation_of(resource));
    before := iam.effective_sets(key_id, resource, at);
    DELETE FROM iam.api_key_scopes AS s
    WHERE s.key_id = set_api_key_scopes.key_id AND NOT s.permission = ANY(clean_scopes);
    INSERT INTO iam.api_key_scopes (key_id, permission)
    SELECT set_api_key_scopes.key_id, s FROM unnest(clean_scopes) AS s
    ON CONFLICT DO NOTHING;
    SELECT c.* INTO event
    FROM audit.record_rbac_changes(
        key_id, before, iam.effective_sets(key_id, resource, at),
        'key_scopes_edited', at, (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
        jsonb_build_object('scopes', to_jsonb(clean_scopes))
    ) AS c
    WHERE c.scope_id = resource;
    RETURN event;
END
$$;
COMMENT ON FUNCTION iam.set_api_key_scopes(uuid, text[]) IS 'Replace the scopes of an API key.';

CREATE OR REPLACE FUNCTION iam.revoke_api_key(key_id uuid)
RETURNS audit.events
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    resource uuid := iam.lock_api_key(key_id, '{}');
    before jsonb;
    event audit.events;
BEGIN
    PERFORM iam.sweep_principal(key_id, iam.organisation_of(resource));
    before := iam.effective_sets(key_id, resource, at);
    UPDATE iam.api_keys AS k SET revoked_at = at
    WHERE k.id = key_id AND k.revoked_at IS NULL;
    SELECT c.* INTO event
    FROM audit.record_rbac_changes(
        key_id, before, iam.effective_sets(key_id, resource, at),
        'key_revoked', at, (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind
    ) AS c
    WHERE c.scope_id = resource;
    RETURN event;
END
$$;
COMMENT ON FUNCTION iam.revoke_api_key(uuid) IS
'Revoke an API key: from the next request on it authenticates nothing.';

REVOKE ALL ON FUNCTION iam.valid_scopes(text[]) FROM public;
REVOKE ALL ON FUNCTION iam.require_key_authority(uuid, text[]) FROM public;
REVOKE ALL ON FUNCTION iam.lock_api_key(uuid, text[]) FROM public;
REVOKE ALL ON FUNCTION iam.create_api_key(text, uuid, text[], timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.set_api_key_scopes(uuid, text[]) FROM public;
REVOKE ALL ON FUNCTION iam.revoke_api_key(uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.create_api_key(text, uuid, text[], timestamptz) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.set_api_key_scopes(uuid, text[]) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.revoke_api_key(uuid) TO tracefence_app;

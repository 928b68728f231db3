-- depends: 0002_tenancy
-- Principals, the permission catalog, roles, role bindings, API keys and the secrets that
-- make a request context unforgeable.
SET LOCAL ROLE tracefence_owner;

CREATE SCHEMA iam;
COMMENT ON SCHEMA iam IS 'Principals, roles, bindings, API keys and the request context.';

CREATE TABLE iam.permissions (
    name text PRIMARY KEY CHECK (name ~ '^[a-z-]+(:[a-z-]+)+$'),
    description text NOT NULL,
    tiers text[] NOT NULL CHECK (tiers <@ ARRAY['organisation', 'workspace', 'project']),
    -- API keys may carry any permission except members:*, api-keys:*, *:manage, org:manage.
    key_allowed boolean NOT NULL
);
COMMENT ON TABLE iam.permissions IS 'The permission catalog: data, not code.';

CREATE TABLE iam.roles (
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    tier text NOT NULL CHECK (tier IN ('organisation', 'workspace', 'project')),
    description text NOT NULL,
    UNIQUE (name, tier)
);
COMMENT ON TABLE iam.roles IS 'Roles; each is bound at a resource of its own tier.';

CREATE TABLE iam.role_permissions (
    role text NOT NULL REFERENCES iam.roles (name) ON DELETE CASCADE,
    permission text NOT NULL REFERENCES iam.permissions (name),
    PRIMARY KEY (role, permission)
);
COMMENT ON TABLE iam.role_permissions IS 'Which permissions each role carries.';

CREATE TABLE iam.principals (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL CHECK (kind IN ('user', 'api_key')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, kind)
);
COMMENT ON TABLE iam.principals IS 'Users and API keys: whoever a request can run as.';

CREATE TABLE iam.users (
    id uuid PRIMARY KEY,
    kind text NOT NULL DEFAULT 'user' CHECK (kind = 'user'),
    email text NOT NULL UNIQUE CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    disabled_at timestamptz,
    FOREIGN KEY (id, kind) REFERENCES iam.principals (id, kind) ON DELETE CASCADE
);
COMMENT ON TABLE iam.users IS 'People; the application asserts which user calls with a signed token.';

CREATE TABLE iam.api_keys (
    id uuid PRIMARY KEY,
    kind text NOT NULL DEFAULT 'api_key' CHECK (kind = 'api_key'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    resource_id uuid NOT NULL REFERENCES tenancy.resources (id) ON DELETE CASCADE,
    -- sha256 of the whole secret; the secret itself is shown once and never stored.
    secret_hash bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_by uuid REFERENCES iam.principals (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    FOREIGN KEY (id, kind) REFERENCES iam.principals (id, kind) ON DELETE CASCADE
);
CREATE INDEX api_keys_resource_idx ON iam.api_keys (resource_id);
COMMENT ON TABLE iam.api_keys IS 'Machine principals bound to one resource with narrow scopes.';

CREATE TABLE iam.api_key_scopes (
    key_id uuid NOT NULL REFERENCES iam.api_keys (id) ON DELETE CASCADE,
    permission text NOT NULL REFERENCES iam.permissions (name),
    PRIMARY KEY (key_id, permission)
);
COMMENT ON TABLE iam.api_key_scopes IS 'The permissions an API key holds at its resource and below.';

CREATE TABLE iam.role_bindings (
    principal_id uuid NOT NULL REFERENCES iam.users (id) ON DELETE CASCADE,
    resource_id uuid NOT NULL,
    tier text NOT NULL,
    role text NOT NULL,
    valid_from timestamptz,
    valid_until timestamptz,
    granted_by uuid REFERENCES iam.principals (id) ON DELETE SET NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    -- At most one role per principal per resource: binding another replaces it.
    PRIMARY KEY (principal_id, resource_id),
    -- A role is bound only at a resource of its own tier.
    FOREIGN KEY (resource_id, tier) REFERENCES tenancy.resources (id, tier) ON DELETE CASCADE,
    FOREIGN KEY (role, tier) REFERENCES iam.roles (name, tier),
    CHECK (valid_until > valid_from)
);
CREATE INDEX role_bindings_resource_idx ON iam.role_bindings (resource_id);
COMMENT ON TABLE iam.role_bindings IS
'Role of a user at a resource, optionally for a window (time-bounded grant).';

-- Signs request contexts. Generated here, readable by the owner only: the application role
-- can neither read it nor forge a context without it. Stored as the two HMAC pads.
CREATE TABLE iam.request_signing_key (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO iam.request_signing_key (inner_pad, outer_pad)
SELECT
    decode(
        string_agg(
            lpad(to_hex((get_byte(k.key, i) | 54) - (get_byte(k.key, i) & 54)), 2, '0'), '' ORDER BY i
        ),
        'hex'
    ) AS inner_pad,
    decode(
        string_agg(
            lpad(to_hex((get_byte(k.key, i) | 92) - (get_byte(k.key, i) & 92)), 2, '0'), '' ORDER BY i
        ),
        'hex'
    ) AS outer_pad
FROM
    (
        SELECT
            uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
            || decode(repeat('00', 32), 'hex') AS key
    ) AS k,
    generate_series(0, 63) AS i;

-- The secret user tokens are signed with, set by tracefence_service.
CREATE TABLE iam.token_secret (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64),
    set_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE iam.permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.permissions FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.roles FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.role_permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.role_permissions FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.principals ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.principals FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.users FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.api_key_scopes ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.api_key_scopes FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.role_bindings ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.role_bindings FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.request_signing_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.request_signing_key FORCE ROW LEVEL SECURITY;
ALTER TABLE iam.token_secret ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.token_secret FORCE ROW LEVEL SECURITY;

REVOKE ALL ON SCHEMA iam FROM public;

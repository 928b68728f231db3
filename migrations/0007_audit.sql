-- depends: 0006_installed_sql
-- The audit log of effective-permission changes (SPEC §3). Append-only for every role but
-- the retention purge: the table, its schema, its guard trigger and the purge function belong
-- to tracefence_audit, a role nobody logs in as, so not even tracefence_owner can alter the
-- table, disable its triggers or redefine the guard. The owner may only INSERT and SELECT.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tracefence_audit') THEN
        CREATE ROLE tracefence_audit NOLOGIN NOBYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB;
    END IF;
    -- A non-superuser migrator must be able to SET ROLE to create the audit objects.
    IF NOT pg_catalog.pg_has_role(current_user, 'tracefence_audit', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT tracefence_audit TO %I', current_user);
    END IF;
    EXECUTE pg_catalog.format('GRANT CREATE ON DATABASE %I TO tracefence_audit', current_database());
END
$roles$;

SET LOCAL ROLE tracefence_audit;

CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS 'Append-only audit log; owned by tracefence_audit, not by the package owner.';

CREATE TABLE audit.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    event_type text NOT NULL CHECK (event_type IN ('rbac_grant', 'environment_policy')),
    -- Who made the change: a request principal, or NULL for the back office ('service') and
    -- the expiry sweep ('system').
    actor_id uuid,
    actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'api_key', 'service', 'system')),
    -- Whose effective permission set changed (rbac_grant only).
    principal_id uuid,
    principal_kind text CHECK (principal_kind IN ('user', 'api_key')),
    -- The scope, with its ancestors as they were: no foreign keys, rows outlive what they name.
    scope_id uuid NOT NULL,
    scope_tier text NOT NULL CHECK (scope_tier IN ('organisation', 'workspace', 'project')),
    organisation_id uuid NOT NULL,
    workspace_id uuid,
    project_id uuid,
    prior_permissions text[],
    new_permissions text[],
    cause text NOT NULL CHECK (cause IN (
        'binding_created', 'binding_changed', 'binding_removed', 'binding_expired',
        'binding_started', 'key_created', 'key_scopes_edited', 'key_revoked', 'key_expired',
        'principal_removed', 'workspace_created', 'workspace_deleted', 'project_created',
        'project_deleted', 'environment_flipped'
    )),
    detail jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT events_rbac_shape CHECK (
        event_type <> 'rbac_grant' OR (
            principal_id IS NOT NULL AND principal_kind IS NOT NULL
            AND prior_permissions IS NOT NULL AND new_permissions IS NOT NULL
            AND prior_permissions IS DISTINCT FROM new_permissions
        )
    ),
    CONSTRAINT events_actor_shape CHECK ((actor_kind IN ('user', 'api_key')) = (actor_id IS NOT NULL))
);
CREATE INDEX events_scope_idx ON audit.events (scope_id, occurred_at DESC);
CREATE INDEX events_organisation_idx ON audit.events (organisation_id, occurred_at DESC);
CREATE INDEX events_principal_idx ON audit.events (principal_id, occurred_at DESC);
COMMENT ON TABLE audit.events IS
'One row per change of a principal''s effective permission set at a scope, and per is_production flip.';

-- The guard: no UPDATE ever; DELETE only of rows past the five-year retention; no TRUNCATE.
CREATE FUNCTION audit.refuse_tampering()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.occurred_at < statement_timestamp() - interval '5 years' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = '42501',
        MESSAGE = format('audit.events is append-only: %s is not allowed', TG_OP),
        HINT = 'rows older than five years are removed by audit.purge_expired()';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON audit.events
FOR EACH ROW EXECUTE FUNCTION audit.refuse_tampering();
CREATE TRIGGER events_no_recent_delete BEFORE DELETE ON audit.events
FOR EACH ROW EXECUTE FUNCTION audit.refuse_tampering();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_tampering();

CREATE FUNCTION audit.purge_expired()
RETURNS integer
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH purged AS (
        DELETE FROM audit.events AS e
        WHERE e.occurred_at < statement_timestamp() - interval '5 years'
        RETURNING 1
    )

    SELECT count(*)::integer FROM purged
$$;
COMMENT ON FUNCTION audit.purge_expired() IS
'Delete audit rows older than five years; returns how many. The only way rows leave.';

ALTER TABLE audit.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit.events FORCE ROW LEVEL SECURITY;
-- Even the audit role sees and deletes only what retention allows.
CREATE POLICY events_retention ON audit.events
FOR ALL TO tracefence_audit
USING (occurred_at < statement_timestamp() - interval '5 years');

REVOKE ALL ON SCHEMA audit FROM public;
REVOKE ALL ON FUNCTION audit.refuse_tampering() FROM public;
REVOKE ALL ON FUNCTION audit.purge_expired() FROM public;
GRANT USAGE, CREATE ON SCHEMA audit TO tracefence_owner;
GRANT USAGE ON SCHEMA audit TO tracefence_app, tracefence_service;
GRANT SELECT, INSERT ON audit.events TO tracefence_owner;
GRANT EXECUTE ON FUNCTION audit.purge_expired() TO tracefence_service;

RESET ROLE;
SET LOCAL ROLE tracefence_owner;

-- The sweep records each expiry (and each deferred start) once.
ALTER TABLE iam.role_bindings
ADD COLUMN expiry_recorded_at timestamptz,
ADD COLUMN start_recorded_at timestamptz;
ALTER TABLE iam.api_keys ADD COLUMN expiry_recorded_at timestamptz;
CREATE INDEX role_bindings_valid_until_idx ON iam.role_bindings (valid_until)
WHERE valid_until IS NOT NULL AND expiry_recorded_at IS NULL;

RESET ROLE;
-- A non-superuser migrator needed tracefence_audit only to create the objects above: give it
-- back, so that nobody can later act as the owner of the audit log.
DO $revoke$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        EXECUTE pg_catalog.format('REVOKE tracefence_audit FROM %I', current_user);
    END IF;
END
$revoke$;

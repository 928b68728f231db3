-- The three database roles of SPEC §5. Roles are cluster-wide, so a second database on the
-- same server reuses them: create each only where it is missing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tracefence_owner') THEN
        -- Owns every object; its SECURITY DEFINER functions read across tenants on purpose.
        CREATE ROLE tracefence_owner NOLOGIN BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tracefence_app') THEN
        -- What applications connect as (through a login role that is a member).
        CREATE ROLE tracefence_app NOLOGIN NOBYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tracefence_service') THEN
        -- Trusted back office: creates users, sets the user-token secret.
        CREATE ROLE tracefence_service NOLOGIN NOBYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB;
    END IF;
    -- The migrating login must be able to SET ROLE tracefence_owner so that objects are owned
    -- by it and not by whoever ran the migration.
    IF NOT pg_catalog.pg_has_role(current_user, 'tracefence_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT tracefence_owner TO %I', current_user);
    END IF;
    EXECUTE pg_catalog.format(
        'GRANT CREATE, CONNECT, TEMPORARY ON DATABASE %I TO tracefence_owner', current_database()
    );
END
$roles$;

-- Functions the owner creates are not executable by PUBLIC unless a sql/ file grants them.
ALTER DEFAULT PRIVILEGES FOR ROLE tracefence_owner REVOKE EXECUTE ON FUNCTIONS FROM public;

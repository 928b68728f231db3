-- Roles are shared by every database on the server: keep them, drop only this database's grants.
ALTER DEFAULT PRIVILEGES FOR ROLE tracefence_owner GRANT EXECUTE ON FUNCTIONS TO public;
DO $revoke$
BEGIN
    EXECUTE pg_catalog.format(
        'REVOKE CREATE, CONNECT, TEMPORARY ON DATABASE %I FROM tracefence_owner', current_database()
    );
END
$revoke$;

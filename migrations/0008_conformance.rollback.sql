SET LOCAL ROLE tracefence_owner;
-- The checks and functions of sql/conformance depend on these tables: drop them with the
-- tables, keep conformance.installed_sql (migration 0006).
DO $drop$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE n.nspname = 'conformance' AND c.relkind = 'v'
    LOOP
        EXECUTE pg_catalog.format('DROP VIEW IF EXISTS %s CASCADE', object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure::text AS name
        FROM pg_catalog.pg_proc AS p
        INNER JOIN pg_catalog.pg_namespace AS n ON p.pronamespace = n.oid
        WHERE n.nspname = 'conformance'
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS %s CASCADE', object.name);
    END LOOP;
END
$drop$;
DROP TABLE conformance.canonical_policies;
DROP TABLE conformance.cross_tenant_readers;
DROP TABLE conformance.manifest;

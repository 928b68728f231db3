SET LOCAL ROLE tracefence_owner;
DROP SCHEMA tenancy CASCADE;

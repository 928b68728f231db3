SET LOCAL ROLE tracefence_owner;
DROP SCHEMA conformance CASCADE;

SET LOCAL ROLE tracefence_owner;
DROP SCHEMA iam CASCADE;

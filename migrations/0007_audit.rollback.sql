SET LOCAL ROLE tracefence_owner;
ALTER TABLE iam.api_keys DROP COLUMN expiry_recorded_at;
ALTER TABLE iam.role_bindings DROP COLUMN start_recorded_at, DROP COLUMN expiry_recorded_at;
RESET ROLE;
DROP SCHEMA audit CASCADE;

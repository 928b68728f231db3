SET LOCAL ROLE tracefence_owner;
DROP SCHEMA telemetry CASCADE;

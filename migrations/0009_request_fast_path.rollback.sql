-- The functions of sql/ that use these objects go with them (CASCADE): after a rollback, apply
-- the sql/ files of the release rolled back to (its `tracefence migrate`), or apply again.
SET LOCAL ROLE tracefence_owner;
DROP TRIGGER IF EXISTS resources_track_descendant_projects ON tenancy.resources;
DROP FUNCTION IF EXISTS tenancy.track_descendant_projects();
DELETE FROM conformance.manifest
WHERE relation IN ('tenancy.descendant_projects', 'iam.open_requests');
DROP TABLE tenancy.descendant_projects;
DROP TABLE iam.open_requests CASCADE;
DROP TYPE iam.held_role CASCADE;

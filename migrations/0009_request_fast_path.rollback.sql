SET LOCAL ROLE tracefence_owner;
DROP TRIGGER IF EXISTS resources_track_descendant_projects ON tenancy.resources;
DROP FUNCTION IF EXISTS tenancy.track_descendant_projects();
DELETE FROM conformance.manifest
WHERE relation IN ('tenancy.descendant_projects', 'iam.open_requests');
DROP TABLE tenancy.descendant_projects;
DROP TABLE iam.open_requests;

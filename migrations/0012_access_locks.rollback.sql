SET LOCAL ROLE tracefence_owner;

DELETE FROM conformance.manifest
WHERE relation = 'iam.access_locks';
-- The sql/ functions of this release lock its rows: access changes fail until the sql/ files
-- of the release you return to are applied (docs/operations.md, "Upgrades").
DROP TABLE iam.access_locks;

-- depends: 0010_fence_v2
-- The package version that last migrated this database: `tracefence migrate status` shows it,
-- and an older package refuses to migrate a database a newer one has migrated.
SET LOCAL ROLE tracefence_owner;

CREATE TABLE conformance.installed_package (
    -- One row: the version of the package whose migrate ran last.
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version text NOT NULL CHECK (version ~ '^[0-9]+\.[0-9]+\.[0-9]+([.+-][0-9A-Za-z.+-]*)?$'),
    migrated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE conformance.installed_package IS
'The tracefence version whose migrate ran last, and when (one row).';
ALTER TABLE conformance.installed_package ENABLE ROW LEVEL SECURITY;
ALTER TABLE conformance.installed_package FORCE ROW LEVEL SECURITY;

INSERT INTO conformance.manifest (relation, tier, reason) VALUES
('conformance.installed_package', 'internal', 'The package version that last migrated the database.');

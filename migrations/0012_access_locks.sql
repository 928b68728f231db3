-- depends: 0011_installed_package
-- Access changes of one principal serialise per organisation, on a row of their own (issue
-- 14): the principal's row (iam.principals) was locked FOR UPDATE, which any tenant could
-- take for any user id by binding it into an organisation of its own, and which conflicted
-- with the foreign-key checks of everything the principal created.
SET LOCAL ROLE tracefence_owner;

CREATE TABLE iam.access_locks (
    principal_id uuid NOT NULL REFERENCES iam.principals (id) ON DELETE CASCADE,
    organisation_id uuid NOT NULL REFERENCES tenancy.organisations (id) ON DELETE CASCADE,
    PRIMARY KEY (principal_id, organisation_id)
);
CREATE INDEX access_locks_organisation_idx ON iam.access_locks (organisation_id);
COMMENT ON TABLE iam.access_locks IS
'One row per principal and organisation, locked by every access change of the principal there.';
ALTER TABLE iam.access_locks ENABLE ROW LEVEL SECURITY;
ALTER TABLE iam.access_locks FORCE ROW LEVEL SECURITY;

INSERT INTO conformance.manifest (relation, tier, reason) VALUES
('iam.access_locks', 'internal', 'Serialises access changes per principal and organisation.');

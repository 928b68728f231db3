-- depends: 0005_telemetry
-- What the package installed from sql/: lets `tracefence migrate` skip unchanged files and
-- lets the conformance checker tell a canonical object from a hand edit.
SET LOCAL ROLE tracefence_owner;

CREATE SCHEMA conformance;
COMMENT ON SCHEMA conformance IS 'Proof that every project-scoped table is fenced.';

CREATE TABLE conformance.installed_sql (
    path text PRIMARY KEY,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE conformance.installed_sql IS 'Each sql/ file the package applied, with its digest.';
ALTER TABLE conformance.installed_sql ENABLE ROW LEVEL SECURITY;
ALTER TABLE conformance.installed_sql FORCE ROW LEVEL SECURITY;

REVOKE ALL ON SCHEMA conformance FROM public;

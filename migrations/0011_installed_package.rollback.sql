SET LOCAL ROLE tracefence_owner;

DELETE FROM conformance.manifest
WHERE relation = 'conformance.installed_package';
DROP TABLE conformance.installed_package;

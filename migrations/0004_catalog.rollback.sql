SET LOCAL ROLE tracefence_owner;
DELETE FROM iam.role_permissions;
DELETE FROM iam.roles;
DELETE FROM iam.permissions;

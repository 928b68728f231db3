-- Schema access: the application and the back office reach iam only through the functions
-- granted to them; no table in iam is granted to either.
GRANT USAGE ON SCHEMA iam TO tracefence_app, tracefence_service;

-- depends: 0003_iam
-- The permission catalog and the built-in roles of SPEC §2, as data.
SET LOCAL ROLE tracefence_owner;

INSERT INTO iam.permissions (name, description, tiers, key_allowed) VALUES
(
    'traces:read', 'Read non-production traces and their spans.',
    '{organisation,workspace,project}', TRUE
),
(
    'traces:read:prod',
    'Read production traces and their spans; alone it does not grant non-production traces.',
    '{organisation,workspace,project}', TRUE
),
('traces:write', 'Ingest traces and spans.', '{organisation,workspace,project}', TRUE),
(
    'projects:read', 'See that a project, workspace or organisation exists and list it.',
    '{organisation,workspace,project}', TRUE
),
(
    'projects:manage', 'Create projects (at a workspace), rename and delete them.',
    '{organisation,workspace,project}', FALSE
),
(
    'workspaces:manage', 'Create workspaces (at the organisation), rename and delete them.',
    '{organisation,workspace}', FALSE
),
(
    'org:manage', 'Rename or delete the organisation, grant or remove org_owner.',
    '{organisation}', FALSE
),
(
    'environments:write', 'Create environments and flip is_production.',
    '{organisation,workspace,project}', TRUE
),
(
    'members:read', 'Read role bindings at the resource and below.',
    '{organisation,workspace,project}', FALSE
),
(
    'members:write', 'Change role bindings at the resource and below.',
    '{organisation,workspace,project}', FALSE
),
(
    'api-keys:read', 'List API keys at the resource and below.',
    '{organisation,workspace,project}', FALSE
),
(
    'api-keys:write', 'Create, edit and revoke API keys at the resource and below.',
    '{organisation,workspace,project}', FALSE
),
('audit:read', 'Read the audit feed of the resource.', '{organisation,workspace,project}', TRUE);

INSERT INTO iam.roles (name, tier, description) VALUES
('org_owner', 'organisation', 'Every permission in the organisation, including org:manage.'),
('org_admin', 'organisation', 'Every permission in the organisation but org:manage.'),
('org_member', 'organisation', 'Sees the organisation; reads no telemetry.'),
('workspace_owner', 'workspace', 'Every permission in the workspace but org:manage.'),
('workspace_admin', 'workspace', 'Every permission in the workspace but org:manage and workspaces:manage.'),
('workspace_member', 'workspace', 'Sees the workspace; reads no telemetry.'),
('project_owner', 'project', 'Reads all traces, manages the project, its members and keys.'),
('project_admin', 'project', 'As project_owner, without projects:manage.'),
('project_developer', 'project', 'Reads and writes non-production traces.'),
('project_member', 'project', 'Sees the project; reads no telemetry.');

INSERT INTO iam.role_permissions (role, permission)
SELECT
    r.role,
    p.name
FROM (
    VALUES
    ('org_owner', '{}'::text[]),
    ('org_admin', '{org:manage}'),
    ('workspace_owner', '{org:manage}'),
    ('workspace_admin', '{org:manage,workspaces:manage}')
) AS r (role, excluded)
CROSS JOIN iam.permissions AS p
WHERE NOT p.name = ANY(r.excluded);

INSERT INTO iam.role_permissions (role, permission)
SELECT
    r.role,
    unnest(r.permissions) AS permission
FROM (
    VALUES
    ('org_member', '{projects:read}'::text[]),
    ('workspace_member', '{projects:read}'),
    (
        'project_owner',
        '{traces:read,traces:read:prod,traces:write,projects:read,projects:manage,environments:write,'
        'members:read,members:write,api-keys:read,api-keys:write,audit:read}'
    ),
    (
        'project_admin',
        '{traces:read,traces:read:prod,traces:write,projects:read,environments:write,'
        'members:read,members:write,api-keys:read,api-keys:write,audit:read}'
    ),
    ('project_developer', '{traces:read,traces:write,projects:read,members:read,api-keys:read}'),
    ('project_member', '{projects:read}')
) AS r (role, permissions);

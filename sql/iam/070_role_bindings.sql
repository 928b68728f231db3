-- Granting and removing roles. Rules (SPEC §2): members:write at the resource; the caller must
-- hold every permission of the role it grants and of the role it replaces or removes (no
-- escalation, no demoting someone stronger); org_owner only by an org_owner; an organisation
-- always keeps an org_owner whose binding does not expire.

-- Raise 42501 unless the open request holds every permission of `role` at `resource`.
CREATE OR REPLACE FUNCTION iam.require_role_permissions(resource uuid, role text, action text)
RETURNS void
LANGUAGE plpgsql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing text;
BEGIN
    SELECT min(rp.permission) INTO missing
    FROM iam.role_permissions AS rp
    WHERE rp.role = require_role_permissions.role
        AND NOT rp.permission = ANY(iam.request_permissions(resource));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = format(
                '%s role %s needs permission %s at resource %s, which the caller does not hold',
                action, role, missing, resource
            ),
            DETAIL = format('missing permission: %s', missing);
    END IF;
END
$$;

-- Raise 23514 unless another active user holds a non-expiring org_owner binding in force.
-- Locks the organisation so two concurrent removals cannot both pass.
CREATE OR REPLACE FUNCTION iam.require_other_owner(organisation uuid, principal uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM tenancy.organisations AS o WHERE o.id = organisation FOR UPDATE;
    -- Lock the owner bindings too: under any isolation a concurrent removal then conflicts.
    PERFORM FROM iam.role_bindings AS b
    WHERE b.resource_id = organisation AND b.role = 'org_owner'
    FOR UPDATE;
    IF NOT EXISTS (
        SELECT FROM iam.role_bindings AS b
        INNER JOIN iam.users AS u ON b.principal_id = u.id
        WHERE
            b.resource_id = organisation
            AND b.role = 'org_owner'
            AND b.principal_id <> principal
            AND b.valid_until IS NULL
            AND (b.valid_from IS NULL OR b.valid_from <= statement_timestamp())
            AND u.disabled_at IS NULL
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format('cannot remove the last org_owner of organisation %s', organisation),
            HINT = 'grant org_owner to someone else first';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION iam.grant_role(
    principal uuid,
    role text,
    resource uuid,
    valid_until timestamptz DEFAULT NULL,
    valid_from timestamptz DEFAULT NULL
)
RETURNS audit.events
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor uuid := iam.require_request();
    at timestamptz := statement_timestamp();
    role_tier text;
    resource_row tenancy.resources;
    existing iam.role_bindings;
    before jsonb;
    event audit.events;
BEGIN
    SELECT r.tier INTO role_tier FROM iam.roles AS r WHERE r.name = grant_role.role;
    IF role_tier IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown role: %L', role);
    END IF;
    PERFORM iam.require_permission(resource, 'members:write');
    -- FOR SHARE: a concurrent delete_project waits for this grant and then records it.
    SELECT r.* INTO resource_row FROM tenancy.resources AS r WHERE r.id = resource FOR SHARE;
    IF NOT FOUND THEN
        -- Deleted while this call waited for it: refused as a resource that does not exist.
        PERFORM iam.require_permission(resource, 'members:write');
    END IF;
    IF resource_row.tier <> role_tier THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format(
                'role %s is bound at the %s tier, but resource %s is a %s',
                role, role_tier, resource, resource_row.tier
            );
    END IF;
    IF NOT EXISTS (SELECT FROM iam.users AS u WHERE u.id = principal) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown user: %s (roles are bound to users; API keys carry scopes)', principal);
    END IF;
    IF valid_until IS NOT NULL AND valid_until <= statement_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'valid_until must be in the future';
    END IF;
    IF valid_from IS NOT NULL AND valid_until IS NOT NULL AND valid_from >= valid_until THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'valid_from must be before valid_until';
    END IF;
    IF role = 'org_owner' AND NOT EXISTS (
        SELECT FROM iam.request_grants(clock_timestamp()) AS g WHERE g.role = 'org_owner' AND resource = ANY(g.scopes)
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = 'only an org_owner can grant org_owner: permission org:manage is required',
            DETAIL = 'missing permission: org:manage';
    END IF;
    PERFORM iam.require_role_permissions(resource, role, 'granting');
    -- Record the principal's pending expiries and lock it before reading its binding here.
    PERFORM iam.sweep_principal(principal, resource_row.organisation_id);

    SELECT b.* INTO existing
    FROM iam.role_bindings AS b
    WHERE b.principal_id = principal AND b.resource_id = resource
    FOR UPDATE;
    IF FOUND THEN
        IF existing.role = role
            AND existing.valid_until IS NOT DISTINCT FROM grant_role.valid_until
            AND existing.valid_from IS NOT DISTINCT FROM grant_role.valid_from
        THEN
            RETURN NULL;  -- already bound exactly so: nothing changes
        END IF;
        PERFORM iam.require_role_permissions(resource, existing.role, 'replacing');
        -- An owner in force and permanent may be replaced only by the same: anything else
        -- (another role, an end date, a start in the future) needs another owner.
        IF existing.role = 'org_owner' AND existing.valid_until IS NULL
            AND (existing.valid_from IS NULL OR existing.valid_from <= at)
            AND NOT (
                role = 'org_owner' AND grant_role.valid_until IS NULL
                AND (grant_role.valid_from IS NULL OR grant_role.valid_from <= at)
            )
        THEN
            PERFORM iam.require_other_owner(resource, principal);
        END IF;
    END IF;

    before := iam.effective_sets(principal, resource, at);
    INSERT INTO iam.role_bindings AS b (
        principal_id, resource_id, tier, role, valid_from, valid_until, granted_by, granted_at
    )
    VALUES (principal, resource, role_tier, role, valid_from, valid_until, actor, at)
    ON CONFLICT (principal_id, resource_id) DO UPDATE
        SET
            tier = excluded.tier,
            role = excluded.role,
            valid_from = excluded.valid_from,
            valid_until = excluded.valid_until,
            granted_by = excluded.granted_by,
            granted_at = excluded.granted_at,
            expiry_recorded_at = NULL,
            start_recorded_at = NULL;
    -- One row per scope whose effective set changed; the caller gets the one at `resource`.
    SELECT c.* INTO event
    FROM audit.record_rbac_changes(
        principal, before, iam.effective_sets(principal, resource, at),
        CASE WHEN existing.role IS NULL THEN 'binding_created' ELSE 'binding_changed' END,
        at, (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
        jsonb_build_object('role', role, 'resource', resource, 'valid_from', valid_from,
            'valid_until', valid_until, 'replaced_role', existing.role)
    ) AS c
    WHERE c.scope_id = resource;
    RETURN event;
END
$$;
COMMENT ON FUNCTION iam.grant_role(uuid, text, uuid, timestamptz, timestamptz) IS
'Bind a role to a user at a resource of its tier, replacing any role bound there.';

CREATE OR REPLACE FUNCTION iam.revoke_role(principal uuid, resource uuid)
RETURNS audit.events
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := statement_timestamp();
    existing iam.role_bindings;
    before jsonb;
    event audit.events;
BEGIN
    PERFORM iam.require_permission(resource, 'members:write');
    PERFORM FROM tenancy.resources AS r WHERE r.id = resource FOR SHARE;
    IF NOT EXISTS (
        SELECT FROM iam.role_bindings AS b WHERE b.principal_id = principal AND b.resource_id = resource
    ) THEN
        RETURN NULL;  -- nothing bound there: nothing changes
    END IF;
    PERFORM iam.sweep_principal(principal, iam.organisation_of(resource));
    SELECT b.* INTO existing
    FROM iam.role_bindings AS b
    WHERE b.principal_id = principal AND b.resource_id = resource
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM iam.require_role_permissions(resource, existing.role, 'removing');
    IF existing.role = 'org_owner' AND existing.valid_until IS NULL THEN
        PERFORM iam.require_other_owner(resource, principal);
    END IF;
    before := iam.effective_sets(principal, resource, at);
    DELETE FROM iam.role_bindings AS b WHERE b.principal_id = principal AND b.resource_id = resource;
    SELECT c.* INTO event
    FROM audit.record_rbac_changes(
        principal, before, iam.effective_sets(principal, resource, at), 'binding_removed',
        at, (audit.request_actor()).actor_id, (audit.request_actor()).actor_kind,
        jsonb_build_object('role', existing.role, 'resource', resource)
    ) AS c
    WHERE c.scope_id = resource;
    RETURN event;
END
$$;
COMMENT ON FUNCTION iam.revoke_role(uuid, uuid) IS 'Remove the role a user holds at a resource.';

REVOKE ALL ON FUNCTION iam.require_role_permissions(uuid, text, text) FROM public;
REVOKE ALL ON FUNCTION iam.require_other_owner(uuid, uuid) FROM public;
REVOKE ALL ON FUNCTION iam.grant_role(uuid, text, uuid, timestamptz, timestamptz) FROM public;
REVOKE ALL ON FUNCTION iam.revoke_role(uuid, uuid) FROM public;
GRANT EXECUTE ON FUNCTION iam.grant_role(uuid, text, uuid, timestamptz, timestamptz) TO tracefence_app;
GRANT EXECUTE ON FUNCTION iam.revoke_role(uuid, uuid) TO tracefence_app;

-- Effective permission sets across an organisation, and recording how they change. Every call
-- that can change a principal's effective set takes a snapshot before and after and records
-- one rbac_grant row per scope whose set differs — and none when nothing changed.

-- eff(P, X) for every resource X at or below `scope` where it is not empty, as
-- {"<resource id>": [permissions, sorted]}. A change to a binding or key at R can only change
-- sets at R and below it, so callers pass R and pay for its subtree, not the organisation.
-- With `as_recorded`, windows are read as the audit log knows them: a binding counts from its
-- recorded start until its recorded expiry, a key until its recorded expiry — this is what the
-- sweep compares when it records a start or an expiry.
CREATE OR REPLACE FUNCTION iam.effective_sets(
    principal uuid,
    scope uuid,
    at timestamptz,
    as_recorded boolean DEFAULT FALSE
)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH grants AS (
        SELECT
            b.resource_id,
            rp.permission
        FROM iam.role_bindings AS b
        INNER JOIN iam.role_permissions AS rp ON b.role = rp.role
        WHERE
            b.principal_id = principal
            AND CASE
                WHEN as_recorded THEN
                    (b.valid_from IS NULL OR b.valid_from <= b.granted_at OR b.start_recorded_at IS NOT NULL)
                    AND b.expiry_recorded_at IS NULL
                ELSE
                    (b.valid_from IS NULL OR b.valid_from <= at)
                    AND (b.valid_until IS NULL OR b.valid_until > at)
            END
        UNION ALL
        SELECT
            k.resource_id,
            s.permission
        FROM iam.api_keys AS k
        INNER JOIN iam.api_key_scopes AS s ON k.id = s.key_id
        WHERE
            k.id = principal
            AND k.revoked_at IS NULL
            AND CASE
                WHEN as_recorded THEN k.expiry_recorded_at IS NULL
                ELSE k.expires_at IS NULL OR k.expires_at > at
            END
    ),

    sets AS (
        SELECT
            r.id,
            array_agg(DISTINCT g.permission ORDER BY g.permission) AS permissions
        FROM tenancy.resources AS r
        INNER JOIN grants AS g ON g.resource_id IN (r.id, r.workspace_id, r.organisation_id)
        WHERE scope IN (r.id, r.workspace_id, r.organisation_id)
        GROUP BY r.id
    )

    SELECT coalesce(jsonb_object_agg(sets.id, to_jsonb(sets.permissions)), '{}')
    FROM sets
$$;
COMMENT ON FUNCTION iam.effective_sets(uuid, uuid, timestamptz, boolean) IS
'eff(P, X) for every resource X at or below a scope where it is not empty.';

-- Who is acting in the open request, for the audit row: (id, kind), or the back office.
CREATE OR REPLACE FUNCTION audit.request_actor(OUT actor_id uuid, OUT actor_kind text)
LANGUAGE sql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT
        (c.context ->> 'principal')::uuid,
        coalesce(c.context ->> 'kind', 'service')
    FROM (SELECT iam.request_context() AS context) AS c
$$;

-- Record one rbac_grant row per resource whose set differs between `before` and `after`.
-- Resources must still exist (deletions record before deleting). Returns the rows written.
CREATE OR REPLACE FUNCTION audit.record_rbac_changes(
    principal uuid,
    before jsonb,
    after jsonb,
    cause text,
    occurred_at timestamptz,
    actor_id uuid,
    actor_kind text,
    detail jsonb DEFAULT '{}'
)
RETURNS SETOF audit.events
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO audit.events AS e (
        occurred_at, event_type, actor_id, actor_kind, principal_id, principal_kind,
        scope_id, scope_tier, organisation_id, workspace_id, project_id,
        prior_permissions, new_permissions, cause, detail
    )
    SELECT
        occurred_at,
        'rbac_grant',
        actor_id,
        actor_kind,
        principal,
        p.kind,
        r.id,
        r.tier,
        r.organisation_id,
        r.workspace_id,
        CASE WHEN r.tier = 'project' THEN r.id END,
        ARRAY(SELECT jsonb_array_elements_text(coalesce(before -> changed.id, '[]'))),
        ARRAY(SELECT jsonb_array_elements_text(coalesce(after -> changed.id, '[]'))),
        cause,
        detail
    FROM (
        SELECT k.id FROM jsonb_object_keys(before) AS k (id)
        UNION
        SELECT k.id FROM jsonb_object_keys(after) AS k (id)
    ) AS changed
    INNER JOIN tenancy.resources AS r ON r.id = changed.id::uuid
    INNER JOIN iam.principals AS p ON p.id = principal
    WHERE coalesce(before -> changed.id, '[]') IS DISTINCT FROM coalesce(after -> changed.id, '[]')
    ORDER BY array_position(ARRAY['organisation', 'workspace', 'project'], r.tier), r.id
    RETURNING e.*
$$;

REVOKE ALL ON FUNCTION iam.effective_sets(uuid, uuid, timestamptz, boolean) FROM public;
REVOKE ALL ON FUNCTION audit.request_actor() FROM public;
REVOKE ALL ON FUNCTION audit.record_rbac_changes(uuid, jsonb, jsonb, text, timestamptz, uuid, text, jsonb)
FROM public;

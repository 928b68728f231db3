-- Capture-time classification: the database, not the writer, decides whether a trace is
-- production, from its environment's flag at the moment of insert. A span takes project,
-- environment and classification from its trace. None of these ever change afterwards.


-- These triggers run before the row-level security check, as the owner, so they must not
-- tell a writer anything about rows it may not write: a missing environment or trace and one
-- in another tenant's project produce the same outcome (the fence's 42501, or a foreign-key
-- error after it). A contradiction is reported as such (23514) only to a writer of the
-- project who may also read the class it contradicts (traces:read, or traces:read:prod for
-- production), or to the package owner: to a writer who may not, "your is_production is
-- wrong" would say that the environment or trace is production. Its row is classified from
-- the environment or trace instead, silently, whatever it named. The permissions are looked
-- up only on that path.

-- May whoever is inserting act with `permission` in `project`? The owner and superusers may;
-- a request may where it holds the permission.
CREATE OR REPLACE FUNCTION telemetry.inserter_holds(project uuid, permission text)
RETURNS boolean
LANGUAGE sql
STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(session_user, 'tracefence_owner', 'MEMBER')
        OR project = ANY(iam.permitted_projects(permission))
$$;

-- The permission that reads rows of a class.
CREATE OR REPLACE FUNCTION telemetry.read_permission(production boolean)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN production THEN 'traces:read:prod' ELSE 'traces:read' END
$$;

CREATE OR REPLACE FUNCTION telemetry.classify_trace()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    place record;
BEGIN
    SELECT e.is_production, p.organisation_id, p.workspace_id INTO place
    FROM tenancy.environments AS e
    INNER JOIN tenancy.projects AS p ON e.project_id = p.id
    WHERE e.id = NEW.environment_id AND e.project_id = NEW.project_id;
    IF NOT FOUND THEN
        -- Let the fence, then the foreign keys, reject the row: a writer of the project gets
        -- the environment's foreign-key error, anyone else the fence's.
        SELECT p.organisation_id, p.workspace_id INTO NEW.organisation_id, NEW.workspace_id
        FROM tenancy.projects AS p
        WHERE p.id = NEW.project_id;
        NEW.is_production := coalesce(NEW.is_production, false);
        RETURN NEW;
    END IF;
    IF NEW.is_production IS NOT NULL AND NEW.is_production IS DISTINCT FROM place.is_production
        AND telemetry.inserter_holds(NEW.project_id, 'traces:write')
        AND telemetry.inserter_holds(NEW.project_id, telemetry.read_permission(place.is_production))
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'is_production = %s contradicts environment %s, whose is_production is %s',
                NEW.is_production, NEW.environment_id, place.is_production
            ),
            HINT = 'omit is_production: the database classifies traces at capture time';
    END IF;
    IF ((NEW.organisation_id IS NOT NULL AND NEW.organisation_id IS DISTINCT FROM place.organisation_id)
        OR (NEW.workspace_id IS NOT NULL AND NEW.workspace_id IS DISTINCT FROM place.workspace_id))
        AND telemetry.inserter_holds(NEW.project_id, 'traces:write')
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format('organisation_id and workspace_id contradict project %s', NEW.project_id),
            HINT = 'omit organisation_id and workspace_id: the database stamps them from the project';
    END IF;
    -- Stamped from the environment and the project whatever the row named: the fence checks
    -- the real tier path.
    NEW.is_production := place.is_production;
    NEW.organisation_id := place.organisation_id;
    NEW.workspace_id := place.workspace_id;
    RETURN NEW;
END
$$;

-- A span whose trace is not in the project it names (or in any): fill the stamped columns so
-- that, after the fence, the foreign key (project_id, trace_id) rejects it with 23503 for a
-- writer of the project, whether or not the trace exists elsewhere, and the fence rejects it
-- for anyone else. The row is never stored.
CREATE OR REPLACE FUNCTION telemetry.unplaceable_span(span telemetry.spans)
RETURNS telemetry.spans
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT p.organisation_id, p.workspace_id INTO span.organisation_id, span.workspace_id
    FROM tenancy.projects AS p
    WHERE p.id = span.project_id;
    span.environment_id := coalesce(span.environment_id, '00000000-0000-0000-0000-000000000000');
    span.is_production := coalesce(span.is_production, false);
    RETURN span;
END
$$;

CREATE OR REPLACE FUNCTION telemetry.stamp_span()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate record;
    trace record;
    candidates integer := 0;
BEGIN
    -- Trace ids are unique per project only. A span that names its project finds its trace by
    -- the key; one that does not takes the only trace of that id, or, should several projects
    -- hold one, the one the writer may write (checked only then: it costs a context read).
    -- Every candidate is looked at, so the outcome depends only on the writer's own projects,
    -- never on how many other tenants hold the id.
    FOR candidate IN
        SELECT t.organisation_id, t.workspace_id, t.project_id, t.environment_id, t.is_production
        FROM telemetry.traces AS t
        WHERE t.id = NEW.trace_id AND (NEW.project_id IS NULL OR t.project_id = NEW.project_id)
    LOOP
        candidates := candidates + 1;
        IF candidates = 1 THEN
            trace := candidate;
        ELSIF telemetry.inserter_holds(candidate.project_id, 'traces:write') THEN
            IF telemetry.inserter_holds(trace.project_id, 'traces:write') AND trace.project_id <> candidate.project_id THEN
                RAISE EXCEPTION USING
                    ERRCODE = '22023',
                    MESSAGE = format('trace %s is in more than one of your projects', NEW.trace_id),
                    HINT = 'name the span''s project_id';
            END IF;
            trace := candidate;
        END IF;
    END LOOP;
    IF candidates = 0 THEN
        RETURN telemetry.unplaceable_span(NEW);
    END IF;
    -- The trace's class (its environment and is_production) only to who may read that class;
    -- its tier path to any writer of its project.
    IF (((NEW.environment_id IS NOT NULL AND NEW.environment_id IS DISTINCT FROM trace.environment_id)
            OR (NEW.is_production IS NOT NULL AND NEW.is_production IS DISTINCT FROM trace.is_production))
            AND telemetry.inserter_holds(trace.project_id, 'traces:write')
            AND telemetry.inserter_holds(trace.project_id, telemetry.read_permission(trace.is_production)))
        OR (((NEW.organisation_id IS NOT NULL AND NEW.organisation_id IS DISTINCT FROM trace.organisation_id)
            OR (NEW.workspace_id IS NOT NULL AND NEW.workspace_id IS DISTINCT FROM trace.workspace_id))
            AND telemetry.inserter_holds(trace.project_id, 'traces:write'))
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'span contradicts trace %s: its tier path, environment and is_production come '
                || 'from the trace',
                NEW.trace_id
            ),
            HINT = 'omit organisation_id, workspace_id, environment_id and is_production on spans';
    END IF;
    NEW.organisation_id := trace.organisation_id;
    NEW.workspace_id := trace.workspace_id;
    NEW.project_id := trace.project_id;
    NEW.environment_id := trace.environment_id;
    NEW.is_production := trace.is_production;
    RETURN NEW;
END
$$;

-- Scope and classification are fixed at capture, for every role, the owner included.
CREATE OR REPLACE FUNCTION telemetry.keep_capture_scope()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- A span is also tied to its trace; a trace has no trace_id column.
    moved_span boolean := TG_TABLE_NAME = 'spans'
        AND to_jsonb(NEW) -> 'trace_id' IS DISTINCT FROM to_jsonb(OLD) -> 'trace_id';
BEGIN
    IF NEW.project_id IS DISTINCT FROM OLD.project_id
        OR NEW.organisation_id IS DISTINCT FROM OLD.organisation_id
        OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
        OR NEW.environment_id IS DISTINCT FROM OLD.environment_id
        OR NEW.is_production IS DISTINCT FROM OLD.is_production
        OR moved_span
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'the tier path, environment and classification of a captured %s cannot change',
                CASE TG_TABLE_NAME WHEN 'spans' THEN 'span' ELSE 'trace' END
            );
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION telemetry.inserter_holds(uuid, text) FROM public;
REVOKE ALL ON FUNCTION telemetry.read_permission(boolean) FROM public;
REVOKE ALL ON FUNCTION telemetry.unplaceable_span(telemetry.spans) FROM public;
REVOKE ALL ON FUNCTION telemetry.classify_trace() FROM public;
REVOKE ALL ON FUNCTION telemetry.stamp_span() FROM public;
REVOKE ALL ON FUNCTION telemetry.keep_capture_scope() FROM public;

CREATE OR REPLACE TRIGGER traces_classify
BEFORE INSERT ON telemetry.traces
FOR EACH ROW EXECUTE FUNCTION telemetry.classify_trace();

CREATE OR REPLACE TRIGGER traces_keep_scope
BEFORE UPDATE ON telemetry.traces
FOR EACH ROW EXECUTE FUNCTION telemetry.keep_capture_scope();

CREATE OR REPLACE TRIGGER spans_stamp
BEFORE INSERT ON telemetry.spans
FOR EACH ROW EXECUTE FUNCTION telemetry.stamp_span();

CREATE OR REPLACE TRIGGER spans_keep_scope
BEFORE UPDATE ON telemetry.spans
FOR EACH ROW EXECUTE FUNCTION telemetry.keep_capture_scope();

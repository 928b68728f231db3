-- Capture-time classification: the database, not the writer, decides whether a trace is
-- production, from its environment's flag at the moment of insert. A span takes project,
-- environment and classification from its trace. None of these ever change afterwards.

CREATE OR REPLACE FUNCTION telemetry.classify_trace()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    flag boolean;
BEGIN
    IF NEW.project_id IS NULL OR NEW.environment_id IS NULL THEN
        RETURN NEW;  -- the NOT NULL constraints name the missing column
    END IF;
    SELECT e.is_production INTO flag
    FROM tenancy.environments AS e
    WHERE e.id = NEW.environment_id AND e.project_id = NEW.project_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            MESSAGE = format(
                'environment %s is not an environment of project %s', NEW.environment_id, NEW.project_id
            );
    END IF;
    IF NEW.is_production IS NOT NULL AND NEW.is_production IS DISTINCT FROM flag THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'is_production = %s contradicts environment %s, whose is_production is %s',
                NEW.is_production, NEW.environment_id, flag
            ),
            HINT = 'omit is_production: the database classifies traces at capture time';
    END IF;
    NEW.is_production := flag;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION telemetry.stamp_span()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trace record;
BEGIN
    IF NEW.trace_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT t.project_id, t.environment_id, t.is_production INTO trace
    FROM telemetry.traces AS t
    WHERE t.id = NEW.trace_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503', MESSAGE = format('trace %s does not exist', NEW.trace_id);
    END IF;
    IF (NEW.project_id IS NOT NULL AND NEW.project_id IS DISTINCT FROM trace.project_id)
        OR (NEW.environment_id IS NOT NULL AND NEW.environment_id IS DISTINCT FROM trace.environment_id)
        OR (NEW.is_production IS NOT NULL AND NEW.is_production IS DISTINCT FROM trace.is_production)
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format('span contradicts trace %s: project, environment and is_production come from the trace',
                NEW.trace_id),
            HINT = 'omit project_id, environment_id and is_production on spans';
    END IF;
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
        OR NEW.environment_id IS DISTINCT FROM OLD.environment_id
        OR NEW.is_production IS DISTINCT FROM OLD.is_production
        OR moved_span
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            MESSAGE = format(
                'the project, environment and classification of a captured %s cannot change',
                CASE TG_TABLE_NAME WHEN 'spans' THEN 'span' ELSE 'trace' END
            );
    END IF;
    RETURN NEW;
END
$$;

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

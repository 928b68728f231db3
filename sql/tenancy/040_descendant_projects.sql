-- Keep tenancy.descendant_projects in step with the hierarchy: a new organisation or
-- workspace gets an empty row, a new project joins the rows of its workspace and organisation,
-- a deleted project leaves them (a deleted scope's row goes with it, by foreign key).
CREATE OR REPLACE FUNCTION tenancy.track_descendant_projects()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.tier = 'project' THEN
            UPDATE tenancy.descendant_projects AS d SET projects = d.projects || NEW.id
            WHERE d.resource_id IN (NEW.workspace_id, NEW.organisation_id);
        ELSE
            INSERT INTO tenancy.descendant_projects (resource_id) VALUES (NEW.id);
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.tier = 'project' THEN
        UPDATE tenancy.descendant_projects AS d SET projects = array_remove(d.projects, OLD.id)
        WHERE d.resource_id IN (OLD.workspace_id, OLD.organisation_id);
    END IF;
    RETURN OLD;
END
$$;

REVOKE ALL ON FUNCTION tenancy.track_descendant_projects() FROM public;

CREATE OR REPLACE TRIGGER resources_track_descendant_projects
AFTER INSERT OR DELETE ON tenancy.resources
FOR EACH ROW EXECUTE FUNCTION tenancy.track_descendant_projects();

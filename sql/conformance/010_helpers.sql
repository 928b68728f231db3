-- Building blocks of the conformance checks: names as the checks print them, policy
-- expressions taken apart, and views of the catalog as the manifest sees it. The checks run as
-- their owner (tracefence_owner); nothing here is granted to the application.

-- A function as the checks name it: schema-qualified signature, e.g. iam.begin_request(text).
CREATE OR REPLACE FUNCTION conformance.function_name(function_oid oid)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT function_oid::regprocedure::text
$$;
COMMENT ON FUNCTION conformance.function_name(oid) IS
'A function''s schema-qualified signature, whatever the caller''s search_path.';

-- A policy expression as text, deparsed with every name qualified (the checks and the drift
-- record compare these texts, so they must not depend on the caller's search_path).
CREATE OR REPLACE FUNCTION conformance.policy_expression(expression pg_node_tree, relation oid)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_get_expr(expression, relation)
$$;
COMMENT ON FUNCTION conformance.policy_expression(pg_node_tree, oid) IS
'pg_get_expr of a policy clause with a pinned search_path: stable text for comparisons.';

CREATE OR REPLACE FUNCTION conformance.command_name(polcmd text)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE polcmd
        WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
        WHEN 'd' THEN 'DELETE' ELSE 'ALL'
    END
$$;

-- Remove parentheses that enclose a whole deparsed expression: '((a) OR (b))' -> '(a) OR (b)'.
CREATE OR REPLACE FUNCTION conformance.strip_parentheses(expression text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e text := btrim(expression);
    depth integer;
    quote text;
    ch text;
    closes_at integer;
BEGIN
    LOOP
        IF e IS NULL OR left(e, 1) <> '(' THEN
            RETURN e;
        END IF;
        depth := 0;
        quote := NULL;
        closes_at := NULL;
        FOR i IN 1 .. length(e) LOOP
            ch := substr(e, i, 1);
            IF quote IS NOT NULL THEN
                IF ch = quote THEN
                    quote := NULL;
                END IF;
            ELSIF ch IN ('''', '"') THEN
                quote := ch;
            ELSIF ch = '(' THEN
                depth := depth + 1;
            ELSIF ch = ')' THEN
                depth := depth - 1;
                IF depth = 0 THEN
                    closes_at := i;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        IF closes_at IS DISTINCT FROM length(e) THEN
            RETURN e;
        END IF;
        e := btrim(substr(e, 2, length(e) - 2));
    END LOOP;
END
$$;

-- The operands of a deparsed expression's top-level AND or OR; one element when it has none.
CREATE OR REPLACE FUNCTION conformance.boolean_operands(expression text, operator text)
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e text := conformance.strip_parentheses(expression);
    separator text := ' ' || operator || ' ';
    parts text[] := '{}';
    depth integer := 0;
    quote text;
    ch text;
    i integer := 1;
    start integer := 1;
BEGIN
    IF e IS NULL THEN
        RETURN NULL;
    END IF;
    WHILE i <= length(e) LOOP
        ch := substr(e, i, 1);
        IF quote IS NOT NULL THEN
            IF ch = quote THEN
                quote := NULL;
            END IF;
        ELSIF ch IN ('''', '"') THEN
            quote := ch;
        ELSIF ch IN ('(', '[') THEN
            depth := depth + 1;
        ELSIF ch IN (')', ']') THEN
            depth := depth - 1;
        ELSIF depth = 0 AND substr(e, i, length(separator)) = separator THEN
            parts := parts || btrim(substr(e, start, i - start));
            i := i + length(separator);
            start := i;
            CONTINUE;
        END IF;
        i := i + 1;
    END LOOP;
    RETURN parts || btrim(substr(e, start));
END
$$;

-- Does a table carry its tier path: organisation_id and workspace_id beside project_id, held
-- true by a foreign key to tenancy.projects (organisation_id, workspace_id, id)? Then a policy
-- may test a wider grant on those columns (iam.fence_key), and the row cannot lie about them.
CREATE OR REPLACE FUNCTION conformance.has_tier_path(target oid)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT
        FROM pg_catalog.pg_constraint AS k
        WHERE
            k.conrelid = target AND k.contype = 'f'
            AND k.confrelid = 'tenancy.projects'::regclass
            -- Column pairs of the key, in order: referencing = referenced.
            AND ARRAY(
                SELECT a.attname::text || '=' || r.attname::text
                FROM unnest(k.conkey, k.confkey) WITH ORDINALITY AS c (col, ref, i)
                INNER JOIN pg_catalog.pg_attribute AS a ON k.conrelid = a.attrelid AND c.col = a.attnum
                INNER JOIN pg_catalog.pg_attribute AS r ON k.confrelid = r.attrelid AND c.ref = r.attnum
                ORDER BY c.i
            ) = ARRAY['organisation_id=organisation_id', 'workspace_id=workspace_id', 'project_id=id']
    )
$$;
COMMENT ON FUNCTION conformance.has_tier_path(oid) IS
'Does the table carry organisation_id and workspace_id bound to its project by a foreign key?';

-- Is a deparsed expression exactly "<scope column> = ANY (<package access function>)"? The
-- access functions are iam.permitted_projects('<literal permission>') and
-- iam.visible_resources(); `wrapped` asks for the (SELECT ...) form that makes an initPlan.
CREATE OR REPLACE FUNCTION conformance.is_scope_key(expression text, scope_column text, wrapped boolean)
RETURNS boolean
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT conformance.strip_parentheses(expression) ~ (
        '^' || regexp_replace(quote_ident(scope_column), '([^a-zA-Z0-9_])', '\\\1', 'g')
        || ' = ANY \('
        || CASE WHEN wrapped THEN '\(\s*SELECT ' ELSE '' END
        || 'iam\.(permitted_projects\(''([^'']|'''')*''::text\)|visible_resources\(\))'
        || CASE WHEN wrapped THEN ' AS ("[^"]+"|\w+)\)(::uuid\[\])?' ELSE '' END
        || '\)$'
    )
$$;
COMMENT ON FUNCTION conformance.is_scope_key(text, text, boolean) IS
'Is the expression the scope column compared with a package access function''s answer?';

-- Is a deparsed expression the tier-path key of iam.fence_key: project_id, workspace_id and
-- organisation_id each compared with iam.permitted_scopes('<permission>'), the same permission?
CREATE OR REPLACE FUNCTION conformance.is_tier_path_key(expression text)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[] := conformance.boolean_operands(conformance.strip_parentheses(expression), 'OR');
    arm text := ' = ANY \(\(\s*SELECT iam\.permitted_scopes\((''([^'']|'''')*'')::text\) AS ("[^"]+"|\w+)\)(::uuid\[\])?\)$';
    permissions text[] := '{}';
    i integer;
BEGIN
    IF cardinality(parts) <> 3 THEN
        RETURN false;
    END IF;
    FOR i IN 1..3 LOOP
        IF conformance.strip_parentheses(parts[i])
            !~ ('^' || (ARRAY['project_id', 'workspace_id', 'organisation_id'])[i] || arm)
        THEN
            RETURN false;
        END IF;
        permissions := permissions || (regexp_match(conformance.strip_parentheses(parts[i]), arm))[1];
    END LOOP;
    RETURN permissions[1] = permissions[2] AND permissions[2] = permissions[3];
END
$$;
COMMENT ON FUNCTION conformance.is_tier_path_key(text) IS
'Is the expression iam.fence_key''s tier-path form: the three tier columns against one permission?';

-- Does every row a policy clause admits carry the scope: each top-level OR branch has, among
-- its top-level AND operands, a scope key (or a branch of keyed OR operands)?
CREATE OR REPLACE FUNCTION conformance.is_keyed(expression text, scope_column text, tier_path boolean)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    part text;
BEGIN
    IF expression IS NULL OR scope_column IS NULL THEN
        RETURN false;
    END IF;
    IF conformance.is_scope_key(expression, scope_column, true)
        OR conformance.is_scope_key(expression, scope_column, false)
        OR (tier_path AND scope_column = 'project_id' AND conformance.is_tier_path_key(expression))
    THEN
        RETURN true;
    END IF;
    parts := conformance.boolean_operands(expression, 'OR');
    IF cardinality(parts) > 1 THEN
        FOREACH part IN ARRAY parts LOOP
            IF NOT conformance.is_keyed(part, scope_column, tier_path) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    END IF;
    parts := conformance.boolean_operands(expression, 'AND');
    IF cardinality(parts) > 1 THEN
        FOREACH part IN ARRAY parts LOOP
            IF conformance.is_keyed(part, scope_column, tier_path) THEN
                RETURN true;
            END IF;
        END LOOP;
    END IF;
    RETURN false;
END
$$;
COMMENT ON FUNCTION conformance.is_keyed(text, text, boolean) IS
'Does every row the policy clause admits satisfy a scope key (or, with a tier path, the tier-path key)?';

CREATE OR REPLACE FUNCTION conformance.is_keyed(expression text, scope_column text)
RETURNS boolean
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT conformance.is_keyed(expression, scope_column, false)
$$;
COMMENT ON FUNCTION conformance.is_keyed(text, text) IS
'Does every row the policy clause admits satisfy a scope key on the scope column?';

-- Is a deparsed clause always true: "true", or an OR with an always-true branch?
CREATE OR REPLACE FUNCTION conformance.is_always_true(expression text)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    part text;
BEGIN
    IF expression IS NULL THEN
        RETURN false;
    END IF;
    IF lower(conformance.strip_parentheses(expression)) IN ('true', '''t''::boolean', 'not false') THEN
        RETURN true;
    END IF;
    parts := conformance.boolean_operands(expression, 'OR');
    IF cardinality(parts) > 1 THEN
        FOREACH part IN ARRAY parts LOOP
            IF conformance.is_always_true(part) THEN
                RETURN true;
            END IF;
        END LOOP;
        RETURN false;
    END IF;
    parts := conformance.boolean_operands(expression, 'AND');
    IF cardinality(parts) > 1 THEN
        FOREACH part IN ARRAY parts LOOP
            IF NOT conformance.is_always_true(part) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    END IF;
    RETURN false;
END
$$;

-- The functions a policy clause calls, and whether each call sits inside a sub-select (the
-- (SELECT f(...)) form the planner turns into an initPlan, evaluated once per statement).
CREATE OR REPLACE FUNCTION conformance.called_functions(expression pg_node_tree)
RETURNS TABLE (function_oid oid, wrapped boolean)
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    token text;
    depth integer := 0;
    sublinks integer[] := '{}';
BEGIN
    IF expression IS NULL THEN
        RETURN;
    END IF;
    FOR token IN
        SELECT m[1]
        FROM regexp_matches(expression::text, '(\\.|\{FUNCEXPR :funcid \d+|\{SUBLINK|\{|\})', 'g') AS m
    LOOP
        IF left(token, 1) = '\' THEN
            CONTINUE;
        ELSIF token = '}' THEN
            IF sublinks[cardinality(sublinks)] = depth THEN
                sublinks := sublinks[1:cardinality(sublinks) - 1];
            END IF;
            depth := depth - 1;
        ELSE
            depth := depth + 1;
            IF token = '{SUBLINK' THEN
                sublinks := sublinks || depth;
            ELSIF token LIKE '{FUNCEXPR%' THEN
                function_oid := substring(token FROM '\d+$')::oid;
                wrapped := cardinality(sublinks) > 0;
                RETURN NEXT;
            END IF;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION conformance.called_functions(pg_node_tree) IS
'Functions a policy clause calls, each with whether it is wrapped in a sub-select.';

-- Was this catalog row written by the current transaction (or one of its subtransactions)?
-- Rows of other transactions still in progress are invisible, so an in-progress xmin is ours.
-- The 32-bit xmin is widened to the 64-bit id nearest the current transaction's (ids within
-- 2^31 of each other, as the server compares them).
CREATE OR REPLACE FUNCTION conformance.written_in_this_transaction(row_xmin xid)
RETURNS boolean
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        bool_or(w.full_id > 2 AND pg_xact_status(w.full_id::text::xid8) = 'in progress'), false
    )
    FROM (
        SELECT
            c.current_id
            + ((c.low - (c.current_id & 4294967295) + 6442450944) % 4294967296) - 2147483648
                AS full_id
        FROM (
            SELECT
                row_xmin::text::bigint AS low,
                pg_current_xact_id()::text::bigint AS current_id
        ) AS c
        WHERE c.low >= 3  -- 0, 1, 2: invalid, bootstrap and frozen ids, never in progress
    ) AS w
$$;

-- The application role and every role that is a member of it (the logins applications use).
CREATE OR REPLACE VIEW conformance.app_roles AS
WITH RECURSIVE members (oid) AS (
    SELECT r.oid
    FROM pg_catalog.pg_roles AS r
    WHERE r.rolname = 'tracefence_app'
    UNION
    SELECT m.member
    FROM pg_catalog.pg_auth_members AS m
    INNER JOIN members ON m.roleid = members.oid
)

SELECT
    r.oid,
    r.rolname::text AS role_name
FROM members
INNER JOIN pg_catalog.pg_roles AS r ON members.oid = r.oid;
COMMENT ON VIEW conformance.app_roles IS
'tracefence_app and every role that is a member of it, directly or not.';

-- Every table of the database (ordinary, partitioned, foreign) with the manifest row that
-- classifies it: its own, or for a partition or inheritance child its nearest ancestor's.
CREATE OR REPLACE VIEW conformance.tables AS
WITH RECURSIVE user_tables AS (
    SELECT
        c.oid,
        format('%I.%I', n.nspname, c.relname) AS relation,
        n.nspname::text AS schema_name,
        c.relkind::text AS relkind,
        c.relrowsecurity,
        c.relforcerowsecurity,
        c.relowner
    FROM pg_catalog.pg_class AS c
    INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
    WHERE
        c.relkind IN ('r', 'p', 'f')
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
        AND n.nspname !~ '^pg_(toast_)?temp_'
),

ancestry (oid, ancestor, depth) AS (
    SELECT
        user_tables.oid,
        user_tables.oid AS ancestor,
        0 AS depth
    FROM user_tables
    UNION ALL
    SELECT
        ancestry.oid,
        i.inhparent,
        ancestry.depth + 1
    FROM ancestry
    INNER JOIN pg_catalog.pg_inherits AS i ON ancestry.ancestor = i.inhrelid
    WHERE ancestry.depth < 32
),

classification AS (
    SELECT DISTINCT ON (ancestry.oid)
        ancestry.oid,
        m.relation AS classified_by,
        m.tier,
        m.scope_column,
        m.read_permission,
        m.write_permission
    FROM ancestry
    INNER JOIN user_tables AS a ON ancestry.ancestor = a.oid
    INNER JOIN conformance.manifest AS m ON a.relation = m.relation
    ORDER BY ancestry.oid ASC, ancestry.depth ASC
)

SELECT
    t.oid,
    t.relation,
    t.schema_name,
    t.relkind,
    t.relrowsecurity,
    t.relforcerowsecurity,
    t.relowner,
    parent.inhparent AS parent_oid,
    parent.inhparent IS NOT NULL AS is_child,
    cl.classified_by,
    cl.tier,
    cl.scope_column,
    att.attnum AS scope_attnum,
    att.attnotnull AS scope_not_null,
    cl.read_permission,
    cl.write_permission
FROM user_tables AS t
LEFT JOIN classification AS cl ON t.oid = cl.oid
LEFT JOIN LATERAL (
    SELECT i.inhparent
    FROM pg_catalog.pg_inherits AS i
    WHERE i.inhrelid = t.oid
    ORDER BY i.inhseqno
    LIMIT 1
) AS parent ON TRUE
LEFT JOIN pg_catalog.pg_attribute AS att
    ON t.oid = att.attrelid AND cl.scope_column = att.attname AND att.attnum > 0 AND NOT att.attisdropped;
COMMENT ON VIEW conformance.tables IS
'Every table with the manifest row that classifies it (its own or its nearest ancestor''s).';

-- Policies with what the checks need: command, roles, clauses as text, and whether the
-- policy applies to the application role (PUBLIC, tracefence_app, or a role they inherit).
CREATE OR REPLACE VIEW conformance.policies AS
SELECT
    p.oid AS policy_oid,
    p.polrelid AS relation_oid,
    t.relation,
    p.polname::text AS policy_name,
    conformance.command_name(p.polcmd::text) AS command,
    p.polpermissive AS permissive,
    array(
        SELECT x.role_name
        FROM unnest(p.polroles) AS r (oid)
        LEFT JOIN pg_catalog.pg_roles AS a ON r.oid = a.oid
        CROSS JOIN
            LATERAL (
                SELECT CASE WHEN r.oid = 0 THEN 'public' ELSE quote_ident(a.rolname) END AS role_name
            ) AS x
        ORDER BY x.role_name
    ) AS roles,
    exists(
        SELECT
        FROM unnest(p.polroles) AS r (oid)
        WHERE
            r.oid = 0
            OR EXISTS (
                SELECT
                FROM conformance.app_roles AS app
                WHERE pg_catalog.pg_has_role(app.oid, r.oid, 'USAGE')
            )
    ) AS applies_to_app,
    conformance.policy_expression(p.polqual, p.polrelid) AS using_expression,
    conformance.policy_expression(p.polwithcheck, p.polrelid) AS check_expression,
    p.polqual,
    p.polwithcheck,
    exists(
        SELECT
        FROM pg_catalog.pg_depend AS d
        WHERE
            d.classid = 'pg_catalog.pg_policy'::regclass
            AND d.objid = p.oid
            AND d.refclassid = 'pg_catalog.pg_class'::regclass
            AND d.refobjid = p.polrelid
            AND d.refobjsubid <> 0
    ) AS references_columns
FROM pg_catalog.pg_policy AS p
INNER JOIN conformance.tables AS t ON p.polrelid = t.oid;
COMMENT ON VIEW conformance.policies IS
'Row-level security policies, deparsed, with whether each applies to tracefence_app.';

-- Views and materialized views with every table they read, directly or through other views.
CREATE OR REPLACE VIEW conformance.view_sources AS
WITH RECURSIVE direct AS (
    SELECT DISTINCT
        r.ev_class AS dependent,
        d.refobjid AS referenced
    FROM pg_catalog.pg_rewrite AS r
    INNER JOIN pg_catalog.pg_depend AS d
        ON
            d.classid = 'pg_catalog.pg_rewrite'::regclass
            AND r.oid = d.objid
            AND d.refclassid = 'pg_catalog.pg_class'::regclass
            AND r.ev_class <> d.refobjid
),

reach (dependent, referenced) AS (
    SELECT
        direct.dependent,
        direct.referenced
    FROM direct
    UNION
    SELECT
        reach.dependent,
        direct.referenced
    FROM reach
    INNER JOIN direct ON reach.referenced = direct.dependent
)

SELECT
    v.oid AS view_oid,
    format('%I.%I', n.nspname, v.relname) AS view_name,
    v.relkind::text AS relkind,
    t.oid AS table_oid,
    t.relation AS table_name,
    t.tier
FROM reach
INNER JOIN pg_catalog.pg_class AS v ON reach.dependent = v.oid
INNER JOIN pg_catalog.pg_namespace AS n ON v.relnamespace = n.oid
INNER JOIN conformance.tables AS t ON reach.referenced = t.oid
WHERE v.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema');
COMMENT ON VIEW conformance.view_sources IS
'Each view and materialized view with every table it reads, through other views too.';

REVOKE ALL ON FUNCTION conformance.function_name(oid) FROM public;
REVOKE ALL ON FUNCTION conformance.policy_expression(pg_node_tree, oid) FROM public;
REVOKE ALL ON FUNCTION conformance.command_name(text) FROM public;
REVOKE ALL ON FUNCTION conformance.strip_parentheses(text) FROM public;
REVOKE ALL ON FUNCTION conformance.boolean_operands(text, text) FROM public;
REVOKE ALL ON FUNCTION conformance.is_scope_key(text, text, boolean) FROM public;
REVOKE ALL ON FUNCTION conformance.is_keyed(text, text) FROM public;
REVOKE ALL ON FUNCTION conformance.is_keyed(text, text, boolean) FROM public;
REVOKE ALL ON FUNCTION conformance.is_tier_path_key(text) FROM public;
REVOKE ALL ON FUNCTION conformance.has_tier_path(oid) FROM public;
REVOKE ALL ON FUNCTION conformance.is_always_true(text) FROM public;
REVOKE ALL ON FUNCTION conformance.called_functions(pg_node_tree) FROM public;
REVOKE ALL ON FUNCTION conformance.written_in_this_transaction(xid) FROM public;
REVOKE ALL ON conformance.app_roles, conformance.tables, conformance.policies, conformance.view_sources
FROM public;

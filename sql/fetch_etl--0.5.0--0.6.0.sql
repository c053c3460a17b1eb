-- fetch_etl 0.5.0 -> 0.6.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- Pipelines (docs/pipelines.md): any event into any table, declared in SQL.
-- - fetch_etl.pipeline_definitions holds pipelines and routers, with the
--   built-in login pipeline (the exercise) as its first row; the view
--   fetch_etl.pipelines lists them; create_pipeline, create_router and
--   drop_pipeline change them.
-- - sqs_drain, sqs_drain_for and replay_dead_letters take a trailing
--   `pipeline text DEFAULT NULL` (NULL: the login pipeline, as before). A
--   new signature is a new function: each old one's grants are given to the
--   new one, then the old one is dropped. Calls that name their arguments or
--   pass the old ones positionally work unchanged.
-- - drain_runs and dead_letters record the pipeline (NULL before: login).
--
-- Takes brief ACCESS EXCLUSIVE locks on fetch_etl.drain_runs and
-- fetch_etl.dead_letters (new columns without a default: no rewrite).

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.6.0'" to load this file. \quit

-- Install-time trust (0.5.0). CREATE EXTENSION uses an existing schema named
-- fetch_etl whoever made it, and this script runs as a superuser: a role that
-- could make that schema first (a database's owner) could leave functions,
-- operators or tables in it for this script, or later drains, to use with a
-- superuser's rights. Refuse, before anything is created or changed, unless
-- the schema belongs to the extension's owner (the installing role) and holds
-- nothing but the extension's own objects (its members and what depends on
-- them internally: indexes, row types, constraints, owned sequences).
DO $trust$
DECLARE
    ext record;
    schema_owner name;
    creators text;
    strangers text[];
    saved_path constant text := pg_catalog.current_setting('search_path');
BEGIN
    -- Nothing below may resolve into the schema under suspicion. (Restored
    -- at the end: the rest of the script creates its objects through it.)
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT e.oid, e.extnamespace AS nsp, e.extowner AS owner INTO STRICT ext
      FROM pg_catalog.pg_extension AS e WHERE e.extname = 'fetch_etl';
    SELECT pg_catalog.pg_get_userbyid(n.nspowner) INTO schema_owner
      FROM pg_catalog.pg_namespace AS n WHERE n.oid = ext.nsp AND n.nspowner <> ext.owner;
    IF FOUND THEN
        RAISE EXCEPTION 'schema fetch_etl is owned by role %, not by %, the role installing fetch_etl',
                        schema_owner, pg_catalog.pg_get_userbyid(ext.owner)
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'fetch_etl runs its scripts and drains with a superuser''s rights, using what is in its schema; another role''s schema could lend it that role''s functions and tables.',
                  HINT = 'Check what schema fetch_etl holds, drop it (or, if you trust its contents, ALTER SCHEMA fetch_etl OWNER TO the installing role and REVOKE CREATE ON SCHEMA fetch_etl FROM every other role), then try again. Until then run no drain in this database: an older sqs_drain_for calls whatever sqs_drain the schema holds.';
    END IF;
    -- A schema that existed before this transaction (a restore's, or one
    -- other roles could write to) must not let anyone else create in it:
    -- they could add objects after this check, before this script's
    -- privileges are taken back. (One CREATE EXTENSION made just now is
    -- invisible to other sessions until it commits.)
    SELECT pg_catalog.string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC'
                                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END, ', ')
      INTO creators
      FROM pg_catalog.pg_namespace AS n, pg_catalog.aclexplode(n.nspacl) AS a
     WHERE n.oid = ext.nsp AND a.privilege_type = 'CREATE' AND a.grantee <> ext.owner
       AND pg_catalog.age(n.xmin) > 0;
    IF creators IS NOT NULL THEN
        RAISE EXCEPTION 'roles other than % may create objects in schema fetch_etl: %',
                        pg_catalog.pg_get_userbyid(ext.owner), creators
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'An object they add to the schema would be used with a superuser''s rights.',
                  HINT = 'REVOKE CREATE ON SCHEMA fetch_etl FROM ' || creators || '; then try again.';
    END IF;
    WITH RECURSIVE ours(classid, objid) AS (
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend AS d
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid = ext.oid AND d.deptype = 'e'
        UNION
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend AS d
          JOIN ours AS o ON d.refclassid = o.classid AND d.refobjid = o.objid
         WHERE d.deptype IN ('a', 'i')
    ), present(classid, objid) AS (
        SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_class AS c WHERE c.relnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type AS t WHERE t.typnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_operator AS o WHERE o.oprnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_opclass'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_opclass AS o WHERE o.opcnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_opfamily'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_opfamily AS o WHERE o.opfnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_collation AS c WHERE c.collnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_conversion'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_conversion AS c WHERE c.connamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_constraint AS c WHERE c.connamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, s.oid FROM pg_catalog.pg_statistic_ext AS s WHERE s.stxnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_ts_config AS c WHERE c.cfgnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, d.oid FROM pg_catalog.pg_ts_dict AS d WHERE d.dictnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_parser'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_ts_parser AS p WHERE p.prsnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_template'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_ts_template AS t WHERE t.tmplnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_extension'::pg_catalog.regclass, e.oid FROM pg_catalog.pg_extension AS e WHERE e.extnamespace = ext.nsp AND e.oid <> ext.oid
    ), theirs(classid, objid) AS (
        SELECT p.classid, p.objid FROM present AS p
         WHERE NOT EXISTS (SELECT FROM ours AS o WHERE o.classid = p.classid AND o.objid = p.objid)
    )
    -- (named once: a table's row type, indexes and constraints go with it)
    SELECT pg_catalog.array_agg(pg_catalog.pg_describe_object(t.classid, t.objid, 0) ORDER BY 1) INTO strangers
      FROM theirs AS t
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d JOIN theirs AS u
                         ON d.refclassid = u.classid AND d.refobjid = u.objid
                        WHERE d.classid = t.classid AND d.objid = t.objid AND d.deptype IN ('a', 'i'));
    IF strangers IS NOT NULL THEN
        RAISE EXCEPTION 'schema fetch_etl holds objects that are not fetch_etl''s'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Not fetch_etl''s (' || pg_catalog.cardinality(strangers) || '): '
                           || pg_catalog.array_to_string(strangers[1:10], '; ')
                           || CASE WHEN pg_catalog.cardinality(strangers) > 10 THEN '; ...' ELSE '' END || '.',
                  HINT = 'fetch_etl uses what is in its schema with a superuser''s rights: move or drop those objects first.';
    END IF;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$trust$;

ALTER TABLE fetch_etl.drain_runs ADD COLUMN pipeline text;
ALTER TABLE fetch_etl.dead_letters ADD COLUMN pipeline text, ADD COLUMN pipeline_id bigint,
    ADD COLUMN ledger_key text, ADD COLUMN attributes jsonb;

-- Pipelines and routers (0.6.0): how each message of a queue becomes rows of
-- a table (docs/pipelines.md). Changed only through create_pipeline,
-- create_router and drop_pipeline, which check who may; read by drains as the
-- owner; listed by the view fetch_etl.pipelines. A pipeline's rows are
-- inserted with its owner's privileges.
CREATE SEQUENCE fetch_etl.pipeline_definitions_id_seq;
CREATE TABLE fetch_etl.pipeline_definitions (
    name          text        COLLATE "C" PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- never reused: ledger keys and dead letters name a pipeline by it, so one
    -- dropped and made again under its name (by anyone) inherits neither
    id            bigint      NOT NULL UNIQUE DEFAULT pg_catalog.nextval('fetch_etl.pipeline_definitions_id_seq'),
    kind          text        NOT NULL CHECK (kind IN ('pipeline', 'router')),
    owner         regrole     NOT NULL,
    -- a pipeline: its table (NULL: the drain's target_table, for the built-in
    -- login pipeline), its column list as create_pipeline stored it, one row per
    -- element of rows_path, and what makes a message the same event as one
    -- loaded before
    target        regclass,
    columns       text,
    rows_path     text,
    idempotency   text        NOT NULL DEFAULT 'message_id',
    -- a router: the value it routes by, value -> pipeline, and the pipeline for
    -- values no route names (NULL: dead letters, no_route)
    route_by      text,
    routes        jsonb,
    otherwise     text,
    -- the reject reason of an event with none of the pipeline's fields, and the
    -- columns of a target table created when missing (the login pipeline's)
    unrecognized  text        NOT NULL DEFAULT 'unrecognized_event',
    create_table  text,
    builtin       boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (CASE kind WHEN 'pipeline' THEN columns IS NOT NULL AND route_by IS NULL AND routes IS NULL
                                          AND otherwise IS NULL AND (target IS NOT NULL OR builtin)
                     ELSE route_by IS NOT NULL AND routes IS NOT NULL AND columns IS NULL
                          AND target IS NULL AND rows_path IS NULL END)
);
ALTER SEQUENCE fetch_etl.pipeline_definitions_id_seq OWNED BY fetch_etl.pipeline_definitions.id;
COMMENT ON TABLE fetch_etl.pipeline_definitions IS
    'fetch_etl: pipelines and routers (changed through create_pipeline, create_router, drop_pipeline; listed by fetch_etl.pipelines); owner only.';
REVOKE ALL ON TABLE fetch_etl.pipeline_definitions FROM PUBLIC;
-- Users' pipelines go into pg_dump (the built-in one comes with the extension),
-- those whose owner role or table still exists: a dropped one's regrole or
-- regclass would be dumped as a bare OID, which a restore could give to another.
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pipeline_definitions',
    'WHERE NOT builtin AND EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.oid OPERATOR(pg_catalog.=) owner::pg_catalog.oid)'
    ' AND (target IS NULL OR EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid OPERATOR(pg_catalog.=) target::pg_catalog.oid))');
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pipeline_definitions_id_seq', '');

-- The built-in pipeline: the Fetch Rewards exercise's login events, what
-- sqs_drain(queue_url) runs (fetch_etl_core::pipeline::login has the same text;
-- a test checks).
INSERT INTO fetch_etl.pipeline_definitions
    (name, kind, owner, target, columns, idempotency, unrecognized, create_table, builtin)
SELECT 'login', 'pipeline', e.extowner::pg_catalog.regrole, NULL,
       $columns$user_id text PATH '$.user_id' STRING REQUIRED,
device_type text PATH '$.device_type' STRING,
masked_ip PATH '$.ip' STRING MASKED,
locale text PATH '$.locale' STRING,
masked_device_id PATH '$.device_id' STRING MASKED,
app_version PATH '$.app_version' STRING USING version,
create_date MESSAGE sent_date,
sqs_message_id MESSAGE message_id IF EXISTS,
sqs_sent_at MESSAGE sent_at IF EXISTS,
sqs_attributes MESSAGE attributes IF EXISTS$columns$,
       'message_id', 'not_login_event',
       $ddl$user_id varchar(128), device_type varchar(32), masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date$ddl$,
       true
  FROM pg_catalog.pg_extension AS e WHERE e.extname = 'fetch_etl';

CREATE FUNCTION fetch_etl."sqs_drain"(
	"queue_url" TEXT, /* Option < & str > */
	"max_messages" INT DEFAULT 1000, /* Option < i32 > */
	"wait_seconds" INT DEFAULT 0, /* Option < i32 > */
	"target_table" TEXT DEFAULT 'user_logins', /* Option < & str > */
	"visibility_timeout" INT DEFAULT NULL, /* Option < i32 > */
	"on_error" TEXT DEFAULT 'raise', /* Option < & str > */
	"pipeline" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"run_id" bigint,  /* Option < i64 > */
	"received" bigint,  /* i64 */
	"loaded" bigint,  /* i64 */
	"rejected" bigint,  /* i64 */
	"duplicates" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sqs_drain_through_wrapper';

CREATE FUNCTION fetch_etl."replay_dead_letters"(
	"queue_url" TEXT DEFAULT NULL, /* Option < & str > */
	"reason_code" TEXT DEFAULT NULL, /* Option < & str > */
	"target_table" TEXT DEFAULT 'user_logins', /* Option < & str > */
	"max_rows" INT DEFAULT 1000, /* Option < i32 > */
	"any_target" bool DEFAULT false, /* Option < bool > */
	"pipeline" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"replayed" bigint,  /* i64 */
	"loaded" bigint,  /* i64 */
	"rejected" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'replay_dead_letters_through_wrapper';

CREATE FUNCTION fetch_etl."create_pipeline"(
	"name" TEXT, /* Option < & str > */
	"target" TEXT, /* Option < & str > */
	"columns" TEXT, /* Option < & str > */
	"rows" TEXT DEFAULT NULL, /* Option < & str > */
	"idempotency" TEXT DEFAULT 'message_id', /* Option < & str > */
	"replace" bool DEFAULT false /* Option < bool > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_pipeline_wrapper';

CREATE FUNCTION fetch_etl."create_router"(
	"name" TEXT, /* Option < & str > */
	"route_by" TEXT, /* Option < & str > */
	"routes" jsonb, /* Option < JsonB > */
	"otherwise" TEXT DEFAULT NULL, /* Option < & str > */
	"replace" bool DEFAULT false /* Option < bool > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_router_wrapper';

CREATE FUNCTION fetch_etl."drop_pipeline"(
	"name" TEXT, /* Option < & str > */
	"if_exists" bool DEFAULT false /* Option < bool > */
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_pipeline_wrapper';

-- Drain repeatedly for up to time_budget, committing after each call, so that
-- rows become visible and messages are deleted within seconds while a
-- once-a-minute pg_cron job is running. Stops early when another session is
-- draining the queue. A procedure with COMMIT cannot have a SET clause: every
-- name inside is schema-qualified instead.
CREATE PROCEDURE fetch_etl.sqs_drain_for(
    queue_url    text,
    time_budget  interval DEFAULT interval '55 seconds',
    wait_seconds integer  DEFAULT 20,
    target_table text     DEFAULT 'user_logins',
    max_messages integer  DEFAULT 1000,
    on_error     text     DEFAULT 'raise',
    pipeline     text     DEFAULT NULL
)
    LANGUAGE plpgsql
AS $$
DECLARE
    deadline constant pg_catalog.timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) time_budget;
    left_s integer;
    r record;
BEGIN
    IF time_budget IS NULL OR time_budget OPERATOR(pg_catalog.<) interval '1 second'
       OR time_budget OPERATOR(pg_catalog.>) interval '1 day' THEN
        RAISE EXCEPTION 'time_budget must be between 1 second and 1 day' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF wait_seconds IS NULL OR wait_seconds OPERATOR(pg_catalog.<) 1 OR wait_seconds OPERATOR(pg_catalog.>) 20 THEN
        RAISE EXCEPTION 'wait_seconds must be between 1 and 20 for sqs_drain_for'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        left_s := pg_catalog.floor(pg_catalog.date_part('epoch', deadline OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp()))::integer;
        EXIT WHEN left_s OPERATOR(pg_catalog.<) 1;
        -- Every argument typed: no overload can be a better match.
        SELECT * INTO r FROM fetch_etl.sqs_drain(queue_url::pg_catalog.text, max_messages::integer,
            pg_catalog.int4smaller(wait_seconds, pg_catalog.int4larger(left_s OPERATOR(pg_catalog.-) 1, 0))::integer,
            target_table::pg_catalog.text, NULL::integer, on_error::pg_catalog.text, pipeline::pg_catalog.text);
        COMMIT;
        EXIT WHEN r.run_id IS NULL;  -- another session is draining this queue
    END LOOP;
END
$$;
COMMENT ON PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text) IS
    'Drain repeatedly for up to time_budget, committing after each sqs_drain call (for pg_cron).';
COMMENT ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text) IS
    'Drain an SQS queue through a pipeline (default: the login events into target_table): masked rows, dead letters, deletes after COMMIT.';
COMMENT ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text) IS
    'Run dead letters through their pipeline and table again (the login pipeline''s: those of target_table, any_target: of any table); loaded ones are marked replayed.';
COMMENT ON FUNCTION fetch_etl.create_pipeline(text, text, text, text, text, boolean) IS
    'Create (replace) a pipeline: how each message becomes rows of target. Owned by the caller; its rows are inserted with the owner''s privileges.';
COMMENT ON FUNCTION fetch_etl.create_router(text, text, jsonb, text, boolean) IS
    'Create (replace) a router: each message goes to the pipeline its route_by value names in routes, else otherwise, else no_route.';
COMMENT ON FUNCTION fetch_etl.drop_pipeline(text, boolean) IS
    'Drop a pipeline or router (its owner or a superuser); false if there was none and if_exists.';

-- The pipelines and routers a role may drain: its own and its roles' (a
-- superuser: all), and the built-in ones.
CREATE VIEW fetch_etl.pipelines WITH (security_barrier) AS
SELECT d.name, d.kind, d.owner, d.target, d.columns, d.rows_path AS rows, d.idempotency,
       d.route_by, d.routes, d.otherwise, d.builtin, d.created_at, d.updated_at
  FROM fetch_etl.pipeline_definitions AS d
 WHERE d.builtin
    OR EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER AND r.rolsuper)
    OR CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                          WHERE r.oid OPERATOR(pg_catalog.=) d.owner::pg_catalog.oid)
            THEN pg_catalog.pg_has_role(d.owner::pg_catalog.oid, 'USAGE') ELSE false END;
COMMENT ON VIEW fetch_etl.pipelines IS
    'fetch_etl: the pipelines and routers the current role may drain (its own and its roles''; a superuser: all). GRANT SELECT to pipeline authors.';

REVOKE ALL ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.create_pipeline(text, text, text, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.create_router(text, text, jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.drop_pipeline(text, boolean) FROM PUBLIC;
REVOKE ALL ON TABLE fetch_etl.pipelines FROM PUBLIC;

-- What this script created got the installer's default privileges, if any:
-- every privilege on it but its owner's is taken back (each named in a
-- NOTICE), as a fresh install does. Then the grants of the three routines
-- whose signatures changed go to their new signatures, and the old ones are
-- dropped.
DO $privileges$
DECLARE
    r record;
    saved_path constant text := pg_catalog.current_setting('search_path');
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR r IN
        WITH new_objects(kind, object, acl, owner) AS (
            SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass::text,
                   coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)),
                   c.relowner
              FROM pg_class AS c
             WHERE c.oid IN ('fetch_etl.pipeline_definitions'::regclass, 'fetch_etl.pipelines'::regclass,
                             'fetch_etl.pipeline_definitions_id_seq'::regclass)
            UNION ALL
            SELECT 'ROUTINE', p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner
              FROM pg_proc AS p
             WHERE p.oid IN ('fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text)'::regprocedure,
                             'fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text)'::regprocedure,
                             'fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text)'::regprocedure,
                             'fetch_etl.create_pipeline(text, text, text, text, text, boolean)'::regprocedure,
                             'fetch_etl.create_router(text, text, jsonb, text, boolean)'::regprocedure,
                             'fetch_etl.drop_pipeline(text, boolean)'::regprocedure)
        )
        SELECT DISTINCT o.kind, o.object,
               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE format('%I', pg_get_userbyid(a.grantee)) END AS grantee
          FROM new_objects AS o, aclexplode(o.acl) AS a
         WHERE a.grantee <> o.owner
         ORDER BY 1, 2, 3
    LOOP
        IF r.grantee <> 'PUBLIC' THEN
            RAISE NOTICE 'fetch_etl: revoking every privilege of % on % %', r.grantee, pg_catalog.lower(r.kind), r.object;
        END IF;
        EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE', r.kind, r.object, r.grantee);
    END LOOP;
    FOR r IN
        SELECT f.new_fn, CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE format('%I', pg_get_userbyid(a.grantee)) END AS grantee,
               a.is_grantable
          FROM (VALUES ('fetch_etl.sqs_drain(text, integer, integer, text, integer, text)'::regprocedure,
                        'FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text)'),
                       ('fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text)'::regprocedure,
                        'PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text)'),
                       ('fetch_etl.replay_dead_letters(text, text, text, integer, boolean)'::regprocedure,
                        'FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text)'))
               AS f(old_fn, new_fn)
          JOIN pg_proc AS p ON p.oid = f.old_fn, aclexplode(p.proacl) AS a
         WHERE a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
         ORDER BY 1, 2
    LOOP
        EXECUTE format('GRANT EXECUTE ON %s TO %s%s', r.new_fn, r.grantee,
                       CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$privileges$;

DROP FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text);
DROP PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text);
DROP FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean);

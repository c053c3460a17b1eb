-- fetch_etl 0.1.0 -> 0.2.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- Durability and the trust boundary: the queue lock moves from an advisory
-- lock (which any role could take) to a row only the owner can lock; dead
-- letters record who produced them for which table, and a replay loads only
-- its own table's unless told otherwise; runs count the messages they left
-- for a later drain.

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.2.0'" to load this file. \quit

-- Install-time trust (added in 0.5.0 to every update script: checked before
-- anything changes). CREATE EXTENSION uses an existing schema named
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

CREATE TABLE fetch_etl.queue_locks (
    queue_key      text        COLLATE "C" PRIMARY KEY,
    first_drained  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fetch_etl.queue_locks IS 'fetch_etl: one lockable row per queue (normalised URL); owner only.';
REVOKE ALL ON TABLE fetch_etl.queue_locks FROM PUBLIC;

ALTER TABLE fetch_etl.drain_runs ADD COLUMN deferred bigint NOT NULL DEFAULT 0;

ALTER TABLE fetch_etl.dead_letters ADD COLUMN run_role name, ADD COLUMN target_table text;
-- Dead letters from before know their table and role through their run, while
-- its record is kept (fetch_etl.prune keeps 30 days by default).
UPDATE fetch_etl.dead_letters d
   SET target_table = r.target_table, run_role = r.run_by
  FROM fetch_etl.drain_runs r
 WHERE r.run_id OPERATOR(pg_catalog.=) d.run_id;

-- replay_dead_letters gains any_target. Keep the EXECUTE grants the old
-- signature had.
CREATE TEMPORARY TABLE fetch_etl_upgrade_grants AS
SELECT a.grantee::pg_catalog.regrole::pg_catalog.text AS grantee, a.is_grantable
  FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
 WHERE p.oid OPERATOR(pg_catalog.=) 'fetch_etl.replay_dead_letters(text, text, text, integer)'::pg_catalog.regprocedure
   AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
   AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
   AND a.grantee OPERATOR(pg_catalog.<>) 0;

DROP FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer);

CREATE FUNCTION fetch_etl.replay_dead_letters(
	"queue_url" TEXT DEFAULT NULL,
	"reason_code" TEXT DEFAULT NULL,
	"target_table" TEXT DEFAULT 'user_logins',
	"max_rows" INT DEFAULT 1000,
	"any_target" bool DEFAULT false
) RETURNS TABLE (
	"replayed" bigint,
	"loaded" bigint,
	"rejected" bigint
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'replay_dead_letters_wrapper';
COMMENT ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean) IS
    'Run dead letters of target_table (any_target: of any table) through validation and the target table again; loaded ones are marked replayed.';
REVOKE ALL ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean) FROM PUBLIC;

DO $$
DECLARE g record;
BEGIN
    FOR g IN SELECT * FROM pg_temp.fetch_etl_upgrade_grants LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean) TO %s%s',
            g.grantee, CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
DROP TABLE pg_temp.fetch_etl_upgrade_grants;

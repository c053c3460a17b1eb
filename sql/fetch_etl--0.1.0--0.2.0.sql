-- fetch_etl 0.1.0 -> 0.2.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- Durability and the trust boundary: the queue lock moves from an advisory
-- lock (which any role could take) to a row only the owner can lock; dead
-- letters record who produced them for which table, and a replay loads only
-- its own table's unless told otherwise; runs count the messages they left
-- for a later drain.

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.2.0'" to load this file. \quit

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

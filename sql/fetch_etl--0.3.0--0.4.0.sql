-- fetch_etl 0.3.0 -> 0.4.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- - Dead letters remember how often a replay refused them again and when:
--   replay_dead_letters takes those tried longest ago first (so dead letters
--   that keep failing no longer hold back the ones behind them) and reads the
--   bodies in pages of bounded size.
-- - prune keeps ledger entries at least 14 days (SQS's longest retention);
--   shorter would let a message whose delete failed load twice. Its floors
--   compare the cutoffs, so an interval of mixed signs cannot pass them.
-- - Vault pairs whose mask another session held uncommitted too long go to
--   fetch_etl.pii_vault_pending in the drain's transaction instead of being
--   skipped (lost, should that session roll back); unmask() reads them, and
--   prune() moves them into the vault.
--
-- Takes a brief ACCESS EXCLUSIVE lock on fetch_etl.dead_letters (the new
-- columns have constant defaults: no rewrite) and builds an index on it.

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.4.0'" to load this file. \quit

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

ALTER TABLE fetch_etl.dead_letters
    ADD COLUMN replay_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_at timestamptz;
CREATE INDEX dead_letters_replay_order ON fetch_etl.dead_letters (last_replay_at NULLS FIRST, dead_letter_id)
    WHERE replayed_at IS NULL;

-- Vault pairs a drain could not add because another session held the same
-- mask uncommitted beyond fetch_etl.ledger_wait_timeout (0.4.0). Written in
-- the drain's own transaction, so the value survives should that session roll
-- back; unmask() reads them after the vault, prune() moves them into it.
CREATE TABLE fetch_etl.pii_vault_pending (
    masked      text        COLLATE "C" NOT NULL CHECK (pg_catalog.length(masked) = 64),
    raw         text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX pii_vault_pending_masked ON fetch_etl.pii_vault_pending (masked);
COMMENT ON TABLE fetch_etl.pii_vault_pending IS
    'fetch_etl: mask -> raw value pairs waiting to enter pii_vault (moved by prune()). Contains PII; readable by the owner only.';
REVOKE ALL ON TABLE fetch_etl.pii_vault_pending FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pii_vault_pending', '');

-- The same signatures: OR REPLACE keeps their owner and grants; new comments.
CREATE OR REPLACE FUNCTION fetch_etl.unmask(masked text) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT coalesce(
        (SELECT v.raw FROM fetch_etl.pii_vault AS v WHERE v.masked = unmask.masked),
        (SELECT p.raw FROM fetch_etl.pii_vault_pending AS p WHERE p.masked = unmask.masked LIMIT 1))
$$;

CREATE OR REPLACE FUNCTION fetch_etl.prune(
    keep_runs     interval DEFAULT interval '30 days',
    keep_ledger   interval DEFAULT interval '14 days',
    keep_replayed interval DEFAULT interval '30 days'
) RETURNS TABLE (runs bigint, ledger bigint, replayed_dead_letters bigint)
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    saved_lock_timeout text;
BEGIN
    -- The floors compare cutoffs, not intervals: interval comparison counts a
    -- month as 30 days, subtraction does not, so '-1200 mons 36014 days'
    -- "equals" 14 days yet puts the cutoff 500 days in the future.
    IF pg_catalog.now() - keep_runs > pg_catalog.now() - interval '1 hour'
       OR pg_catalog.now() - keep_replayed > pg_catalog.now() - interval '1 hour' THEN
        RAISE EXCEPTION 'fetch_etl.prune keeps at least 1 hour of run records and replayed dead letters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A message whose delete failed comes back until the queue's retention
    -- (at most 14 days) runs out, and only its ledger entry keeps it from
    -- loading twice. prune, which operators are granted, never keeps less; a
    -- superuser who must can DELETE from fetch_etl.processed_messages.
    IF pg_catalog.now() - keep_ledger > pg_catalog.now() - interval '14 days' THEN
        RAISE EXCEPTION 'fetch_etl.prune keeps at least 14 days of ledger entries'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'SQS redelivers a message whose delete failed until its MessageRetentionPeriod (at most 14 days) ends; without its ledger entry it would be loaded twice.';
    END IF;
    DELETE FROM fetch_etl.drain_runs WHERE started_at < pg_catalog.now() - keep_runs;
    GET DIAGNOSTICS runs = ROW_COUNT;
    DELETE FROM fetch_etl.processed_messages WHERE processed_at < pg_catalog.now() - keep_ledger;
    GET DIAGNOSTICS ledger = ROW_COUNT;
    DELETE FROM fetch_etl.dead_letters WHERE replayed_at < pg_catalog.now() - keep_replayed;
    GET DIAGNOSTICS replayed_dead_letters = ROW_COUNT;
    -- Vault pairs a drain left pending move into the vault: one statement, so
    -- no pair committed meanwhile is deleted without being moved. Waiting at
    -- most 5 seconds on a session adding one of those masks; if it takes
    -- longer, they all stay pending until the next prune.
    saved_lock_timeout := pg_catalog.current_setting('lock_timeout');
    BEGIN
        PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
        WITH moved AS (DELETE FROM fetch_etl.pii_vault_pending RETURNING masked, raw)
        INSERT INTO fetch_etl.pii_vault (masked, raw)
            SELECT DISTINCT ON (m.masked) m.masked, m.raw FROM moved AS m ORDER BY m.masked
            ON CONFLICT (masked) DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        RAISE NOTICE 'fetch_etl.prune: another session is adding vault entries; the pending ones stay until the next prune';
    END;
    PERFORM pg_catalog.set_config('lock_timeout', saved_lock_timeout, true);
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION fetch_etl.unmask(text) IS
    'Original value of a mask from the PII vault (or its pending pairs), or NULL if unknown. EXECUTE must be granted explicitly.';
COMMENT ON FUNCTION fetch_etl.prune(interval, interval, interval) IS
    'Housekeeping: delete run records, ledger entries (at least 14 days kept) and replayed dead letters older than the given ages; move pending vault pairs into the vault.';

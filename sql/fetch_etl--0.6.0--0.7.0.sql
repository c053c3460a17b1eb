-- fetch_etl 0.6.0 -> 0.7.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- Health that sees every failure (docs/operations.md, "Monitoring"):
-- - a failed drain is recorded in drain_runs whatever on_error is (the
--   library records it outside the rolled-back transaction; no catalog
--   change);
-- - queue_health gains state, skipped_since, failing_since,
--   failed_last_hour and skipped_last_hour (appended), and its
--   dead_letters_pending leaves out discarded dead letters;
-- - dead letters can be discarded with a note (discard_dead_letters; new
--   columns discarded_at, discarded_by, discard_note);
-- - queue_counters: per-queue counters that never go down, prune() folding
--   what it deletes of drain_runs into drain_run_totals;
-- - sqs_drain_for backs off after failures with on_error => 'record';
-- - drain_progress(): drains and replays running now, from shared memory.
--
-- Takes a brief ACCESS EXCLUSIVE lock on fetch_etl.dead_letters (new
-- columns without a default: no rewrite).

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.7.0'" to load this file. \quit

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

ALTER TABLE fetch_etl.dead_letters
    ADD COLUMN discarded_at timestamptz,
    ADD COLUMN discarded_by name,
    ADD COLUMN discard_note text;

CREATE TABLE fetch_etl.drain_run_totals (
    queue_url    text   PRIMARY KEY,
    runs         bigint NOT NULL DEFAULT 0,
    failed_runs  bigint NOT NULL DEFAULT 0,
    skipped_runs bigint NOT NULL DEFAULT 0,
    received     bigint NOT NULL DEFAULT 0,
    loaded       bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    duplicates   bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE fetch_etl.drain_run_totals IS 'fetch_etl: the sums of the run records prune() deleted, per queue.';
REVOKE ALL ON TABLE fetch_etl.drain_run_totals FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.drain_run_totals', '');

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
    retention interval;
    expired bigint;
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
    -- what is deleted of the run records stays in their totals (queue_counters)
    WITH gone AS (
        DELETE FROM fetch_etl.drain_runs WHERE started_at < pg_catalog.now() - keep_runs
        RETURNING queue_url, status, received, loaded, rejected, duplicates
    ), folded AS (
        INSERT INTO fetch_etl.drain_run_totals AS t
               (queue_url, runs, failed_runs, skipped_runs, received, loaded, rejected, duplicates)
        SELECT g.queue_url, pg_catalog.count(*),
               pg_catalog.count(*) FILTER (WHERE g.status = 'failed'),
               pg_catalog.count(*) FILTER (WHERE g.status = 'skipped'),
               pg_catalog.sum(g.received), pg_catalog.sum(g.loaded), pg_catalog.sum(g.rejected), pg_catalog.sum(g.duplicates)
          FROM gone AS g GROUP BY g.queue_url
        ON CONFLICT (queue_url) DO UPDATE
           SET runs = t.runs + EXCLUDED.runs, failed_runs = t.failed_runs + EXCLUDED.failed_runs,
               skipped_runs = t.skipped_runs + EXCLUDED.skipped_runs, received = t.received + EXCLUDED.received,
               loaded = t.loaded + EXCLUDED.loaded, rejected = t.rejected + EXCLUDED.rejected,
               duplicates = t.duplicates + EXCLUDED.duplicates
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO runs FROM gone;
    DELETE FROM fetch_etl.processed_messages WHERE processed_at < pg_catalog.now() - keep_ledger;
    GET DIAGNOSTICS ledger = ROW_COUNT;
    DELETE FROM fetch_etl.dead_letters
     WHERE replayed_at < pg_catalog.now() - keep_replayed OR discarded_at < pg_catalog.now() - keep_replayed;
    GET DIAGNOSTICS replayed_dead_letters = ROW_COUNT;
    -- Dead letters never replayed, past the superuser's retention (0.5.0):
    -- anyone who can send to a queue decides how many there are.
    retention := fetch_etl.dead_letter_retention();
    IF retention IS NOT NULL THEN
        -- (discarded ones too: a discard must not keep raw PII past the retention)
        DELETE FROM fetch_etl.dead_letters WHERE replayed_at IS NULL AND dead_at < pg_catalog.now() - retention;
        GET DIAGNOSTICS expired = ROW_COUNT;
        IF expired > 0 THEN
            RAISE NOTICE 'fetch_etl.prune: removed % dead letters never replayed, older than fetch_etl.dead_letter_retention (%)',
                expired, retention;
        END IF;
    END IF;
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
COMMENT ON FUNCTION fetch_etl.prune(interval, interval, interval) IS
    'Housekeeping: delete run records (their sums kept in drain_run_totals), ledger entries (at least 14 days kept) and replayed or discarded dead letters older than the given ages, and dead letters past fetch_etl.dead_letter_retention; move pending vault pairs into the vault.';

CREATE OR REPLACE PROCEDURE fetch_etl.sqs_drain_for(
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
    failures integer := 0;
    failed boolean;
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
        failed := false;
        IF on_error IS NOT NULL AND on_error OPERATOR(pg_catalog.=) 'record' THEN
            BEGIN
                -- Every argument typed: no overload can be a better match.
                SELECT * INTO r FROM fetch_etl.sqs_drain(queue_url::pg_catalog.text, max_messages::integer,
                    pg_catalog.int4smaller(wait_seconds, pg_catalog.int4larger(left_s OPERATOR(pg_catalog.-) 1, 0))::integer,
                    target_table::pg_catalog.text, NULL::integer, 'raise'::pg_catalog.text, pipeline::pg_catalog.text);
            EXCEPTION WHEN OTHERS THEN  -- not a cancel or a timeout: those end the call
                failed := true;
                RAISE WARNING 'fetch_etl: a drain failed and was rolled back: % %', SQLSTATE, SQLERRM;
            END;
        ELSE
            SELECT * INTO r FROM fetch_etl.sqs_drain(queue_url::pg_catalog.text, max_messages::integer,
                pg_catalog.int4smaller(wait_seconds, pg_catalog.int4larger(left_s OPERATOR(pg_catalog.-) 1, 0))::integer,
                target_table::pg_catalog.text, NULL::integer, on_error::pg_catalog.text, pipeline::pg_catalog.text);
        END IF;
        COMMIT;
        IF failed THEN
            failures := failures OPERATOR(pg_catalog.+) 1;
            PERFORM pg_catalog.pg_sleep(LEAST(  -- (LEAST is syntax, not a function)
                pg_catalog.power(2, pg_catalog.int4smaller(failures, 6) OPERATOR(pg_catalog.-) 1)::double precision,
                30::double precision,
                pg_catalog.date_part('epoch', deadline OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp())));
            CONTINUE;
        END IF;
        failures := 0;
        EXIT WHEN r.run_id IS NULL;  -- another session is draining this queue
    END LOOP;
END
$$;
COMMENT ON PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text) IS
    'Drain repeatedly for up to time_budget, committing after each sqs_drain call (for pg_cron); with on_error => ''record'', failures back off 1 s to 30 s.';

CREATE OR REPLACE VIEW fetch_etl.queue_health AS
SELECT a.queue_url, a.last_run_at, a.last_status, a.last_load_at, a.last_error, a.last_error_at,
       a.runs_last_hour, a.received_last_hour, a.loaded_last_hour, a.rejected_last_day, a.messages_per_second,
       (SELECT pg_catalog.count(*) FROM fetch_etl.dead_letters d
         WHERE d.queue_url OPERATOR(pg_catalog.=) a.queue_url AND d.replayed_at IS NULL
           AND d.discarded_at IS NULL) AS dead_letters_pending,
       CASE WHEN a.last_status OPERATOR(pg_catalog.=) 'skipped' THEN 'skipped'
            WHEN a.last_real_status OPERATOR(pg_catalog.=) ANY (ARRAY['failed', 'partial']) THEN 'failing'
            WHEN a.last_real_loaded OPERATOR(pg_catalog.>) 0 THEN 'loading'
            WHEN a.last_real_received OPERATOR(pg_catalog.>) 0 OR a.last_real_deferred OPERATOR(pg_catalog.>) 0 THEN 'not_loading'
            ELSE 'idle' END AS state,
       CASE WHEN a.last_status OPERATOR(pg_catalog.=) 'skipped' THEN
           (SELECT pg_catalog.min(s.started_at) FROM fetch_etl.drain_runs s
             WHERE s.queue_url OPERATOR(pg_catalog.=) a.queue_url
               AND s.run_id OPERATOR(pg_catalog.>) COALESCE(a.last_real_run, 0)) END AS skipped_since,
       CASE WHEN a.last_real_status OPERATOR(pg_catalog.=) ANY (ARRAY['failed', 'partial']) THEN
           (SELECT pg_catalog.min(s.started_at) FROM fetch_etl.drain_runs s
             WHERE s.queue_url OPERATOR(pg_catalog.=) a.queue_url
               AND s.status OPERATOR(pg_catalog.=) ANY (ARRAY['failed', 'partial'])
               AND s.run_id OPERATOR(pg_catalog.>) COALESCE(a.last_good_run, 0)) END AS failing_since,
       a.failed_last_hour, a.skipped_last_hour
FROM (
    SELECT r.queue_url,
           pg_catalog.max(r.started_at) AS last_run_at,
           (pg_catalog.array_agg(r.status ORDER BY r.run_id DESC))[1] AS last_status,
           pg_catalog.max(r.started_at) FILTER (WHERE r.loaded OPERATOR(pg_catalog.>) 0) AS last_load_at,
           (pg_catalog.array_agg(r.error ORDER BY r.run_id DESC) FILTER (WHERE r.error IS NOT NULL))[1] AS last_error,
           pg_catalog.max(r.started_at) FILTER (WHERE r.error IS NOT NULL) AS last_error_at,
           pg_catalog.count(*) FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')) AS runs_last_hour,
           COALESCE(pg_catalog.sum(r.received) FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')), 0) AS received_last_hour,
           COALESCE(pg_catalog.sum(r.loaded) FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')), 0) AS loaded_last_hour,
           COALESCE(pg_catalog.sum(r.rejected) FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 day')), 0) AS rejected_last_day,
           -- while messages were flowing: a run's final empty long poll does not count
           pg_catalog.round((pg_catalog.sum(r.received) FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour') AND r.received OPERATOR(pg_catalog.>) 0)
                  OPERATOR(pg_catalog./) NULLIF(pg_catalog.sum(r.active_seconds)
                           FILTER (WHERE r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour') AND r.received OPERATOR(pg_catalog.>) 0), 0::double precision))::numeric, 1)
               AS messages_per_second,
           -- the latest run that was not skipped, and the streaks since the latest good one
           (pg_catalog.array_agg(r.status ORDER BY r.run_id DESC) FILTER (WHERE r.status OPERATOR(pg_catalog.<>) 'skipped'))[1] AS last_real_status,
           (pg_catalog.array_agg(r.loaded ORDER BY r.run_id DESC) FILTER (WHERE r.status OPERATOR(pg_catalog.<>) 'skipped'))[1] AS last_real_loaded,
           (pg_catalog.array_agg(r.received ORDER BY r.run_id DESC) FILTER (WHERE r.status OPERATOR(pg_catalog.<>) 'skipped'))[1] AS last_real_received,
           (pg_catalog.array_agg(r.deferred ORDER BY r.run_id DESC) FILTER (WHERE r.status OPERATOR(pg_catalog.<>) 'skipped'))[1] AS last_real_deferred,
           pg_catalog.count(*) FILTER (WHERE r.status OPERATOR(pg_catalog.=) 'failed' AND r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')) AS failed_last_hour,
           pg_catalog.count(*) FILTER (WHERE r.status OPERATOR(pg_catalog.=) 'skipped' AND r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')) AS skipped_last_hour,
           pg_catalog.max(r.run_id) FILTER (WHERE r.status OPERATOR(pg_catalog.<>) 'skipped') AS last_real_run,
           pg_catalog.max(r.run_id) FILTER (WHERE r.status OPERATOR(pg_catalog.=) 'ok') AS last_good_run
      FROM fetch_etl.drain_runs r
     GROUP BY r.queue_url
) a;
COMMENT ON VIEW fetch_etl.queue_health IS
    'fetch_etl: per-queue state, last run, last error, recent volume and rate, failed and skipped runs, dead letters pending. GRANT SELECT to monitoring roles.';

CREATE VIEW fetch_etl.queue_counters AS
SELECT c.queue_url,
       pg_catalog.sum(c.runs)::bigint AS runs,
       pg_catalog.sum(c.failed_runs)::bigint AS failed_runs,
       pg_catalog.sum(c.skipped_runs)::bigint AS skipped_runs,
       pg_catalog.sum(c.received)::bigint AS received,
       pg_catalog.sum(c.loaded)::bigint AS loaded,
       pg_catalog.sum(c.rejected)::bigint AS rejected,
       pg_catalog.sum(c.duplicates)::bigint AS duplicates
  FROM (SELECT t.queue_url, t.runs, t.failed_runs, t.skipped_runs, t.received, t.loaded, t.rejected, t.duplicates
          FROM fetch_etl.drain_run_totals t
        UNION ALL
        SELECT r.queue_url, 1, (r.status OPERATOR(pg_catalog.=) 'failed')::integer,
               (r.status OPERATOR(pg_catalog.=) 'skipped')::integer, r.received, r.loaded, r.rejected, r.duplicates
          FROM fetch_etl.drain_runs r) c
 GROUP BY c.queue_url;
COMMENT ON VIEW fetch_etl.queue_counters IS
    'fetch_etl: per-queue runs, failed and skipped runs, received, loaded, rejected and duplicate messages since the first drain (they never go down). GRANT SELECT to monitoring roles.';
REVOKE ALL ON TABLE fetch_etl.queue_counters FROM PUBLIC;

CREATE FUNCTION fetch_etl.discard_dead_letters(
    "note" TEXT,
    "queue_url" TEXT DEFAULT NULL,
    "reason_code" TEXT DEFAULT NULL,
    "target_table" TEXT DEFAULT 'user_logins',
    "max_rows" INT DEFAULT 1000,
    "any_target" bool DEFAULT false,
    "pipeline" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'discard_dead_letters_wrapper';
COMMENT ON FUNCTION fetch_etl.discard_dead_letters(text, text, text, text, integer, boolean, text) IS
    'Mark dead letters as discarded with a note (those a replay with the same arguments would take, cut bodies too): no longer pending; kept until prune().';
REVOKE ALL ON FUNCTION fetch_etl.discard_dead_letters(text, text, text, text, integer, boolean, text) FROM PUBLIC;

CREATE FUNCTION fetch_etl.drain_progress() RETURNS TABLE (
    "pid" INT,
    "database" TEXT,
    "run_by" TEXT,
    "kind" TEXT,
    "run_id" bigint,
    "queue_url" TEXT,
    "phase" TEXT,
    "started_at" timestamp with time zone,
    "updated_at" timestamp with time zone,
    "received" bigint,
    "loaded" bigint,
    "rejected" bigint,
    "duplicates" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'drain_progress_wrapper';
COMMENT ON FUNCTION fetch_etl.drain_progress() IS
    'Drains and replays running now, in every database, with their phase and counts so far (needs fetch_etl in shared_preload_libraries). GRANT EXECUTE to monitoring roles.';
REVOKE ALL ON FUNCTION fetch_etl.drain_progress() FROM PUBLIC;

-- What this script created got the installer's default privileges, if any:
-- every privilege on it but its owner's is taken back (each named in a
-- NOTICE), as a fresh install does.
DO $privileges$
DECLARE
    r record;
    saved_path constant text := pg_catalog.current_setting('search_path');
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR r IN
        WITH new_objects(kind, object, acl, owner) AS (
            SELECT 'TABLE', c.oid::regclass::text, coalesce(c.relacl, acldefault('r', c.relowner)), c.relowner
              FROM pg_class AS c
             WHERE c.oid IN ('fetch_etl.drain_run_totals'::regclass, 'fetch_etl.queue_counters'::regclass)
            UNION ALL
            SELECT 'ROUTINE', p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner
              FROM pg_proc AS p
             WHERE p.oid IN ('fetch_etl.discard_dead_letters(text, text, text, text, integer, boolean, text)'::regprocedure,
                             'fetch_etl.drain_progress()'::regprocedure)
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
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$privileges$;

-- fetch_etl: objects that need the pgrx-generated functions, then privileges.

-- Any change to the key table makes every backend drop its cached key.
CREATE TRIGGER mask_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fetch_etl.mask_keys
    FOR EACH STATEMENT EXECUTE FUNCTION fetch_etl.mask_keys_changed();

-- Recovery of a masked value. Refused (42501) unless EXECUTE was granted.
CREATE FUNCTION fetch_etl.unmask(masked text) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT coalesce(
        (SELECT v.raw FROM fetch_etl.pii_vault AS v WHERE v.masked = unmask.masked),
        (SELECT p.raw FROM fetch_etl.pii_vault_pending AS p WHERE p.masked = unmask.masked LIMIT 1))
$$;
COMMENT ON FUNCTION fetch_etl.unmask(text) IS
    'Original value of a mask from the PII vault (or its pending pairs), or NULL if unknown. EXECUTE must be granted explicitly.';

-- Mask a value and record mask -> value in the vault (what the loader does).
CREATE FUNCTION fetch_etl.mask_and_vault(value text) RETURNS text
    LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
    SET search_path = ''
AS $$
    WITH m AS (SELECT fetch_etl.mask_pii(mask_and_vault.value) AS masked),
         ins AS (
            INSERT INTO fetch_etl.pii_vault (masked, raw)
            SELECT m.masked, mask_and_vault.value FROM m
            ON CONFLICT (masked) DO NOTHING
         )
    SELECT m.masked FROM m
$$;
COMMENT ON FUNCTION fetch_etl.mask_and_vault(text) IS
    'mask_pii(value), also recording the value in the PII vault so unmask() can recover it.';

COMMENT ON FUNCTION fetch_etl.mask_pii(text) IS
    'Keyed deterministic mask: hex(HMAC-SHA256(key, value)). Equal inputs give equal masks.';
COMMENT ON FUNCTION fetch_etl.rotate_mask_key() IS
    'Superuser: make a fresh random masking key the active one. Returns its generation.';
COMMENT ON FUNCTION fetch_etl.set_mask_key(bytea) IS
    'Superuser: make the given 32-byte key the active masking key. Returns its generation.';

-- Housekeeping, to schedule daily: drop old run records, ledger entries the
-- queue can no longer redeliver (SQS keeps messages at most 14 days), dead
-- letters that were replayed, and those never replayed once they are older
-- than fetch_etl.dead_letter_retention (superuser-only; 0: keep them). Moves
-- pending vault pairs into the vault.
CREATE FUNCTION fetch_etl.prune(
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
COMMENT ON FUNCTION fetch_etl.dead_letter_retention() IS
    'fetch_etl.dead_letter_retention as prune() applies it (NULL: dead letters are kept).';

-- Drain repeatedly for up to time_budget, committing after each call, so that
-- rows become visible and messages are deleted within seconds while a
-- once-a-minute pg_cron job is running. Stops early when another session is
-- draining the queue. With on_error => 'record', a failed call (recorded in
-- drain_runs by sqs_drain, outside its rolled-back work) is a WARNING and a
-- pause that doubles with each failure in a row, 1 s up to 30 s (0.7.0): a
-- queue that does not exist costs a few calls a minute, not thousands. A procedure with COMMIT cannot
-- have a SET clause: every name inside is schema-qualified instead.
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

-- Per-queue health at a glance, from the run records. `state` is the
-- latest run's outcome (fetch_etl_core::contract::QueueState); a streak of
-- skipped runs (another session holds the queue) is `skipped`, never a
-- fresh `last_run_at` that looks healthy. Columns after
-- dead_letters_pending are 0.7.0's (appended: CREATE OR REPLACE VIEW).
CREATE VIEW fetch_etl.queue_health AS
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

-- Per-queue counters since the queue was first drained, for monitoring
-- (contrib/prometheus): the run records plus the sums prune() folded into
-- drain_run_totals, so they never go down (0.7.0).
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

COMMENT ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text) IS
    'Drain an SQS queue through a pipeline (default: the login events into target_table): masked rows, dead letters, deletes after COMMIT.';
COMMENT ON FUNCTION fetch_etl.drain_progress() IS
    'Drains and replays running now, in every database, with their phase and counts so far (needs fetch_etl in shared_preload_libraries). GRANT EXECUTE to monitoring roles.';
COMMENT ON FUNCTION fetch_etl.queue_depth(text) IS
    'Approximate visible, in-flight and delayed messages of a queue (SQS GetQueueAttributes).';
COMMENT ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text) IS
    'Run dead letters through their pipeline and table again (the login pipeline''s: those of target_table, any_target: of any table); loaded ones are marked replayed.';
COMMENT ON FUNCTION fetch_etl.discard_dead_letters(text, text, text, text, integer, boolean, text) IS
    'Mark dead letters as discarded with a note (those a replay with the same arguments would take, cut bodies too): no longer pending; kept until prune().';
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

-- Secure by default: nothing here is callable by PUBLIC. mask_pii answers
-- "what is the mask of X?", which lets a caller test guesses, so it is
-- granted on purpose (docs/security.md: Privileges).
REVOKE ALL ON FUNCTION fetch_etl.mask_pii(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.unmask(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.mask_and_vault(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.rotate_mask_key() FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.set_mask_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.mask_keys_changed() FROM PUBLIC;
-- These make the server send HTTP requests with its AWS credentials.
REVOKE ALL ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer, text, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE fetch_etl.sqs_drain_for(text, interval, integer, text, integer, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.queue_depth(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.drain_progress() FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.replay_dead_letters(text, text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.discard_dead_letters(text, text, text, text, integer, boolean, text) FROM PUBLIC;
-- Pipelines are created by the roles a DBA grants these to (docs/pipelines.md).
REVOKE ALL ON FUNCTION fetch_etl.create_pipeline(text, text, text, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.create_router(text, text, jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.drop_pipeline(text, boolean) FROM PUBLIC;
REVOKE ALL ON TABLE fetch_etl.pipelines FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.prune(interval, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.dead_letter_retention() FROM PUBLIC;
REVOKE ALL ON TABLE fetch_etl.queue_health FROM PUBLIC;
REVOKE ALL ON TABLE fetch_etl.queue_counters FROM PUBLIC;

-- The first key: 256 random bits from the operating system, never in SQL text.
SELECT fetch_etl.rotate_mask_key();

-- Privileges, whatever the installer's default privileges were (0.5.0).
-- PostgreSQL applies the installing role's ALTER DEFAULT PRIVILEGES to every
-- object this script creates, the schema included: they could hand the key,
-- the vault or unmask() to another role. Every privilege on the extension's
-- objects (their columns too) but each one's owner's is revoked; then PUBLIC
-- gets USAGE on the schema, the only grant fetch_etl makes
-- (docs/security.md, "Privileges").
DO $privileges$
DECLARE
    ext record;
    r record;
    saved_path constant text := pg_catalog.current_setting('search_path');
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT e.oid, e.extnamespace AS nsp, e.extowner AS owner INTO STRICT ext
      FROM pg_catalog.pg_extension AS e WHERE e.extname = 'fetch_etl';
    FOR r IN
        WITH members(classid, objid) AS (
            SELECT d.classid, d.objid FROM pg_catalog.pg_depend AS d
             WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
        ), objects(kind, object, col, acl, owner) AS (
            SELECT 'SCHEMA', format('%I', n.nspname), NULL::name, coalesce(n.nspacl, acldefault('n', n.nspowner)), n.nspowner
              FROM pg_namespace AS n WHERE n.oid = ext.nsp
            UNION ALL
            SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, format('%I.%I', n.nspname, c.relname), NULL,
                   coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)),
                   c.relowner
              FROM members AS m JOIN pg_class AS c ON m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid
              JOIN pg_namespace AS n ON n.oid = c.relnamespace
            UNION ALL
            SELECT 'TABLE', format('%I.%I', n.nspname, c.relname), a.attname, a.attacl, c.relowner
              FROM members AS m JOIN pg_class AS c ON m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid
              JOIN pg_namespace AS n ON n.oid = c.relnamespace
              JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND a.attacl IS NOT NULL
            UNION ALL
            SELECT 'ROUTINE', format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), NULL,
                   coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner
              FROM members AS m JOIN pg_proc AS p ON m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid
              JOIN pg_namespace AS n ON n.oid = p.pronamespace
        )
        SELECT DISTINCT o.kind, o.object, o.col,
               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE format('%I', pg_get_userbyid(a.grantee)) END AS grantee
          FROM objects AS o, aclexplode(o.acl) AS a
         WHERE a.grantee <> o.owner
         ORDER BY 1, 2, 3, 4
    LOOP
        IF r.col IS NULL THEN
            EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE', r.kind, r.object, r.grantee);
        ELSE
            EXECUTE format('REVOKE ALL (%I) ON TABLE %s FROM %s CASCADE', r.col, r.object, r.grantee);
        END IF;
    END LOOP;
    GRANT USAGE ON SCHEMA fetch_etl TO PUBLIC;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$privileges$;

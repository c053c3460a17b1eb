-- fetch_etl 0.3.0 -> 0.4.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- - Dead letters remember how often a replay refused them again and when:
--   replay_dead_letters takes those tried longest ago first (so dead letters
--   that keep failing no longer hold back the ones behind them) and reads the
--   bodies in pages of bounded size.
-- - prune keeps ledger entries at least 14 days (SQS's longest retention);
--   shorter would let a message whose delete failed load twice. Its floors
--   compare the cutoffs, so an interval of mixed signs cannot pass them.
--
-- Takes a brief ACCESS EXCLUSIVE lock on fetch_etl.dead_letters (the new
-- columns have constant defaults: no rewrite) and builds an index on it.

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE fetch_etl.dead_letters
    ADD COLUMN replay_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_at timestamptz;
CREATE INDEX dead_letters_replay_order ON fetch_etl.dead_letters (last_replay_at NULLS FIRST, dead_letter_id)
    WHERE replayed_at IS NULL;

-- The same signature: OR REPLACE keeps its owner, comment and grants.
CREATE OR REPLACE FUNCTION fetch_etl.prune(
    keep_runs     interval DEFAULT interval '30 days',
    keep_ledger   interval DEFAULT interval '14 days',
    keep_replayed interval DEFAULT interval '30 days'
) RETURNS TABLE (runs bigint, ledger bigint, replayed_dead_letters bigint)
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
    SET search_path = ''
AS $$
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
    RETURN NEXT;
END
$$;

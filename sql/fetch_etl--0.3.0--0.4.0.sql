-- fetch_etl 0.3.0 -> 0.4.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- - Dead letters remember how often a replay refused them again and when:
--   replay_dead_letters takes those tried longest ago first (so dead letters
--   that keep failing no longer hold back the ones behind them) and reads the
--   bodies in pages of bounded size.
-- - prune: a session that is not a superuser's keeps ledger entries at least
--   14 days (SQS's longest retention); shorter would let a message whose delete
--   failed load twice.
-- - The vault's mask check uses octet_length (cheaper per row written).

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE fetch_etl.dead_letters
    ADD COLUMN replay_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_at timestamptz;
CREATE INDEX dead_letters_replay_order ON fetch_etl.dead_letters (last_replay_at NULLS FIRST, dead_letter_id)
    WHERE replayed_at IS NULL;

-- Every stored mask is 64 ASCII hex digits, so the new check holds for every
-- row; it is validated all the same (a scan of the vault, in this transaction).
ALTER TABLE fetch_etl.pii_vault DROP CONSTRAINT pii_vault_masked_check;
ALTER TABLE fetch_etl.pii_vault
    ADD CONSTRAINT pii_vault_masked_check CHECK (pg_catalog.octet_length(masked) = 64);

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
    IF keep_runs < interval '1 hour' OR keep_ledger < interval '1 hour' OR keep_replayed < interval '1 hour' THEN
        RAISE EXCEPTION 'fetch_etl.prune keeps at least 1 hour of everything'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Keep ledger entries at least as long as the queue''s MessageRetentionPeriod.';
    END IF;
    -- A message whose delete failed comes back until the queue's retention
    -- (at most 14 days) runs out; only its ledger entry keeps it from loading
    -- twice. A role granted prune may not shorten that; a superuser session may.
    IF keep_ledger < interval '14 days' AND NOT coalesce(
           (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER), false) THEN
        RAISE EXCEPTION 'only a superuser may keep ledger entries for less than 14 days'
            USING ERRCODE = 'insufficient_privilege',
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

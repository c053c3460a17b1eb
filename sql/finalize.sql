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
    SELECT v.raw FROM fetch_etl.pii_vault AS v WHERE v.masked = unmask.masked
$$;
COMMENT ON FUNCTION fetch_etl.unmask(text) IS
    'Original value of a mask from the PII vault, or NULL if unknown. EXECUTE must be granted explicitly.';

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

-- Drop ledger entries older than the queue could redeliver (SQS keeps
-- messages at most 14 days).
CREATE FUNCTION fetch_etl.prune_processed(older_than interval DEFAULT interval '14 days') RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    removed bigint;
BEGIN
    IF older_than < interval '1 hour' THEN
        RAISE EXCEPTION 'older_than must be at least 1 hour (got %)', older_than
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Keep ledger entries at least as long as the queue''s MessageRetentionPeriod.';
    END IF;
    DELETE FROM fetch_etl.processed_messages WHERE processed_at < pg_catalog.now() - older_than;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
COMMENT ON FUNCTION fetch_etl.prune_processed(interval) IS
    'Delete ledger entries older than older_than (default 14 days, the longest SQS retention). Returns the number removed.';
COMMENT ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer) IS
    'Drain login events from an SQS queue into target_table: masked rows, dead letters, deletes after COMMIT.';

-- Secure by default: nothing here is callable by PUBLIC. mask_pii answers
-- "what is the mask of X?", which lets a caller test guesses, so it is
-- granted on purpose (README: Privileges).
REVOKE ALL ON FUNCTION fetch_etl.mask_pii(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.unmask(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.mask_and_vault(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.rotate_mask_key() FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.set_mask_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.mask_keys_changed() FROM PUBLIC;
-- sqs_drain makes the server send HTTP requests with its AWS credentials.
REVOKE ALL ON FUNCTION fetch_etl.sqs_drain(text, integer, integer, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION fetch_etl.prune_processed(interval) FROM PUBLIC;

-- The first key: 256 random bits from the operating system, never in SQL text.
SELECT fetch_etl.rotate_mask_key();

-- Threat: SQL injection through values, and search_path hijacking of the
-- security-definer functions and of the key lookup.
SELECT fetch_etl.mask_pii($$'); DROP TABLE fetch_etl.mask_keys; --$$) ~ '^[0-9a-f]{64}$' AS value_only_masked;
SELECT fetch_etl.mask_and_vault($$'); DELETE FROM fetch_etl.pii_vault; --$$) ~ '^[0-9a-f]{64}$' AS value_only_vaulted;
SELECT count(*) > 0 AS keys_intact FROM fetch_etl.mask_keys;
SELECT count(*) >= 1 AS vault_intact FROM fetch_etl.pii_vault;
SELECT fetch_etl.unmask($$' OR '1'='1$$) IS NULL AS unmask_injection;

-- An operator that matches everything, found first on the search_path, does
-- not make unmask() return someone else's value.
CREATE FUNCTION public.always_true(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.always_true);
SET search_path = public, pg_catalog;
SELECT fetch_etl.unmask(repeat('0', 64)) IS NULL AS operator_hijack_failed;
RESET search_path;
DROP OPERATOR public.= (text, text);

-- A temporary table named like the key table does not change the key used.
SELECT fetch_etl.set_mask_key(decode(repeat('cd', 32), 'hex')) > 0 AS known_key;
CREATE TEMP TABLE mask_keys (generation int, created_at timestamptz, key bytea);
INSERT INTO mask_keys VALUES (999999, now(), decode(repeat('99', 32), 'hex'));
SET search_path = pg_temp, fetch_etl, public;
SELECT mask_pii('10.1.2.3') = encode(hmac('10.1.2.3', decode(repeat('cd', 32), 'hex'), 'sha256'), 'hex') AS real_key_used;
RESET search_path;
DROP TABLE pg_temp.mask_keys;

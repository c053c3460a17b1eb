-- Rotation: new calls use the new key; masks already stored stay as they
-- are and can still be recovered from the vault; a rolled-back change
-- changes nothing.
SELECT fetch_etl.set_mask_key(decode(repeat('01', 32), 'hex')) AS gen_a \gset
SELECT fetch_etl.mask_and_vault('593-47-5928') AS old_mask \gset
SELECT fetch_etl.rotate_mask_key() > :gen_a AS generation_increased;
SELECT fetch_etl.mask_pii('593-47-5928') <> :'old_mask' AS new_key_new_mask;
SELECT fetch_etl.unmask(:'old_mask') AS old_mask_still_recovers;
SELECT fetch_etl.unmask(fetch_etl.mask_pii('593-47-5928')) IS NULL AS new_mask_not_yet_in_vault;

-- Re-masking stored data after a rotation (README recipe): the vault maps old masks to raw values.
CREATE TABLE remask (masked_device_id text);
INSERT INTO remask VALUES (:'old_mask');
UPDATE remask SET masked_device_id = fetch_etl.mask_and_vault(fetch_etl.unmask(masked_device_id));
SELECT masked_device_id = fetch_etl.mask_pii('593-47-5928') AS remasked FROM remask;

-- A rolled-back rotation leaves the active key unchanged.
SELECT fetch_etl.set_mask_key(decode(repeat('02', 32), 'hex')) > 0 AS known_key;
BEGIN;
SELECT fetch_etl.rotate_mask_key() > 0 AS rotated_in_transaction;
ROLLBACK;
SELECT fetch_etl.mask_pii('x') = encode(hmac('x', decode(repeat('02', 32), 'hex'), 'sha256'), 'hex') AS rollback_kept_key;

-- Restore from pg_dump: the restore's CREATE EXTENSION makes a new key, then the
-- dumped rows are copied in. Among equal generations the older row wins.
INSERT INTO fetch_etl.mask_keys (generation, created_at, key)
SELECT max(generation), now() - interval '1 year', decode(repeat('03', 32), 'hex') FROM fetch_etl.mask_keys;
SELECT fetch_etl.mask_pii('x') = encode(hmac('x', decode(repeat('03', 32), 'hex'), 'sha256'), 'hex') AS dumped_key_wins;

-- Direct changes to the key table are seen too (the trigger invalidates caches).
UPDATE fetch_etl.mask_keys SET key = decode(repeat('04', 32), 'hex') WHERE key = decode(repeat('03', 32), 'hex');
SELECT fetch_etl.mask_pii('x') = encode(hmac('x', decode(repeat('04', 32), 'hex'), 'sha256'), 'hex') AS update_seen;

-- Without any key: a clean error with a hint, no crash.
BEGIN;
DELETE FROM fetch_etl.mask_keys;
SELECT fetch_etl.mask_pii('x');
ROLLBACK;
BEGIN;
DELETE FROM fetch_etl.mask_keys;
SELECT public.try('SELECT fetch_etl.mask_pii(''x'')') AS no_key_sqlstate;
ROLLBACK;
SELECT fetch_etl.mask_pii('x') IS NOT NULL AS key_back_after_rollback;

-- Bad keys are refused with 22023 and without echoing the value.
SELECT public.try('SELECT fetch_etl.set_mask_key(''\xdeadbeef'')') AS short_key;
SELECT public.try('SELECT fetch_etl.set_mask_key(decode(repeat(''00'', 32), ''hex''))') AS zero_key;
SELECT public.try('SELECT fetch_etl.set_mask_key(decode(repeat(''ab'', 33), ''hex''))') AS long_key;

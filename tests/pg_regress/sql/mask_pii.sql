-- mask_pii: keyed, deterministic, NULL-safe, correctly labelled, safe on odd input.
-- The generated key is random, so these first checks are booleans.
SELECT fetch_etl.mask_pii('199.172.111.135') = fetch_etl.mask_pii('199.172.111.135') AS deterministic,
       fetch_etl.mask_pii('199.172.111.135') ~ '^[0-9a-f]{64}$' AS hex64,
       fetch_etl.mask_pii('199.172.111.135') <> encode(sha256('199.172.111.135'), 'hex') AS not_plain_sha256,
       fetch_etl.mask_pii('199.172.111.135') <> fetch_etl.mask_pii('199.172.111.136') AS distinct_inputs_differ,
       fetch_etl.mask_pii(NULL) IS NULL AS null_in_null_out;

-- Same mask in a new session (new backend, key read again).
CREATE TABLE session_check AS SELECT fetch_etl.mask_pii('593-47-5928') AS m;
\c
SELECT m = fetch_etl.mask_pii('593-47-5928') AS same_in_new_session FROM session_check;

-- With a known key the mask is exactly hex(HMAC-SHA256(key, value)), as pgcrypto computes it.
SELECT fetch_etl.set_mask_key(decode(repeat('ab', 32), 'hex')) > 1 AS key_installed;
SELECT fetch_etl.mask_pii('199.172.111.135');
SELECT fetch_etl.mask_pii(v) = encode(hmac(convert_to(v, 'UTF8'), decode(repeat('ab', 32), 'hex'), 'sha256'), 'hex') AS equals_pgcrypto_hmac
FROM (VALUES ('199.172.111.135'), ('593-47-5928'), (''), ('Zürich 東京 🚀'), (repeat('x', 100000))) AS t(v);

-- Edge inputs give a clean result.
SELECT fetch_etl.mask_pii('') AS empty_string;
SELECT fetch_etl.mask_pii(repeat('long', 5000000)) ~ '^[0-9a-f]{64}$' AS twenty_mb_input;
SELECT fetch_etl.mask_pii(E'tab\there\nnewline') ~ '^[0-9a-f]{64}$' AS control_chars;
-- Fits the exercise's column type.
SELECT pg_typeof(fetch_etl.mask_pii('x')::varchar(256)) AS fits_varchar_256;

-- Labels: STABLE (the key can change), STRICT, PARALLEL SAFE, no SET clause on the hot path.
SELECT proname, provolatile, proparallel, proisstrict, prosecdef, proconfig
FROM pg_proc WHERE pronamespace = 'fetch_etl'::regnamespace ORDER BY proname;

-- Parallel workers compute the same masks as the leader.
CREATE TABLE ips AS
SELECT format('%s.%s.%s.%s', (i * 7919) % 256, (i / 256) % 256, i % 256, i % 7) AS ip
FROM generate_series(1, 30000) AS i;
ANALYZE ips;
SET max_parallel_workers_per_gather = 0;
SELECT sum(hashtext(fetch_etl.mask_pii(ip))) AS serial_sum FROM ips \gset
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT sum(hashtext(fetch_etl.mask_pii(ip))) FROM ips;
SELECT sum(hashtext(fetch_etl.mask_pii(ip))) = :serial_sum AS parallel_equals_serial FROM ips;
RESET ALL;
-- Distinct inputs, distinct masks (30,000 values).
SELECT count(DISTINCT fetch_etl.mask_pii(ip)) = count(DISTINCT ip) AS no_collisions FROM ips;

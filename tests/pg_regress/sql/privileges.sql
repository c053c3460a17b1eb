-- Threat: a role without grants reads the key, the vault or raw values, or unmasks.
SELECT fetch_etl.mask_and_vault('199.172.111.135') = fetch_etl.mask_pii('199.172.111.135') AS vaulted;
CREATE TABLE public.logins AS SELECT fetch_etl.mask_pii('199.172.111.135') AS masked_ip;
GRANT SELECT ON public.logins TO fe_analyst, fe_auditor, fe_nobody;
ANALYZE fetch_etl.mask_keys, fetch_etl.pii_vault;

-- PUBLIC holds nothing but USAGE on the schema.
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
FROM pg_proc p WHERE p.pronamespace = 'fetch_etl'::regnamespace ORDER BY p.proname;
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_select
FROM pg_class c WHERE c.relnamespace = 'fetch_etl'::regnamespace AND c.relkind IN ('r', 'v') ORDER BY 1;

SET ROLE fe_nobody;
SELECT public.try('SELECT * FROM fetch_etl.mask_keys') AS read_keys;
SELECT public.try('SELECT * FROM fetch_etl.pii_vault') AS read_vault;
SELECT public.try('SELECT * FROM fetch_etl.pii_vault_pending') AS read_pending_vault;
SELECT public.try('SELECT * FROM fetch_etl.queue_health') AS read_health;
SELECT public.try('SELECT * FROM fetch_etl.dead_letters') AS read_dead_letters;
-- Threat: a role without grants blocks every drain of a queue by locking it.
SELECT public.try('SELECT * FROM fetch_etl.queue_locks FOR UPDATE') AS lock_queues;
SELECT public.try('INSERT INTO fetch_etl.queue_locks VALUES (''x'')') AS add_queue_lock;
SELECT public.try('SELECT fetch_etl.unmask(masked_ip) FROM public.logins') AS unmask;
SELECT public.try('SELECT fetch_etl.mask_pii(''x'')') AS mask_without_grant;
SELECT public.try('SELECT fetch_etl.mask_and_vault(''x'')') AS write_vault;
SELECT public.try('SELECT fetch_etl.rotate_mask_key()') AS rotate;
SELECT public.try('SELECT fetch_etl.set_mask_key(''\x00'')') AS set_key;
SELECT public.try('UPDATE fetch_etl.mask_keys SET key = key') AS update_keys;
SELECT public.try('CREATE TRIGGER steal AFTER INSERT ON fetch_etl.mask_keys FOR EACH ROW EXECUTE FUNCTION fetch_etl.mask_keys_changed()') AS trigger_on_keys;
SELECT public.try('CREATE FUNCTION fetch_etl.mask_pii(int) RETURNS text LANGUAGE sql AS ''SELECT 1''') AS create_in_schema;
SELECT public.try('ALTER TABLE fetch_etl.mask_keys DISABLE TRIGGER ALL') AS alter_keys;
COPY fetch_etl.mask_keys TO STDOUT;
-- Column statistics would show key bytes: none are visible.
SELECT count(*) AS visible_stats FROM pg_stats WHERE schemaname = 'fetch_etl';
RESET ROLE;

-- No setting, function body or pg_stat_statements entry contains a key (checked by the
-- superuser, who sees more than any other role). Positive controls first: the statistics
-- exist, and pg_stat_statements did record the nested INSERT that stored generated keys.
SELECT count(*) > 0 AS key_stats_exist FROM pg_stats WHERE schemaname = 'fetch_etl';
SELECT count(*) > 0 AS key_insert_recorded FROM pg_stat_statements WHERE query LIKE 'INSERT INTO fetch_etl.mask_keys%';
SELECT
  (SELECT count(*) FROM pg_settings s, fetch_etl.mask_keys k
    WHERE strpos(lower(s.setting), encode(k.key, 'hex')) > 0) AS in_settings,
  (SELECT count(*) FROM pg_proc p, fetch_etl.mask_keys k
    WHERE strpos(p.prosrc, encode(k.key, 'hex')) > 0 OR strpos(p.prosrc, encode(k.key, 'base64')) > 0) AS in_functions,
  (SELECT count(*) FROM pg_stat_statements s, fetch_etl.mask_keys k
    WHERE strpos(lower(s.query), encode(k.key, 'hex')) > 0) AS in_pg_stat_statements;

-- mask_pii is granted on purpose: then the analyst can match masks, but still not unmask.
GRANT EXECUTE ON FUNCTION fetch_etl.mask_pii(text) TO fe_analyst;
SET ROLE fe_analyst;
SELECT masked_ip = fetch_etl.mask_pii('199.172.111.135') AS analyst_can_match FROM public.logins;
SELECT public.try('SELECT fetch_etl.unmask(masked_ip) FROM public.logins') AS analyst_unmask;
SELECT public.try('SELECT * FROM fetch_etl.mask_keys') AS analyst_read_keys;
RESET ROLE;

-- Recovery only after an explicit GRANT, and only through unmask().
GRANT EXECUTE ON FUNCTION fetch_etl.unmask(text) TO fe_auditor;
SET ROLE fe_auditor;
SELECT fetch_etl.unmask(masked_ip) AS recovered FROM public.logins;
SELECT fetch_etl.unmask(repeat('0', 64)) IS NULL AS unknown_mask_is_null;
SELECT public.try('SELECT * FROM fetch_etl.pii_vault') AS auditor_read_vault;
RESET ROLE;

-- EXECUTE on the key functions does not make a non-superuser able to change the key.
GRANT EXECUTE ON FUNCTION fetch_etl.rotate_mask_key(), fetch_etl.set_mask_key(bytea) TO fe_auditor;
SET ROLE fe_auditor;
SELECT public.try('SELECT fetch_etl.rotate_mask_key()') AS granted_rotate;
SELECT public.try('SELECT fetch_etl.set_mask_key(decode(repeat(''ee'', 32), ''hex''))') AS granted_set_key;
RESET ROLE;

-- Revoking takes effect at once.
REVOKE EXECUTE ON FUNCTION fetch_etl.unmask(text) FROM fe_auditor;
SET ROLE fe_auditor;
SELECT public.try('SELECT fetch_etl.unmask(masked_ip) FROM public.logins') AS after_revoke;
RESET ROLE;

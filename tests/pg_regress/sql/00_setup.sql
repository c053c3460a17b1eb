-- Shared setup: the extension, helpers and roles the other tests use.
SET client_min_messages = warning;
CREATE EXTENSION fetch_etl;
CREATE EXTENSION pgcrypto;          -- independent HMAC implementation to check against
CREATE EXTENSION pg_stat_statements;
-- try(q): run q, return 'ok' or 'SQLSTATE message', so error codes are part of the expected output.
CREATE FUNCTION public.try(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION public.try(text) TO PUBLIC;
CREATE ROLE fe_analyst;   -- reads masked data
CREATE ROLE fe_auditor;   -- may recover raw values
CREATE ROLE fe_nobody;    -- no grants at all
RESET client_min_messages;
-- The extension created its first key at CREATE EXTENSION.
SELECT count(*) AS keys, min(generation) AS generation FROM fetch_etl.mask_keys;

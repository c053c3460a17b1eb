-- Install-time trust: what CREATE EXTENSION finds and leaves behind in a database where other roles
-- could prepare the ground. Each case runs in a database of its own.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS fe_trust_owned;
DROP DATABASE IF EXISTS fe_trust_stranger;
DROP DATABASE IF EXISTS fe_trust_restore;
DROP DATABASE IF EXISTS fe_trust_defaults;
DROP ROLE IF EXISTS fe_dbowner;
DROP ROLE IF EXISTS fe_reader;
CREATE ROLE fe_dbowner LOGIN;
CREATE ROLE fe_reader LOGIN;
CREATE DATABASE fe_trust_owned OWNER fe_dbowner;
CREATE DATABASE fe_trust_stranger;
CREATE DATABASE fe_trust_restore;
CREATE DATABASE fe_trust_defaults;
RESET client_min_messages;

-- Threat: a database's owner creates schema fetch_etl before the extension, with an overload of
-- sqs_drain that sqs_drain_for's untyped NULL prefers; a superuser's job calling sqs_drain_for then
-- runs it (0.4.0: the owner became superuser). The install is refused and creates nothing.
\c fe_trust_owned
SET ROLE fe_dbowner;
CREATE SCHEMA fetch_etl;
CREATE FUNCTION fetch_etl.sqs_drain(text, int, int, text, text, text)
  RETURNS TABLE(run_id bigint, received bigint, loaded bigint, rejected bigint, duplicates bigint)
  LANGUAGE plpgsql AS $$BEGIN EXECUTE 'ALTER ROLE fe_dbowner SUPERUSER'; RETURN; END$$;
-- and an operator that would be bound into the queue_health view, run by every reader
CREATE FUNCTION fetch_etl.div(numeric, double precision) RETURNS double precision
  LANGUAGE sql AS 'SELECT 0::double precision';
CREATE OPERATOR fetch_etl./ (LEFTARG = numeric, RIGHTARG = double precision, FUNCTION = fetch_etl.div);
RESET ROLE;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION fetch_etl;
SELECT count(*) AS extension_rows FROM pg_extension WHERE extname = 'fetch_etl';
SELECT p.oid::regprocedure AS only_the_planted_functions FROM pg_proc p
 WHERE p.pronamespace = 'fetch_etl'::regnamespace ORDER BY 1;
SELECT count(*) AS tables_created FROM pg_class WHERE relnamespace = 'fetch_etl'::regnamespace;
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'fe_dbowner';

-- Threat: the schema belongs to the installing superuser, but a role that could create in it left an
-- object there. Refused, naming what is not fetch_etl's.
\c fe_trust_stranger
CREATE SCHEMA fetch_etl;
GRANT CREATE, USAGE ON SCHEMA fetch_etl TO fe_dbowner;
SET ROLE fe_dbowner;
CREATE TABLE fetch_etl.pii_vault_pending (masked text, raw text);
RESET ROLE;
REVOKE CREATE ON SCHEMA fetch_etl FROM fe_dbowner;
CREATE EXTENSION fetch_etl;
SELECT count(*) AS extension_rows FROM pg_extension WHERE extname = 'fetch_etl';

-- Threat: the installer's own schema, but another role may create in it, and could add objects after
-- the check and before the install commits. Refused until that is revoked.
\c fe_trust_restore
CREATE SCHEMA fetch_etl;
GRANT CREATE, USAGE ON SCHEMA fetch_etl TO fe_dbowner;
CREATE EXTENSION fetch_etl;
-- An empty schema of the installing role's own (what pg_dump's output creates before CREATE EXTENSION
-- on a restore) is used, and what was granted on it is taken back.
REVOKE CREATE ON SCHEMA fetch_etl FROM fe_dbowner;
SET client_min_messages = warning;
CREATE EXTENSION fetch_etl;
RESET client_min_messages;
SELECT extversion IS NOT NULL AS installed FROM pg_extension WHERE extname = 'fetch_etl';
SELECT has_schema_privilege('fe_dbowner', 'fetch_etl', 'CREATE') AS dbowner_may_create;
SELECT nspacl AS schema_acl FROM pg_namespace WHERE nspname = 'fetch_etl';

-- Threat: the installing role's default privileges hand every new table, sequence, function and
-- schema to another role (0.4.0: fe_reader read the key and could unmask). After the install only
-- the owner holds privileges on the extension's objects, and PUBLIC holds USAGE on the schema.
\c fe_trust_defaults
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO fe_reader;
ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO fe_reader;
ALTER DEFAULT PRIVILEGES GRANT ALL ON FUNCTIONS TO fe_reader;
ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO fe_reader;
ALTER DEFAULT PRIVILEGES GRANT ALL ON TYPES TO fe_reader;
SET client_min_messages = warning;
CREATE EXTENSION fetch_etl;
RESET client_min_messages;
-- every privilege on the schema and on every member held by a role other than its owner: PUBLIC's USAGE
-- on the schema only
WITH members AS (
    SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'fetch_etl'
), acls AS (
    SELECT 'schema' AS kind, n.nspacl AS acl, n.nspowner AS owner FROM pg_namespace n WHERE n.nspname = 'fetch_etl'
    UNION ALL SELECT 'relation', c.relacl, c.relowner FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
    UNION ALL SELECT 'routine', p.proacl, p.proowner FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
)
SELECT kind, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS grantee,
       string_agg(DISTINCT a.privilege_type, ',' ORDER BY a.privilege_type) AS privileges
FROM acls, aclexplode(coalesce(acls.acl, '{}')) a
WHERE a.grantee <> acls.owner
GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) AS routines_with_default_acl FROM pg_proc p
 WHERE p.pronamespace = 'fetch_etl'::regnamespace AND p.proacl IS NULL;
SET ROLE fe_reader;
SELECT count(*) FROM fetch_etl.mask_keys;
SELECT fetch_etl.unmask(repeat('0', 64));
SELECT fetch_etl.mask_and_vault('x');
CREATE TABLE fetch_etl.planted (x int);
RESET ROLE;

\c fetch_etl_regress
SET client_min_messages = warning;
DROP DATABASE fe_trust_owned;
DROP DATABASE fe_trust_stranger;
DROP DATABASE fe_trust_restore;
DROP DATABASE fe_trust_defaults;
DROP ROLE fe_dbowner;
DROP ROLE fe_reader;
RESET client_min_messages;

-- fetch_etl: objects created before the pgrx-generated functions.
-- Every name is schema-qualified; nothing depends on the installer's search_path.

-- CREATE EXTENSION creates the schema (control file: schema = fetch_etl),
-- owned by the installing superuser. Let other roles see what is in it;
-- each object below grants or revokes its own privileges.
GRANT USAGE ON SCHEMA fetch_etl TO PUBLIC;

-- The masking key(s). Only the owner can read this table; mask_pii reads it
-- from C without going through SQL privileges (see src/keystore.rs).
-- The active key is the highest generation; among equal generations the
-- oldest row, so that after a pg_dump restore the dumped key (older) wins
-- over the one the restore's CREATE EXTENSION generated.
CREATE TABLE fetch_etl.mask_keys (
    key_id      uuid        PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    generation  integer     NOT NULL CHECK (generation > 0),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    created_by  name        NOT NULL DEFAULT CURRENT_USER,
    key         bytea       NOT NULL CHECK (pg_catalog.octet_length(key) = 32)
);
COMMENT ON TABLE fetch_etl.mask_keys IS
    'fetch_etl masking keys (secret). Active key: highest generation, oldest first. Readable by the owner only.';
REVOKE ALL ON TABLE fetch_etl.mask_keys FROM PUBLIC;
-- Included in pg_dump (by a role that can read it) so masks survive dump/restore.
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.mask_keys', '');

-- The PII vault: the only place raw values are kept, for unmask().
CREATE TABLE fetch_etl.pii_vault (
    masked      text        PRIMARY KEY CHECK (pg_catalog.length(masked) = 64),
    raw         text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fetch_etl.pii_vault IS
    'fetch_etl: mask -> raw value, for fetch_etl.unmask(). Contains PII; readable by the owner only.';
REVOKE ALL ON TABLE fetch_etl.pii_vault FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pii_vault', '');

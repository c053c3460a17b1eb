-- fetch_etl: objects created before the pgrx-generated functions.
-- Every name is schema-qualified; nothing depends on the installer's search_path.

-- Install-time trust (0.5.0). CREATE EXTENSION uses an existing schema named
-- fetch_etl whoever made it, and this script runs as a superuser: a role that
-- could make that schema first (a database's owner) could leave functions,
-- operators or tables in it for this script, or later drains, to use with a
-- superuser's rights. Refuse, before anything is created or changed, unless
-- the schema belongs to the extension's owner (the installing role) and holds
-- nothing but the extension's own objects (its members and what depends on
-- them internally: indexes, row types, constraints, owned sequences).
DO $trust$
DECLARE
    ext record;
    schema_owner name;
    creators text;
    strangers text[];
    saved_path constant text := pg_catalog.current_setting('search_path');
BEGIN
    -- Nothing below may resolve into the schema under suspicion. (Restored
    -- at the end: the rest of the script creates its objects through it.)
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT e.oid, e.extnamespace AS nsp, e.extowner AS owner INTO STRICT ext
      FROM pg_catalog.pg_extension AS e WHERE e.extname = 'fetch_etl';
    SELECT pg_catalog.pg_get_userbyid(n.nspowner) INTO schema_owner
      FROM pg_catalog.pg_namespace AS n WHERE n.oid = ext.nsp AND n.nspowner <> ext.owner;
    IF FOUND THEN
        RAISE EXCEPTION 'schema fetch_etl is owned by role %, not by %, the role installing fetch_etl',
                        schema_owner, pg_catalog.pg_get_userbyid(ext.owner)
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'fetch_etl runs its scripts and drains with a superuser''s rights, using what is in its schema; another role''s schema could lend it that role''s functions and tables.',
                  HINT = 'Check what schema fetch_etl holds, drop it (or, if you trust its contents, ALTER SCHEMA fetch_etl OWNER TO the installing role and REVOKE CREATE ON SCHEMA fetch_etl FROM every other role), then try again. Until then run no drain in this database: an older sqs_drain_for calls whatever sqs_drain the schema holds.';
    END IF;
    -- A schema that existed before this transaction (a restore's, or one
    -- other roles could write to) must not let anyone else create in it:
    -- they could add objects after this check, before this script's
    -- privileges are taken back. (One CREATE EXTENSION made just now is
    -- invisible to other sessions until it commits.)
    SELECT pg_catalog.string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC'
                                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END, ', ')
      INTO creators
      FROM pg_catalog.pg_namespace AS n, pg_catalog.aclexplode(n.nspacl) AS a
     WHERE n.oid = ext.nsp AND a.privilege_type = 'CREATE' AND a.grantee <> ext.owner
       AND pg_catalog.age(n.xmin) > 0;
    IF creators IS NOT NULL THEN
        RAISE EXCEPTION 'roles other than % may create objects in schema fetch_etl: %',
                        pg_catalog.pg_get_userbyid(ext.owner), creators
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'An object they add to the schema would be used with a superuser''s rights.',
                  HINT = 'REVOKE CREATE ON SCHEMA fetch_etl FROM ' || creators || '; then try again.';
    END IF;
    WITH RECURSIVE ours(classid, objid) AS (
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend AS d
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid = ext.oid AND d.deptype = 'e'
        UNION
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend AS d
          JOIN ours AS o ON d.refclassid = o.classid AND d.refobjid = o.objid
         WHERE d.deptype IN ('a', 'i')
    ), present(classid, objid) AS (
        SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_class AS c WHERE c.relnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type AS t WHERE t.typnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_operator AS o WHERE o.oprnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_opclass'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_opclass AS o WHERE o.opcnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_opfamily'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_opfamily AS o WHERE o.opfnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_collation AS c WHERE c.collnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_conversion'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_conversion AS c WHERE c.connamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_constraint AS c WHERE c.connamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, s.oid FROM pg_catalog.pg_statistic_ext AS s WHERE s.stxnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_ts_config AS c WHERE c.cfgnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, d.oid FROM pg_catalog.pg_ts_dict AS d WHERE d.dictnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_parser'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_ts_parser AS p WHERE p.prsnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_ts_template'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_ts_template AS t WHERE t.tmplnamespace = ext.nsp
        UNION ALL SELECT 'pg_catalog.pg_extension'::pg_catalog.regclass, e.oid FROM pg_catalog.pg_extension AS e WHERE e.extnamespace = ext.nsp AND e.oid <> ext.oid
    ), theirs(classid, objid) AS (
        SELECT p.classid, p.objid FROM present AS p
         WHERE NOT EXISTS (SELECT FROM ours AS o WHERE o.classid = p.classid AND o.objid = p.objid)
    )
    -- (named once: a table's row type, indexes and constraints go with it)
    SELECT pg_catalog.array_agg(pg_catalog.pg_describe_object(t.classid, t.objid, 0) ORDER BY 1) INTO strangers
      FROM theirs AS t
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d JOIN theirs AS u
                         ON d.refclassid = u.classid AND d.refobjid = u.objid
                        WHERE d.classid = t.classid AND d.objid = t.objid AND d.deptype IN ('a', 'i'));
    IF strangers IS NOT NULL THEN
        RAISE EXCEPTION 'schema fetch_etl holds objects that are not fetch_etl''s'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Not fetch_etl''s (' || pg_catalog.cardinality(strangers) || '): '
                           || pg_catalog.array_to_string(strangers[1:10], '; ')
                           || CASE WHEN pg_catalog.cardinality(strangers) > 10 THEN '; ...' ELSE '' END || '.',
                  HINT = 'fetch_etl uses what is in its schema with a superuser''s rights: move or drop those objects first.';
    END IF;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$trust$;

-- CREATE EXTENSION creates the schema (control file: schema = fetch_etl),
-- owned by the installing superuser. Let other roles see what is in it;
-- each object below grants or revokes its own privileges, and finalize.sql
-- takes back whatever default privileges added.
GRANT USAGE ON SCHEMA fetch_etl TO PUBLIC;

-- The masking key(s). Only the owner can read this table; mask_pii reads it
-- from C without going through SQL privileges (see src/postgres/keystore.rs).
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
    -- COLLATE "C": masks are ASCII hex; bytewise comparison is all they need, and cheaper.
    masked      text        COLLATE "C" PRIMARY KEY CHECK (pg_catalog.length(masked) = 64),
    raw         text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fetch_etl.pii_vault IS
    'fetch_etl: mask -> raw value, for fetch_etl.unmask(). Contains PII; readable by the owner only.';
REVOKE ALL ON TABLE fetch_etl.pii_vault FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pii_vault', '');

-- Vault pairs a drain could not add because another session held the same
-- mask uncommitted beyond fetch_etl.ledger_wait_timeout (0.4.0). Written in
-- the drain's own transaction, so the value survives should that session roll
-- back; unmask() reads them after the vault, prune() moves them into it.
CREATE TABLE fetch_etl.pii_vault_pending (
    masked      text        COLLATE "C" NOT NULL CHECK (pg_catalog.length(masked) = 64),
    raw         text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX pii_vault_pending_masked ON fetch_etl.pii_vault_pending (masked);
COMMENT ON TABLE fetch_etl.pii_vault_pending IS
    'fetch_etl: mask -> raw value pairs waiting to enter pii_vault (moved by prune()). Contains PII; readable by the owner only.';
REVOKE ALL ON TABLE fetch_etl.pii_vault_pending FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pii_vault_pending', '');

-- One row per sqs_drain call, written in the drain's own transaction.
CREATE SEQUENCE fetch_etl.drain_runs_run_id_seq;
CREATE TABLE fetch_etl.drain_runs (
    run_id         bigint      PRIMARY KEY DEFAULT pg_catalog.nextval('fetch_etl.drain_runs_run_id_seq'),
    queue_url      text        NOT NULL,
    target_table   text        NOT NULL,
    max_messages   integer     NOT NULL,
    wait_seconds   integer     NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at    timestamptz,
    status         text        NOT NULL DEFAULT 'running'
                               CHECK (status IN ('running', 'ok', 'partial', 'skipped', 'failed')),
    received       bigint      NOT NULL DEFAULT 0,
    loaded         bigint      NOT NULL DEFAULT 0,
    rejected       bigint      NOT NULL DEFAULT 0,
    duplicates     bigint      NOT NULL DEFAULT 0,
    -- received but left in the queue for a later drain (a ledger wait ran out): not in `received`
    deferred       bigint      NOT NULL DEFAULT 0,
    receive_calls  integer     NOT NULL DEFAULT 0,
    active_seconds double precision,  -- from start until the last message was stored
    protocol       text,
    error          text,
    run_by         name        NOT NULL DEFAULT SESSION_USER,
    -- where the run's AWS credentials came from (settings, environment, web_identity,
    -- profile:<name>, container, imds; +assume_role) and whose they are: a role ARN
    -- or 'key …' and the access key id's last 4 characters. Never a secret.
    credential_source   text,
    credential_identity text,
    -- the pipeline or router the run used (0.6.0; NULL before)
    pipeline       text,
    CHECK (received = loaded + rejected + duplicates)
);
ALTER SEQUENCE fetch_etl.drain_runs_run_id_seq OWNED BY fetch_etl.drain_runs.run_id;
CREATE INDEX drain_runs_queue_started ON fetch_etl.drain_runs (queue_url, started_at);
COMMENT ON TABLE fetch_etl.drain_runs IS
    'fetch_etl: one row per sqs_drain call (counts, timing, outcome: ok, partial, skipped, failed).';
REVOKE ALL ON TABLE fetch_etl.drain_runs FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.drain_runs', '');
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.drain_runs_run_id_seq', '');

-- What prune() deleted of drain_runs, per queue, so the counters of
-- fetch_etl.queue_counters (Prometheus counters) never go down (0.7.0).
CREATE TABLE fetch_etl.drain_run_totals (
    queue_url    text   PRIMARY KEY,
    runs         bigint NOT NULL DEFAULT 0,
    failed_runs  bigint NOT NULL DEFAULT 0,
    skipped_runs bigint NOT NULL DEFAULT 0,
    received     bigint NOT NULL DEFAULT 0,
    loaded       bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    duplicates   bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE fetch_etl.drain_run_totals IS 'fetch_etl: the sums of the run records prune() deleted, per queue.';
REVOKE ALL ON TABLE fetch_etl.drain_run_totals FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.drain_run_totals', '');

-- Messages that could not be loaded, with the body as received (it may contain PII), cut to
-- fetch_etl.dead_letter_max_body_bytes.
CREATE SEQUENCE fetch_etl.dead_letters_id_seq;
CREATE TABLE fetch_etl.dead_letters (
    dead_letter_id bigint      PRIMARY KEY DEFAULT pg_catalog.nextval('fetch_etl.dead_letters_id_seq'),
    run_id         bigint      NOT NULL,
    queue_url      text        NOT NULL,
    message_id     text        NOT NULL,
    body           text        NOT NULL,
    reason_code    text        NOT NULL,
    reason         text        NOT NULL,
    sent_at        timestamptz,
    receive_count  integer,
    dead_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    replayed_at    timestamptz,
    replayed_by    name,
    -- who produced it and for which table: a replay loads only dead letters of
    -- its own target table unless told otherwise (NULL: before 0.2.0, unknown)
    run_role       name,
    target_table   text,
    -- replays that refused it again, and when the last one did: a replay takes
    -- the dead letters tried longest ago first, so ones that keep failing never
    -- hold back those behind them (0.4.0)
    replay_attempts integer    NOT NULL DEFAULT 0,
    last_replay_at timestamptz,
    -- the body's size as received, and whether only its first
    -- fetch_etl.dead_letter_max_body_bytes are kept (a cut body is never
    -- replayed) (0.5.0; NULL and false before)
    body_bytes     integer,
    body_truncated boolean     NOT NULL DEFAULT false,
    -- the pipeline or router of the drain that refused it, which its replay
    -- runs again, and its id (0.6.0; NULL before: the login pipeline)
    pipeline       text,
    pipeline_id    bigint,
    -- the key the ledger recorded for it (NULL: its message id), and the
    -- message's attributes: a replay sees the message as the drain did, and
    -- records the pipeline's key when it differs (0.6.0)
    ledger_key     text,
    attributes     jsonb,
    -- resolved without loading: discard_dead_letters(note), by a role that
    -- may replay them; no longer pending, kept until prune() (0.7.0)
    discarded_at   timestamptz,
    discarded_by   name,
    discard_note   text
);
ALTER SEQUENCE fetch_etl.dead_letters_id_seq OWNED BY fetch_etl.dead_letters.dead_letter_id;
CREATE INDEX dead_letters_run ON fetch_etl.dead_letters (run_id);
CREATE INDEX dead_letters_pending ON fetch_etl.dead_letters (queue_url, reason_code) WHERE replayed_at IS NULL;
CREATE INDEX dead_letters_replay_order ON fetch_etl.dead_letters (last_replay_at NULLS FIRST, dead_letter_id)
    WHERE replayed_at IS NULL;
COMMENT ON TABLE fetch_etl.dead_letters IS 'fetch_etl: messages sqs_drain could not load, with the reason. Contains raw PII; owner only.';
REVOKE ALL ON TABLE fetch_etl.dead_letters FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.dead_letters_id_seq', '');

-- The ledger of processed SQS message ids: what makes redelivery, lost
-- deletes, re-runs and concurrent drains load each message once.
CREATE TABLE fetch_etl.processed_messages (
    message_id     text        COLLATE "C" PRIMARY KEY,
    run_id         bigint      NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX processed_messages_at ON fetch_etl.processed_messages USING brin (processed_at);
COMMENT ON TABLE fetch_etl.processed_messages IS 'fetch_etl: SQS message ids already loaded or dead-lettered; prune with fetch_etl.prune().';
REVOKE ALL ON TABLE fetch_etl.processed_messages FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.processed_messages', '');

-- One row per queue ever drained: a drain holds its queue's row locked (FOR
-- UPDATE, as the owner) until it commits, so two drains of a queue never run
-- at once. Only the owner can lock these rows; an advisory lock could be taken
-- by any role to block every drain.
CREATE TABLE fetch_etl.queue_locks (
    queue_key      text        COLLATE "C" PRIMARY KEY,
    first_drained  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fetch_etl.queue_locks IS 'fetch_etl: one lockable row per queue (normalised URL); owner only.';
REVOKE ALL ON TABLE fetch_etl.queue_locks FROM PUBLIC;

-- Pipelines and routers (0.6.0): how each message of a queue becomes rows of
-- a table (docs/pipelines.md). Changed only through create_pipeline,
-- create_router and drop_pipeline, which check who may; read by drains as the
-- owner; listed by the view fetch_etl.pipelines. A pipeline's rows are
-- inserted with its owner's privileges.
CREATE SEQUENCE fetch_etl.pipeline_definitions_id_seq;
CREATE TABLE fetch_etl.pipeline_definitions (
    name          text        COLLATE "C" PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- never reused: ledger keys and dead letters name a pipeline by it, so one
    -- dropped and made again under its name (by anyone) inherits neither
    id            bigint      NOT NULL UNIQUE DEFAULT pg_catalog.nextval('fetch_etl.pipeline_definitions_id_seq'),
    kind          text        NOT NULL CHECK (kind IN ('pipeline', 'router')),
    owner         regrole     NOT NULL,
    -- a pipeline: its table (NULL: the drain's target_table, for the built-in
    -- login pipeline), its column list as create_pipeline stored it, one row per
    -- element of rows_path, and what makes a message the same event as one
    -- loaded before
    target        regclass,
    columns       text,
    rows_path     text,
    idempotency   text        NOT NULL DEFAULT 'message_id',
    -- a router: the value it routes by, value -> pipeline, and the pipeline for
    -- values no route names (NULL: dead letters, no_route)
    route_by      text,
    routes        jsonb,
    otherwise     text,
    -- the reject reason of an event with none of the pipeline's fields, and the
    -- columns of a target table created when missing (the login pipeline's)
    unrecognized  text        NOT NULL DEFAULT 'unrecognized_event',
    create_table  text,
    builtin       boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (CASE kind WHEN 'pipeline' THEN columns IS NOT NULL AND route_by IS NULL AND routes IS NULL
                                          AND otherwise IS NULL AND (target IS NOT NULL OR builtin)
                     ELSE route_by IS NOT NULL AND routes IS NOT NULL AND columns IS NULL
                          AND target IS NULL AND rows_path IS NULL END)
);
ALTER SEQUENCE fetch_etl.pipeline_definitions_id_seq OWNED BY fetch_etl.pipeline_definitions.id;
COMMENT ON TABLE fetch_etl.pipeline_definitions IS
    'fetch_etl: pipelines and routers (changed through create_pipeline, create_router, drop_pipeline; listed by fetch_etl.pipelines); owner only.';
REVOKE ALL ON TABLE fetch_etl.pipeline_definitions FROM PUBLIC;
-- Users' pipelines go into pg_dump (the built-in one comes with the extension),
-- those whose owner role or table still exists: a dropped one's regrole or
-- regclass would be dumped as a bare OID, which a restore could give to another.
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pipeline_definitions',
    'WHERE NOT builtin AND EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.oid OPERATOR(pg_catalog.=) owner::pg_catalog.oid)'
    ' AND (target IS NULL OR EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid OPERATOR(pg_catalog.=) target::pg_catalog.oid))');
SELECT pg_catalog.pg_extension_config_dump('fetch_etl.pipeline_definitions_id_seq', '');

-- The built-in pipeline: the Fetch Rewards exercise's login events, what
-- sqs_drain(queue_url) runs (fetch_etl_core::pipeline::login has the same text;
-- a test checks).
INSERT INTO fetch_etl.pipeline_definitions
    (name, kind, owner, target, columns, idempotency, unrecognized, create_table, builtin)
SELECT 'login', 'pipeline', e.extowner::pg_catalog.regrole, NULL,
       $columns$user_id text PATH '$.user_id' STRING REQUIRED,
device_type text PATH '$.device_type' STRING,
masked_ip PATH '$.ip' STRING MASKED,
locale text PATH '$.locale' STRING,
masked_device_id PATH '$.device_id' STRING MASKED,
app_version PATH '$.app_version' STRING USING version,
create_date MESSAGE sent_date,
sqs_message_id MESSAGE message_id IF EXISTS,
sqs_sent_at MESSAGE sent_at IF EXISTS,
sqs_attributes MESSAGE attributes IF EXISTS$columns$,
       'message_id', 'not_login_event',
       $ddl$user_id varchar(128), device_type varchar(32), masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date$ddl$,
       true
  FROM pg_catalog.pg_extension AS e WHERE e.extname = 'fetch_etl';

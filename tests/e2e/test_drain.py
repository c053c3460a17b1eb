"""sqs_drain end to end: a real cluster, moto with signature checking, the real sample."""
import datetime
import os
import hashlib
import hmac
import json
import threading
import time

import psycopg
import pytest

from conftest import (
    SAMPLE_RECORDS,
    SQS_PORT,
    USER_LOGINS_DDL,
    VALID,
    VIS,
    connect,
    counts,
    drain,
    loaded_sample,
    make_queue,
    needs_pg_cron,
    queue_depth,
    set_credentials,
    via,
)


def encode_version(v):
    parts = [int(p) for p in v.split(".")] + [0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def user_logins_rows(conn):
    """Rows in user_logins, 0 while the drain has not created it yet."""
    if conn.execute("SELECT to_regclass('user_logins')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT count(*) FROM user_logins").fetchone()[0]


def active_key(conn):
    return bytes(
        conn.execute(
            "SELECT key FROM fetch_etl.mask_keys ORDER BY generation DESC, created_at LIMIT 1"
        ).fetchone()[0]
    )


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_full_sample_loads_99_rejects_1_and_empties_the_queue(pg, sqs, protocol):
    raw_url, url = make_queue(sqs)
    pg.execute(f"SET fetch_etl.sqs_protocol = {protocol}")
    row = drain(pg, url)
    assert counts(row) == (100, 99, 1, 0)

    # every row checked against our own computation from the sample file
    key = active_key(pg)
    got = {
        r[0]: r[1:]
        for r in pg.execute(
            "SELECT user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date FROM user_logins"
        )
    }
    assert len(got) == 99
    today = datetime.datetime.now(datetime.timezone.utc).date()
    for rec in VALID:
        device_type, masked_ip, masked_device_id, locale, app_version, create_date = got[rec["user_id"]]
        assert device_type == rec["device_type"]
        assert masked_ip == hmac.new(key, rec["ip"].encode(), hashlib.sha256).hexdigest()
        assert masked_device_id == hmac.new(key, rec["device_id"].encode(), hashlib.sha256).hexdigest()
        assert locale == rec["locale"]
        assert app_version == encode_version(rec["app_version"])
        assert create_date in (today, today - datetime.timedelta(days=1))
    # the masks are also what mask_pii gives
    mismatched = pg.execute(
        "SELECT count(*) FROM user_logins u WHERE u.masked_ip <> fetch_etl.mask_pii(fetch_etl.unmask(u.masked_ip))"
    ).fetchone()[0]
    assert mismatched == 0
    assert pg.execute("SELECT count(*) FROM user_logins WHERE locale IS NULL").fetchone()[0] == 29

    # the one bad message, body exactly as sent
    dl = pg.execute("SELECT body, reason_code, reason, run_id FROM fetch_etl.dead_letters").fetchall()
    assert dl == [(json.dumps(SAMPLE_RECORDS[12]), "not_login_event", "not_login_event: no login fields; has: bar, foo", row[0])]

    # the run is recorded, and the queue is empty once the drain committed
    run = pg.execute(
        "SELECT status, received, loaded, rejected, duplicates, protocol, error FROM fetch_etl.drain_runs WHERE run_id = %s",
        (row[0],),
    ).fetchone()
    assert run == ("ok", 100, 99, 1, 0, protocol, None)
    assert queue_depth(sqs, raw_url) == (0, 0)
    # raw PII is only in the vault
    assert pg.execute("SELECT count(*) FROM fetch_etl.pii_vault").fetchone()[0] == 99 * 2


def test_rerun_loads_nothing_new(pg, sqs):
    _, url = make_queue(sqs)
    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert counts(drain(pg, url)) == (0, 0, 0, 0)
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone()[0] == 99


def test_rolled_back_drain_deletes_nothing_and_messages_come_back(pg, sqs):
    raw_url, url = make_queue(sqs)
    pg.autocommit = False
    assert loaded_sample(drain(pg, url, visibility_timeout=VIS))
    pg.rollback()
    pg.autocommit = True
    assert queue_depth(sqs, raw_url) == (0, 100)  # received, not deleted
    assert pg.execute("SELECT to_regclass('user_logins')").fetchone()[0] is None
    time.sleep(VIS + 0.5)
    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert queue_depth(sqs, raw_url) == (0, 0)


def test_rollback_to_savepoint_deletes_nothing(pg, sqs):
    raw_url, url = make_queue(sqs)
    pg.execute(USER_LOGINS_DDL)
    pg.autocommit = False
    pg.execute("SAVEPOINT s")
    drain(pg, url, visibility_timeout=VIS)
    pg.execute("ROLLBACK TO SAVEPOINT s")
    pg.commit()
    pg.autocommit = True
    assert queue_depth(sqs, raw_url) == (0, 100)
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone()[0] == 0


def test_lost_delete_is_a_duplicate_next_time(pg, sqs, proxy):
    """The drain commits but DeleteMessageBatch fails: the messages come back
    after their visibility timeout and are recognised, counted and deleted."""
    raw_url, _ = make_queue(sqs)
    url = via(proxy, raw_url)
    pg.execute("SET fetch_etl.http_max_attempts = 1")
    proxy.fail_deletes = True
    notices = []
    pg.add_notice_handler(lambda n: notices.append(n.message_primary))
    assert loaded_sample(drain(pg, url, visibility_timeout=VIS))
    assert any("could not be deleted" in n for n in notices), notices
    proxy.fail_deletes = False
    time.sleep(VIS + 0.5)
    assert counts(drain(pg, url)) == (100, 0, 0, 100)
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone()[0] == 99
    assert queue_depth(sqs, raw_url) == (0, 0)


REJECTS = [
    ("not json", "not_json"),
    ("[1, 2, 3]", "not_object"),
    (json.dumps({"foo": "oops_wrong_msg_type", "bar": "123"}), "not_login_event"),
    (json.dumps({"ip": "1.2.3.4", "device_id": "123-45-6789"}), "missing_field"),
    (json.dumps({"user_id": 42}), "wrong_type"),
    (json.dumps({"user_id": "u", "ip": ["1.2.3.4"]}), "wrong_type"),
    (json.dumps({"user_id": "u" * 129}), "too_long"),
    (json.dumps({"user_id": "u", "locale": "x" * 33}), "too_long"),
    ('{"user_id": "u\\u0000v"}', "nul_character"),
    ("[" * 300 + "]" * 300, "too_deep"),
    (json.dumps({"user_id": "u", "pad": "x" * 70000}), "too_large"),
    ('{"user_id": "a", "user_id": "b"}', "duplicate_field"),
    (json.dumps({"user_id": "u", "app_version": "1.2.3.4"}), "bad_app_version"),
    (json.dumps({"user_id": "u", "app_version": "2.100"}), "bad_app_version"),
]


def test_each_reject_reason_is_recorded_and_never_blocks_the_rest(pg, sqs):
    # SQS takes bodies up to 1 MiB, the default limit: too_large needs a lower one
    pg.execute("SET fetch_etl.max_body_bytes = '64kB'")
    # bodies kept whole (the default keeps 64 kB, and too_large's is 70 kB)
    pg.execute("SET fetch_etl.dead_letter_max_body_bytes = '1MB'")
    good = json.dumps(VALID[0])
    _, url = make_queue(sqs, [b for b, _ in REJECTS] + [good])
    assert counts(drain(pg, url)) == (len(REJECTS) + 1, 1, len(REJECTS), 0)
    got = sorted(pg.execute("SELECT body, reason_code FROM fetch_etl.dead_letters").fetchall())
    assert got == sorted(REJECTS)
    # every reason is readable text starting with its code
    assert pg.execute("SELECT bool_and(reason LIKE reason_code || ': %') FROM fetch_etl.dead_letters").fetchone()[0]


def test_a_row_the_table_refuses_becomes_a_dead_letter(pg, sqs):
    """A CHECK constraint on the user's table refuses one row: only that row is dead-lettered."""
    pg.execute("CREATE TABLE user_logins (user_id varchar(128), device_type varchar(32) CHECK (device_type <> 'ios'),"
               " masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer,"
               " create_date date)")
    ios = sum(1 for r in VALID if r["device_type"] == "ios")
    _, url = make_queue(sqs)
    assert counts(drain(pg, url)) == (100, 99 - ios, 1 + ios, 0)
    refused = pg.execute("SELECT count(*) FROM fetch_etl.dead_letters WHERE reason_code = 'rejected_by_table'"
                         " AND reason LIKE 'rejected_by_table: 23514 %'").fetchone()[0]
    assert refused == ios
    # no raw PII of refused rows in the vault: only loaded rows' values
    assert pg.execute("SELECT count(*) FROM fetch_etl.pii_vault").fetchone()[0] == (99 - ios) * 2


def test_wrong_secret_key_is_a_clear_error_without_the_secret(pg, sqs, aws_key):
    _, url = make_queue(sqs, ["{}"])
    pg.execute("SET fetch_etl.aws_secret_access_key = 'wrong-secret-Xyz123'")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url)
    assert e.value.sqlstate == "28000"
    msg = str(e.value)
    assert "SignatureDoesNotMatch" in msg
    assert "wrong-secret-Xyz123" not in msg and aws_key[1] not in msg


def test_unknown_access_key_is_rejected(pg, sqs):
    _, url = make_queue(sqs, ["{}"])
    pg.execute("SET fetch_etl.aws_access_key_id = 'AKIDONTEXIST'")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url)
    assert e.value.sqlstate == "28000"
    assert "InvalidClientTokenId" in str(e.value)


def test_missing_queue_missing_credentials_and_unreachable_endpoint(pg, db):
    with pytest.raises(psycopg.Error) as e:
        drain(pg, f"http://localhost:{SQS_PORT}/000000000000/no-such-queue")
    assert e.value.sqlstate == "42704"
    with connect(db) as c, pytest.raises(psycopg.Error) as e:
        drain(c, f"http://localhost:{SQS_PORT}/000000000000/q")
    assert e.value.sqlstate == "28000" and "no AWS credentials found" in str(e.value)
    pg.execute("SET fetch_etl.http_max_attempts = 1")
    start = time.monotonic()
    with pytest.raises(psycopg.Error) as e:
        drain(pg, "http://127.0.0.1:9/000000000000/q")
    assert e.value.sqlstate == "08001"
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "url",
    [
        "ftp://localhost/000000000000/q",
        "http://localhost:4599/q",
        "http://user:pw@localhost:4599/000000000000/q",
        "http://localhost:4599/000000000000/q?Action=DeleteQueue",
    ],
)
def test_bad_queue_urls_are_refused_before_any_request(pg, url):
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url)
    assert e.value.sqlstate == "22023"
    assert "pw@" not in str(e.value)


def test_bad_arguments(pg):
    for kw, sqlstate in [
        ({"max_messages": 0}, "22023"),
        ({"wait_seconds": 21}, "22023"),
        ({"visibility_timeout": -1}, "22023"),
        ({"max_messages": None}, "22023"),
        ({"target_table": ""}, "22023"),
    ]:
        with pytest.raises(psycopg.Error) as e:
            drain(pg, "http://localhost:4599/000000000000/q", **kw)
        assert e.value.sqlstate == sqlstate, kw


def interrupt_long_poll(pg, db, sqs, signal_fn, expected):
    """Start a 20 s long poll on an empty queue, have another session call
    signal_fn(pid) after 1 s, and return how long the drain took to fail."""
    _, url = make_queue(sqs, [])
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    with connect(db) as other:
        timer = threading.Timer(1.0, lambda: other.execute(f"SELECT {signal_fn}(%s)", (pid,)))
        timer.start()
        start = time.monotonic()
        with pytest.raises(expected):
            drain(pg, url, wait_seconds=20)
        elapsed = time.monotonic() - start
        timer.join()
        alive = other.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
    return elapsed, alive


def test_cancel_while_long_polling_takes_effect_within_a_second(pg, db, sqs):
    elapsed, alive = interrupt_long_poll(pg, db, sqs, "pg_cancel_backend", psycopg.errors.QueryCanceled)
    assert elapsed < 2.0, elapsed
    assert alive == 1
    assert pg.execute("SELECT 1").fetchone() == (1,), "the backend is fine afterwards"


def test_terminate_while_waiting(pg, db, sqs):
    elapsed, alive = interrupt_long_poll(pg, db, sqs, "pg_terminate_backend", psycopg.OperationalError)
    assert elapsed < 2.0, elapsed
    assert alive == 0, "the backend is gone, the server is up"


def test_statement_timeout_applies_while_waiting_on_http(pg, sqs):
    _, url = make_queue(sqs, [])
    pg.execute("SET statement_timeout = '700ms'")
    start = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        drain(pg, url, wait_seconds=20)
    assert time.monotonic() - start < 1.7


def test_long_poll_picks_up_a_message_sent_while_waiting(pg, sqs):
    raw_url, url = make_queue(sqs, [])
    threading.Timer(1.0, lambda: sqs.send_message(QueueUrl=raw_url, MessageBody=json.dumps(VALID[1]))).start()
    start = time.monotonic()
    assert counts(drain(pg, url, wait_seconds=5)) == (1, 1, 0, 0)
    # the message ends the long poll at ~1 s; short polls find nothing more;
    # one long poll per call, so the call ends there
    assert time.monotonic() - start < 3.5


def test_max_messages_is_respected(pg, sqs):
    raw_url, url = make_queue(sqs)
    assert counts(drain(pg, url, max_messages=15))[0] == 15
    assert queue_depth(sqs, raw_url) == (85, 0)


def test_localstack_before_3_gets_the_query_protocol(pg, sqs, proxy):
    """auto: a JSON request answered with an XML error makes the drain retry in Query, and remember it."""
    raw_url, _ = make_queue(sqs)
    url = via(proxy, raw_url)
    proxy.reject_json = True
    row = drain(pg, url)
    assert counts(row) == (100, 99, 1, 0)
    assert pg.execute("SELECT protocol FROM fetch_etl.drain_runs WHERE run_id = %s", (row[0],)).fetchone() == ("query",)
    assert any(s.startswith("query:DeleteMessageBatch") for s in proxy.seen)
    json_calls = sum(1 for s in proxy.seen if s.startswith("json:"))
    # remembered for the backend: a second drain sends no JSON at all
    drain(pg, url)
    assert sum(1 for s in proxy.seen if s.startswith("json:")) == json_calls


def test_throttling_and_server_errors_are_retried(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs)
    url = via(proxy, raw_url)
    pg.execute("SET fetch_etl.receive_concurrency = 1")
    proxy.fail_next("ReceiveMessage", 2, 503, b'{"__type":"com.amazonaws.sqs#ServiceUnavailable","message":"x"}')
    proxy.fail_next("DeleteMessageBatch", 1, 400,
                    b'{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}')
    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert queue_depth(sqs, raw_url) == (0, 0)


def test_error_after_progress_keeps_what_was_received(pg, sqs, proxy):
    """Receives start failing mid-run: the run stores what it got, says so, and ends as 'partial'."""
    raw_url, _ = make_queue(sqs)
    url = via(proxy, raw_url)
    pg.execute("SET fetch_etl.receive_concurrency = 1")
    pg.execute("SET fetch_etl.http_max_attempts = 1")
    orig = proxy.fail_next

    received_before = []

    def arm_after_three():
        while sum(1 for s in proxy.seen if s.endswith(":ReceiveMessage")) < 3:
            time.sleep(0.01)
        orig("ReceiveMessage", 1000, 500, b'{"__type":"com.amazonaws.sqs#InternalError","message":"down"}')
        received_before.append(True)

    threading.Thread(target=arm_after_three, daemon=True).start()
    row = drain(pg, url)
    assert 0 < row[1] < 100
    status, error = pg.execute("SELECT status, error FROM fetch_etl.drain_runs WHERE run_id = %s", (row[0],)).fetchone()
    assert status == "partial" and "InternalError" in error
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone()[0] == row[2]


def test_target_table_variants(pg, sqs):
    # a schema-qualified, quoted name is created with the exercise's DDL
    pg.execute("CREATE SCHEMA etl")
    _, url = make_queue(sqs, [json.dumps(VALID[0]), json.dumps(VALID[1])])
    assert counts(drain(pg, url, target_table='etl."Logins; DROP TABLE x"')) == (2, 2, 0, 0)
    assert pg.execute('SELECT count(*) FROM etl."Logins; DROP TABLE x"').fetchone() == (2,)
    # a text app_version column keeps the version string
    pg.execute("CREATE TABLE logins_text (user_id text, device_type text, masked_ip text, masked_device_id text,"
               " locale text, app_version text, create_date text, loaded_at timestamptz DEFAULT now())")
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    assert counts(drain(pg, url, target_table="logins_text")) == (1, 1, 0, 0)
    row = pg.execute("SELECT app_version, create_date, loaded_at IS NOT NULL FROM logins_text").fetchone()
    assert row[0] == VALID[0]["app_version"] and len(row[1]) == 10 and row[2]


@pytest.mark.parametrize(
    "ddl, sqlstate",
    [
        ("CREATE TABLE t (user_id text)", "42703"),
        ("CREATE TABLE t (user_id int, device_type text, masked_ip text, masked_device_id text, locale text,"
         " app_version int, create_date date)", "42804"),
        ("CREATE TABLE t (user_id text, device_type text, masked_ip varchar(32), masked_device_id text,"
         " locale text, app_version int, create_date date)", "42804"),
        ("CREATE VIEW t AS SELECT 1 AS user_id", "42809"),
    ],
)
def test_unusable_target_tables_are_refused_before_receiving(pg, sqs, ddl, sqlstate):
    raw_url, url = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute(ddl)
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url, target_table="t")
    assert e.value.sqlstate == sqlstate
    assert queue_depth(sqs, raw_url) == (1, 0), "nothing was received"


def test_privileges_of_an_operator_role(db, aws_key, sqs):
    """A non-superuser needs EXECUTE on sqs_drain and INSERT on the table; it
    cannot read dead letters, the vault or the ledger, nor set credentials."""
    _, url = make_queue(sqs)
    with connect(db) as admin:
        admin.execute("DROP ROLE IF EXISTS fe_loader")
        admin.execute("CREATE ROLE fe_loader LOGIN")
        admin.execute(USER_LOGINS_DDL)
        admin.execute("GRANT SELECT ON user_logins TO fe_loader")
    try:
        with connect(db) as c:
            c.execute("SET ROLE fe_loader")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                drain(c, url)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SET fetch_etl.aws_secret_access_key = 'x'")
            c.execute("RESET ROLE")
            c.execute("GRANT EXECUTE ON FUNCTION fetch_etl.sqs_drain TO fe_loader")
            set_credentials(c, aws_key)
            c.execute("SET ROLE fe_loader")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                drain(c, url)  # EXECUTE alone: no INSERT on the table
            assert "GRANT INSERT" in (e.value.diag.message_hint or "")
            c.execute("RESET ROLE")
            c.execute("GRANT INSERT ON user_logins TO fe_loader")
            c.execute("SET ROLE fe_loader")
            assert counts(drain(c, url)) == (100, 99, 1, 0)
            for table in ("dead_letters", "pii_vault", "processed_messages", "drain_runs", "mask_keys"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(f"SELECT * FROM fetch_etl.{table}")
            assert c.execute("SELECT count(*) FROM user_logins").fetchone() == (99,)
            c.execute("RESET ROLE")
            # the run records who ran it
            assert c.execute("SELECT run_by FROM fetch_etl.drain_runs").fetchone() == ("postgres",)
    finally:
        with connect(db) as admin:
            admin.execute("DROP OWNED BY fe_loader")
            admin.execute("DROP ROLE fe_loader")


def test_prepare_transaction_is_refused(pg, sqs):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    if pg.execute("SHOW max_prepared_transactions").fetchone()[0] == "0":
        pytest.skip("max_prepared_transactions is 0")
    pg.autocommit = False
    drain(pg, url)
    with pytest.raises(psycopg.Error) as e:
        pg.execute("PREPARE TRANSACTION 'x'")
    assert "cannot PREPARE" in str(e.value)
    pg.rollback()
    pg.autocommit = True


def test_prune(pg, sqs):
    pg.execute(USER_LOGINS_DDL.replace("device_type varchar(32)", "device_type varchar(32) CHECK (device_type <> 'ios')"))
    _, url = make_queue(sqs, [json.dumps(r) for r in VALID[:6]])
    drain(pg, url)
    pg.execute("ALTER TABLE user_logins DROP CONSTRAINT user_logins_device_type_check")
    replayed = pg.execute("SELECT replayed FROM fetch_etl.replay_dead_letters()").fetchone()[0]
    assert replayed > 0
    pg.execute("UPDATE fetch_etl.processed_messages SET processed_at = now() - interval '20 days'")
    pg.execute("UPDATE fetch_etl.drain_runs SET started_at = now() - interval '40 days'")
    pg.execute("UPDATE fetch_etl.dead_letters SET replayed_at = now() - interval '40 days' WHERE replayed_at IS NOT NULL")
    assert pg.execute("SELECT * FROM fetch_etl.prune()").fetchone() == (1, 6, replayed)
    assert pg.execute("SELECT * FROM fetch_etl.prune()").fetchone() == (0, 0, 0)
    with pytest.raises(psycopg.Error) as e:
        pg.execute("SELECT * FROM fetch_etl.prune(keep_ledger => interval '5 minutes')")
    assert e.value.sqlstate == "22023"


def test_a_drain_finding_the_queue_busy_returns_at_once(db, aws_key, sqs):
    """The interleaving is the isolation spec queue_lock; this keeps its timing."""
    raw_url, url = make_queue(sqs)
    a, b = connect(db), connect(db)
    for c in (a, b):
        set_credentials(c, aws_key)
    a.autocommit = False
    assert loaded_sample(drain(a, url, visibility_timeout=VIS))  # holds the queue until it commits
    notices = []
    b.add_notice_handler(lambda n: notices.append(n.message_primary))
    start = time.monotonic()
    assert drain(b, url) == (None, 0, 0, 0, 0)
    assert time.monotonic() - start < 1.0
    assert any("another session is draining" in n for n in notices), notices
    a.commit()
    assert b.execute("SELECT status FROM fetch_etl.drain_runs ORDER BY run_id").fetchall() == [("ok",), ("skipped",)]
    # once A has committed, B can drain again
    assert drain(b, url)[0] is not None
    a.close(), b.close()


def test_on_error_record_keeps_the_failure_in_drain_runs(pg, sqs):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute("SET fetch_etl.aws_secret_access_key = 'wrong-secret-Xyz123'")
    notices = []
    pg.add_notice_handler(lambda n: notices.append(n.message_primary))
    row = drain(pg, url, on_error="record")
    assert row[0] is not None and counts(row) == (0, 0, 0, 0)
    status, error = pg.execute("SELECT status, error FROM fetch_etl.drain_runs WHERE run_id = %s", (row[0],)).fetchone()
    assert status == "failed" and error.startswith("28000 ") and "SignatureDoesNotMatch" in error
    assert "wrong-secret-Xyz123" not in error
    assert any("failed and was rolled back" in n for n in notices)
    health = pg.execute("SELECT last_status, last_error FROM fetch_etl.queue_health WHERE queue_url = %s", (url,)).fetchone()
    assert health[0] == "failed" and "SignatureDoesNotMatch" in health[1]
    # nothing else of the failed run survives (the target table it created is rolled back)
    assert pg.execute("SELECT to_regclass('user_logins')").fetchone() == (None,)
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url, on_error="ignore")
    assert e.value.sqlstate == "22023"


def test_sqs_drain_for_commits_as_it_goes(db, aws_key, sqs):
    """Within one CALL, a message sent mid-budget is visible to other sessions within seconds."""
    raw_url, url = make_queue(sqs, [json.dumps(VALID[0])])
    c = connect(db)
    set_credentials(c, aws_key)
    t = threading.Thread(target=lambda: c.execute("CALL fetch_etl.sqs_drain_for(%s, interval '8 seconds', 3)", (url,)))
    start = time.monotonic()
    t.start()
    with connect(db) as watcher:
        def rows():
            return user_logins_rows(watcher)

        while rows() < 1 and time.monotonic() - start < 5:
            time.sleep(0.1)
        assert rows() == 1, "the first message is committed before the budget ends"
        sent = time.monotonic()
        sqs.send_message(QueueUrl=raw_url, MessageBody=json.dumps(VALID[1]))
        while rows() < 2 and time.monotonic() - sent < 5:
            time.sleep(0.1)
        assert rows() == 2
        assert time.monotonic() - sent < 3.5, "loaded within seconds of arriving"
        t.join(15)
        assert not t.is_alive()
        assert 7.0 <= time.monotonic() - start < 11
        assert queue_depth(sqs, raw_url) == (0, 0)
    c.close()


def test_two_sqs_drain_for_at_once_load_each_message_once(db, aws_key, sqs):
    raw_url, url = make_queue(sqs)
    conns = [connect(db), connect(db)]
    for c in conns:
        set_credentials(c, aws_key)
        c.execute(USER_LOGINS_DDL)
    threads = [
        threading.Thread(target=lambda c=c: c.execute("CALL fetch_etl.sqs_drain_for(%s, interval '4 seconds', 1)", (url,)))
        for c in conns
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with connect(db) as c:
        assert c.execute("SELECT count(*), count(DISTINCT user_id) FROM user_logins").fetchone() == (99, 99)
        statuses = [r[0] for r in c.execute("SELECT status FROM fetch_etl.drain_runs")]
        assert "skipped" in statuses, statuses
    assert queue_depth(sqs, raw_url) == (0, 0)
    for c in conns:
        c.close()


@needs_pg_cron
def test_pg_cron_job_loads_messages_sent_after_it_was_scheduled(db, aws_key, sqs):
    """A real pg_cron 1.4 job (minute schedule, background worker) running
    sqs_drain_for: messages sent after scheduling are loaded by it, and one
    sent while it runs is loaded within seconds."""
    from conftest import PGHOST, restart_cluster

    env_file = os.path.join(PGHOST, "environment")
    with open(env_file, "w") as f:
        f.write(f"AWS_ACCESS_KEY_ID={aws_key[0]}\nAWS_SECRET_ACCESS_KEY={aws_key[1]}\n")
    restart_cluster()
    raw_url, url = make_queue(sqs, [])
    job = None
    try:
        with connect("postgres") as cron:
            cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            job = cron.execute(
                "SELECT cron.schedule_in_database('fetch-etl-e2e', '* * * * *', %s, %s)",
                (f"CALL fetch_etl.sqs_drain_for('{url}', interval '20 seconds', 5)", db),
            ).fetchone()[0]
        sqs.send_message_batch(
            QueueUrl=raw_url, Entries=[{"Id": str(i), "MessageBody": json.dumps(r)} for i, r in enumerate(VALID[:5])]
        )
        with connect(db) as c:
            def rows():
                return user_logins_rows(c)

            deadline = time.monotonic() + 75
            while rows() < 5 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert rows() == 5, "the job ran at the next minute and loaded the messages"
            sent = time.monotonic()
            sqs.send_message(QueueUrl=raw_url, MessageBody=json.dumps(VALID[5]))
            while rows() < 6 and time.monotonic() - sent < 10:
                time.sleep(0.2)
            assert rows() == 6
            assert time.monotonic() - sent < 7, "loaded while the job was still running"
        with connect("postgres") as cron:
            deadline = time.monotonic() + 40
            status = None
            while time.monotonic() < deadline:
                status = cron.execute(
                    "SELECT status FROM cron.job_run_details WHERE jobid = %s ORDER BY runid LIMIT 1", (job,)
                ).fetchone()
                if status and status[0] in ("succeeded", "failed"):
                    break
                time.sleep(1)
            assert status == ("succeeded",), status
    finally:
        with connect("postgres") as cron:
            if job is not None:
                cron.execute("SELECT cron.unschedule(%s)", (job,))
        os.remove(env_file)
        restart_cluster()


def test_queue_health_and_depth(pg, sqs):
    raw_url, url = make_queue(sqs)
    assert pg.execute("SELECT * FROM fetch_etl.queue_depth(%s)", (url,)).fetchone() == (100, 0, 0)
    drain(pg, url, max_messages=40)
    assert pg.execute("SELECT * FROM fetch_etl.queue_depth(%s)", (url,)).fetchone() == (60, 0, 0)
    drain(pg, url)
    h = pg.execute(
        "SELECT last_status, runs_last_hour, received_last_hour, loaded_last_hour, rejected_last_day,"
        " messages_per_second > 0, dead_letters_pending, last_error, last_load_at IS NOT NULL"
        " FROM fetch_etl.queue_health WHERE queue_url = %s",
        (url,),
    ).fetchone()
    assert h == ("ok", 2, 100, 99, 1, True, 1, None, True)


def test_replay_after_a_fix_loads_once(pg, sqs):
    pg.execute(USER_LOGINS_DDL.replace("device_type varchar(32)", "device_type varchar(32) CHECK (device_type <> 'ios')"))
    ios = sum(1 for r in VALID if r["device_type"] == "ios")
    _, url = make_queue(sqs)
    assert counts(drain(pg, url)) == (100, 99 - ios, 1 + ios, 0)
    # replaying before the fix changes nothing but the reason's freshness
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(reason_code => 'rejected_by_table')").fetchone() == (ios, 0, ios)
    pg.execute("ALTER TABLE user_logins DROP CONSTRAINT user_logins_device_type_check")
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters()").fetchone() == (1 + ios, ios, 1)
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters()").fetchone() == (1, 0, 1), "only the bad one is left"
    assert pg.execute("SELECT count(*), count(DISTINCT user_id) FROM user_logins").fetchone() == (99, 99)
    left = pg.execute("SELECT reason_code FROM fetch_etl.dead_letters WHERE replayed_at IS NULL").fetchall()
    assert left == [("not_login_event",)]
    # the replayed rows are masked like any other
    assert pg.execute("SELECT count(*) FROM user_logins WHERE masked_ip <> fetch_etl.mask_pii(fetch_etl.unmask(masked_ip))").fetchone() == (0,)


def test_endpoint_override_for_emulator_queue_urls(pg, sqs):
    """Queue URLs whose host is not reachable (fauxqs: sqs.us-east-1.127.0.0.1)
    work with fetch_etl.sqs_endpoint_url; the region comes from the host."""
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    name = raw_url.rsplit("/", 1)[1]
    pg.execute(f"SET fetch_etl.sqs_endpoint_url = 'http://127.0.0.1:{SQS_PORT}'")
    assert counts(drain(pg, f"http://sqs.us-east-1.127.0.0.1:{SQS_PORT}/000000000000/{name}")) == (1, 1, 0, 0)


def test_credentials_from_the_server_environment(db, aws_key, sqs):
    from conftest import PGHOST, restart_cluster

    env_file = os.path.join(PGHOST, "environment")
    with open(env_file, "w") as f:
        f.write(f"AWS_ACCESS_KEY_ID={aws_key[0]}\nAWS_SECRET_ACCESS_KEY={aws_key[1]}\nAWS_REGION=us-east-1\n")
    try:
        restart_cluster()
        _, url = make_queue(sqs, [json.dumps(VALID[0])])
        with connect(db) as c:  # no fetch_etl.aws_* settings in this session
            assert counts(drain(c, url)) == (1, 1, 0, 0)
            # the settings stay empty and hidden; the environment is not exposed through them
            assert c.execute("SELECT current_setting('fetch_etl.aws_secret_access_key')").fetchone() == ("",)
    finally:
        os.remove(env_file)
        restart_cluster()


@needs_pg_cron
def test_docker_initdb_script_schedules_the_drain_and_housekeeping(aws_key, sqs, db):
    """docker/initdb/10-fetch-etl.sh, run the way the postgres image runs it
    (POSTGRES_USER/POSTGRES_DB/FETCH_ETL_QUEUE_URL in the environment), with
    a POSTGRES_DB other than cron.database_name: pg_cron can only be created
    in the latter (0.6.0's script created it in POSTGRES_DB and failed), and
    the jobs run in the former."""
    import subprocess

    from conftest import PGHOST, PGPORT, REPO

    _, url = make_queue(sqs, [])
    with connect(db) as c:
        c.execute("DROP EXTENSION fetch_etl")  # the script creates it
    env = dict(os.environ, PGHOST=PGHOST, PGPORT=PGPORT, POSTGRES_USER="postgres", POSTGRES_DB=db,
               FETCH_ETL_QUEUE_URL=url)
    try:
        r = subprocess.run(["sh", str(REPO / "docker" / "initdb" / "10-fetch-etl.sh")], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with connect("postgres") as c:
            jobs = {n: (cmd, d) for n, cmd, d in c.execute(
                "SELECT jobname, command, database FROM cron.job WHERE jobname LIKE 'fetch-etl-%'").fetchall()}
            assert jobs == {
                "fetch-etl-drain": (f"CALL fetch_etl.sqs_drain_for('{url}', interval '55 seconds')", db),
                "fetch-etl-prune": ("SELECT * FROM fetch_etl.prune()", db),
            }
        with connect(db) as c:
            assert c.execute(jobs["fetch-etl-prune"][0]).fetchone() == (0, 0, 0)
    finally:
        with connect("postgres") as c:
            c.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE 'fetch-etl-%'")

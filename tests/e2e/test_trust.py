"""The trust boundary, tried as an attacker or an unlucky operator would: where
signed requests may go (ssrf_*), what errors may say (error_echo_*), memory
(memory_*), interrupts (interrupt_*), the queue lock and ledger waits
(lock_*), replays (replay_*) and messages that used to abort a drain
(poison_*). Each test fails on 0.1.0."""
import json
import re
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from conftest import (
    USER_LOGINS_DDL,
    VALID,
    VIS,
    connect,
    counts,
    drain,
    make_queue,
    set_credentials,
    via,
)
from fakesqs import BigBodies
from faultproxy import Recorder


@pytest.fixture
def role(db):
    """A LOGIN role allowed to drain into public.user_logins, and nothing else."""
    name = "fe_" + uuid.uuid4().hex[:8]
    with connect(db) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
        admin.execute(USER_LOGINS_DDL)
        admin.execute(f"GRANT INSERT, SELECT ON user_logins TO {name}")
        admin.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.sqs_drain TO {name}")
    yield name
    with connect(db) as admin:
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")


# ---------------------------------------------------------------- ssrf_*


def test_ssrf_the_default_allowlist_sends_nothing_anywhere_else(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute("SET fetch_etl.allowed_endpoints = 'aws'")
    for url in [
        via(proxy, raw_url),
        "http://169.254.169.254/000000000000/q",  # EC2 instance metadata
        "http://[fd00:ec2::254]/000000000000/q",
        "http://10.0.0.1/000000000000/q",
        "http://sqs.us-east-1.amazonaws.com/000000000000/q",  # AWS, but not over https
    ]:
        with pytest.raises(psycopg.Error) as e:
            drain(pg, url)
        assert e.value.sqlstate == "42501", url
        assert "fetch_etl.allowed_endpoints" in str(e.value)
    assert proxy.seen == [], "no request was sent"


def test_ssrf_a_doubled_slash_in_the_queue_url_stays_on_the_listed_host(pg, sqs, proxy):
    """`//000000000000/q` is a valid queue path, but joined onto the endpoint it
    names the host 0 (0.0.0.0, this machine, port 80); `//2852039166/q` names
    169.254.169.254. Every request must still go to the listed endpoint."""
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute(f"SET fetch_etl.allowed_endpoints = 'http://127.0.0.1:{proxy.port}'")
    pg.execute("SET fetch_etl.sqs_protocol = 'query'")
    url = via(proxy, raw_url).replace(f":{proxy.port}/", f":{proxy.port}//", 1)
    assert "//000000000000/" in url
    assert counts(drain(pg, url)) == (1, 1, 0, 0)
    assert proxy.seen and all(s.startswith("query:") for s in proxy.seen), proxy.seen


def test_ssrf_a_pattern_only_matches_names_that_resolve_to_public_addresses(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute("SET fetch_etl.allowed_endpoints = 'http://*:*'")
    for url in [via(proxy, raw_url).replace("127.0.0.1", "localhost"), via(proxy, raw_url)]:
        with pytest.raises(psycopg.Error) as e:
            drain(pg, url)
        assert e.value.sqlstate == "42501"
        assert "internal address" in str(e.value)
    assert proxy.seen == []
    # named exactly, the same host is allowed
    pg.execute(f"SET fetch_etl.allowed_endpoints = 'http://localhost:{proxy.port}'")
    assert counts(drain(pg, via(proxy, raw_url).replace("127.0.0.1", "localhost"))) == (1, 1, 0, 0)


def test_ssrf_redirects_are_never_followed(pg, sqs, proxy):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    recorder = Recorder()
    try:
        proxy.redirect_to = f"http://127.0.0.1:{recorder.port}/latest/meta-data/iam/security-credentials/"
        pg.execute("SET fetch_etl.http_max_attempts = 1")
        with pytest.raises(psycopg.Error) as e:
            drain(pg, via(proxy, url.replace("localhost", "127.0.0.1")))
        assert "HTTP307" in str(e.value)
        assert recorder.seen == [], "the redirect target got nothing, least of all a signature"
    finally:
        recorder.close()


def test_ssrf_the_endpoint_override_is_checked_too(pg, sqs):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute("SET fetch_etl.allowed_endpoints = 'aws'")
    pg.execute("SET fetch_etl.sqs_endpoint_url = 'http://169.254.169.254'")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, "https://sqs.us-east-1.amazonaws.com/000000000000/q")
    assert e.value.sqlstate == "42501"


def test_ssrf_a_granted_role_cannot_widen_the_allowlist(db, role):
    with connect(db) as c:
        c.execute(f"SET ROLE {role}")
        for setting in ("fetch_etl.allowed_endpoints", "fetch_etl.sqs_endpoint_url", "fetch_etl.max_receive_concurrency"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(f"SET {setting} = '1'")


# ---------------------------------------------------------------- error_echo_*


def test_error_echo_a_reply_that_is_not_an_aws_error_is_never_quoted(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    page = b"root:x:0:0:INTERNAL-SECRET-PAGE /etc/shadow"
    proxy.fail_next("ReceiveMessage", 100, 500, page)
    pg.execute("SET fetch_etl.http_max_attempts = 1")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, via(proxy, raw_url))
    assert "HTTP500" in str(e.value)
    assert "INTERNAL-SECRET" not in str(e.value) and "root:x" not in str(e.value)
    row = drain(pg, via(proxy, raw_url), on_error="record")
    error = pg.execute("SELECT error FROM fetch_etl.drain_runs WHERE run_id = %s", (row[0],)).fetchone()[0]
    assert "HTTP500" in error and "INTERNAL-SECRET" not in error
    health = pg.execute("SELECT last_error FROM fetch_etl.queue_health").fetchone()[0]
    assert "INTERNAL-SECRET" not in health


def test_error_echo_part_of_the_session_token_is_redacted(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs, [json.dumps(VALID[0])])
    token = "IQoJb3JpZ2luX2VjE" + uuid.uuid4().hex * 4
    pg.execute("SELECT set_config('fetch_etl.aws_session_token', %s, false)", (token,))
    quoted = token[10:40]
    body = json.dumps({"__type": "com.amazonaws.sqs#InvalidParameterValue",
                       "message": f"the token ...{quoted}... is not valid"}).encode()
    proxy.fail_next("ReceiveMessage", 100, 400, body)
    with pytest.raises(psycopg.Error) as e:
        drain(pg, via(proxy, raw_url))
    assert "InvalidParameterValue" in str(e.value)
    assert quoted not in str(e.value), str(e.value)
    assert "<redacted>" in str(e.value)


def test_error_echo_a_connection_error_names_the_endpoint_once(pg):
    pg.execute("SET fetch_etl.http_max_attempts = 1")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, "http://127.0.0.1:9/000000000000/q")
    assert e.value.sqlstate == "08001"
    assert str(e.value).count("127.0.0.1:9") == 1, str(e.value)


# ---------------------------------------------------------------- memory_*


def test_memory_a_200_kib_event_loads_with_the_default_limit(pg, sqs):
    big = dict(VALID[0], pad="x" * 200 * 1024)
    _, url = make_queue(sqs, [json.dumps(big)])
    assert counts(drain(pg, url)) == (1, 1, 0, 0)


def rss_anon_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def peak_growth_mb(pid, run):
    """Calls run() while sampling backend `pid`'s private memory every 5 ms;
    returns run()'s result and the peak growth in MB."""
    before = rss_anon_kb(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_kb(pid))
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    try:
        result = run()
    finally:
        done.set()
        t.join()
    return result, (peak[0] - before) / 1024


def add_dead_letters(conn, n, body, params=()):
    """`n` dead letters for public.user_logins whose body is the SQL expression
    `body` (of `i`, the row number, and `params`), written directly."""
    conn.execute("INSERT INTO fetch_etl.dead_letters (run_id, queue_url, message_id, body, reason_code, reason, target_table)"
                 f" SELECT 0, 'http://localhost:1/000000000000/q', 'm' || i, {body}, 'not_json', 'x', 'public.user_logins'"
                 f" FROM generate_series(1, {int(n)}) i", params)


def test_memory_peak_stays_under_256_mb_whatever_a_role_sets(db, role):
    """400 messages of 900 KiB, with the largest batch size and concurrency a
    non-superuser may set: 0.1.0 held them all (batch_size up to 100,000, 64
    calls of 10 in flight); now the concurrency limit, the pump's high-water
    mark and the byte-sized batches hold it under 256 MB. The bodies are
    mostly quotes, escaped once more in the reply: replies near 18 MB, the
    largest SQS can send."""
    fake = BigBodies(count=400, body_bytes=900 * 1024)
    try:
        with connect(db) as c:
            set_credentials(c, ("AKIDFAKE", "fake-secret"))
            c.execute(f"SET ROLE {role}")
            # (the long timeout: this Python endpoint writes its replies slowly)
            for setting, value in [("fetch_etl.receive_concurrency", "64"), ("fetch_etl.batch_size", "10000"),
                                   ("fetch_etl.max_body_bytes", "1MB"), ("fetch_etl.http_timeout", "60s")]:
                try:
                    c.execute("SELECT set_config(%s, %s, false)", (setting, value))
                except psycopg.Error:
                    pass  # a bound lower than 0.1.0's is the fix, not a failure
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            c.execute("SELECT 1 FROM user_logins LIMIT 1")
            row, growth_mb = peak_growth_mb(
                pid, lambda: drain(c, f"http://127.0.0.1:{fake.port}/000000000000/big", max_messages=400))
            assert counts(row) == (400, 400, 0, 0), [entry for entry in fake.log if not entry[-1]]
        print(f"backend private memory: peak +{growth_mb:.0f} MB")
        assert growth_mb < 256, f"peak growth {growth_mb:.0f} MB"
    finally:
        fake.close()


def test_memory_a_replay_of_large_dead_letters_stays_bounded(pg):
    """Anyone who can send to the queue can leave 1 MiB dead letters; 0.3.0's
    replay read every row it took into memory at once (300 of 900 KiB: the
    backend grew by 265 MB). Now a page is sized first and its
    bodies are read in runs of 8 MiB, each freed before the next."""
    pg.execute(USER_LOGINS_DDL)
    add_dead_letters(pg, 300, "repeat(md5(i::text), 900 * 32)")
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    pg.execute("SELECT 1 FROM user_logins LIMIT 1")
    row, growth_mb = peak_growth_mb(
        pid, lambda: pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(max_rows => 300, any_target => true)").fetchone())
    assert row == (300, 0, 300)
    print(f"backend private memory during the replay: peak +{growth_mb:.0f} MB")
    assert growth_mb < 100, f"peak growth {growth_mb:.0f} MB"


def test_memory_large_pii_values_keep_a_drain_under_256_mb(db):
    """Anyone who can send to the queue decides how large `ip` is. 0.4.0
    checked no length for it and kept every raw value for the vault until
    5,000 pairs had piled up: 400 messages whose `ip` was 250,000 characters
    took a drain to +577 MB (1,000 of them: +1,442 MB). Now a value longer
    than fetch_etl.max_pii_bytes is refused, and the vault's buffer is written
    every 1 MiB: even with the limit raised to 1 MB, the drain stays bounded."""
    fake = BigBodies(count=400, body_bytes=250_000, field="ip")
    ip_bytes = (250_000 - 120) // 2  # quotes, each escaped once in the body
    try:
        with connect(db) as c:
            set_credentials(c, ("AKIDFAKE", "fake-secret"))
            c.execute(USER_LOGINS_DDL)
            c.execute("SET fetch_etl.http_timeout = '60s'")
            url = f"http://127.0.0.1:{fake.port}/000000000000/big"
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            c.execute("SELECT 1 FROM user_logins LIMIT 1")
            # the default limit: refused as too_long, kept as dead letters cut to 64 kB
            row, growth_mb = peak_growth_mb(pid, lambda: drain(c, url, max_messages=200))
            assert counts(row) == (200, 0, 200, 0)
            assert c.execute(
                "SELECT count(*) FROM fetch_etl.dead_letters WHERE reason"
                " ~ '^too_long: ip has [0-9]+ bytes; values that are masked may have 4096 \\(fetch_etl.max_pii_bytes\\)$'"
                " AND body_truncated AND octet_length(body) = 65536").fetchone() == (200,)
            print(f"refused: peak +{growth_mb:.0f} MB")
            assert growth_mb < 256, f"peak growth {growth_mb:.0f} MB"
            # a superuser's raised limit: all vaulted, memory still bounded
            c.execute("SET fetch_etl.max_pii_bytes = '1MB'")
            row, growth_mb = peak_growth_mb(pid, lambda: drain(c, url, max_messages=200))
            assert counts(row) == (200, 200, 0, 0)
            # the ips (and the device ids, small)
            assert c.execute("SELECT count(*) FILTER (WHERE length(raw) >= %s), count(*) FROM fetch_etl.pii_vault",
                             (ip_bytes,)).fetchone() == (200, 400)
        print(f"vaulted: peak +{growth_mb:.0f} MB")
        assert growth_mb < 256, f"peak growth {growth_mb:.0f} MB"
    finally:
        fake.close()


def test_memory_a_role_cannot_raise_the_pii_limit(db, role):
    with connect(db) as c:
        c.execute(f"SET ROLE {role}")
        for setting in ("fetch_etl.max_pii_bytes", "fetch_etl.dead_letter_max_body_bytes", "fetch_etl.dead_letter_retention"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(f"SET {setting} = 1024")


# ---------------------------------------------------------------- disk_*


def test_disk_a_large_refused_body_is_kept_cut_and_never_replayed(pg, sqs):
    """0.4.0 kept every refused body whole, and prune never removed one:
    10,000 bodies of 250 kB that are not JSON left 2.5 GB behind. Now a dead
    letter keeps the first fetch_etl.dead_letter_max_body_bytes (64 kB) and
    says what it cut; a cut body is never replayed."""
    pg.execute(USER_LOGINS_DDL)
    big = "é" + "x" * 249_999
    _, url = make_queue(sqs, [big, big[:1000]], per_call=1)
    assert counts(drain(pg, url)) == (2, 0, 2, 0)
    rows = pg.execute("SELECT octet_length(body), body_bytes, body_truncated, reason_code FROM fetch_etl.dead_letters"
                      " ORDER BY body_bytes").fetchall()
    assert rows == [(1001, 1001, False, "not_json"), (65536, 250_001, True, "not_json")]
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(any_target => true)").fetchone() == (1, 0, 1)
    assert pg.execute("SELECT count(*) FROM fetch_etl.dead_letters WHERE replay_attempts = 0").fetchone() == (1,)
    # a superuser may keep more
    pg.execute("SET fetch_etl.dead_letter_max_body_bytes = '1MB'")
    _, url = make_queue(sqs, [big], per_call=1)
    drain(pg, url)
    assert pg.execute("SELECT octet_length(body), body_truncated FROM fetch_etl.dead_letters ORDER BY dead_letter_id DESC"
                      " LIMIT 1").fetchone() == (250_001, False)


def test_disk_prune_removes_dead_letters_never_replayed_past_the_retention(pg, role):
    """0.4.0's prune removed replayed dead letters only: anyone who can send to
    the queue could fill the disk with ones that never load."""
    add_dead_letters(pg, 3, "'old'")
    add_dead_letters(pg, 2, "'new'")
    pg.execute("UPDATE fetch_etl.dead_letters SET dead_at = now() - interval '31 days' WHERE body = 'old'")
    pg.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.prune(interval, interval, interval) TO {role}")
    with connect(pg.info.dbname) as op:
        op.execute(f"SET ROLE {role}")
        notices = []
        op.add_notice_handler(lambda d: notices.append(d.message_primary))
        op.execute("SELECT * FROM fetch_etl.prune()")
    assert pg.execute("SELECT body, count(*) FROM fetch_etl.dead_letters GROUP BY 1").fetchall() == [("new", 2)]
    assert any("removed 3 dead letters never replayed" in n for n in notices), notices
    # 0 keeps them
    pg.execute("UPDATE fetch_etl.dead_letters SET dead_at = now() - interval '10 years'")
    pg.execute("SET fetch_etl.dead_letter_retention = 0")
    pg.execute("SELECT * FROM fetch_etl.prune()")
    assert pg.execute("SELECT count(*) FROM fetch_etl.dead_letters").fetchone() == (2,)


# ---------------------------------------------------------------- interrupt_*


def test_interrupt_terminate_ends_a_hung_delete_within_a_second(db, aws_key, sqs, proxy):
    raw_url, _ = make_queue(sqs, [json.dumps(r) for r in VALID[:20]])
    c = connect(db)
    set_credentials(c, aws_key)
    c.execute("SET fetch_etl.delete_timeout = '30s'")
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    proxy.hold_deletes = True
    result = {}

    def run():
        try:
            drain(c, via(proxy, raw_url), visibility_timeout=VIS)
            result["ok"] = True
        except psycopg.Error as e:
            result["error"] = e
        result["at"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    assert proxy.deletes_held.wait(30), "the drain committed and started deleting"
    with connect(db) as other:
        start = time.monotonic()
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        t.join(10)
        assert not t.is_alive(), "the terminate ended the delete wait"
        took = result["at"] - start
        assert took < 1.0, f"{took:.2f} s"
        # The drain had committed: its caller may get its result, and then
        # the backend is gone (the terminate took effect).
        time.sleep(0.5)
        gone = other.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
        assert gone == 0
    proxy.hold_deletes = False
    # committed; the held batch was not deleted: it comes back and counts as duplicates
    time.sleep(VIS + 0.5)
    with connect(db) as d:
        set_credentials(d, aws_key)
        received, loaded, rejected, duplicates = counts(drain(d, raw_url.replace("127.0.0.1", "localhost")))
        assert 10 <= received <= 20 and received == duplicates and loaded == rejected == 0


def test_interrupt_cancel_works_while_validating_messages_with_many_keys(pg, db):
    """Validation alone, through a replay of dead letters (no network in the
    way): twenty bodies of 80,000 keys. 0.1.0 checked duplicate keys in
    quadratic time, seconds per message, and never looked for a cancel."""
    body = "{" + ", ".join(f'"k{i}": 1' for i in range(80_000)) + ', "user_id": "u"}'
    pg.execute(USER_LOGINS_DDL)
    pg.execute("SET fetch_etl.max_body_bytes = '1MB'")
    add_dead_letters(pg, 20, "%s", (body,))
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    with connect(db) as other:
        timer = threading.Timer(0.3, lambda: other.execute("SELECT pg_cancel_backend(%s)", (pid,)))
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            pg.execute("SELECT * FROM fetch_etl.replay_dead_letters()")
        took = time.monotonic() - start
        timer.join()
    assert took < 0.3 + 1.0, f"the cancel took effect after {took - 0.3:.2f} s"


# ---------------------------------------------------------------- lock_*


def test_lock_a_role_without_grants_cannot_block_drains(db, aws_key, sqs):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    name = "fe_nobody_" + uuid.uuid4().hex[:6]
    with connect(db) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
    try:
        with connect(db) as blocker, connect(db) as c:
            blocker.execute(f"SET ROLE {name}")
            # 0.1.0's lock: an advisory lock any role may take
            blocker.execute("SELECT pg_advisory_lock(1717924963, hashtext(%s))", (url,))
            set_credentials(c, aws_key)
            row = drain(c, url)
            assert row[0] is not None and counts(row) == (1, 1, 0, 0), "the drain was not skipped"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                blocker.execute("SELECT * FROM fetch_etl.queue_locks FOR UPDATE")
    finally:
        with connect(db) as admin:
            admin.execute(f"DROP ROLE {name}")


def test_lock_spellings_of_one_queue_share_one_lock(db, aws_key, sqs):
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    other_spelling = url.replace("http://localhost", "HTTP://LOCALHOST") + "/"
    a, b = connect(db), connect(db)
    for c in (a, b):
        set_credentials(c, aws_key)
    b.execute("SET statement_timeout = '10s'")  # without the shared lock B would wait for A
    a.autocommit = False
    drain(a, url, visibility_timeout=VIS)
    assert drain(b, other_spelling)[0] is None, "skipped: the queue is busy"
    a.commit()
    a.close(), b.close()


def test_lock_a_ledger_wait_behind_an_open_transaction_is_bounded(db, aws_key, sqs):
    """B receives what A holds uncommitted (A's visibility timeout ran out)
    and, instead of waiting for A as long as A stays open, leaves those
    messages in the queue after fetch_etl.ledger_wait_timeout."""
    raw_url, url = make_queue(sqs, [json.dumps(r) for r in VALID[:10]])
    a, b = connect(db), connect(db)
    for c in (a, b):
        set_credentials(c, aws_key)
        c.execute(USER_LOGINS_DDL)
    # (with the heartbeat on, A keeps them hidden and B never receives them)
    a.execute("SET fetch_etl.visibility_extension_limit = 0")
    a.autocommit = False
    assert counts(drain(a, url, visibility_timeout=VIS))[1] == 10
    time.sleep(VIS + 0.5)
    b.execute("SET fetch_etl.ledger_wait_timeout = '500ms'")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("b", drain(b, url.replace("localhost", "127.0.0.1"))))
    start = time.monotonic()
    t.start()
    t.join(8)
    assert not t.is_alive(), "B returned while A is still open"
    took = time.monotonic() - start
    run = b.execute("SELECT received, deferred, status FROM fetch_etl.drain_runs WHERE run_id = %s",
                    (result["b"][0],)).fetchone()
    assert counts(result["b"]) == (0, 0, 0, 0) and run == (0, 10, "ok"), (result, run, took)
    a.commit()
    assert a.execute("SELECT count(*) FROM user_logins").fetchone() == (10,)
    a.close(), b.close()


# ---------------------------------------------------------------- replay_*


def test_replay_a_forged_dead_letter_is_not_loaded_into_another_table(db, aws_key, sqs, role):
    """A loader's own table refuses an event it sent itself; the dead letter's
    body is the loader's choice. An operator's routine replay into its own
    table must not load it."""
    forged = dict(VALID[0], user_id="forged-admin")
    _, url = make_queue(sqs, [json.dumps(forged)])
    with connect(db) as admin:
        admin.execute("CREATE SCHEMA ops")
        admin.execute(USER_LOGINS_DDL.replace("user_logins", "ops.user_logins"))
        admin.execute("CREATE TABLE public.loader_logins (LIKE user_logins)")
        admin.execute("ALTER TABLE public.loader_logins ADD CHECK (user_id <> 'forged-admin')")
        admin.execute(f"GRANT INSERT ON public.loader_logins TO {role}")
    with connect(db) as loader:
        set_credentials(loader, aws_key)
        loader.execute(f"SET ROLE {role}")
        assert counts(drain(loader, url, target_table="loader_logins")) == (1, 0, 1, 0)
    with connect(db) as op:
        dl = op.execute("SELECT reason_code, run_role, target_table FROM fetch_etl.dead_letters").fetchone()
        assert dl == ("rejected_by_table", role, "public.loader_logins")
        assert op.execute("SELECT * FROM fetch_etl.replay_dead_letters(target_table => 'ops.user_logins')").fetchone() == (0, 0, 0)
        assert op.execute("SELECT count(*) FROM ops.user_logins").fetchone() == (0,)
        # widening the replay is explicit
        assert op.execute("SELECT * FROM fetch_etl.replay_dead_letters(target_table => 'ops.user_logins',"
                          " any_target => true)").fetchone() == (1, 1, 0)


def test_replay_any_target_takes_only_dead_letters_of_roles_the_caller_belongs_to(db, role):
    """0.4.0: any role granted replay_dead_letters could pass any_target =>
    true and copy every queue's dead letters, raw user_ids and all, into a
    table of its own, marking them replayed so that their owners could not
    replay them. Now any_target widens the replay to the caller's own roles'
    dead letters only (a superuser's: all)."""
    with connect(db) as admin:
        admin.execute("CREATE ROLE fe_other_loader")
        admin.execute("CREATE TABLE public.mine (LIKE user_logins)")
        admin.execute(f"ALTER TABLE public.mine OWNER TO {role}")
        admin.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.replay_dead_letters TO {role}")
        for who, uid in [("fe_other_loader", "theirs"), (role, "ours")]:
            body = json.dumps(dict(VALID[0], user_id=uid))
            admin.execute("INSERT INTO fetch_etl.dead_letters (run_id, queue_url, message_id, body, reason_code, reason,"
                          " run_role, target_table) VALUES (0, 'q', %s, %s, 'rejected_by_table', 'x', %s,"
                          " 'public.user_logins')", (uid, body, who))
    try:
        with connect(db) as c:
            c.execute(f"SET ROLE {role}")
            assert c.execute("SELECT * FROM fetch_etl.replay_dead_letters(target_table => 'public.mine',"
                             " any_target => true)").fetchone() == (1, 1, 0)
            assert c.execute("SELECT user_id FROM public.mine").fetchall() == [("ours",)]
        with connect(db) as admin:
            assert admin.execute("SELECT replayed_at IS NULL FROM fetch_etl.dead_letters WHERE message_id = 'theirs'"
                                 ).fetchone() == (True,)
            # a superuser's any_target takes every role's
            admin.execute("CREATE TABLE public.everything (LIKE user_logins)")
            assert admin.execute("SELECT * FROM fetch_etl.replay_dead_letters(target_table => 'public.everything',"
                                 " any_target => true)").fetchone() == (1, 1, 0)
    finally:
        with connect(db) as admin:
            admin.execute("DROP ROLE fe_other_loader")


def test_replay_dead_letters_that_fail_again_do_not_block_the_ones_behind_them(pg, sqs):
    """0.3.0 took dead letters in id order only: the first max_rows rows that
    could never load were taken by every replay, and the fixable ones behind
    them never were."""
    pg.execute(USER_LOGINS_DDL.replace("device_type varchar(32)", "device_type varchar(32) CHECK (device_type <> 'ios')"))
    _, hopeless = make_queue(sqs, [json.dumps({"not": "a login"}) for _ in range(3)])
    _, fixable = make_queue(sqs, [json.dumps(dict(VALID[i], device_type="ios")) for i in range(3)])
    assert counts(drain(pg, hopeless)) == (3, 0, 3, 0)
    assert counts(drain(pg, fixable)) == (3, 0, 3, 0)
    pg.execute("ALTER TABLE user_logins DROP CONSTRAINT user_logins_device_type_check")
    replay = "SELECT * FROM fetch_etl.replay_dead_letters(max_rows => 3)"
    assert pg.execute(replay).fetchone() == (3, 0, 3), "the oldest three, which fail again"
    assert pg.execute(replay).fetchone() == (3, 3, 0), "then the three never tried, not the same three again"
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone() == (3,)
    assert pg.execute(replay).fetchone() == (3, 0, 3)
    left = pg.execute("SELECT reason_code, replay_attempts FROM fetch_etl.dead_letters"
                      " WHERE replayed_at IS NULL").fetchall()
    assert left == [("not_login_event", 2)] * 3


def test_replay_takes_each_dead_letter_once_across_pages_and_calls(pg):
    """Pages of 1,000: 2,100 dead letters that fail again are each taken once
    by one call, and a second call in the same transaction takes none."""
    pg.execute(USER_LOGINS_DDL)
    add_dead_letters(pg, 2100, "'{not json'")
    replay = "SELECT * FROM fetch_etl.replay_dead_letters(max_rows => 5000, any_target => true)"
    with pg.transaction():
        assert pg.execute(replay).fetchone() == (2100, 0, 2100)
        assert pg.execute(replay).fetchone() == (0, 0, 0)
    assert pg.execute("SELECT replay_attempts, count(*) FROM fetch_etl.dead_letters"
                      " GROUP BY 1").fetchall() == [(1, 2100)]
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(max_rows => 1500, any_target => true)"
                      ).fetchone() == (1500, 0, 1500)
    assert pg.execute("SELECT replay_attempts, count(*) FROM fetch_etl.dead_letters"
                      " GROUP BY 1 ORDER BY 1").fetchall() == [(1, 600), (2, 1500)]


def test_prune_a_granted_role_cannot_drop_ledger_entries_a_redelivery_needs(db, role):
    """A message whose delete failed comes back until the queue's retention
    (up to 14 days) ends, and only its ledger entry keeps it from loading
    twice. 0.3.0 let a role granted prune keep 1 hour of ledger, and compared
    intervals, which count a month as 30 days: '-1200 mons 36014 days' passed
    as 14 days but put the cutoff 500 days in the future."""
    with connect(db) as admin:
        admin.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.prune(interval, interval, interval) TO {role}")
        admin.execute("INSERT INTO fetch_etl.processed_messages (message_id, run_id, processed_at)"
                      " VALUES ('m-2-days-old', 1, now() - interval '2 days')")
        admin.execute("INSERT INTO fetch_etl.drain_runs (queue_url, target_table, max_messages, wait_seconds, started_at)"
                      " VALUES ('http://localhost:1/000000000000/q', 'user_logins', 1, 0, now() - interval '2 hours')")
    with connect(db) as op:
        op.execute(f"SET SESSION AUTHORIZATION {role}")
        for args in ["keep_ledger => interval '1 day'",
                     "keep_ledger => interval '-1200 mons 36014 days'",
                     "keep_runs => interval '-1200 mons 36000 days 1 hour'",
                     "keep_replayed => interval '-1200 mons 36000 days 1 hour'"]:
            with pytest.raises(psycopg.Error) as e:
                op.execute(f"SELECT * FROM fetch_etl.prune({args})")
            assert e.value.sqlstate == "22023", args
        assert op.execute("SELECT * FROM fetch_etl.prune()").fetchone() == (0, 0, 0)
        assert op.execute("SELECT * FROM fetch_etl.prune(keep_runs => interval '1 hour')").fetchone() == (1, 0, 0)
    with connect(db) as admin:
        # nor through a superuser's prune: it is the function's floor, not a privilege
        with pytest.raises(psycopg.Error) as e:
            admin.execute("SELECT * FROM fetch_etl.prune(keep_ledger => interval '1 day')")
        assert "14 days" in str(e.value)
        assert admin.execute("SELECT count(*) FROM fetch_etl.processed_messages").fetchone() == (1,)


def test_vault_a_value_survives_the_rollback_of_a_drain_that_held_its_mask(db, aws_key, sqs):
    """Drain A loads an IP and keeps its transaction open; drain B loads the
    same IP, waits ledger_wait_timeout for A's vault row, and commits. 0.3.0
    left the pair to A, so when A rolled back (by accident, or on purpose: any
    role granted sqs_drain can), B's row had a mask unmask could not recover."""
    ev = VALID[0]
    _, url_a = make_queue(sqs, [json.dumps(ev)])
    _, url_b = make_queue(sqs, [json.dumps(dict(ev, user_id="someone-else"))])
    with connect(db) as admin:
        admin.execute(USER_LOGINS_DDL)
    a, b = connect(db), connect(db)
    for c in (a, b):
        set_credentials(c, aws_key)
    try:
        a.autocommit = False
        assert counts(drain(a, url_a)) == (1, 1, 0, 0)  # A holds the vault rows, uncommitted
        b.execute("SET fetch_etl.ledger_wait_timeout = '200ms'")
        assert counts(drain(b, url_b)) == (1, 1, 0, 0)  # committed
        a.rollback()
    finally:
        a.close(), b.close()
    with connect(db) as admin:
        got = admin.execute("SELECT fetch_etl.unmask(masked_ip), fetch_etl.unmask(masked_device_id)"
                            " FROM user_logins").fetchall()
        assert got == [(ev["ip"], ev["device_id"])]
        assert admin.execute("SELECT count(*) FROM fetch_etl.pii_vault_pending").fetchone() == (2,)
        admin.execute("SELECT * FROM fetch_etl.prune()")
        assert admin.execute("SELECT count(*) FROM fetch_etl.pii_vault_pending").fetchone() == (0,)
        assert admin.execute("SELECT fetch_etl.unmask(masked_ip) FROM user_logins").fetchall() == [(ev["ip"],)]
        assert admin.execute("SELECT raw FROM fetch_etl.pii_vault WHERE masked = fetch_etl.mask_pii(%s)",
                             (ev["ip"],)).fetchall() == [(ev["ip"],)]


def test_vault_prune_waits_boundedly_on_a_session_adding_a_pending_mask(db):
    """prune moves pending pairs with ON CONFLICT, which waits for a session
    adding the same mask; a grantee holding one open must not hold prune (and
    the rows it already deleted) for as long as it likes."""
    with connect(db) as admin:
        admin.execute("INSERT INTO fetch_etl.pii_vault_pending (masked, raw)"
                      " VALUES (fetch_etl.mask_pii('10.9.8.7'), '10.9.8.7')")
    holder = connect(db)
    holder.autocommit = False
    holder.execute("SELECT fetch_etl.mask_and_vault('10.9.8.7')")  # a vault row, uncommitted
    try:
        with connect(db) as admin:
            notices = []
            admin.add_notice_handler(lambda n: notices.append(n.message_primary))
            admin.execute("SET statement_timeout = '30s'")  # without the bound, a failure, not a hang
            start = time.monotonic()
            with admin.transaction():
                assert admin.execute("SELECT * FROM fetch_etl.prune()").fetchone() == (0, 0, 0)
                assert admin.execute("SHOW lock_timeout").fetchone() == ("0",), "prune restores lock_timeout"
            assert time.monotonic() - start < 15
            assert any("until the next prune" in n for n in notices), notices
            assert admin.execute("SELECT count(*) FROM fetch_etl.pii_vault_pending").fetchone() == (1,)
    finally:
        holder.rollback()
        holder.close()
    with connect(db) as admin:
        admin.execute("SELECT * FROM fetch_etl.prune()")
        assert admin.execute("SELECT count(*) FROM fetch_etl.pii_vault_pending").fetchone() == (0,)
        assert admin.execute("SELECT fetch_etl.unmask(fetch_etl.mask_pii('10.9.8.7'))").fetchone() == ("10.9.8.7",)


def test_subxact_a_refused_row_costs_a_few_subtransactions_not_one_per_row(pg, sqs):
    """0.3.0 retried a batch the table refused row by row, one subtransaction
    each: one bad row in a batch of 400 meant 400 subtransaction ids in the
    drain's transaction, past the 64 a backend caches, which slows every
    snapshot in the cluster until it commits. Counted here with a sequence a
    statement trigger advances (sequences ignore rollbacks): each insert
    statement the drain runs into the target is one subtransaction."""
    pg.execute(USER_LOGINS_DDL.replace("device_type varchar(32)", "device_type varchar(32) CHECK (device_type <> 'ios')"))
    pg.execute("CREATE SEQUENCE target_statements")
    pg.execute("CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS"
               " $$BEGIN PERFORM nextval('target_statements'); RETURN NULL; END$$")
    pg.execute("CREATE TRIGGER counted BEFORE INSERT ON user_logins FOR EACH STATEMENT EXECUTE FUNCTION count_statement()")
    bodies = [json.dumps(dict(VALID[i % 50], user_id=f"u{i}", device_type="android")) for i in range(400)]
    bodies[137] = json.dumps(dict(VALID[0], user_id="the-bad-one", device_type="ios"))
    _, url = make_queue(sqs, bodies)
    pg.execute("SET fetch_etl.batch_size = 400")
    assert counts(drain(pg, url, max_messages=400)) == (400, 399, 1, 0)
    assert pg.execute("SELECT user_id FROM fetch_etl.dead_letters d, json_to_record(d.body::json) AS b(user_id text)"
                      ).fetchall() == [("the-bad-one",)]
    statements = pg.execute("SELECT last_value FROM target_statements").fetchone()[0]
    print(f"insert statements (subtransactions) into the target: {statements}")
    assert statements <= 2 + 2 * 9, statements  # the batch, then two halves per level of a 400-row search


# ---------------------------------------------------------------- poison_*


def test_poison_an_index_row_too_large_becomes_a_dead_letter(pg, sqs):
    pg.execute(USER_LOGINS_DDL.replace("user_id varchar(128)", "user_id text"))
    pg.execute("CREATE INDEX ON user_logins (user_id)")
    huge = "".join(uuid.uuid4().hex for _ in range(300))  # 9,600 incompressible characters
    _, url = make_queue(sqs, [json.dumps(dict(VALID[0], user_id=huge)), json.dumps(VALID[1]), json.dumps(VALID[2])])
    assert counts(drain(pg, url)) == (3, 2, 1, 0)
    reason = pg.execute("SELECT reason FROM fetch_etl.dead_letters").fetchone()[0]
    assert reason.startswith("rejected_by_table: 54000 "), reason


def test_poison_an_impossible_sent_timestamp_aborts_nothing(pg, sqs, proxy):
    raw_url, _ = make_queue(sqs, ["not json", json.dumps(VALID[0])])
    proxy.rewrite = lambda data: re.sub(rb'"SentTimestamp": ?"\d+"', b'"SentTimestamp": "99999999999999999"', data)
    assert counts(drain(pg, via(proxy, raw_url))) == (2, 1, 1, 0)
    assert pg.execute("SELECT sent_at FROM fetch_etl.dead_letters").fetchone() == (None,)
    # dated by the server's clock instead
    assert pg.execute("SELECT create_date >= current_date - 1 FROM user_logins").fetchone() == (True,)


def test_poison_an_operator_on_the_search_path_never_runs_as_owner(db, aws_key, sqs, role):
    """A granted role puts its own `/` operator first on its search_path; the
    dead-letter statement, which runs as the extension owner, must not pick
    it up (0.1.0 prepared it with the caller's search_path)."""
    _, url = make_queue(sqs, ["not json"])
    with connect(db) as admin:
        admin.execute(f"GRANT CREATE ON DATABASE \"{db}\" TO {role}")
    with connect(db) as c:
        set_credentials(c, aws_key)
        c.execute(f"SET ROLE {role}")
        c.execute("CREATE SCHEMA evil")
        c.execute("CREATE TABLE evil.ran_as (who name)")
        c.execute("GRANT INSERT ON evil.ran_as TO PUBLIC")
        c.execute("CREATE FUNCTION evil.div(float8, numeric) RETURNS float8 LANGUAGE sql"
                  " AS 'INSERT INTO evil.ran_as VALUES (current_user); SELECT 1.0::float8'")
        c.execute("CREATE OPERATOR evil./ (LEFTARG = float8, RIGHTARG = numeric, FUNCTION = evil.div)")
        c.execute("SET search_path = evil, public, pg_catalog")
        assert counts(drain(c, url)) == (1, 0, 1, 0)
        assert c.execute("SELECT count(*) FROM evil.ran_as").fetchone() == (0,), c.execute("SELECT * FROM evil.ran_as").fetchall()

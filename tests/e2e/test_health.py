"""Health that sees every failure (issue 27, "Failures can be invisible"):
each test here is one way a queue could look healthy, or an alert never
clear, while nothing loads. Each failed on 0.6.0."""

import json
import time

import psycopg
import pytest

from conftest import VALID, VIS, connect, counts, drain, loaded_sample, make_queue, set_credentials


def health(conn, url, *cols):
    return conn.execute(
        f"SELECT {', '.join(cols)} FROM fetch_etl.queue_health WHERE queue_url = %s", (url,)
    ).fetchone()


def runs(conn, url):
    return conn.execute(
        "SELECT status, error, run_by FROM fetch_etl.drain_runs WHERE queue_url = %s ORDER BY run_id", (url,)
    ).fetchall()


def test_a_failure_with_on_error_raise_is_recorded_though_its_transaction_rolls_back(pg, sqs):
    """The docs' pg_cron example uses on_error => 'raise': its failures must
    reach queue_health, though the drain's transaction rolls back."""
    _, url = make_queue(sqs, [json.dumps(VALID[0])])
    pg.execute("SET fetch_etl.aws_secret_access_key = 'wrong-secret-Xyz123'")
    with pytest.raises(psycopg.Error) as e:
        drain(pg, url)
    assert e.value.sqlstate == "28000", "the error is raised as it was"
    (status, error, run_by), = runs(pg, url)
    assert status == "failed" and error.startswith("28000 ") and "SignatureDoesNotMatch" in error
    assert "wrong-secret-Xyz123" not in error
    assert run_by == "postgres", "the session user, not the recorder's"
    # in a transaction block the caller rolls back: still recorded
    pg.autocommit = False
    with pytest.raises(psycopg.Error):
        drain(pg, url)
    pg.rollback()
    pg.autocommit = True
    assert [r[0] for r in runs(pg, url)] == ["failed", "failed"]
    state, last_status, failing_since, failed = health(pg, url, "state", "last_status", "failing_since", "failed_last_hour")
    assert (state, last_status, failed) == ("failing", "failed", 2) and failing_since is not None
    # nothing else of the failed runs survives
    assert pg.execute("SELECT to_regclass('user_logins')").fetchone() == (None,)


def test_a_cancelled_drain_is_recorded_and_still_cancelled(pg, sqs):
    """A statement_timeout that ends a drain is a failure too (0.6.0 left no
    record); the cancel is never swallowed, even with on_error => 'record'."""
    _, url = make_queue(sqs, [])
    pg.execute("SET statement_timeout = '700ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        drain(pg, url, wait_seconds=20, on_error="record")
    pg.execute("RESET statement_timeout")
    (status, error, _), = runs(pg, url)
    assert status == "failed" and error.startswith("57014 ")


def test_a_busy_queue_shows_as_skipped_while_nothing_loads(db, aws_key, sqs):
    """A session that holds the queue turns every tick into a skipped run:
    last_run_at stays fresh, so queue_health must say `skipped`."""
    _, url = make_queue(sqs)
    holder, ticker = connect(db), connect(db)
    for c in (holder, ticker):
        set_credentials(c, aws_key)
    holder.autocommit = False
    assert loaded_sample(drain(holder, url, visibility_timeout=VIS))  # holds the queue, uncommitted
    for _ in range(3):
        assert drain(ticker, url) == (None, 0, 0, 0, 0)
    state, since, skipped, first = health(ticker, url, "state", "skipped_since", "skipped_last_hour", "last_run_at")
    assert (state, skipped) == ("skipped", 3)
    started = ticker.execute(
        "SELECT min(started_at) FROM fetch_etl.drain_runs WHERE queue_url = %s", (url,)
    ).fetchone()[0]
    assert since == started
    holder.commit()
    holder.autocommit = True
    assert counts(drain(ticker, url)) == (0, 0, 0, 0)
    assert health(ticker, url, "state", "skipped_since") == ("idle", None)
    holder.close(), ticker.close()


@pytest.mark.parametrize(
    "setup, url, kw",
    [
        ("SET fetch_etl.allowed_endpoints = 'aws'", "http://localhost:4599/000000000000/q", {}),
        ("", "not a queue url", {}),
        ("", "https://sqs.us-east-1.amazonaws.com/123456789012/q", {"max_messages": 0}),
    ],
    ids=["endpoint-not-allowed", "malformed-url", "argument-out-of-range"],
)
def test_errors_before_the_run_starts_are_recorded(pg, setup, url, kw):
    if setup:
        pg.execute(setup)
    row = drain(pg, url, on_error="record", **kw)
    assert row[0] is not None and counts(row) == (0, 0, 0, 0)
    (status, error, _), = runs(pg, url)
    assert status == "failed" and error[:5] in ("42501", "22023"), error
    with pytest.raises(psycopg.Error):
        drain(pg, url, **kw)
    assert [r[0] for r in runs(pg, url)] == ["failed", "failed"], "and with on_error => 'raise'"


def test_a_refused_queue_url_is_recorded_without_its_password(pg):
    """A URL refused for carrying credentials must not put them in drain_runs,
    which monitoring roles read (and Prometheus labels come from)."""
    url = "https://AKIAEXAMPLE:s3cr3t-Pa55@sqs.us-east-1.amazonaws.com/123456789012/q"
    row = drain(pg, url, on_error="record")
    assert row[0] is not None
    recorded = pg.execute("SELECT queue_url, error FROM fetch_etl.drain_runs").fetchall()
    assert recorded == [("https://sqs.us-east-1.amazonaws.com/123456789012/q", recorded[0][1])]
    assert "s3cr3t" not in recorded[0][1] and "AKIAEXAMPLE" not in recorded[0][1]


def test_sqs_drain_for_backs_off_after_failures(db, aws_key, sqs):
    """A queue that does not exist (42704) fails at once: with on_error =>
    'record' sqs_drain_for used to call again at once for its whole budget."""
    url = f"http://localhost:{sqs.meta.endpoint_url.rsplit(':', 1)[1]}/000000000000/no-such-queue-{time.time_ns()}"
    c = connect(db)
    set_credentials(c, aws_key)
    warnings = []
    c.add_notice_handler(lambda n: warnings.append(n.message_primary))
    start = time.monotonic()
    c.execute("CALL fetch_etl.sqs_drain_for(%s, interval '6 seconds', 1, on_error => 'record')", (url,))
    took = time.monotonic() - start
    statuses = [r[0] for r in runs(c, url)]
    # calls at 0, 1, 3 s (pauses of 1, 2, 4 s): 3, and never the hundreds of before
    assert 2 <= len(statuses) <= 4 and set(statuses) == {"failed"}, statuses
    assert 5 <= took < 9, took
    assert sum("a drain failed and was rolled back: 42704" in w for w in warnings) == len(statuses), warnings
    c.close()


def test_dead_letters_that_cannot_be_replayed_can_be_discarded(pg, sqs):
    """`not_login_event` never replays: its pending count must be able to
    return to zero, or an alert on it never clears."""
    _, url = make_queue(sqs)
    assert loaded_sample(drain(pg, url))
    assert health(pg, url, "dead_letters_pending") == (1,)
    with pytest.raises(psycopg.Error) as e:
        pg.execute("SELECT fetch_etl.discard_dead_letters(note => '  ')")
    assert e.value.sqlstate == "22023"
    pg.execute("CREATE ROLE health_nobody")
    try:
        pg.execute("SET ROLE health_nobody")
        with pytest.raises(psycopg.Error) as e:
            pg.execute("SELECT fetch_etl.discard_dead_letters(note => 'x')")
        assert e.value.sqlstate == "42501"
    finally:
        pg.execute("RESET ROLE")
        pg.execute("DROP ROLE health_nobody")
    assert pg.execute(
        "SELECT fetch_etl.discard_dead_letters(note => 'not a login: producer bug', queue_url => %s)", (url,)
    ).fetchone() == (1,)
    assert health(pg, url, "dead_letters_pending") == (0,)
    row = pg.execute(
        "SELECT reason_code, discarded_at IS NOT NULL, discarded_by, discard_note, replayed_at FROM fetch_etl.dead_letters"
    ).fetchone()
    assert row == ("not_login_event", True, "postgres", "not a login: producer bug", None)
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters()").fetchone() == (0, 0, 0), "never replayed"
    assert pg.execute("SELECT fetch_etl.discard_dead_letters(note => 'again')").fetchone() == (0,)
    # kept until prune() ages it out like a replayed one (keep_replayed)...
    pg.execute(
        "INSERT INTO fetch_etl.dead_letters (run_id, queue_url, message_id, body, reason_code, reason, discarded_at)"
        " VALUES (0, %s, 'm-old', '{}', 'not_json', 'r', now() - interval '40 days')", (url,))
    # ...and never past fetch_etl.dead_letter_retention (30 days): a discard
    # must not keep a body's raw PII longer than the superuser's policy
    pg.execute("UPDATE fetch_etl.dead_letters SET dead_at = now() - interval '31 days' WHERE message_id <> 'm-old'")
    assert pg.execute("SELECT replayed_dead_letters FROM fetch_etl.prune(keep_replayed => interval '35 days')").fetchone() == (1,)
    assert pg.execute("SELECT count(*) FROM fetch_etl.dead_letters").fetchone() == (0,)


def test_queue_health_tells_loading_from_loading_nothing_and_idle(pg, sqs):
    raw_url, url = make_queue(sqs)
    assert loaded_sample(drain(pg, url))
    assert health(pg, url, "state") == ("loading",)
    assert counts(drain(pg, url)) == (0, 0, 0, 0)
    assert health(pg, url, "state") == ("idle",)
    # messages come in and none loads: refused (and duplicates alike)
    sqs.send_message(QueueUrl=raw_url, MessageBody=json.dumps({"not": "a login"}))
    assert counts(drain(pg, url)) == (1, 0, 1, 0)
    assert health(pg, url, "state", "last_status") == ("not_loading", "ok")


def test_queue_counters_never_go_down(pg, sqs):
    """Prometheus counters: prune() deletes run records, the totals stay."""
    _, url = make_queue(sqs)
    assert loaded_sample(drain(pg, url))
    bad = "http://localhost:1/000000000000/nowhere"
    pg.execute("SET fetch_etl.allowed_endpoints = 'aws'")
    drain(pg, bad, on_error="record")
    pg.execute("RESET fetch_etl.allowed_endpoints")
    cols = "runs, failed_runs, skipped_runs, received, loaded, rejected, duplicates"
    before = pg.execute(f"SELECT {cols} FROM fetch_etl.queue_counters WHERE queue_url = %s", (url,)).fetchone()
    assert before[:3] == (1, 0, 0) and before[4:6] == (99, 1)
    pg.execute("UPDATE fetch_etl.drain_runs SET started_at = now() - interval '40 days'")
    assert pg.execute("SELECT runs FROM fetch_etl.prune()").fetchone() == (2,)
    assert pg.execute("SELECT count(*) FROM fetch_etl.drain_runs").fetchone() == (0,)
    assert pg.execute(f"SELECT {cols} FROM fetch_etl.queue_counters WHERE queue_url = %s", (url,)).fetchone() == before
    assert pg.execute("SELECT failed_runs FROM fetch_etl.queue_counters WHERE queue_url = %s", (bad,)).fetchone() == (1,)
    drain(pg, url)
    after = pg.execute(f"SELECT {cols} FROM fetch_etl.queue_counters WHERE queue_url = %s", (url,)).fetchone()
    assert after[0] == before[0] + 1 and after[3] >= before[3]


def test_a_recorder_that_cannot_write_is_stopped_and_the_error_raised_as_it_was(db, aws_key):
    """A recorder blocked on drain_runs (an ALTER EXTENSION UPDATE, a VACUUM
    FULL) gives up at its lock_timeout and exits: workers must not pile up
    while drains keep failing. (0.7.0's first recorder ran with signals
    blocked: no lock_timeout, no terminate.)"""
    holder, c = connect(db), connect(db)
    holder.autocommit = False
    holder.execute("LOCK TABLE fetch_etl.drain_runs IN ACCESS EXCLUSIVE MODE")
    warnings = []
    c.add_notice_handler(lambda n: warnings.append(n.message_primary))
    start = time.monotonic()
    with pytest.raises(psycopg.Error) as e:
        drain(c, "https://sqs.us-east-1.amazonaws.com/123456789012/q", max_messages=0)
    took = time.monotonic() - start
    assert e.value.sqlstate == "22023", "the drain's own error"
    assert any("the failed run could not be recorded" in w for w in warnings), warnings
    assert took < 9, f"the recorder's lock_timeout (4 s) ended it: {took:.1f} s"
    recorders = holder.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fetch_etl run recorder'").fetchone()
    assert recorders == (0,)
    holder.rollback()
    holder.close(), c.close()

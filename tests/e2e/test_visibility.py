"""Drains that outlive the visibility timeout (the heartbeat), and messages
handed back on a rollback (fetch_etl.visibility_on_rollback). Against moto
with signature checking, through the fault proxy to count the calls."""
import json
import threading
import time

import psycopg
import pytest

from conftest import USER_LOGINS_DDL, VALID, connect, counts, drain, make_queue, queue_depth, set_credentials, via

SLOW_TRIGGER = """
CREATE FUNCTION public.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON public.user_logins FOR EACH ROW EXECUTE FUNCTION public.slow_row();
"""


def slow_queue(sqs, n=12, visibility=2):
    """A queue with a short visibility timeout of its own, holding n valid events."""
    raw, url = make_queue(sqs, [json.dumps(r) for r in VALID[:n]])
    sqs.set_queue_attributes(QueueUrl=raw, Attributes={"VisibilityTimeout": str(visibility)})
    return raw, url


class Consumer(threading.Thread):
    """Another consumer of the queue: from `after` seconds on (once the drain
    has received everything), receives (never deletes) every 0.25 s until
    stopped, and counts what it got."""

    def __init__(self, sqs, raw_url, after=1.0):
        super().__init__(daemon=True)
        self.sqs, self.raw_url, self.after = sqs, raw_url, after
        self.received = []
        self.done = threading.Event()

    def run(self):
        if self.done.wait(self.after):
            return
        while not self.done.is_set():
            msgs = self.sqs.receive_message(QueueUrl=self.raw_url, MaxNumberOfMessages=10).get("Messages", [])
            self.received += [m["MessageId"] for m in msgs]
            time.sleep(0.25)


def long_drain(pg, sqs, proxy, raw):
    """A drain whose trigger holds its 12 messages about 6 s (12 rows x 0.5 s),
    on a queue whose visibility timeout is 2 s, while another consumer polls."""
    pg.execute(USER_LOGINS_DDL)
    pg.execute(SLOW_TRIGGER)
    other = Consumer(sqs, raw)
    other.start()
    start = time.monotonic()
    row = drain(pg, via(proxy, raw))
    held = time.monotonic() - start
    other.done.set()
    other.join(5)
    return row, held, other.received


def test_heartbeat_a_drain_that_holds_messages_past_their_timeout_keeps_them_from_other_consumers(pg, sqs, proxy):
    raw, _ = slow_queue(sqs)
    row, held, seen_by_other = long_drain(pg, sqs, proxy, raw)
    assert held >= 5.5, f"the drain held its messages {held:.1f} s"
    assert seen_by_other == [], "the second consumer received held messages"
    assert counts(row) == (12, 12, 0, 0)
    assert pg.execute("SELECT count(*), count(DISTINCT user_id) FROM user_logins").fetchone() == (12, 12)
    # the queue's own timeout was looked up once; each message was extended, by
    # the 10-second floor (its 2-second timeout would mean a call every second)
    assert proxy.seen.count("json:GetQueueAttributes") == 1
    entries = [e for a, b in proxy.bodies if a == "ChangeMessageVisibilityBatch" for e in json.loads(b)["Entries"]]
    assert len({e["ReceiptHandle"] for e in entries}) == 12
    assert all(e["VisibilityTimeout"] == 10 for e in entries)
    assert len(entries) <= 24, f"{len(entries)} extensions for 12 messages held 6 s"
    assert queue_depth(sqs, raw) == (0, 0)


def test_heartbeat_off_a_long_drain_lets_another_consumer_receive_its_messages(pg, sqs, proxy):
    """The control of the test above: same drain, no extensions."""
    raw, _ = slow_queue(sqs)
    pg.execute("SET fetch_etl.visibility_extension_limit = 0")
    row, held, seen_by_other = long_drain(pg, sqs, proxy, raw)
    assert held >= 5.5
    assert len(set(seen_by_other)) == 12, "without the heartbeat the other consumer gets them after 2 s"
    assert "json:ChangeMessageVisibilityBatch" not in proxy.seen
    # loaded once all the same
    assert counts(row)[1] == 12
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone() == (12,)


def test_heartbeat_extensions_stop_at_the_limit(pg, sqs, proxy):
    raw, _ = slow_queue(sqs)
    pg.execute("SET fetch_etl.visibility_extension_limit = '3s'")
    pg.execute(USER_LOGINS_DDL)
    pg.execute(SLOW_TRIGGER)
    notices = []
    pg.add_notice_handler(lambda d: notices.append(d.message_primary))
    pg.autocommit = False
    drain(pg, via(proxy, raw))
    pg.commit()
    pg.autocommit = True
    # messages are extended up to 3 s from receipt, no further, and COMMIT says so
    assert any("12 of the 12 messages this transaction drained had become visible" in n for n in notices), notices
    entries = [e for a, b in proxy.bodies if a == "ChangeMessageVisibilityBatch" for e in json.loads(b)["Entries"]]
    assert len(entries) == 12 and all(e["VisibilityTimeout"] <= 2 for e in entries), entries


def visible_within(sqs, raw, n, seconds):
    """How long until n messages can be received again (None: not within `seconds`)."""
    start = time.monotonic()
    got = set()
    while time.monotonic() - start < seconds:
        for m in sqs.receive_message(QueueUrl=raw, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", []):
            got.add(m["MessageId"])
        if len(got) >= n:
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def rolled_back_drain(pg, url, how):
    pg.execute(USER_LOGINS_DDL)
    pg.autocommit = False
    if how == "rollback":
        assert counts(drain(pg, url))[1] == 10
        pg.rollback()
    elif how == "savepoint":
        pg.execute("SAVEPOINT s")
        assert counts(drain(pg, url))[1] == 10
        pg.execute("ROLLBACK TO SAVEPOINT s")
        pg.commit()
    elif how == "error":
        # a drain that fails on a message-independent error (a serialization
        # failure raised by a trigger) with on_error => 'record': its
        # subtransaction rolls back, the run is recorded as failed
        pg.execute(
            "CREATE FUNCTION public.fail() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = '40001'; END $$"
        )
        pg.execute("CREATE TRIGGER fail BEFORE INSERT ON public.user_logins EXECUTE FUNCTION public.fail()")
        assert drain(pg, url, on_error="record")[0] is not None
        pg.commit()
    pg.autocommit = True


@pytest.mark.parametrize("how", ["rollback", "savepoint", "error"])
def test_rollback_hands_the_messages_back_at_once_when_asked(pg, sqs, how):
    raw, url = make_queue(sqs, [json.dumps(r) for r in VALID[:10]])
    sqs.set_queue_attributes(QueueUrl=raw, Attributes={"VisibilityTimeout": "30"})
    pg.execute("SET fetch_etl.visibility_on_rollback = 0")
    rolled_back_drain(pg, url, how)
    took = visible_within(sqs, raw, 10, 3)
    assert took is not None, "the rolled-back drain's messages were not visible again within 3 s"
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone() == (0,)


def test_rollback_by_default_leaves_the_messages_hidden_until_their_timeout(pg, sqs):
    """Today's behaviour stays the default (the control of the test above)."""
    raw, url = make_queue(sqs, [json.dumps(r) for r in VALID[:10]])
    sqs.set_queue_attributes(QueueUrl=raw, Attributes={"VisibilityTimeout": "30"})
    rolled_back_drain(pg, url, "rollback")
    assert visible_within(sqs, raw, 1, 3) is None
    assert queue_depth(sqs, raw) == (0, 10)


def test_rollback_a_backoff_delay_hands_them_back_later(pg, sqs, proxy):
    raw, _ = make_queue(sqs, [json.dumps(r) for r in VALID[:10]])
    sqs.set_queue_attributes(QueueUrl=raw, Attributes={"VisibilityTimeout": "30"})
    pg.execute("SET fetch_etl.visibility_on_rollback = '5s'")
    rolled_back_drain(pg, via(proxy, raw), "rollback")
    deadline = time.monotonic() + 5
    while "json:ChangeMessageVisibilityBatch" not in proxy.seen and time.monotonic() < deadline:
        time.sleep(0.1)
    timeouts = [e["VisibilityTimeout"] for a, b in proxy.bodies if a == "ChangeMessageVisibilityBatch"
                for e in json.loads(b)["Entries"]]
    assert timeouts == [5] * 10
    assert visible_within(sqs, raw, 10, 8) is not None


def test_heartbeat_a_session_that_exits_after_a_rollback_still_hands_back(db, aws_key, sqs):
    raw, url = make_queue(sqs, [json.dumps(r) for r in VALID[:10]])
    sqs.set_queue_attributes(QueueUrl=raw, Attributes={"VisibilityTimeout": "30"})
    c = connect(db)
    set_credentials(c, aws_key)
    c.execute(USER_LOGINS_DDL)
    c.execute("SET fetch_etl.visibility_on_rollback = 0")
    c.autocommit = False
    drain(c, url)
    c.close()  # the backend rolls back and exits
    assert visible_within(sqs, raw, 10, 3) is not None


def test_heartbeat_a_cancel_during_a_long_drain_leaves_the_server_up(pg, db, sqs, proxy):
    """Cancels still reach the backend (the heartbeat thread blocks every
    signal), and the holds end with the rolled-back drain."""
    raw, _ = slow_queue(sqs)
    pg.execute(USER_LOGINS_DDL)
    pg.execute(SLOW_TRIGGER)
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    result = {}

    def run():
        try:
            drain(pg, via(proxy, raw))
        except psycopg.Error as e:
            result["error"] = e
        result["at"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(3)
    with connect(db) as other:
        start = time.monotonic()
        other.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join(5)
        assert not t.is_alive()
        assert result["at"] - start < 1.0
        assert result["error"].sqlstate == "57014"
        calls = proxy.seen.count("json:ChangeMessageVisibilityBatch")
        time.sleep(2.5)
        assert proxy.seen.count("json:ChangeMessageVisibilityBatch") == calls, "no extensions after the rollback"
        assert other.execute("SELECT 1").fetchone() == (1,)
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone() == (0,)


def test_heartbeat_messages_stay_hidden_until_their_deletes_are_done(pg, sqs, proxy):
    """0.4.0 ended its holds at COMMIT, before the deletes: a message whose
    visibility ran out while its delete was on its way went to another
    consumer, and on SQS a delete with the older receipt handle then does
    not take (the message comes back, and near maxReceiveCount goes to the
    queue's dead-letter queue). Now the holds end after the deletes."""
    raw, _ = slow_queue(sqs, n=10, visibility=2)
    pg.execute(USER_LOGINS_DDL)
    proxy.delete_delay = 3.0
    other = Consumer(sqs, raw, after=0.5)
    other.start()
    start = time.monotonic()
    assert counts(drain(pg, via(proxy, raw))) == (10, 10, 0, 0)
    took = time.monotonic() - start
    other.done.set()
    other.join(5)
    assert took >= 3.0, f"the COMMIT's deletes took {took:.1f} s"
    assert other.received == [], "another consumer received messages whose delete was on its way"
    assert queue_depth(sqs, raw) == (0, 0)


def test_heartbeat_a_drain_that_receives_its_own_messages_again_counts_each_once(pg, sqs, proxy):
    """Extensions off and a queue timeout of 1 s: the drain's long poll gets
    back the messages it is still storing. They are the same messages: 0.4.0
    counted them received twice and as duplicates; now received counts
    distinct messages, and every handle is deleted (SQS honours the newest)."""
    raw, _ = slow_queue(sqs, n=5, visibility=1)
    pg.execute(USER_LOGINS_DDL)
    pg.execute(SLOW_TRIGGER)
    pg.execute("SET fetch_etl.visibility_extension_limit = 0")
    pg.execute("SET fetch_etl.batch_size = 10")
    row = drain(pg, via(proxy, raw), wait_seconds=2, max_messages=15)
    received_calls = [s for s in proxy.seen if s.endswith(":ReceiveMessage")]
    assert counts(row) == (5, 5, 0, 0), (row, received_calls)
    handles = [e["ReceiptHandle"] for a, b in proxy.bodies if a == "DeleteMessageBatch" for e in json.loads(b)["Entries"]]
    assert len(handles) > 5, "the messages did come back to the drain (the test's premise)"
    assert pg.execute("SELECT count(*), count(DISTINCT user_id) FROM user_logins").fetchone() == (5, 5)
    time.sleep(1.5)
    assert queue_depth(sqs, raw) == (0, 0), "deleted with their newest handles"

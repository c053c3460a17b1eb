"""Nothing lost on a crash or a failover (durability_*).

A fault proxy holds the drain's first DeleteMessageBatch after COMMIT and the
backend is killed with SIGKILL at that moment, five times. A message is lost
when it is neither in the database (its id in the ledger) nor in the queue.

- With synchronous_commit = off, 0.1.0 started deleting before the commit
  record reached the disk; the test stops the WAL writer and the background
  writer (SIGSTOP) so that nothing else flushes it either. Now the commit is
  forced to disk first.
- With fetch_etl.delete_after = standby_flush and a real streaming standby
  (started here with pg_basebackup), the standby already has every row when
  the first delete goes out; with its WAL receiver stopped, nothing is
  deleted at all.
"""
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (
    PGHOST,
    PGPORT,
    REPO,
    VIS,
    connect,
    drain,
    make_queue,
    set_credentials,
    via,
    worker_dir,
    worker_port,
)

TRIALS = 5
STANDBY_DIR = worker_dir("pg-standby")
STANDBY_PORT = worker_port(os.environ.get("FETCH_ETL_TEST_STANDBY_PGPORT", "5493"))


def pids(conn, backend_type):
    return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = %s", (backend_type,))]


IDLE_EVENTS = ("WalWriterMain", "WalWriterHibernate",
               # PostgreSQL 17 renamed the background writer's wait events: Bgwriter*
               "BgWriterMain", "BgWriterHibernate", "BgwriterMain", "BgwriterHibernate")


def stop_while_idle(conn, stop, seconds=10):
    """SIGSTOP `stop`, and make sure each was stopped in its main loop's wait
    (its wait event, frozen by the stop, says so): one stopped between an
    idle check and the stop, in the middle of a WAL write, would hold
    WALWriteLock and block the drain's own flush forever. Otherwise continue
    them and try again."""
    if not stop:
        return
    deadline = time.monotonic() + seconds
    while True:
        for p in stop:
            os.kill(p, signal.SIGSTOP)
        rows = conn.execute("SELECT pid, wait_event FROM pg_stat_activity WHERE pid = ANY(%s)",
                            (list(stop),)).fetchall()
        if len(rows) == len(stop) and all(w in IDLE_EVENTS for _, w in rows):
            return
        for p in stop:
            os.kill(p, signal.SIGCONT)
        assert time.monotonic() < deadline, f"never stopped idle: {rows}"
        time.sleep(0.05)


def idle_pids(conn, backend_type, idle_events, seconds=10):
    """Pids of `backend_type` once each waits in its main loop (so stopping it
    cannot leave a lock held: a stop mid-write would block our own flush)."""
    deadline = time.monotonic() + seconds
    while True:
        rows = conn.execute("SELECT pid, wait_event FROM pg_stat_activity WHERE backend_type = %s",
                            (backend_type,)).fetchall()
        if rows and all(w in idle_events for _, w in rows):
            return [p for p, _ in rows]
        assert time.monotonic() < deadline, f"{backend_type} stays busy: {rows}"
        time.sleep(0.05)


def wait_for_server(dbname, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with connect(dbname) as c:
                c.execute("SELECT 1")
                return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def queue_ids(sqs, raw_url):
    """Ids of every message still in the queue (received and hidden for a minute)."""
    ids = set()
    while True:
        got = sqs.receive_message(QueueUrl=raw_url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not got:
            return ids
        ids.update(m["MessageId"] for m in got)


def ledger_ids(dbname):
    with connect(dbname) as c:
        return {r[0] for r in c.execute("SELECT message_id FROM fetch_etl.processed_messages")}


def drain_and_kill_at_first_delete(db, aws_key, proxy, url, settings, stop=(), on_held=None):
    """Drain `url` (autocommit), and SIGKILL the backend when the proxy holds
    the first DeleteMessageBatch, which follows COMMIT. `stop` processes are
    SIGSTOPped for the drain and continued after the kill."""
    c = connect(db)
    set_credentials(c, aws_key)
    for k, v in settings.items():
        c.execute("SELECT set_config(%s, %s, false)", (k, v))
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    proxy.deletes_held.clear()
    proxy.hold_deletes = True
    t = threading.Thread(target=lambda: _ignore(lambda: drain(c, url, visibility_timeout=VIS)), daemon=True)
    stop_while_idle(c, stop)
    try:
        t.start()
        assert proxy.deletes_held.wait(60), "the drain committed and started deleting"
        if on_held:
            on_held()
        time.sleep(0.3)  # the other delete batches go through meanwhile
        os.kill(pid, signal.SIGKILL)
    finally:
        for p in stop:
            os.kill(p, signal.SIGCONT)
        proxy.hold_deletes = False
    t.join(30)
    c.close()
    wait_reaped(pid)
    wait_for_server(db)


def wait_reaped(pid, seconds=30):
    """Until the postmaster has reaped the killed backend, and so begun its
    crash restart: a connection made before that would find the old server,
    and the next one a server in recovery."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.kill(pid, 0)  # a zombie still answers, until its parent reaps it
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"the postmaster reaps backend {pid}"
        time.sleep(0.05)


def _ignore(f):
    try:
        f()
    except psycopg.Error:
        pass


def lost(db, sqs, raw_url, sent=100):
    time.sleep(VIS + 0.5)  # what was not deleted is visible again
    return sent - len(ledger_ids(db) | queue_ids(sqs, raw_url))


def test_durability_a_crash_right_after_commit_loses_nothing(db, aws_key, sqs, proxy):
    losses = []
    for _ in range(TRIALS):
        raw_url, _ = make_queue(sqs)
        with connect(db) as c:
            c.execute("TRUNCATE fetch_etl.processed_messages")
            c.execute("CHECKPOINT")  # nothing left for them to write
            quiet = idle_pids(c, "walwriter", IDLE_EVENTS) + idle_pids(c, "background writer", IDLE_EVENTS)
        assert quiet, "the WAL writer and background writer are found"
        drain_and_kill_at_first_delete(db, aws_key, proxy, via(proxy, raw_url), {"synchronous_commit": "off"},
                                       stop=quiet)
        losses.append(lost(db, sqs, raw_url))
    assert losses == [0] * TRIALS, f"messages lost per trial: {losses}"


@pytest.fixture(scope="module")
def standby():
    """A streaming standby of the test cluster, on loopback, hot_standby on."""
    pg_bin = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))  # scripts/lib.sh: the major under test
    subprocess.run([str(REPO / "scripts" / "pgcluster"), "stop", str(STANDBY_DIR)], check=False)
    subprocess.run(["rm", "-rf", str(STANDBY_DIR)], check=True)
    subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", str(STANDBY_DIR)], check=True)
    data = STANDBY_DIR / "data"
    subprocess.run(["sudo", "-u", "postgres", str(pg_bin / "pg_basebackup"), "-h", PGHOST, "-p", PGPORT,
                    "-U", "postgres", "-D", str(data), "-R", "-X", "stream"], check=True)
    with open(data / "postgresql.auto.conf", "a") as f:
        f.write(f"port = {STANDBY_PORT}\nunix_socket_directories = '{STANDBY_DIR}'\nhot_standby = on\n")
    subprocess.run(["sudo", "-u", "postgres", str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "start",
                    "-l", str(STANDBY_DIR / "server.log")], check=True, stdout=subprocess.DEVNULL)
    try:
        wait_streaming()
        yield lambda dbname: psycopg.connect(host=str(STANDBY_DIR), port=STANDBY_PORT, user="postgres",
                                             dbname=dbname, autocommit=True)
    finally:
        subprocess.run(["sudo", "-u", "postgres", str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-m", "fast",
                        "stop"], check=False, stdout=subprocess.DEVNULL)


def wait_streaming(seconds=60):
    """Until the standby streams (again, after the primary's crash restart)."""
    wait_for_server("postgres")
    deadline = time.monotonic() + seconds
    with connect("postgres") as c:
        while c.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0] == 0:
            assert time.monotonic() < deadline, "the standby streams"
            time.sleep(0.2)


def standby_flushed_lsn(standby):
    with standby("postgres") as s:
        return s.execute("SELECT pg_last_wal_receive_lsn()").fetchone()[0]


def commit_end_lsn(db, since):
    """Where the last drain's commit record ends (pg_walinspect). The run's
    row is written in a subtransaction (0.7.0): its xmin is the commit
    record's xid or one of the subtransactions it lists."""
    with connect(db) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        xid = c.execute("SELECT xmin::text FROM fetch_etl.drain_runs ORDER BY run_id DESC LIMIT 1").fetchone()[0]
        row = c.execute(
            "SELECT max(end_lsn) FROM pg_get_wal_records_info(%s, pg_current_wal_lsn())"
            " WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%'"
            " AND (xid::text = %s OR description ~ ('subxacts:[ 0-9]*\\m' || %s || '\\M'))",
            (since, xid, xid)).fetchone()
        assert row[0] is not None, "the drain's commit record is found"
        return row[0]


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def test_durability_with_standby_flush_the_standby_has_the_commit_before_a_delete(db, aws_key, sqs, proxy, standby):
    behind, losses = [], []
    for _ in range(TRIALS):
        raw_url, _ = make_queue(sqs)
        with connect(db) as c:
            c.execute("TRUNCATE fetch_etl.processed_messages")
            since = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_streaming()
        flushed = []
        drain_and_kill_at_first_delete(
            db, aws_key, proxy, via(proxy, raw_url),
            {"synchronous_commit": "off", "fetch_etl.delete_after": "standby_flush"},
            on_held=lambda: flushed.append(standby_flushed_lsn(standby)))
        # how far the standby's flushed WAL was behind the commit when the first delete went out
        behind.append(max(0, lsn(str(commit_end_lsn(db, since))) - lsn(str(flushed[0]))))
        losses.append(lost(db, sqs, raw_url))
    assert behind == [0] * TRIALS, f"bytes of WAL the standby lacked at the first delete: {behind}"
    assert losses == [0] * TRIALS, losses


def test_durability_with_standby_flush_a_standby_that_lags_means_no_delete(pg, db, sqs, standby):
    raw_url, url = make_queue(sqs)
    wait_streaming()
    with standby("postgres") as s:
        receiver = s.execute("SELECT pid FROM pg_stat_wal_receiver").fetchone()[0]
    pg.execute("SET fetch_etl.delete_after = standby_flush")
    pg.execute("SET fetch_etl.delete_timeout = '2s'")
    # no extensions: the heartbeat holds messages until the deletes are over,
    # and would keep these hidden 10 s more while the standby wait runs out
    pg.execute("SET fetch_etl.visibility_extension_limit = 0")
    warnings = []
    pg.add_notice_handler(lambda n: warnings.append(n.message_primary))
    os.kill(receiver, signal.SIGSTOP)
    try:
        start = time.monotonic()
        row = drain(pg, url, visibility_timeout=VIS)
        took = time.monotonic() - start
    finally:
        os.kill(receiver, signal.SIGCONT)
    assert row[2] == 99
    assert any("none of the 100 drained messages was deleted" in w for w in warnings), warnings
    assert took < 2.0 + 8.0, f"the wait is bounded by delete_timeout: {took:.1f} s"
    # not deleted: they come back and are recognised
    pg.execute("RESET fetch_etl.delete_after")
    pg.execute("RESET fetch_etl.delete_timeout")
    time.sleep(VIS + 0.5)
    assert drain(pg, url)[1:] == (100, 0, 0, 100)
    assert queue_ids(sqs, raw_url) == set()

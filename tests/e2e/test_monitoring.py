"""What a DBA watches: drains in progress (drain_progress) and the
Prometheus metrics (contrib/prometheus)."""

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import psycopg
import pytest

from conftest import PGHOST, PGPORT, REPO, VALID, connect, counts, drain, loaded_sample, make_queue, set_credentials, via

QUERIES = REPO / "contrib" / "prometheus" / "fetch_etl.yaml"
EXPORTER = shutil.which("prometheus-postgres-exporter")


def test_drain_progress_shows_a_running_drain_from_another_session(db, aws_key, sqs, proxy):
    raw_url, _ = make_queue(sqs)
    url = via(proxy, raw_url)
    c = connect(db)
    set_credentials(c, aws_key)
    c.execute("SET fetch_etl.batch_size = 10")
    c.execute("SET fetch_etl.receive_concurrency = 1")
    proxy.delay = 0.1  # each call: about 20 receives of 10 messages take 2 s or more
    proxy.delete_delay = 1.5  # the deletes after COMMIT
    result = []
    t = threading.Thread(target=lambda: result.append(drain(c, url)))
    seen = []
    with connect(db) as watcher:
        t.start()
        while t.is_alive():
            seen += watcher.execute(
                "SELECT kind, phase, received, loaded, rejected, duplicates, run_id, queue_url, database, run_by,"
                " started_at <= updated_at FROM fetch_etl.drain_progress() WHERE pid = %s",
                (c.info.backend_pid,),
            ).fetchall()
            time.sleep(0.05)
        t.join()
        after = watcher.execute("SELECT count(*) FROM fetch_etl.drain_progress()").fetchone()
    run_id = result[0][0]
    assert seen, "the drain was seen while it ran"
    assert {(r[0], r[6], r[7], r[8], r[9], r[10]) for r in seen} == {("drain", run_id, url, db, "postgres", True)}
    midway = [r for r in seen if r[1] in ("receiving", "storing") and 0 < r[2] < 100]
    assert midway, f"counts so far, before the end: {sorted({r[1:4] for r in seen})}"
    assert all(r[2] == r[3] + r[4] + r[5] for r in seen)
    deleting = [r for r in seen if r[1] == "deleting"]
    assert deleting and all(r[2:6] == (100, 99, 1, 0) for r in deleting), sorted({r[1:4] for r in seen})
    assert after == (0,), "gone once its transaction ended"
    c.close()


def test_drain_progress_forgets_a_failed_drain_and_a_terminated_backend(db, aws_key, sqs):
    _, url = make_queue(sqs, [])
    c = connect(db)
    set_credentials(c, aws_key)
    c.autocommit = False
    drain(c, url, on_error="record")  # ok, empty: shown as committing until the transaction ends
    with connect(db) as w:
        assert w.execute("SELECT phase FROM fetch_etl.drain_progress()").fetchall() == [("committing",)]
        c.rollback()
        assert w.execute("SELECT count(*) FROM fetch_etl.drain_progress()").fetchone() == (0,)
        # a failed drain is gone when its subtransaction rolls back, though the caller's goes on
        c.execute("SET fetch_etl.aws_secret_access_key = 'wrong'")
        row = drain(c, url, on_error="record")
        assert row[0] is not None
        assert w.execute("SELECT count(*) FROM fetch_etl.drain_progress()").fetchone() == (0,)
        c.rollback()
        drain(c, url)
        # as pg_stat_activity: another role sees the run, not its queue or counts...
        w.execute("CREATE ROLE progress_reader")
        w.execute("GRANT EXECUTE ON FUNCTION fetch_etl.drain_progress() TO progress_reader")
        w.execute("SET ROLE progress_reader")
        assert w.execute("SELECT run_by, kind, queue_url, run_id, received FROM fetch_etl.drain_progress()").fetchall() \
            == [("postgres", "drain", None, None, None)]
        # ...unless it may read all statistics (pg_monitor)
        w.execute("RESET ROLE")
        w.execute("GRANT pg_read_all_stats TO progress_reader")
        w.execute("SET ROLE progress_reader")
        assert w.execute("SELECT queue_url, received FROM fetch_etl.drain_progress()").fetchall() == [(url, 0)]
        w.execute("RESET ROLE")
        w.execute("DROP OWNED BY progress_reader")
        w.execute("DROP ROLE progress_reader")
        w.execute("SELECT pg_terminate_backend(%s)", (c.info.backend_pid,))
        deadline = time.monotonic() + 10
        while w.execute("SELECT count(*) FROM fetch_etl.drain_progress()").fetchone() != (0,):
            assert time.monotonic() < deadline, "a terminated backend's run is gone"
            time.sleep(0.1)
    c.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """Debian's postgres_exporter with fetch_etl's queries, as a monitoring
    role granted what docs/operations.md says."""

    def __init__(self, db):
        self.port = free_port()
        dsn = f"postgresql://fetch_etl_monitor@/{db}?host={PGHOST}&port={PGPORT}&sslmode=disable"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}", f"--extend.query-path={QUERIES}",
             "--disable-default-metrics", "--disable-settings-metrics", "--log.level=warn"],
            env={"DATA_SOURCE_NAME": dsn, "PATH": "/usr/bin:/bin"},
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.scrape()
                return
            except OSError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, "the exporter answers"
                time.sleep(0.2)

    def scrape(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def series(self, url):
        """{(name, state label or None): value} of `url`'s fetch_etl series."""
        out = {}
        for line in self.scrape().splitlines():
            m = re.match(r'^(fetch_etl\w*)\{([^}]*)\} (\S+)$', line)
            if m and f'queue_url="{url}"' in m.group(2):
                state = re.search(r'state="(\w+)"', m.group(2))
                out[(m.group(1), state and state.group(1))] = float(m.group(3))
        return out

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def exporter(db):
    with connect(db) as c:
        c.execute("CREATE ROLE fetch_etl_monitor LOGIN")
        c.execute("GRANT SELECT ON fetch_etl.queue_health, fetch_etl.queue_counters TO fetch_etl_monitor")
        c.execute("GRANT EXECUTE ON FUNCTION fetch_etl.drain_progress() TO fetch_etl_monitor")
        c.execute("GRANT pg_monitor TO fetch_etl_monitor")
    e = Exporter(db)
    yield e
    e.close()
    with connect(db) as c:
        c.execute("DROP OWNED BY fetch_etl_monitor")
        c.execute("DROP ROLE fetch_etl_monitor")


@pytest.mark.skipif(EXPORTER is None, reason="prometheus-postgres-exporter is not installed (scripts/setup installs it)")
def test_prometheus_series_move_after_a_drain_a_failure_and_a_skip(db, aws_key, sqs, exporter):
    raw_url, url = make_queue(sqs)
    c = connect(db)
    set_credentials(c, aws_key)
    assert loaded_sample(drain(c, url))
    m = exporter.series(url)
    assert m[("fetch_etl_queue_runs_total", None)] == 1
    assert m[("fetch_etl_queue_received_total", None)] == 100
    assert m[("fetch_etl_queue_loaded_total", None)] == 99
    assert m[("fetch_etl_queue_rejected_total", None)] == 1
    assert m[("fetch_etl_queue_duplicates_total", None)] == 0
    assert m[("fetch_etl_queue_dead_letters_pending", None)] == 1
    assert 0 <= m[("fetch_etl_queue_seconds_since_last_load", None)] < 60
    assert m[("fetch_etl_queue_state", "loading")] == 1 and m[("fetch_etl_queue_state", "failing")] == 0
    assert m[("fetch_etl_drains_running", None)] == 0
    # a failure, with on_error => 'raise'
    c.execute("SET fetch_etl.aws_secret_access_key = 'wrong'")
    with pytest.raises(psycopg.Error):
        drain(c, url)
    set_credentials(c, aws_key)
    m = exporter.series(url)
    assert m[("fetch_etl_queue_failed_runs_total", None)] == 1
    assert m[("fetch_etl_queue_state", "failing")] == 1 and m[("fetch_etl_queue_state", "loading")] == 0
    # a drain in progress, and a skip while it holds the queue
    sqs.send_message(QueueUrl=raw_url, MessageBody=json.dumps(VALID[0]))
    holder = connect(db)
    set_credentials(holder, aws_key)
    holder.autocommit = False
    assert counts(drain(holder, url)) == (1, 1, 0, 0)
    assert drain(c, url)[0] is None
    m = exporter.series(url)
    assert m[("fetch_etl_queue_skipped_runs_total", None)] == 1
    assert m[("fetch_etl_queue_state", "skipped")] == 1
    assert m[("fetch_etl_drains_running", None)] == 1
    assert m[("fetch_etl_drains_received_in_progress", None)] == 1
    holder.commit()
    m = exporter.series(url)
    assert m[("fetch_etl_drains_running", None)] == 0
    assert m[("fetch_etl_queue_loaded_total", None)] == 100
    assert m[("fetch_etl_queue_runs_total", None)] == 4
    assert "Error running query" not in exporter.output(), exporter.output()
    holder.close(), c.close()

"""fetch_etl benchmarks: every comparison runs side by side in this one run and
is reported as a ratio (absolute times on a shared 2-core machine are noise).
Started by scripts/bench, which provides the cluster, fauxqs and the tools.

  1. masking in a query: mask_pii vs built-in unkeyed sha256 vs pgcrypto hmac
  2. end-to-end drain: sqs_drain vs a seed-style Python loader, and vs the
     ceiling (our SQS client receiving and deleting, no database)
  3. latency: throughput at 1, 4, 8, 16 receives in flight behind 20 ms
  4. memory: backend peak RSS growth while draining 40,000 messages in one call
  5. the in-database part alone vs COPY of the same rows, ledger ids and vault
     pairs into the same three tables (5c: the final rows into the target alone)
  6. sqs_drain vs a well-written external worker (benches/worker.py): rate and
     CPU per message, after checking that both load the real sample alike
  7. the backend's CPU per message: /proc over a drain (with 2), and
     callgrind's instruction count per message of the store path (repeatable)
  8. pipelines: a 20-column pipeline of nested paths and types, and a
     10-element Records explosion, against the login pipeline in the same run
"""
import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psycopg

REPO = Path(__file__).resolve().parents[1]
SAMPLE = json.loads((REPO / "data" / "login-queue-sample.json").read_text())
VERSIONS = sorted({r["app_version"] for r in SAMPLE if "app_version" in r})
LOCALES = sorted({r["locale"] for r in SAMPLE if r.get("locale")})

TABLE_DDL = ("CREATE TABLE {name} (user_id varchar(128), device_type varchar(32), masked_ip varchar(256),"
             " masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)")


def log(msg):
    print(f"  {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid):
    """User + system CPU of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def login_bodies(n, seed):
    """n distinct login events shaped like the sample (json.dumps, like the exercise's producer)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        rec = {
            "user_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "app_version": rnd.choice(VERSIONS),
            "device_type": rnd.choice(["android", "ios"]),
            "ip": ".".join(str(rnd.randrange(256)) for _ in range(4)),
            "locale": rnd.choice(LOCALES) if rnd.random() > 0.3 else None,
            "device_id": f"{rnd.randrange(1000):03d}-{rnd.randrange(100):02d}-{rnd.randrange(10000):04d}",
        }
        out.append(json.dumps(rec))
    return out


def order_bodies(n, seed):
    """n order events of nested objects, numbers, booleans, times, an IP and arrays."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out.append(json.dumps({
            "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "type": "OrderPlaced",
            "placed_at": f"2026-12-0{1 + i % 7}T{i % 24:02d}:{i % 60:02d}:00Z",
            "order": {"id": i, "total": f"{rnd.randrange(100000) / 100:.2f}", "currency": "USD",
                      "paid": rnd.random() > 0.1, "coupon": None if i % 3 else "WINTER",
                      "items": [{"sku": f"sku-{rnd.randrange(1000)}", "qty": 1 + rnd.randrange(3)}
                                for _ in range(1 + i % 3)]},
            "customer": {"id": rnd.randrange(10**6), "email": f"user{rnd.randrange(10**6)}@example.com",
                         "country": rnd.choice(["US", "DE", "FR", "BR", "IN"]),
                         "address": {"city": "Springfield", "zip": f"{rnd.randrange(100000):05d}"}},
            "client": {"ip": ".".join(str(rnd.randrange(256)) for _ in range(4)), "agent": "app/2.3.0",
                       "tags": ["mobile", "eu"] if i % 2 else ["web"]},
        }))
    return out


ORDERS_DDL = """CREATE TABLE bench_orders (event_id uuid, type text, placed_at timestamptz, order_id bigint,
    total numeric(12,2), currency text, paid boolean, coupon text, items jsonb, item_count integer,
    customer_id bigint, email text, country text, city text, zip text, ip inet, agent text, tags text[],
    first_sku text, message_id text)"""
ORDERS_COLUMNS = """event_id PATH '$.event_id' REQUIRED, type PATH '$.type', placed_at PATH '$.placed_at',
    order_id PATH '$.order.id', total PATH '$.order.total', currency PATH '$.order.currency',
    paid PATH '$.order.paid' BOOLEAN, coupon PATH '$.order.coupon', items PATH '$.order.items',
    item_count PATH '$.order.items[last].qty', customer_id PATH '$.customer.id',
    email PATH '$.customer.email' MASKED, country PATH '$.customer.country',
    city PATH '$.customer.address.city', zip PATH '$.customer.address.zip', ip PATH '$.client.ip',
    agent PATH '$.client.agent', tags PATH '$.client.tags', first_sku PATH '$.order.items[0].sku',
    message_id MESSAGE message_id"""


def s3_bodies(n, seed, records=10):
    """n S3 notifications of `records` ObjectCreated records each."""
    rnd = random.Random(seed)
    return [json.dumps({"Records": [
        {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
         "eventTime": f"2026-12-07T12:{j:02d}:00.000Z", "eventName": "ObjectCreated:Put",
         "requestParameters": {"sourceIPAddress": ".".join(str(rnd.randrange(256)) for _ in range(4))},
         "s3": {"bucket": {"name": "photos"}, "object": {"key": f"k/{i}/{j}.jpg", "size": rnd.randrange(10**7),
                                                          "sequencer": f"{rnd.getrandbits(64):016X}"}}}
        for j in range(records)]}) for i in range(n)]


S3_DDL = """CREATE TABLE bench_s3 (bucket text, key text, size bigint, event_time timestamptz, source_ip text,
    sequencer text)"""
S3_COLUMNS = """bucket PATH '$.s3.bucket.name', key PATH '$.s3.object.key' REQUIRED, size PATH '$.s3.object.size',
    event_time PATH '$.eventTime', source_ip PATH '$.requestParameters.sourceIPAddress' MASKED,
    sequencer PATH '$.s3.object.sequencer'"""


class Emulator:
    def __init__(self, port):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test")

    def queue(self, bodies):
        """A new queue holding `bodies`. Seeding is not measured, so it talks
        fauxqs's JSON protocol directly, over one kept-alive connection per
        thread: 6x faster than boto3 (0.8 s against 5.1 s for 20,000), which
        takes well over a minute off the suite. fauxqs does not check
        signatures; the header is only well formed."""
        url = self.sqs.create_queue(QueueName="bench-" + uuid.uuid4().hex[:10])["QueueUrl"]
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessageBatch",
                   "X-Amz-Date": "20260101T000000Z",
                   "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request,"
                                    " SignedHeaders=host, Signature=0"}
        local = threading.local()

        def send(chunk):
            if not hasattr(local, "http"):
                local.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            body = json.dumps({"QueueUrl": url, "Entries": [{"Id": str(j), "MessageBody": b}
                                                            for j, b in enumerate(chunk)]})
            local.http.request("POST", "/", body, headers)
            reply = local.http.getresponse()
            out = json.loads(reply.read() or b"{}")
            assert reply.status == 200 and not out.get("Failed") and len(out.get("Successful", [])) == len(chunk), \
                (reply.status, out)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, [bodies[i:i + 10] for i in range(0, len(bodies), 10)]))
        return url

    def depth(self, url):
        a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                        "ApproximateNumberOfMessagesNotVisible"])
        return int(a["Attributes"]["ApproximateNumberOfMessages"]) + int(
            a["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


class Bench:
    def __init__(self, args):
        self.args = args
        self.dsn = f"host={args.pghost} port={args.pgport} user=postgres dbname={args.db}"
        self.emu = Emulator(args.fauxqs_port)
        self.rows = []  # (benchmark, ours, baseline, ratio, target, met)
        self.profile_rows = []  # (phase, share of samples, backend us per message)
        self.profile_us = 0.0  # the profiled drain's backend CPU per message, under perf

    def conn(self, **settings):
        c = psycopg.connect(self.dsn, autocommit=True)
        settings = {
            "fetch_etl.aws_access_key_id": "test",
            "fetch_etl.aws_secret_access_key": "test",
            "fetch_etl.sqs_endpoint_url": self.emu.endpoint,
            "fetch_etl.delete_timeout": "60s",  # the most allowed
            # 16 receives in flight for the latency rows: above the memory-safe
            # default limit of 8, which only a superuser (this session) raises.
            "fetch_etl.max_receive_concurrency": 64,
            **({"fetch_etl.batch_size": self.args.batch_size} if self.args.batch_size else {}),
            **settings,
        }
        for k, v in settings.items():
            c.execute("SELECT set_config(%s, %s, false)", (k, str(v)))
        return c

    def record(self, name, ours, baseline, ratio, target, met):
        self.rows.append((name, ours, baseline, f"{ratio:.2f}", target, "yes" if met else "NO"))
        log(f"{name}: {ours} vs {baseline}: ratio {ratio:.2f} (target {target}) {'met' if met else 'MISSED'}")

    # 1 -------------------------------------------------------------------
    def masking(self):
        n, rounds = self.args.mask_rows, self.args.rounds
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
            c.execute("DROP TABLE IF EXISTS bench_ips")
            # n distinct dotted IPv4 strings
            c.execute("CREATE TABLE bench_ips AS SELECT format('%%s.%%s.%%s.%%s', (i >> 24) & 255, (i >> 16) & 255,"
                      " (i >> 8) & 255, i & 255) AS x FROM generate_series(16777216, 16777215 + %s) i" % n)
            c.execute("VACUUM ANALYZE bench_ips")
            c.execute("SET max_parallel_workers_per_gather = 0")  # per-row cost, one core each
            variants = {
                "mask_pii": "SELECT count(fetch_etl.mask_pii(x)) FROM bench_ips",
                "sha256": "SELECT count(encode(sha256(convert_to(x, 'UTF8')), 'hex')) FROM bench_ips",
                "hmac": "SELECT count(encode(hmac(x, 'a-32-byte-key-for-the-benchmark!', 'sha256'), 'hex')) FROM bench_ips",
                "scan": "SELECT count(x) FROM bench_ips",
            }
            times = {k: [] for k in variants}
            c.execute(variants["mask_pii"])  # warm the key cache and the table
            for _ in range(rounds):
                for k, q in variants.items():
                    t = time.perf_counter()
                    c.execute(q).fetchone()
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            c.execute("DROP TABLE bench_ips")
        ms = lambda k: f"{med[k] * 1000:.0f} ms"  # noqa: E731
        self.record(f"1a. mask_pii vs built-in sha256, {n:,} IPv4 (median of {rounds})", ms("mask_pii"),
                    ms("sha256"), med["sha256"] / med["mask_pii"], ">= 1.0", med["sha256"] >= med["mask_pii"])
        self.record(f"1b. mask_pii vs pgcrypto hmac, {n:,} IPv4", ms("mask_pii"), ms("hmac"),
                    med["hmac"] / med["mask_pii"], ">= 2.0", med["hmac"] >= 2 * med["mask_pii"])
        log(f"bare scan {ms('scan')}: per row mask_pii {(med['mask_pii'] - med['scan']) / n * 1e9:.0f} ns,"
            f" sha256 {(med['sha256'] - med['scan']) / n * 1e9:.0f} ns, hmac {(med['hmac'] - med['scan']) / n * 1e9:.0f} ns")

    # 2 -------------------------------------------------------------------
    def drain_rate(self, url, n, concurrency, table="user_logins", cpu=None, chunk=None):
        """Messages/s of one sqs_drain call taking everything (one transaction),
        or, with chunk, of calls of `chunk` messages each committed on its own
        (what sqs_drain_for and a default sqs_drain(url) call do), until the
        queue is empty. COMMIT and the deletes after it are included."""
        with self.conn(**{"fetch_etl.receive_concurrency": concurrency}) as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute(TABLE_DDL.format(name=table))
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            before = (cpu_seconds(pid), cpu_seconds(self.args.fauxqs_pid))
            loaded = 0
            t = time.perf_counter()
            while True:
                row = c.execute("SELECT * FROM fetch_etl.sqs_drain(%s, max_messages => %s, visibility_timeout => 600,"
                                " target_table => %s)", (url, chunk or n + 100, table)).fetchone()
                loaded += row[2]
                if chunk is None or row[1] == 0:
                    break
            elapsed = time.perf_counter() - t
            if cpu is not None:
                cpu.update(backend=cpu_seconds(pid) - before[0], fauxqs=cpu_seconds(self.args.fauxqs_pid) - before[1],
                           wall=elapsed)
        assert loaded == n, (loaded, n)
        left = self.emu.depth(url)
        assert left == 0, f"{left} messages left"
        return n / elapsed

    def ceiling_rate(self, url, concurrency, delete_after=False):
        out = subprocess.run([self.args.ceiling, "--queue-url", url, "--endpoint", self.emu.endpoint,
                              "--concurrency", str(concurrency)] + (["--delete-after"] if delete_after else []),
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        return r["messages"] / r["seconds"]

    def end_to_end(self):
        n, conc, rounds = self.args.drain_messages, self.args.concurrency, self.args.e2e_rounds
        bodies = login_bodies(n, seed=1)
        drains, chunked, ceilings, deferred, workers = [], [], [], [], []
        drain_cpu, worker_cpu = [], []  # CPU seconds per message, all processes involved
        backend_us = []
        self.worker_setup()
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}: seeding 5 queues with {n:,} messages each")
            q1, q2, q3, q4, q5 = (self.emu.queue(bodies) for _ in range(5))
            cpu, cpu_chunked = {}, {}
            drains.append(self.drain_rate(q1, n, conc, cpu=cpu))
            drain_cpu.append((cpu["backend"] + cpu["fauxqs"]) / n)
            backend_us.append(cpu["backend"] / n * 1e6)
            w = self.worker_run(q5, n, conc)
            workers.append(w["rate"])
            worker_cpu.append(w["cpu"] / n)
            chunked.append(self.drain_rate(q4, n, conc, cpu=cpu_chunked, chunk=1000))
            f0 = cpu_seconds(self.args.fauxqs_pid)
            ceilings.append(self.ceiling_rate(q2, conc))
            f1 = cpu_seconds(self.args.fauxqs_pid)
            deferred.append(self.ceiling_rate(q3, conc, delete_after=True))
            f2 = cpu_seconds(self.args.fauxqs_pid)
            log(f"  drain {drains[-1]:,.0f} msg/s (CPU: backend {cpu['backend']:.2f} s, fauxqs {cpu['fauxqs']:.2f} s);"
                f" in calls of 1,000 {chunked[-1]:,.0f} (backend {cpu_chunked['backend']:.2f} s,"
                f" fauxqs {cpu_chunked['fauxqs']:.2f} s);"
                f" ceiling {ceilings[-1]:,.0f} (fauxqs {f1 - f0:.2f} s); deletes after {deferred[-1]:,.0f}"
                f" (fauxqs {f2 - f1:.2f} s); worker {workers[-1]:,.0f} (worker {w['cpu_worker']:.2f} s,"
                f" its backend {w['cpu_backend']:.2f} s, fauxqs {w['cpu_fauxqs']:.2f} s)")
        ours, ours_chunked, ceil, ceil_after = (statistics.median(v) for v in (drains, chunked, ceilings, deferred))
        ext, d_cpu, w_cpu, b_us = (statistics.median(v) for v in (workers, drain_cpu, worker_cpu, backend_us))

        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS user_logins_python")
            c.execute(TABLE_DDL.format(name="user_logins_python"))
        # The loader takes a minute or more for 20,000 messages, so it drains a
        # queue of a quarter as many. Not the first quarter of a deep queue: the
        # emulator may answer a deeper queue more slowly (seen here: 178 msg/s
        # over the first 5,000 of 20,000, 239-478 over all 20,000 in other
        # runs), which would flatter us; a shallower queue favours the loader.
        py_n = n // 4
        q_python = self.emu.queue(bodies[:py_n])
        out = subprocess.run([sys.executable, str(REPO / "benches" / "seed_loader.py"), "--endpoint", self.emu.endpoint,
                              "--queue-url", q_python, "--dsn", self.dsn, "--table", "user_logins_python",
                              "--max-messages", str(py_n)], check=True, capture_output=True, text=True).stdout
        py = json.loads(out)
        assert py["messages"] == py_n, py
        py_rate = py["messages"] / py["seconds"]
        rate = lambda r: f"{r:,.0f} msg/s"  # noqa: E731
        self.record(f"2a. sqs_drain of {n:,} msgs vs seed-style Python loader of {py_n:,} (fauxqs)", rate(ours), rate(py_rate),
                    ours / py_rate, ">= 20", ours >= 20 * py_rate)
        self.record(f"2b. sqs_drain vs ceiling (receive+delete, no DB), {conc} in flight, median of {rounds}",
                    rate(ours), rate(ceil), ours / ceil, ">= 0.80", ours >= 0.8 * ceil)
        self.record("2b. the same, in sqs_drain calls of 1,000 (the default), each committed, as sqs_drain_for runs",
                    rate(ours_chunked), rate(ceil), ours_chunked / ceil, ">= 0.80", ours_chunked >= 0.8 * ceil)
        self.rows.append(("2c. (context) one call vs the ceiling deleting only after all receives, as one call must",
                          rate(ours), rate(ceil_after), f"{ours / ceil_after:.2f}", "-", "-"))
        log(f"2c: vs the deferred-delete ceiling {ours / ceil_after:.2f}")
        self.record(f"6a. sqs_drain vs external worker (benches/worker.py: {conc} receivers, COPY, ledger, vault),"
                    f" median of {rounds}", rate(ours), rate(ext), ours / ext, ">= 1.5", ours >= 1.5 * ext)
        us = lambda v: f"{v * 1e6:.0f} us/msg"  # noqa: E731
        self.record("6b. CPU per message: drain (backend + fauxqs) vs worker (worker + its backend + fauxqs)",
                    us(d_cpu), us(w_cpu), w_cpu / d_cpu, ">= 2.0", w_cpu >= 2 * d_cpu)
        self.record(f"7a. backend CPU per message, one drain of {n:,} (/proc), median of {rounds}",
                    f"{b_us:.1f} us", "15 us", 15 / b_us, ">= 1.0", b_us <= 15)

    def worker_setup(self):
        """The worker's own ledger, vault and dead letters, LIKE fetch_etl's;
        then the check that it loads the real sample exactly as sqs_drain does:
        the same rows (masks included), dead letters and vault."""
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("DROP SCHEMA IF EXISTS bench_worker CASCADE")
            c.execute("CREATE SCHEMA bench_worker")
            for t in ("processed_messages", "pii_vault"):
                c.execute(f"CREATE TABLE bench_worker.{t} (LIKE fetch_etl.{t} INCLUDING ALL)")
            c.execute("CREATE TABLE bench_worker.dead_letters (message_id text, body text, reason_code text,"
                      " reason text, sent_at timestamptz)")
            for t in ("sample_drain", "sample_worker"):
                c.execute(f"DROP TABLE IF EXISTS {t}")
                c.execute(TABLE_DDL.format(name=t))
        bodies = [json.dumps(r) for r in SAMPLE]
        q_drain, q_worker = self.emu.queue(bodies), self.emu.queue(bodies)
        with self.conn() as c:
            row = c.execute("SELECT * FROM fetch_etl.sqs_drain(%s, target_table => 'sample_drain')", (q_drain,)).fetchone()
            run_id = int(row[0])
        w = self.worker_run(q_worker, len(bodies), self.args.concurrency, table="sample_worker")
        assert (row[2], row[3]) == (w["loaded"], w["rejected"]), (row, w)
        cols = "user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date"
        with psycopg.connect(self.dsn, autocommit=True) as c:
            for q in (f"SELECT {cols} FROM sample_drain EXCEPT ALL SELECT {cols} FROM sample_worker",
                      f"SELECT {cols} FROM sample_worker EXCEPT ALL SELECT {cols} FROM sample_drain",
                      # fetch_etl's vault may hold more (earlier steps): the worker's must all be in it
                      "SELECT masked, raw FROM bench_worker.pii_vault EXCEPT SELECT masked, raw FROM fetch_etl.pii_vault",
                      "SELECT body, reason_code FROM bench_worker.dead_letters EXCEPT"
                      f" SELECT body, reason_code FROM fetch_etl.dead_letters WHERE run_id = {run_id}",
                      f"SELECT body, reason_code FROM fetch_etl.dead_letters WHERE run_id = {run_id}"
                      " EXCEPT SELECT body, reason_code FROM bench_worker.dead_letters"):
                diff = c.execute(q).fetchall()
                assert not diff, f"the worker and sqs_drain differ on the sample: {q}: {diff[:3]}"
            c.execute("TRUNCATE bench_worker.processed_messages")
        log(f"the worker loads the real sample as sqs_drain does: {w['loaded']} rows, {w['rejected']} dead letter,"
            " the same masks and vault")

    def worker_run(self, url, n, concurrency, table=None):
        if table is None:  # a fresh table each round, as drain_rate makes
            table = "user_logins_worker"
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS {table}")
                c.execute(TABLE_DDL.format(name=table))
        f0 = cpu_seconds(self.args.fauxqs_pid)
        r = subprocess.run([sys.executable, str(REPO / "benches" / "worker.py"), "--endpoint", self.emu.endpoint,
                            "--queue-url", url, "--dsn", self.dsn, "--table", table,
                            "--concurrency", str(concurrency)], capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(r.stderr)
            raise RuntimeError(f"benches/worker.py failed ({r.returncode})")
        w = json.loads(r.stdout)
        w["cpu_fauxqs"] = cpu_seconds(self.args.fauxqs_pid) - f0
        assert w["messages"] == n, w
        assert self.emu.depth(url) == 0, "the worker left messages"
        w["rate"] = n / w["seconds"]
        w["cpu"] = w["cpu_worker"] + w["cpu_backend"] + w["cpu_fauxqs"]
        return w

    # 3 -------------------------------------------------------------------
    @contextlib.contextmanager
    def through_proxy(self):
        """fetch_etl (and the ceiling client) talk to the latency proxy; the
        seeding and depth checks keep going to fauxqs directly."""
        real_endpoint = self.emu.endpoint
        self.emu.endpoint = f"http://127.0.0.1:{self.args.proxy_port}"
        try:
            yield
        finally:
            self.emu.endpoint = real_endpoint

    def latency(self):
        delay = self.args.delay_ms
        # The baselines at 1 in flight drain half as many messages (35 seconds
        # less of the suite). Their fixed tail (the empty poll that ends a
        # drain, the COMMIT, the last deletes: about 0.2 s at 20 ms a request)
        # then weighs about 1% more, which flatters the ratios by about 1%
        # (measured: 4% with a quarter as many).
        size = lambda c: self.args.latency_messages if c > 1 else self.args.latency_messages_1  # noqa: E731
        proxy = subprocess.Popen([sys.executable, str(REPO / "benches" / "latency_proxy.py"),
                                  "--listen", str(self.args.proxy_port), "--upstream", str(self.args.fauxqs_port),
                                  "--delay-ms", str(delay)])
        try:
            time.sleep(0.5)
            samples = {c: [] for c in (1, 4, 8, 16)}
            busy = {c: [] for c in samples}  # CPU seconds of backend + fauxqs + proxy per wall second
            for r in range(self.args.latency_rounds):
                for c in samples:
                    url = self.emu.queue(login_bodies(size(c), seed=100 * r + c))
                    cpu, p0 = {}, cpu_seconds(proxy.pid)
                    with self.through_proxy():
                        samples[c].append(self.drain_rate(url, size(c), c, cpu=cpu))
                    busy[c].append((cpu["backend"] + cpu["fauxqs"] + cpu_seconds(proxy.pid) - p0) / cpu["wall"])
            # Context: the ceiling client (no database) through the same proxy,
            # deleting after receiving everything as a drain does.
            ceiling = {}
            for c in (1, 16):
                url = self.emu.queue(login_bodies(size(c), seed=999 + c))
                with self.through_proxy():
                    ceiling[c] = self.ceiling_rate(url, c, delete_after=True)
            rates = {c: statistics.median(v) for c, v in samples.items()}
            for c, v in samples.items():
                log(f"{delay:.0f} ms per request, {c:2} in flight: " + ", ".join(f"{x:,.0f}" for x in v) + " msg/s;"
                    f" CPU busy (backend + fauxqs + proxy) {statistics.median(busy[c]):.2f} of 2 cores")
        finally:
            proxy.terminate()
            proxy.wait()
        for c in (4, 8, 16):
            eff = rates[c] / (c * rates[1])
            self.record(f"3. {c:2} receives in flight vs 1, {delay:.0f} ms latency, median of {self.args.latency_rounds} (vs linear)",
                        f"{rates[c]:,.0f} msg/s", f"{rates[1]:,.0f} msg/s x {c}", eff, ">= 0.80", eff >= 0.8)
        eff = ceiling[16] / (16 * ceiling[1])
        self.rows.append(("3c. (context) the ceiling client through the same proxy, 16 in flight vs 1 (vs linear)",
                          f"{ceiling[16]:,.0f} msg/s", f"{ceiling[1]:,.0f} msg/s x 16", f"{eff:.2f}", "-", "-"))
        log(f"3c: the ceiling client scales {eff:.2f} of linear at 16 in flight")

    # 4 -------------------------------------------------------------------
    def memory(self):
        """Private memory of the backend (anonymous RSS, sampled every 10 ms
        during the drain). VmHWM is not used: it counts the shared buffers the
        backend touched, which are not its memory."""
        n = self.args.memory_messages
        url = self.emu.queue(login_bodies(n, seed=3))
        with self.conn() as c:
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            c.execute("DROP TABLE IF EXISTS user_logins_mem")
            c.execute(TABLE_DDL.format(name="user_logins_mem"))
            c.execute("SELECT fetch_etl.mask_pii('warm up')")  # the key cache, not the drain's growth
            before = status_kb(pid, "RssAnon")
            peak = [before]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], status_kb(pid, "RssAnon"))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                row = c.execute("SELECT * FROM fetch_etl.sqs_drain(%s, max_messages => %s, visibility_timeout => 600,"
                                " target_table => 'user_logins_mem')", (url, n + 100)).fetchone()
            finally:
                done.set()
                sampler.join()
            assert row[2] == n, row
            contexts = c.execute("SELECT pg_size_pretty(sum(total_bytes)) FROM pg_backend_memory_contexts").fetchone()[0]
        growth_mb = (peak[0] - before) / 1024
        log(f"RssAnon {before / 1024:.1f} MB before, {peak[0] / 1024:.1f} MB at peak; memory contexts after: {contexts}")
        self.record(f"4. backend private memory growth, one drain of {n:,} msgs", f"{growth_mb:.1f} MB", "64 MB",
                    growth_mb / 64, "< 1.0", growth_mb < 64)

    # 5 -------------------------------------------------------------------
    def in_db_vs_copy(self):
        n = self.args.store_rows
        copy_file = Path(self.args.pghost) / "bench_rows.copy"
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("CREATE OR REPLACE FUNCTION public.bench_store(text[], text) RETURNS bigint"
                      " LANGUAGE c AS '$libdir/fetch_etl', 'bench_store_wrapper'")
            c.execute("DROP TABLE IF EXISTS bench_bodies, user_logins_store, user_logins_copy")
            c.execute("CREATE TABLE bench_bodies (body text)")
            with c.cursor().copy("COPY bench_bodies FROM STDIN") as cp:
                for b in login_bodies(n, seed=5):
                    cp.write_row((b,))
            c.execute(TABLE_DDL.format(name="user_logins_store"))
            c.execute(TABLE_DDL.format(name="user_logins_copy"))
            t0 = c.execute("SELECT clock_timestamp()").fetchone()[0]
            notices = []
            c.add_notice_handler(lambda d: notices.append(d.message_primary))
            # time the store alone, inside the server, after the array is built
            c.execute("""DO $$ DECLARE a text[]; t timestamptz; loaded bigint; BEGIN
                SELECT array_agg(body) INTO a FROM bench_bodies;
                t := clock_timestamp();
                loaded := public.bench_store(a, 'user_logins_store');
                RAISE NOTICE 'store % %', loaded, extract(epoch FROM clock_timestamp() - t); END $$""")
            loaded, store_s = notices[-1].split()[1:]
            assert int(loaded) == n, loaded
            store_s = float(store_s)
            c.execute(f"COPY user_logins_store TO '{copy_file}'")
            t = time.perf_counter()
            c.execute(f"COPY user_logins_copy FROM '{copy_file}'")
            copy_s = time.perf_counter() - t
            # The baseline that writes what the store wrote: the same rows, the
            # same ledger ids and the same vault pairs, by COPY, into copies of
            # the three tables with their indexes, holding what fetch_etl's
            # held before the store (the ids and masks of earlier steps).
            ledger_file, vault_file = copy_file.with_name("bench_ledger.copy"), copy_file.with_name("bench_vault.copy")
            c.execute(f"COPY (SELECT * FROM fetch_etl.processed_messages WHERE run_id = -1"
                      f" AND processed_at >= '{t0.isoformat()}') TO '{ledger_file}'")
            c.execute(f"COPY (SELECT * FROM fetch_etl.pii_vault WHERE first_seen >= '{t0.isoformat()}') TO '{vault_file}'")
            c.execute("DROP TABLE IF EXISTS bench_copy_ledger, bench_copy_vault")
            for name, src, old in (("bench_copy_ledger", "processed_messages", "processed_at"),
                                   ("bench_copy_vault", "pii_vault", "first_seen")):
                c.execute(f"CREATE TABLE {name} (LIKE fetch_etl.{src} INCLUDING ALL)")
                c.execute(f"INSERT INTO {name} SELECT * FROM fetch_etl.{src} WHERE {old} < '{t0.isoformat()}'")
                c.execute(f"VACUUM ANALYZE {name}")
            c.execute("TRUNCATE user_logins_copy")
            t = time.perf_counter()
            with c.transaction():
                c.execute(f"COPY user_logins_copy FROM '{copy_file}'")
                c.execute(f"COPY bench_copy_ledger FROM '{ledger_file}'")
                c.execute(f"COPY bench_copy_vault FROM '{vault_file}'")
            copy3_s = time.perf_counter() - t
            counts = c.execute("SELECT (SELECT count(*) FROM bench_copy_ledger), (SELECT count(*) FROM bench_copy_vault)").fetchone()
            for f in (copy_file, ledger_file, vault_file):
                os.unlink(f)
            c.execute("DROP TABLE bench_copy_ledger, bench_copy_vault")
            c.execute("DROP FUNCTION public.bench_store(text[], text)")
        log(f"COPY into the three tables ({counts[0]:,} ledger ids, {counts[1]:,} vault masks after): {copy3_s:.2f} s;"
            f" the target alone {copy_s:.2f} s; the store {store_s:.2f} s")
        rate = lambda s: f"{n / s:,.0f} rows/s"  # noqa: E731
        self.record(f"5. in-DB part (ledger, validate, mask, insert, vault) vs COPY of the same rows, ids and masks"
                    f" into the same three tables, {n:,} msgs", rate(store_s), rate(copy3_s), copy3_s / store_s,
                    ">= 0.50", copy3_s / store_s >= 0.5)
        self.rows.append(("5c. (context) the same vs COPY of the final rows into the target alone",
                          rate(store_s), rate(copy_s), f"{copy_s / store_s:.2f}", "-", "-"))

    # 8 -------------------------------------------------------------------
    def pipeline_rate(self, url, n, pipeline, conc):
        """(messages/s, backend CPU seconds) of one sqs_drain of `n` messages through `pipeline`."""
        with self.conn(**{"fetch_etl.receive_concurrency": conc}) as c:
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            before = cpu_seconds(pid)
            t = time.perf_counter()
            row = c.execute("SELECT * FROM fetch_etl.sqs_drain(%s, max_messages => %s, visibility_timeout => 600,"
                            " pipeline => %s)", (url, n + 100, pipeline)).fetchone()
            elapsed = time.perf_counter() - t
            cpu = cpu_seconds(pid) - before
        assert row[2] == n, (row, n)
        return n / elapsed, cpu

    def pipelines(self):
        n, conc, rounds = self.args.pipeline_messages, self.args.concurrency, self.args.e2e_rounds
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS bench_orders, bench_s3, user_logins_p")
            c.execute(ORDERS_DDL)
            c.execute(S3_DDL)
            c.execute(TABLE_DDL.format(name="user_logins_p"))
            for name in ("bench_orders", "bench_s3"):
                c.execute("SELECT fetch_etl.drop_pipeline(%s, if_exists => true)", (name,))
            c.execute("SELECT fetch_etl.create_pipeline('bench_orders', 'bench_orders', %s, idempotency => '$.event_id')",
                      (ORDERS_COLUMNS,))
            c.execute("SELECT fetch_etl.create_pipeline('bench_s3', 'bench_s3', %s, rows => '$.Records[*]')",
                      (S3_COLUMNS,))
        logins, s3 = login_bodies(n, seed=11), s3_bodies(n // 10, seed=13)
        login_r, order_r, s3_r, login_us, order_us, s3_us = [], [], [], [], [], []
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}: {n:,} logins, {n:,} orders, {n // 10:,} S3 notifications of 10 records")
            # (new event ids each round: the orders pipeline is keyed by them)
            orders = order_bodies(n, seed=12 + r)
            q_login, q_orders, q_s3 = self.emu.queue(logins), self.emu.queue(orders), self.emu.queue(s3)
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.execute("TRUNCATE user_logins_p, bench_orders, bench_s3")
            with self.conn(**{"fetch_etl.receive_concurrency": conc}) as c:
                pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
                before = cpu_seconds(pid)
                t = time.perf_counter()
                row = c.execute("SELECT * FROM fetch_etl.sqs_drain(%s, max_messages => %s, visibility_timeout => 600,"
                                " target_table => 'user_logins_p')", (q_login, n + 100)).fetchone()
                login_r.append(n / (time.perf_counter() - t))
                login_us.append((cpu_seconds(pid) - before) / n * 1e6)
                assert row[2] == n, row
            rate, cpu = self.pipeline_rate(q_orders, n, "bench_orders", conc)
            order_r.append(rate)
            order_us.append(cpu / n * 1e6)
            rate, cpu = self.pipeline_rate(q_s3, n // 10, "bench_s3", conc)
            s3_r.append(rate * 10)  # rows/s
            s3_us.append(cpu / n * 1e6)  # per row
            log(f"  login {login_r[-1]:,.0f} msg/s ({login_us[-1]:.1f} us/row); orders {order_r[-1]:,.0f} msg/s"
                f" ({order_us[-1]:.1f} us/row); S3 {s3_r[-1]:,.0f} rows/s ({s3_us[-1]:.1f} us/row)")
        with psycopg.connect(self.dsn, autocommit=True) as c:
            got = c.execute("SELECT (SELECT count(*) FROM bench_orders), (SELECT count(*) FROM bench_s3)").fetchone()
        assert got == (n, n), got  # the last round's rows
        med = statistics.median
        self.rows.append((f"8a. 20-column pipeline (nested paths; uuid, timestamptz, numeric, boolean, jsonb, inet,"
                          f" text[], a mask) vs the login pipeline, one drain of {n:,}, median of {rounds}",
                          f"{med(order_r):,.0f} msg/s, {med(order_us):.1f} us/row",
                          f"{med(login_r):,.0f} msg/s, {med(login_us):.1f} us/row",
                          f"{med(order_r) / med(login_r):.2f}", "-", "-"))
        self.rows.append((f"8b. Records explosion: {n // 10:,} S3 notifications of 10 records (6 columns, a mask) vs"
                          f" the login pipeline's rows, median of {rounds}",
                          f"{med(s3_r):,.0f} rows/s, {med(s3_us):.1f} us/row",
                          f"{med(login_r):,.0f} rows/s, {med(login_us):.1f} us/row",
                          f"{med(s3_r) / med(login_r):.2f}", "-", "-"))
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("SELECT fetch_etl.drop_pipeline('bench_orders'), fetch_etl.drop_pipeline('bench_s3')")
            c.execute("DROP TABLE bench_orders, bench_s3, user_logins_p")

    # 7b ------------------------------------------------------------------
    def instructions(self):
        """Instructions per message of the store path (bench_store, the same
        code a drain runs per batch), counted by callgrind in a single-user
        backend: the count inside bench_store_wrapper for n2 messages minus
        that for n1, over n2 - n1, so fixed costs (preparing statements,
        reading the key) cancel out. The two runs store different messages
        (no mask of the second is in the vault yet). The cluster is stopped
        meanwhile."""
        n1, n2 = self.args.callgrind_rows
        pg_ctl, data = [str(Path(self.args.pgbin) / "pg_ctl"), "-D", self.args.pgdata, "-w"], self.args.pgdata
        with psycopg.connect(self.dsn, autocommit=True) as c:
            seed = int(time.time())  # new values on every run, whatever the vault holds
            for n in (n1, n2):
                c.execute(f"DROP TABLE IF EXISTS bench_bodies_cg{n}")
                c.execute(f"CREATE TABLE bench_bodies_cg{n} (body text)")
                with c.cursor().copy(f"COPY bench_bodies_cg{n} FROM STDIN") as cp:
                    for b in login_bodies(n, seed=seed + n):
                        cp.write_row((b,))
            c.execute("CREATE OR REPLACE FUNCTION public.bench_store(text[], text) RETURNS bigint"
                      " LANGUAGE c AS '$libdir/fetch_etl', 'bench_store_wrapper'")
            for n in (n1, n2):
                c.execute(f"DROP TABLE IF EXISTS user_logins_cg{n}")
                c.execute(TABLE_DDL.format(name=f"user_logins_cg{n}"))
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run(as_pg + pg_ctl + ["stop", "-m", "fast"], check=True, capture_output=True)
        counts = {}
        try:
            for n in (n1, n2):
                out = Path(data) / f"callgrind.{n}.out"
                sql = (f"SELECT public.bench_store((SELECT array_agg(body) FROM bench_bodies_cg{n}),"
                       f" 'user_logins_cg{n}')\n")
                subprocess.run(as_pg + ["valgrind", "--tool=callgrind", "--toggle-collect=bench_store_wrapper",
                                        f"--callgrind-out-file={out}", str(Path(self.args.pgbin) / "postgres"),
                                        "--single", "-D", data, self.args.db],
                               input=sql, text=True, check=True, capture_output=True)
                totals = [ln for ln in out.read_text().splitlines() if ln.startswith(("totals:", "summary:"))]
                counts[n] = int(totals[-1].split()[1])
                if n == n2 and self.args.output:  # kept for callgrind_annotate
                    keep = Path(self.args.output).with_name("callgrind.store.out")
                    keep.write_bytes(out.read_bytes())
                    log(f"callgrind profile of {n:,} messages: callgrind_annotate {keep}")
                out.unlink()
        finally:
            subprocess.run(as_pg + pg_ctl + ["start", "-l", str(Path(data) / "restart.log")], check=True,
                           capture_output=True)
        per_msg = (counts[n2] - counts[n1]) / (n2 - n1)
        log(f"callgrind: {counts[n1]:,} instructions for {n1:,} messages, {counts[n2]:,} for {n2:,}:"
            f" {per_msg:,.0f} per message")
        self.rows.append((f"7b. store path instructions per message (callgrind, {n2:,} minus {n1:,} messages)",
                          f"{per_msg:,.0f}", "-", "-", "-", "-"))
        self.instructions_per_msg = per_msg

    # Where a drain's backend CPU goes: perf samples of one drain, each
    # counted once, in the first phase (in this order) found on its stack.
    PHASES = [
        ("store: vault writes", ["Vault::flush"]),
        ("store: ledger", ["Ledger::record", "Ledger::forget", "Ledger::own"]),
        ("store: target insert", ["TargetStatement::insert"]),
        ("store: dead letters", ["DeadLetters::insert"]),
        ("store: validate, mask, build the rows", ["fetch_etl_core::batch::prepare"]),
        ("SQS: SigV4 signing", ["sqs::signer::sign_headers"]),
        ("SQS: deletes after COMMIT (HTTP, JSON)", ["deletes::delete_now"]),
        ("SQS: receives (HTTP, JSON, receipt handles)", ["Client<T>::receive", "wire::parse_receive", "sqs::pump::"]),
        ("visibility heartbeat", ["sqs::heartbeat::", "postgres::visibility::"]),
        ("store: the rest (SPI, duplicates, batching)", ["Store::store", "drain::store_batch"]),
        ("drain: the rest (receive loop, runtime)", ["drain::receive_loop", "tokio::runtime"]),
    ]
    ALLOCATOR = ("malloc", "_int_free", "cfree", "realloc", "malloc_consolidate", "unlink_chunk", "sysmalloc")

    def profile(self):
        """perf record (DWARF call graphs) of one drain's backend, broken down
        by phase: the profile behind 7a. Shares, not times: perf itself slows
        the drain."""
        n = self.args.drain_messages
        url = self.emu.queue(login_bodies(n, seed=7))
        fd, name = tempfile.mkstemp(suffix=".perf.data")
        os.close(fd)
        data = Path(name)
        with self.conn(**{"fetch_etl.receive_concurrency": self.args.concurrency}) as c:
            c.execute("DROP TABLE IF EXISTS user_logins")
            c.execute(TABLE_DDL.format(name="user_logins"))
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            perf = subprocess.Popen(["perf", "record", "-q", "-F", "1000", "--call-graph", "dwarf,16384",
                                     "-o", str(data), "-p", str(pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(1)  # perf attaches
            before = cpu_seconds(pid)
            loaded = c.execute("SELECT loaded FROM fetch_etl.sqs_drain(%s, max_messages => %s,"
                               " visibility_timeout => 600)", (url, n + 100)).fetchone()[0]
            cpu = cpu_seconds(pid) - before
            perf.send_signal(2)
            perf.wait()
        assert loaded == n, (loaded, n)
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"], check=True,
                                capture_output=True, text=True).stdout
        data.unlink()
        counts = {label: 0 for label, _ in self.PHASES}
        other = kernel = alloc = total = 0
        for sample in script.split("\n\n"):
            frames = [ln.strip().split(None, 1) for ln in sample.strip().splitlines() if ln.strip()]
            if not frames:
                continue
            total += 1
            kernel += frames[0][0].startswith("ffffffff")
            alloc += len(frames[0]) > 1 and frames[0][1].startswith(self.ALLOCATOR)
            text = "\n".join(f[-1] for f in frames)
            label = next((lb for lb, pats in self.PHASES if any(p in text for p in pats)), None)
            if label is None:
                other += 1
            else:
                counts[label] += 1
        assert total > 100, f"perf took only {total} samples"
        us = cpu / n * 1e6
        rows = [(label, k) for label, k in counts.items()] + [("everything else (setup, COMMIT, executor start)", other)]
        for label, k in rows:
            self.profile_rows.append((label, f"{100 * k / total:.1f}%", f"{us * k / total:.1f} us"))
        self.profile_rows.append(("(across the phases) in the kernel: syscalls, page faults",
                                  f"{100 * kernel / total:.1f}%", f"{us * kernel / total:.1f} us"))
        self.profile_rows.append(("(across the phases) in malloc and free",
                                  f"{100 * alloc / total:.1f}%", f"{us * alloc / total:.1f} us"))
        self.profile_us = us
        log(f"profile: {total:,} samples, backend {us:.1f} us/msg under perf")
        for r in self.profile_rows:
            log(f"  {r[1]:>6} {r[2]:>9}  {r[0]}")

    def table(self):
        out = markdown(("benchmark", "fetch_etl", "baseline", "ratio", "target", "met"), self.rows)
        if self.profile_rows:
            out += ("\n\n7c. Where one drain's backend CPU goes (perf, one drain of"
                    f" {self.args.drain_messages:,} messages; per message at the drain's CPU under perf,"
                    f" {self.profile_us:.1f} us)\n\n")
            out += markdown(("phase", "share", "per message"), self.profile_rows)
        return out


def markdown(head, rows):
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pghost", required=True)
    ap.add_argument("--pgport", required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--fauxqs-port", type=int, required=True)
    ap.add_argument("--proxy-port", type=int, required=True)
    ap.add_argument("--ceiling", required=True, help="path of the sqs_ceiling binary")
    ap.add_argument("--fauxqs-pid", type=int, required=True, help="for CPU accounting")
    ap.add_argument("--output", help="write the table here (markdown)")
    ap.add_argument("--batch-size", type=int, help="fetch_etl.batch_size for every drain (default: the server's)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for trying the script")
    ap.add_argument("--only", help="comma-separated: masking,end_to_end,profile,latency,memory,in_db_vs_copy,"
                                   "instructions,pipelines")
    ap.add_argument("--pgbin", required=True, help="the cluster's PostgreSQL bin directory (for callgrind)")
    ap.add_argument("--pgdata", required=True, help="the cluster's data directory (for callgrind)")
    args = ap.parse_args()
    q = args.quick
    args.rounds = 3 if q else 5
    args.mask_rows = 200_000 if q else 1_000_000
    args.drain_messages = 2_000 if q else 20_000
    args.concurrency = 8
    args.e2e_rounds = 1 if q else 3
    args.latency_rounds = 1 if q else 3
    args.latency_messages = 300 if q else 4_000
    args.latency_messages_1 = 300 if q else 2_000  # at 1 in flight
    args.delay_ms = 20.0
    # One transaction holds at most 16 MiB of receipt handles (since 0.5.0 a
    # drain stops there): about 45,000 of fauxqs's.
    args.memory_messages = 5_000 if q else 40_000
    args.store_rows = 10_000 if q else 100_000
    args.pipeline_messages = 1_000 if q else 10_000
    args.callgrind_rows = (200, 1_200) if q else (1_000, 4_000)

    b = Bench(args)
    steps = ["masking", "end_to_end", "profile", "latency", "memory", "in_db_vs_copy", "instructions", "pipelines"]
    if args.only:
        steps = [s for s in steps if s in args.only.split(",")]
    for step in steps:
        log(f"--- {step}")
        t = time.perf_counter()
        getattr(b, step)()
        log(f"    ({time.perf_counter() - t:.0f} s)")
    table = b.table()
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

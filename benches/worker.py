"""The strong external baseline for scripts/bench: the loader a competent
engineer would run next to the database instead of fetch_etl, doing the same
work with the same guarantees.

- receives: `--concurrency` threads (the drain's receive concurrency) on one
  thread-safe boto3 client with a connection each, ReceiveMessage of 10 with
  SentTimestamp, feeding a bounded queue while the main thread stores;
- validation: the exercise's contract as fetch_etl applies it to the
  exercise's table (duplicate fields, types, NUL, user_id required, column
  widths, app_version as major*10000+minor*100+patch); a bad message becomes a
  dead letter with its reason code;
- masking: hex(HMAC-SHA256(key, value)) with fetch_etl's active key (read
  from fetch_etl.mask_keys), so its masks equal the extension's;
- per batch of `--batch` messages, one transaction: the message ids COPYed
  into a temp table and recorded in a ledger with INSERT ... ON CONFLICT DO
  NOTHING RETURNING (only ids not seen before load, as fetch_etl's ledger
  does); the rows COPYed into the target; the (mask, raw) pairs COPYed into a
  temp table and added to a vault the same way; dead letters COPYed;
- deletes (DeleteMessageBatch, on a thread pool) only after that COMMIT, while
  the receivers go on.

Its ledger and vault are tables LIKE fetch_etl's (same columns, collations
and indexes) in `--schema`, with a dead-letter table of its own, so the two
loaders never share state (scripts/bench's run.py makes them).
Prints {"messages", "loaded", "rejected", "duplicates", "seconds",
"cpu_worker", "cpu_backend"}: CPU seconds of this process (all threads) and of
its PostgreSQL backend, read from /proc (the backend runs on this machine).
"""
import argparse
import datetime
import hmac
import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config
import psycopg
from psycopg import sql

LOGIN_FIELDS = ("user_id", "device_type", "ip", "locale", "device_id", "app_version")
# The exercise's DDL: varchar(128), varchar(32), varchar(32), integer.
WIDTHS = {"user_id": 128, "device_type": 32, "locale": 32}
INT4 = (-(2**31), 2**31 - 1)
COLUMNS = ("user_id", "device_type", "masked_ip", "masked_device_id", "locale", "app_version", "create_date")


class Reject(Exception):
    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code


class _Objects:
    """json.loads' object hook: remembers whether the last object built, the
    outermost one, had a field twice (the extension checks only the top level)."""

    def __init__(self):
        self.last_had_duplicate = False

    def __call__(self, pairs):
        d = dict(pairs)
        self.last_had_duplicate = len(d) != len(pairs)
        return d


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: serde_json refuses them too


def encode_app_version(v):
    parts = v.split(".")
    if not v or len(parts) > 3 or any(not p or not (p.isascii() and p.isdigit()) for p in parts):
        raise Reject("bad_app_version", "app_version is not major[.minor[.patch]]")
    nums = [int(p) for p in parts] + [0, 0]
    if nums[1] > 99 or nums[2] > 99 or nums[0] > 100_000_000:
        raise Reject("bad_app_version", "app_version component out of range")
    n = nums[0] * 10000 + nums[1] * 100 + nums[2]
    if not INT4[0] <= n <= INT4[1]:
        raise Reject("bad_app_version", "app_version outside the column's range")
    return n


def validate(body):
    """The login event as the target's values (raw PII still in), or Reject."""
    if len(body.encode()) > 1_048_576:
        raise Reject("too_large", "body is larger than fetch_etl.max_body_bytes")
    objects = _Objects()
    try:
        rec = json.loads(body, object_pairs_hook=objects, parse_constant=_no_constant)
    except RecursionError:
        raise Reject("too_deep", "JSON nesting too deep") from None
    except ValueError as e:
        raise Reject("not_json", str(e)) from None
    if not isinstance(rec, dict):
        raise Reject("not_object", f"body is a JSON {type(rec).__name__}, not an object")
    if objects.last_had_duplicate:
        raise Reject("duplicate_field", "a field appears more than once")
    if not any(f in rec for f in LOGIN_FIELDS):
        raise Reject("not_login_event", "no login fields")
    vals = {}
    for f in LOGIN_FIELDS:
        v = rec.get(f)
        if v is not None and not isinstance(v, str):
            raise Reject("wrong_type", f"{f} must be a string or null")
        if v is not None and "\0" in v:
            raise Reject("nul_character", f"{f} contains a NUL character")
        if v is not None and not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:  # a lone surrogate escape: serde_json refuses it
                raise Reject("not_json", f"{f} holds an unpaired surrogate") from None
        vals[f] = v
    if not vals["user_id"]:
        raise Reject("missing_field", "user_id is required")
    for f, width in WIDTHS.items():
        if vals[f] is not None and len(vals[f]) > width:
            raise Reject("too_long", f"{f} is longer than {width}")
    app = vals["app_version"]
    vals["app_version"] = None if app is None else encode_app_version(app)
    return vals


def backend_cpu(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    def __init__(self, args):
        self.args = args
        cfg = botocore.config.Config(max_pool_connections=2 * args.concurrency + 8, retries={"mode": "standard"})
        self.sqs = boto3.client("sqs", endpoint_url=args.endpoint, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test", config=cfg)
        self.conn = psycopg.connect(args.dsn, autocommit=True)
        self.backend_pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        s = args.schema
        self.key = bytes(self.conn.execute(
            "SELECT key FROM fetch_etl.mask_keys ORDER BY generation DESC, created_at LIMIT 1").fetchone()[0])
        self.ledger, self.vault, self.dead = (sql.Identifier(s, t) for t in
                                              ("processed_messages", "pii_vault", "dead_letters"))
        self.target = sql.Identifier(args.table)
        self.conn.execute('CREATE TEMP TABLE w_ids (message_id text COLLATE "C") ON COMMIT DELETE ROWS')
        self.conn.execute('CREATE TEMP TABLE w_vault (masked text COLLATE "C", raw text) ON COMMIT DELETE ROWS')
        self.counts = {"messages": 0, "loaded": 0, "rejected": 0, "duplicates": 0}
        self.deleters = ThreadPoolExecutor(args.concurrency)
        self.deletes = []
        self.failures = []  # exceptions of receiver threads

    def mask(self, v):
        return None if v is None else hmac.digest(self.key, v.encode(), "sha256").hex()

    def receive(self, out):
        try:
            while True:
                r = self.sqs.receive_message(QueueUrl=self.args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                             VisibilityTimeout=600, MessageSystemAttributeNames=["SentTimestamp"])
                msgs = r.get("Messages", [])
                if not msgs:
                    return
                out.put(msgs)
        except BaseException as e:  # noqa: B036 - handed to the main thread, which raises it
            self.failures.append(e)
        finally:
            out.put(None)

    def store(self, msgs):
        by_id = {}
        for m in msgs:
            by_id.setdefault(m["MessageId"], m)
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY w_ids (message_id) FROM STDIN") as cp:
                for mid in sorted(by_id):
                    cp.write_row((mid,))
            cur.execute(sql.SQL("INSERT INTO {} (message_id, run_id) SELECT message_id, 0 FROM w_ids"
                                " ON CONFLICT DO NOTHING RETURNING message_id").format(self.ledger))
            new = [r[0] for r in cur.fetchall()]
            rows, vault, dead = [], {}, []
            for mid in new:
                m = by_id[mid]
                sent_ms = int(m["Attributes"]["SentTimestamp"])
                try:
                    v = validate(m["Body"])
                except Reject as r:
                    dead.append((mid, m["Body"], r.code, str(r),
                                 datetime.datetime.fromtimestamp(sent_ms / 1000, datetime.timezone.utc)))
                    continue
                mip, mdev = self.mask(v["ip"]), self.mask(v["device_id"])
                if mip is not None:
                    vault[mip] = v["ip"]
                if mdev is not None:
                    vault[mdev] = v["device_id"]
                day = datetime.datetime.fromtimestamp(sent_ms / 1000, datetime.timezone.utc).date()
                rows.append((v["user_id"], v["device_type"], mip, mdev, v["locale"], v["app_version"], day))
            if rows:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                        self.target, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as cp:
                    for row in rows:
                        cp.write_row(row)
            if vault:
                with cur.copy("COPY w_vault (masked, raw) FROM STDIN") as cp:
                    for item in sorted(vault.items()):
                        cp.write_row(item)
                cur.execute(sql.SQL("INSERT INTO {} (masked, raw) SELECT masked, raw FROM w_vault"
                                    " ON CONFLICT DO NOTHING").format(self.vault))
            if dead:
                with cur.copy(sql.SQL("COPY {} (message_id, body, reason_code, reason, sent_at) FROM STDIN")
                              .format(self.dead)) as cp:
                    for d in dead:
                        cp.write_row(d)
        # Committed: now, and only now, the messages may go.
        self.counts["messages"] += len(msgs)
        self.counts["loaded"] += len(rows)
        self.counts["rejected"] += len(dead)
        self.counts["duplicates"] += len(msgs) - len(new)
        handles = [m["ReceiptHandle"] for m in msgs]
        for i in range(0, len(handles), 10):
            self.deletes.append(self.deleters.submit(self.delete, handles[i:i + 10]))

    def delete(self, handles):
        r = self.sqs.delete_message_batch(QueueUrl=self.args.queue_url,
                                          Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)])
        if r.get("Failed"):
            raise RuntimeError(f"{len(r['Failed'])} deletes failed")

    def run(self):
        inbox = queue.Queue(maxsize=4 * self.args.concurrency)
        receivers = [threading.Thread(target=self.receive, args=(inbox,), daemon=True)
                     for _ in range(self.args.concurrency)]
        start = time.perf_counter()
        cpu0, bcpu0 = time.process_time(), backend_cpu(self.backend_pid)
        for t in receivers:
            t.start()
        pending, running = [], len(receivers)
        while running:
            item = inbox.get()
            if item is None:
                running -= 1
                continue
            pending.extend(item)
            if len(pending) >= self.args.batch:
                self.store(pending)
                pending = []
        if self.failures:
            raise RuntimeError("a receiver failed") from self.failures[0]
        if pending:
            self.store(pending)
        for f in self.deletes:
            f.result()  # raises what a delete raised
        seconds = time.perf_counter() - start
        return {**self.counts, "seconds": round(seconds, 4),
                "cpu_worker": round(time.process_time() - cpu0, 4),
                "cpu_backend": round(backend_cpu(self.backend_pid) - bcpu0, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--queue-url", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", default="user_logins")
    ap.add_argument("--schema", default="bench_worker", help="where its ledger, vault and dead letters are")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1000, help="messages per transaction")
    print(json.dumps(Worker(ap.parse_args()).run()))


if __name__ == "__main__":
    main()

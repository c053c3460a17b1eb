"""Fixtures for the end-to-end tests: the test cluster started by scripts/test,
and a real SQS emulator (moto, with signature checking on) started here.

Environment (set by scripts/test):
  FETCH_ETL_PGHOST        socket directory of the test cluster (also its directory)
  FETCH_ETL_PGPORT        its port
  FETCH_ETL_E2E_CLUSTERS  with pytest-xdist (-n N): one DIR:PORT per worker, in
                          worker order (the first is the cluster above)
  FETCH_ETL_STATE         scripts' state directory

Under pytest-xdist each worker has a cluster of its own, and its own emulator,
credentials cluster and standby (ports 10 apart per worker): a test that
restarts or crashes its cluster (durability, pg_cron) disturbs no other, and
roles and server settings are per worker.
"""
import json
import os
import subprocess
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest

from faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("FETCH_ETL_STATE", "/var/tmp/fetch_etl"))
# pytest-xdist names its workers gw0, gw1, ...; without it this is worker 0.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])


def worker_port(base) -> int:
    """This worker's port for a service whose worker-0 port is `base`."""
    return int(base) + 10 * WORKER


def worker_dir(name: str) -> Path:
    """This worker's directory under the state directory for `name`."""
    return STATE / (name if WORKER == 0 else f"{name}-w{WORKER}")


_clusters = os.environ.get("FETCH_ETL_E2E_CLUSTERS", "").split()
if _clusters:
    PGHOST, PGPORT = _clusters[WORKER].rsplit(":", 1)
elif WORKER > 0:
    raise RuntimeError("pytest-xdist workers need a cluster each: run the e2e tests with scripts/test e2e")
else:
    PGHOST = os.environ.get("FETCH_ETL_PGHOST", str(STATE / "pg-test"))
    PGPORT = os.environ.get("FETCH_ETL_PGPORT", "5491")
SQS_PORT = worker_port(os.environ.get("FETCH_ETL_TEST_SQS_PORT", "4599"))
SAMPLE = REPO / "data" / "login-queue-sample.json"
SAMPLE_RECORDS = json.loads(SAMPLE.read_text())
VALID = [r for r in SAMPLE_RECORDS if "user_id" in r]

# Visibility timeout for tests that wait for messages to come back: long
# enough that a drain of the sample (about 1 s) never outlives it, even on a
# busy machine.
VIS = 4


def _has_pg_cron() -> bool:
    bindir = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    libdir = subprocess.run([str(bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True).stdout.strip()
    return (Path(libdir) / "pg_cron.so").exists()


# PostgreSQL 17 and 18 are built from source here, and pg_cron with them only
# when its source can be had (scripts/pg-build): tests of pg_cron jobs need it.
needs_pg_cron = pytest.mark.skipif(not _has_pg_cron(), reason="pg_cron is not installed for this PostgreSQL")


def drain(conn, url, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = f"SELECT * FROM fetch_etl.sqs_drain(%(url)s{', ' + args if args else ''})"
    return conn.execute(sql, {"url": url, **kw}).fetchone()


def counts(row):
    """(received, loaded, rejected, duplicates) of a sqs_drain result row."""
    return tuple(row[1:])


def loaded_sample(row):
    """The sample was loaded: 99 rows, 1 reject; any redelivery during the run
    (a slow machine) shows up as duplicates, never as a second load."""
    received, loaded, rejected, duplicates = counts(row)
    return loaded == 99 and rejected == 1 and received == 100 + duplicates


def connect(dbname: str, **kw) -> psycopg.Connection:
    return psycopg.connect(host=PGHOST, port=PGPORT, user="postgres", dbname=dbname, autocommit=True, **kw)


def restart_cluster() -> None:
    """Restart the test cluster (scripts/pgcluster start restarts a running one)."""
    subprocess.run([str(REPO / "scripts" / "pgcluster"), "start", PGHOST, PGPORT, "postgres"], check=True)


# scripts/test's scan of the server log for leaked keys reads the keys of the
# databases dropped here from this file (one hex key per line).
KEYS_SEEN = os.environ.get("FETCH_ETL_KEYS_SEEN")


def remember_keys(name: str) -> None:
    if not KEYS_SEEN:
        return
    try:
        with connect(name) as c:
            keys = [bytes(k).hex() for (k,) in c.execute("SELECT key FROM fetch_etl.mask_keys")]
    except psycopg.Error:
        return  # the test dropped the extension (or the database) itself
    with open(KEYS_SEEN, "a") as f:
        f.writelines(k + "\n" for k in keys)


@pytest.fixture
def db():
    """A fresh database with fetch_etl installed; dropped afterwards."""
    name = "e2e_" + uuid.uuid4().hex[:12]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(name) as c:
        c.execute("CREATE EXTENSION fetch_etl")
    yield name
    remember_keys(name)
    with connect("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def aws_key():
    """moto with SigV4 verification on; returns (access key id, secret) of an IAM user allowed sqs:*."""
    emu = str(REPO / "scripts" / "sqs-emulator")
    d = str(worker_dir("e2e-sqs"))
    subprocess.run([emu, "stop", d], check=True)
    subprocess.run([emu, "start", d, str(SQS_PORT), "--auth"], check=True)
    out = subprocess.run(
        [emu, "create-key", "--endpoint", f"http://127.0.0.1:{SQS_PORT}"], check=True, capture_output=True, text=True
    ).stdout.split()
    yield out[0], out[1]
    subprocess.run([emu, "stop", d], check=True)


@pytest.fixture(scope="session")
def sqs(aws_key):
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{SQS_PORT}",
        region_name="us-east-1",
        aws_access_key_id=aws_key[0],
        aws_secret_access_key=aws_key[1],
    )


def via(proxy, raw_url):
    """The queue URL `raw_url`, reached through `proxy` instead of the emulator."""
    return raw_url.replace(f"127.0.0.1:{SQS_PORT}", f"127.0.0.1:{proxy.port}")


def make_queue(sqs, bodies=None, port=SQS_PORT, per_call=10):
    """A fresh queue holding `bodies` (default: the real sample, one message per record),
    sent `per_call` at a time (SQS takes at most 1 MiB per call).
    Returns its URL as fetch_etl should be given it (localhost:port)."""
    name = "q-" + uuid.uuid4().hex[:12]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    if bodies is None:
        bodies = [json.dumps(r) for r in json.loads(SAMPLE.read_text())]
    for i in range(0, len(bodies), per_call):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i : i + per_call])]
        )
    return url, f"http://localhost:{port}/000000000000/{name}"


def queue_depth(sqs, url):
    a = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


# The exercise's target table, for tests that need it to exist beforehand.
USER_LOGINS_DDL = (
    "CREATE TABLE IF NOT EXISTS user_logins (user_id varchar(128), device_type varchar(32), masked_ip varchar(256),"
    " masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)"
)


def set_credentials(conn, aws_key):
    """Session credentials through the superuser-only settings."""
    conn.execute("SELECT set_config('fetch_etl.aws_access_key_id', %s, false)", (aws_key[0],))
    conn.execute("SELECT set_config('fetch_etl.aws_secret_access_key', %s, false)", (aws_key[1],))


@pytest.fixture
def pg(db, aws_key):
    """A connection to the fresh database with the test credentials set (superuser session)."""
    c = connect(db)
    set_credentials(c, aws_key)
    yield c
    c.close()


@pytest.fixture
def proxy():
    p = FaultProxy(SQS_PORT)
    yield p
    p.close()

"""The image, built with podman and run (scripts/test image).

No image registry is reachable here, so the Dockerfile's base images are
local stand-ins: a bookworm rootfs made by debootstrap (cached under
$FETCH_ETL_STATE/image), Debian's PostgreSQL 15 and pg_cron on it laid out
as the official postgres image is (docker/standin), and an image holding the
.deb scripts/package made (the builder stage needs the rust image's
toolchain: not built here). The runtime stage is the Dockerfile's own.
Containers use the host's network: the SQS emulator on the host is
127.0.0.1 for them too."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("FETCH_ETL_STATE", "/var/tmp/fetch_etl"))
CACHE = STATE / "image"
DEB = os.environ.get("FETCH_ETL_IMAGE_DEB")
PG_MAJOR = "15"
BASE = "localhost/fetch-etl-base:bookworm"
STANDIN = f"localhost/fetch-etl-standin-postgres:{PG_MAJOR}"
DEBS = "localhost/fetch-etl-debs:test"
IMAGE = f"localhost/fetch_etl:test-pg{PG_MAJOR}"
SQS_PORT = int(os.environ.get("FETCH_ETL_IMAGE_SQS_PORT", "4611"))
PG_PORTS = iter(range(int(os.environ.get("FETCH_ETL_IMAGE_PGPORT", "5611")), 5700))

pytestmark = pytest.mark.skipif(DEB is None, reason="run by scripts/test image (FETCH_ETL_IMAGE_DEB)")


def podman(*args, check=True, **kw):
    r = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}...: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def build(*args):
    return podman("build", "--network", "host", *args, timeout=1800)


@pytest.fixture(scope="session")
def image():
    """The runtime stage, built on the stand-ins."""
    if podman("image", "exists", BASE, check=False).returncode != 0:
        tar = CACHE / "bookworm-minbase.tar"
        if not tar.exists():
            rootfs = CACHE / "rootfs"
            shutil.rmtree(rootfs, ignore_errors=True)
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                           check=True, capture_output=True)
            subprocess.run(["tar", "-C", str(rootfs), "-cf", f"{tar}.part", "."], check=True)
            os.replace(f"{tar}.part", tar)
            shutil.rmtree(rootfs)
        podman("import", str(tar), BASE)
    build("-f", "docker/standin/postgres.Dockerfile", "--build-arg", f"PG_MAJOR={PG_MAJOR}", "-t", STANDIN, str(REPO))
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(DEB, ctx)
        Path(ctx, "Dockerfile").write_text("FROM scratch\nCOPY *.deb /out/\n")
        build("-t", DEBS, ctx)
    build("-f", "Dockerfile", "--target", "runtime", "--build-arg", f"PG_MAJOR={PG_MAJOR}",
          "--build-arg", f"RUNTIME_IMAGE={STANDIN}", "--build-arg", f"DEB_IMAGE={DEBS}", "-t", IMAGE, str(REPO))
    return IMAGE


@pytest.fixture(scope="session")
def sqs():
    """moto on the host, holding the sample on login-queue and login-queue-b."""
    emu, d = str(REPO / "scripts" / "sqs-emulator"), str(STATE / "image-sqs")
    subprocess.run([emu, "stop", d], check=True)
    subprocess.run([emu, "start", d, str(SQS_PORT)], check=True)
    for q in ("login-queue", "login-queue-b"):
        subprocess.run([str(STATE / "venv" / "bin" / "python"), str(REPO / "scripts" / "sqs_emulator.py"), "seed",
                        "--endpoint", f"http://127.0.0.1:{SQS_PORT}", "--queue", q,
                        "--file", str(REPO / "data" / "login-queue-sample.json")], check=True, capture_output=True)
    yield f"http://127.0.0.1:{SQS_PORT}/000000000000"
    subprocess.run([emu, "stop", d], check=True)


class Container:
    def __init__(self, image, env, sqs_endpoint):
        self.name = "fetch-etl-test-" + uuid.uuid4().hex[:8]
        self.port = next(PG_PORTS)
        # the image's own command, with the emulator as an allowed endpoint (as docker-compose.yml does)
        cmd = json.loads(podman("image", "inspect", "--format", "{{json .Config.Cmd}}", image).stdout)
        self.cmd = [f"fetch_etl.allowed_endpoints=aws, {sqs_endpoint}" if a == "fetch_etl.allowed_endpoints=aws" else a
                    for a in cmd]
        assert self.cmd != cmd, f"the image's command allows AWS SQS only: {cmd}"
        env = {"POSTGRES_PASSWORD": "s3cret-pw", "PGPORT": str(self.port), "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", **env}
        self.db = env.get("POSTGRES_DB", "postgres")
        podman("run", "-d", "--name", self.name, "--network", "host",
               *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], image, *self.cmd)

    def psql(self, sql, db=None):
        r = podman("exec", self.name, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db or self.db,
                   "-tA", "-c", sql, check=False)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return r.stdout.strip()

    def logs(self):
        r = podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def wait_ready(self, seconds=90):
        """Until the server that runs after the init scripts answers over TCP."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password="s3cret-pw",
                                     dbname=self.db, connect_timeout=2) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
                assert state == "running", f"the container is {state}:\n{self.logs()[-4000:]}"
                assert time.monotonic() < deadline, f"the server answers within {seconds} s:\n{self.logs()[-4000:]}"
                time.sleep(0.5)

    def stop(self):
        podman("stop", "-t", "60", self.name)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self):
        podman("rm", "-f", self.name, check=False)


@pytest.fixture
def container(image, sqs):
    made = []

    def make(**env):
        c = Container(image, env, sqs.rsplit("/", 1)[0])
        made.append(c)
        return c

    yield make
    for c in made:
        c.remove()


def test_the_image_drains_the_sample_and_keeps_its_data_across_a_restart(container, sqs):
    c = container()
    c.wait_ready()
    assert "PostgreSQL init process complete" in c.logs()
    assert c.psql("SHOW shared_preload_libraries") == "pg_cron,fetch_etl"
    assert c.psql("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension "
                  "WHERE extname IN ('fetch_etl', 'pg_cron')") == "fetch_etl,pg_cron"
    # the init script scheduled the housekeeping, and no drain (no FETCH_ETL_QUEUE_URL)
    assert c.psql("SELECT string_agg(jobname, ',') FROM cron.job") == "fetch-etl-prune"
    # drained from inside the container, with the credentials of the server's environment
    assert c.psql(f"SELECT received, loaded, rejected, duplicates FROM fetch_etl.sqs_drain('{sqs}/login-queue')") \
        == "100|99|1|0"
    assert c.psql("SELECT credential_source FROM fetch_etl.drain_runs") == "environment"
    assert c.stop() == 0, "a clean stop (SIGINT: fast shutdown)"
    assert "database system is shut down" in c.logs()
    podman("start", c.name)
    c.wait_ready()
    assert c.psql("SELECT count(*), count(DISTINCT user_id) FROM user_logins") == "99|99", "the data survived"
    assert c.psql(f"SELECT received FROM fetch_etl.sqs_drain('{sqs}/login-queue')") == "0"
    assert c.stop() == 0


def test_a_non_default_postgres_db_gets_its_scheduled_drain(container, sqs):
    """0.6.0's init script created pg_cron in POSTGRES_DB, which pg_cron
    refuses unless it is cron.database_name (postgres): the first start
    failed. Now the jobs are made in cron.database_name and run in
    POSTGRES_DB; the drain job loads the sample within about a minute."""
    c = container(POSTGRES_DB="analytics", FETCH_ETL_QUEUE_URL=f"{sqs}/login-queue-b")
    c.wait_ready()
    jobs = c.psql("SELECT string_agg(jobname || '@' || database, ',' ORDER BY jobname) FROM cron.job", db="postgres")
    assert jobs == "fetch-etl-drain@analytics,fetch-etl-prune@analytics"
    deadline = time.monotonic() + 100
    loaded = ""
    while time.monotonic() < deadline:
        if c.psql("SELECT to_regclass('user_logins') IS NOT NULL") == "t":
            loaded = c.psql("SELECT count(*) FROM user_logins")
        if loaded == "99":
            break
        time.sleep(2)
    assert loaded == "99", f"the pg_cron job loaded the sample into analytics:\n{c.logs()[-3000:]}"
    assert c.psql("SELECT count(*) FROM fetch_etl.dead_letters") == "1"
    assert c.stop() == 0


def port_free(port):
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_docker_compose_yml_runs_with_podman_compose(image):
    """docker-compose.yml as it is, run with Debian's podman-compose 1.0.3;
    tests/image/compose.standin.yml only swaps in the stand-in base images and
    the prebuilt .deb. Within about a minute the pg_cron job has drained the
    sample the seed service sent, through the service name `sqs`.

    What differs from Docker Compose (docs/operations.md, "Docker"):
    podman-compose 1.0.3 ignores `depends_on` conditions (it starts the
    services in order without waiting for health or for the seed to finish:
    the seed's client retries until the emulator answers, and the drain job
    runs every minute) and cannot run healthchecks without systemd (it logs
    an error and the containers run)."""
    build("-f", "docker/standin/python.Dockerfile", "-t", "localhost/fetch-etl-standin-python:3.11", str(REPO))
    for port in (4566, 5432):
        assert port_free(port), f"port {port} is taken (docker-compose.yml publishes it): stop what holds it"
    project = "fetchetltest"
    pc = ["podman-compose", "--podman-args=--runtime runc",
          # PyPI through this machine's proxy: its certificate authority is in the host's store only
          "--podman-build-args=--network host -v /etc/ssl/certs:/etc/ssl/certs:ro",
          "-p", project, "-f", "docker-compose.yml", "-f", "tests/image/compose.standin.yml"]

    def compose(*args):
        r = subprocess.run([*pc, *args], cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"podman-compose {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    pg = f"{project}_postgres_1"
    try:
        compose("build")
        compose("up", "-d")
        names = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
                       "--format", "{{.Names}}").stdout.split()
        assert sorted(names) == sorted([f"{project}_sqs_1", f"{project}_sqs-seed_1", pg]), names
        deadline = time.monotonic() + 120
        rows = ""
        while time.monotonic() < deadline:
            r = podman("exec", pg, "psql", "-X", "-U", "postgres", "-tA", "-c",
                       "SELECT count(*) FROM user_logins WHERE to_regclass('user_logins') IS NOT NULL", check=False)
            rows = r.stdout.strip()
            if rows == "99":
                break
            time.sleep(3)
        logs = podman("logs", pg, check=False)
        assert rows == "99", f"the compose stack loaded the sample:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
        seed = podman("inspect", "--format", "{{.State.ExitCode}}", f"{project}_sqs-seed_1").stdout.strip()
        assert seed == "0"
        state = podman("exec", pg, "psql", "-X", "-U", "postgres", "-tA", "-c",
                       "SELECT queue_url || ' ' || state FROM fetch_etl.queue_health").stdout.strip()
        assert state == "http://sqs:4566/000000000000/login-queue loading"
    finally:
        subprocess.run([*pc, "down"], cwd=REPO, capture_output=True, timeout=300)

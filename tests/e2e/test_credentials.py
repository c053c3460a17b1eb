"""The AWS credential chain, end to end: each provider against moto (which checks
signatures and session tokens) and the local fake endpoints of fakecreds.py.

The chain reads the postmaster's environment, so these tests run a second
cluster (pg-creds) and restart it with each provider's variables, the way a DBA
sets them in a systemd drop-in or a pod spec. Every credential endpoint is
named through the standard variables (AWS_ENDPOINT_URL_STS,
AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_CONTAINER_CREDENTIALS_FULL_URI, ...).
"""
import os
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import REPO, SQS_PORT, counts, drain, loaded_sample, make_queue, worker_dir, worker_port
from fakecreds import FakeContainer, FakeImds, FakeSts, make_role, moto, remember

CREDS_DIR = worker_dir("pg-creds")
CREDS_PORT = str(worker_port(os.environ.get("FETCH_ETL_TEST_CREDS_PGPORT", "5494")))
MOTO = f"http://127.0.0.1:{SQS_PORT}"
DB = "creds"


def _files(name, text, mode=0o644):
    path = CREDS_DIR / name
    path.write_text(text)
    os.chmod(path, mode)
    subprocess.run(["chown", "postgres:postgres", str(path)], check=True)
    return str(path)


class CredsCluster:
    """The pg-creds cluster, restarted with a given server environment."""

    def base_env(self):
        # Nothing to find unless a test provides it: no config files, IMDS on a
        # closed port (connection refused at once), STS at moto.
        return {
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(CREDS_DIR / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(CREDS_DIR / "no-credentials"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
            "AWS_ENDPOINT_URL_STS": MOTO,
        }

    def start(self, **env):
        full = {**self.base_env(), **env}
        lines = [f"{k}={v}" for k, v in full.items() if v is not None]
        CREDS_DIR.mkdir(parents=True, exist_ok=True)
        (CREDS_DIR / "environment").write_text("\n".join(lines) + "\n")
        subprocess.run([str(REPO / "scripts" / "pgcluster"), "start", str(CREDS_DIR), CREDS_PORT, DB], check=True)
        with self.connect() as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS fetch_etl")

    def connect(self):
        return psycopg.connect(host=str(CREDS_DIR), port=CREDS_PORT, user="postgres", dbname=DB, autocommit=True)


@pytest.fixture(scope="module")
def cluster(aws_key):
    subprocess.run([str(REPO / "scripts" / "pgcluster"), "stop", str(CREDS_DIR)], check=False)
    # Not the whole directory: pytest-xdist may set this fixture up twice in a
    # worker, and the secret scan of scripts/test reads the server log after.
    subprocess.run(["rm", "-rf", str(CREDS_DIR / "data")], check=True)
    CREDS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "postgres:postgres", str(CREDS_DIR)], check=True)
    cl = CredsCluster()
    cl.start()
    with cl.connect() as c:
        # The log scan of scripts/test reads this cluster's log too.
        c.execute("ALTER SYSTEM SET log_statement = 'all'")
        c.execute("SELECT pg_reload_conf()")
    yield cl
    subprocess.run([str(REPO / "scripts" / "pgcluster"), "stop", str(CREDS_DIR)], check=False)


@pytest.fixture(scope="module")
def role(aws_key):
    return make_role(MOTO, aws_key)


def last_run(c):
    return c.execute(
        "SELECT status, credential_source, credential_identity, coalesce(error, '') FROM fetch_etl.drain_runs"
        " ORDER BY run_id DESC LIMIT 1"
    ).fetchone()


def drain_error(c, url):
    with pytest.raises(psycopg.Error) as e:
        drain(c, url)
    return e.value


def test_web_identity_token_file_and_role_arn_load_the_sample(cluster, sqs, aws_key, role):
    token = "eyJhbGciOiJSUzI1NiJ9.irsa-test-token." + uuid.uuid4().hex
    sts = FakeSts(MOTO, aws_key, token)
    try:
        cluster.start(
            AWS_WEB_IDENTITY_TOKEN_FILE=_files("token", token),
            AWS_ROLE_ARN=role,
            AWS_ROLE_SESSION_NAME="postgres-loader",
            AWS_ENDPOINT_URL_STS=sts.url,
        )
        _, url = make_queue(sqs)
        with cluster.connect() as c:
            assert loaded_sample(drain(c, url))
            status, source, identity, _ = last_run(c)
        assert (status, source, identity) == ("ok", "web_identity", role)
        assert sts.handed_out == 1 and sts.refused == 0
    finally:
        sts.close()


def test_web_identity_with_a_wrong_role_is_a_clear_error(cluster, sqs, aws_key):
    token = "irsa-token-" + uuid.uuid4().hex
    sts = FakeSts(MOTO, aws_key, token)
    try:
        cluster.start(
            AWS_WEB_IDENTITY_TOKEN_FILE=_files("token", token),
            AWS_ROLE_ARN="arn:aws:iam::000000000000:role/not-this-one",
            AWS_ENDPOINT_URL_STS=sts.url,
        )
        _, url = make_queue(sqs, ["{}"])
        with cluster.connect() as c:
            e = drain_error(c, url)
        assert e.sqlstate == "28000"
        msg = str(e)
        assert "web_identity" in msg and "STS refused (AccessDenied)" in msg, msg
        # STS's message text is not repeated, and the chain did not fall through to IMDS
        assert "Not authorized" not in msg and "imds" not in msg, msg
        assert sts.refused == 1
    finally:
        sts.close()


def test_profile_with_role_arn_and_source_profile(cluster, sqs, aws_key, role):
    config = _files("config", f"[profile loader]\nrole_arn = {role}\nsource_profile = base\n")
    creds = _files(
        "credentials", f"[base]\naws_access_key_id = {aws_key[0]}\naws_secret_access_key = {aws_key[1]}\n", 0o600
    )
    cluster.start(AWS_CONFIG_FILE=config, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="loader")
    _, url = make_queue(sqs)
    with cluster.connect() as c:
        assert loaded_sample(drain(c, url))
        status, source, identity, _ = last_run(c)
    assert (status, source) == ("ok", "profile:loader")
    # the role's temporary key, not the source profile's
    assert identity.startswith("key …") and identity != "key …" + aws_key[0][-4:]


def test_profile_with_credential_process(cluster, sqs, aws_key, role):
    c = moto("sts", MOTO, aws_key).assume_role(RoleArn=role, RoleSessionName="proc")["Credentials"]
    remember(c)
    out = (
        '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s", "SessionToken": "%s", "Expiration": "%s"}'
        % (c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    script = _files("credential-process", f"#!/bin/sh\ncat <<'EOF'\n{out}\nEOF\n", 0o700)
    config = _files("config", f"[profile proc]\ncredential_process = {script}\n")
    cluster.start(AWS_CONFIG_FILE=config, AWS_PROFILE="proc")
    _, url = make_queue(sqs, ["{}"])
    with cluster.connect() as conn:
        assert counts(drain(conn, url)) == (1, 0, 1, 0)
        status, source, identity, _ = last_run(conn)
    assert (status, source, identity) == ("ok", "profile:proc", "key …" + c["AccessKeyId"][-4:])


def start_with_container_credentials(cluster, aws_key, role):
    """The cluster restarted with credentials from a fake container endpoint;
    returns (the endpoint, its authorization token)."""
    token = "ecs-auth-" + uuid.uuid4().hex
    container = FakeContainer(MOTO, aws_key, role, token)
    cluster.start(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=container.url + "/v2/credentials/task",
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=_files("container-token", token),
    )
    return container, token


def test_container_credentials_send_the_authorization_token(cluster, sqs, aws_key, role):
    container, token = start_with_container_credentials(cluster, aws_key, role)
    try:
        _, url = make_queue(sqs)
        with cluster.connect() as c:
            assert loaded_sample(drain(c, url))
            status, source, _, _ = last_run(c)
        assert (status, source) == ("ok", "container")
        assert container.handed_out == 1 and container.refused == 0

        cluster.start(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=container.url + "/v2/credentials/task",
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=_files("container-token", "wrong-" + token),
        )
        with cluster.connect() as c:
            e = drain_error(c, url)
        assert e.sqlstate == "28000" and "container" in str(e), str(e)
        assert "Unauthorized" not in str(e)  # the endpoint's reply is not repeated
        assert container.refused >= 1 and container.handed_out == 1
    finally:
        container.close()


def test_imds_v2_credentials_refresh_in_the_same_backend_without_a_restart(cluster, sqs, aws_key, role):
    imds = FakeImds(MOTO, aws_key, role, lifetime=70)
    try:
        cluster.start(AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
        with cluster.connect() as c:
            pid = c.info.backend_pid
            _, url = make_queue(sqs, ["{}"])
            first = time.monotonic()
            assert counts(drain(c, url)) == (1, 0, 1, 0)
            _, source, id1, _ = last_run(c)
            assert source == "imds"
            # a second drain at once reuses the backend's credentials
            _, url2 = make_queue(sqs, ["{}"])
            assert counts(drain(c, url2)) == (1, 0, 1, 0)
            assert imds.handed_out == 1
            # past the first credentials' expiry: the same backend fetches new ones
            time.sleep(max(0.0, 72 - (time.monotonic() - first)))
            _, url3 = make_queue(sqs, ["{}"])
            assert counts(drain(c, url3)) == (1, 0, 1, 0)
            status, source, id3, _ = last_run(c)
            assert c.info.backend_pid == pid
        assert (status, source) == ("ok", "imds")
        assert imds.handed_out == 2, imds.handed_out
        assert id1 != id3  # the second fetch's key signed the last drain
        # IMDSv2 only: every metadata request carried a session token
        assert imds.v1_requests == 0 and imds.refused == 0
    finally:
        imds.close()


def test_environment_keys_are_named_by_their_last_four(cluster, sqs, aws_key):
    cluster.start(AWS_ACCESS_KEY_ID=aws_key[0], AWS_SECRET_ACCESS_KEY=aws_key[1])
    _, url = make_queue(sqs, ["{}"])
    with cluster.connect() as c:
        assert counts(drain(c, url)) == (1, 0, 1, 0)
        assert last_run(c)[1:3] == ("environment", "key …" + aws_key[0][-4:])


def test_assume_role_on_top_of_the_chain_for_a_cross_account_queue(cluster, sqs, aws_key, role):
    cluster.start(AWS_ACCESS_KEY_ID=aws_key[0], AWS_SECRET_ACCESS_KEY=aws_key[1])
    _, url = make_queue(sqs, ["{}"])
    with cluster.connect() as c:
        c.execute("SELECT set_config('fetch_etl.aws_role_arn', %s, false)", (role,))
        c.execute("SET fetch_etl.aws_external_id = 'ext-1234'")
        assert counts(drain(c, url)) == (1, 0, 1, 0)
        assert last_run(c)[1:3] == ("environment+assume_role", role)
        c.execute("SET fetch_etl.aws_role_arn = 'arn:aws:iam::000000000000:role/x'")
        c.execute("SET fetch_etl.aws_access_key_id = 'AKIDNOTKNOWNTOMOTO'")
        c.execute("SET fetch_etl.aws_secret_access_key = 'not-a-real-secret'")
        e = drain_error(c, url)
        assert e.sqlstate == "28000" and "assuming role arn:aws:iam::000000000000:role/x" in str(e), str(e)
        assert "settings" in str(e) and "not-a-real-secret" not in str(e)


def test_no_credentials_anywhere_lists_every_provider(cluster, sqs):
    cluster.start()
    _, url = make_queue(sqs, ["{}"])
    with cluster.connect() as c:
        start = time.monotonic()
        e = drain_error(c, url)
        took = time.monotonic() - start
        recorded = c.execute(
            "SELECT status, error FROM fetch_etl.drain_runs WHERE queue_url = %s", (url,)
        ).fetchall()
    assert e.sqlstate == "28000"
    msg = str(e)
    for name in ["settings:", "environment:", "web_identity:", "profile:default:", "container:", "imds:"]:
        assert name in msg, (name, msg)
    assert msg.index("settings:") < msg.index("environment:") < msg.index("imds:")
    assert took < 30
    # raised before anything was received, and recorded as failed (0.7.0), error and all
    assert [(status, error[:5]) for status, error in recorded] == [("failed", "28000")]


def test_secrets_the_endpoints_handed_out_are_never_recorded(cluster, sqs, aws_key, role):
    seen = os.environ.get("FETCH_ETL_SECRETS_SEEN")
    if not seen or not os.path.exists(seen):
        pytest.skip("run by scripts/test, which collects the secrets")
    # A drain of its own with credentials an endpoint hands out (the other
    # tests of this module may have run on another pytest-xdist worker's
    # cluster), then every run this cluster recorded.
    container, _ = start_with_container_credentials(cluster, aws_key, role)
    try:
        _, url = make_queue(sqs, ["{}"])
        with cluster.connect() as c:
            assert counts(drain(c, url)) == (1, 0, 1, 0)
        assert container.handed_out == 1
    finally:
        container.close()
    secrets = {s.strip() for s in open(seen) if s.strip()}
    assert secrets
    with cluster.connect() as c:
        rows = c.execute("SELECT row_to_json(r)::text FROM fetch_etl.drain_runs r").fetchall()
    text = "\n".join(r[0] for r in rows)
    assert rows and not [s for s in secrets if s in text]

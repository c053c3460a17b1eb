"""Fixtures for the end-to-end tests: the test cluster started by scripts/test.

Environment (set by scripts/test):
  FETCH_ETL_PGHOST  socket directory of the test cluster (also its directory)
  FETCH_ETL_PGPORT  its port
"""
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
PGHOST = os.environ.get("FETCH_ETL_PGHOST", "/var/tmp/fetch_etl/pg-test")
PGPORT = os.environ.get("FETCH_ETL_PGPORT", "5491")


def connect(dbname: str, **kw) -> psycopg.Connection:
    return psycopg.connect(host=PGHOST, port=PGPORT, user="postgres", dbname=dbname, autocommit=True, **kw)


def restart_cluster() -> None:
    """Restart the test cluster (scripts/pgcluster start restarts a running one)."""
    subprocess.run([str(REPO / "scripts" / "pgcluster"), "start", PGHOST, PGPORT, "postgres"], check=True)


@pytest.fixture
def db():
    """A fresh database with fetch_etl installed; dropped afterwards."""
    name = "e2e_" + uuid.uuid4().hex[:12]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(name) as c:
        c.execute("CREATE EXTENSION fetch_etl")
    yield name
    with connect("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""Checks the Dockerfile and docker-compose.yml against the scripts they call,
since no Docker engine runs here to build them (scripts/test's package layer):
the default PG_MAJOR is the scripts' default major; every script a RUN line
calls exists and accepts the options given; the image installs the .deb that
scripts/package --deb names; compose passes PG_MAJOR through and points at
files that exist."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def main():
    problems = []
    docker = (REPO / "Dockerfile").read_text()
    lib = (REPO / "scripts" / "lib.sh").read_text()
    default = re.search(r"^export PG_DEFAULT_MAJOR=(\d+)$", lib, re.M).group(1)
    m = re.search(r"^ARG PG_MAJOR=(\d+)$", docker, re.M)
    if not m or m.group(1) != default:
        problems.append(f"Dockerfile's default PG_MAJOR is not scripts/lib.sh's {default}")
    # the base images are build arguments whose defaults are the official images
    if not re.search(r"^ARG RUNTIME_IMAGE=postgres:\$\{PG_MAJOR\}-bookworm$", docker, re.M) \
            or not re.search(r"^FROM \$\{RUNTIME_IMAGE\} AS runtime$", docker, re.M):
        problems.append("the runtime image is not ${RUNTIME_IMAGE}, by default postgres:${PG_MAJOR}-bookworm")
    if not re.search(r"^ARG BUILDER_IMAGE=rust:[0-9.]+-bookworm$", docker, re.M) \
            or not re.search(r"^FROM \$\{BUILDER_IMAGE\} AS builder$", docker, re.M):
        problems.append("the builder image is not ${BUILDER_IMAGE}, by default rust:<version>-bookworm")
    # every script a RUN line calls exists, and each of its options is one the
    # script's usage (its header comment) documents
    for run in re.findall(r"^RUN (scripts/\S+)([^\n]*)$", docker, re.M):
        script, args = REPO / run[0], run[1]
        if not script.exists() or not script.stat().st_mode & 0o111:
            problems.append(f"{run[0]} is not an executable script")
            continue
        usage = script.read_text().split("source ")[0]
        for opt in re.findall(r"(--[a-z-]+)", args):
            if opt not in usage:
                problems.append(f"{run[0]} does not document {opt}")
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", docker, re.M):
        for f in src.split():
            if not (REPO / f).exists():
                problems.append(f"COPY {f}: no such file")
    package = (REPO / "scripts" / "package").read_text()
    if 'name="postgresql-$PG_MAJOR-fetch-etl"' not in package or "${name}_${version}-1_${arch}.deb" not in package:
        problems.append("scripts/package no longer names the .deb postgresql-N-fetch-etl_V-1_ARCH.deb")
    if "/out/postgresql-${PG_MAJOR}-fetch-etl_*.deb" not in docker:
        problems.append("the image does not install the .deb scripts/package --deb makes")

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    pg = compose["services"]["postgres"]
    if pg["build"].get("args", {}).get("PG_MAJOR") != f"${{PG_MAJOR:-{default}}}":
        problems.append("docker-compose.yml does not pass PG_MAJOR (default 15) to the build")
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', cargo, re.M).group(1)
    for name, svc in compose["services"].items():
        tag = svc.get("image", "")
        if tag and f":{version}" not in tag:
            problems.append(f"docker-compose.yml's {name} image {tag} is not tagged with the crate version {version}")
    sqs = compose["services"]["sqs"]["build"]
    if not (REPO / sqs["context"] / sqs["dockerfile"]).exists():
        problems.append(f"the emulator's Dockerfile {sqs['dockerfile']} does not exist")
    cmd = " ".join(pg["command"])
    if "fetch_etl" not in cmd or "pg_cron" not in cmd:
        problems.append("compose's postgres command does not preload pg_cron and fetch_etl")
    # the shell scripts parse
    for s in ["scripts/pg-build", "scripts/package", "scripts/setup", "docker/initdb/10-fetch-etl.sh"]:
        r = subprocess.run(["bash", "-n", str(REPO / s)], capture_output=True, text=True)
        if r.returncode:
            problems.append(f"{s}: {r.stderr.strip()}")
    if problems:
        print("check_docker:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"check_docker: Dockerfile (PG_MAJOR={default} by default) and docker-compose.yml match the scripts")


if __name__ == "__main__":
    main()

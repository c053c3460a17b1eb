"""Checks a fetch_etl Debian package's metadata and contents, without
installing it (scripts/test's package layer; for PostgreSQL 15 it also
installs the package with apt and runs the regression tests against it).

    check_deb.py DEB --major N --version V
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def field(deb, name):
    return subprocess.run(["dpkg-deb", "-f", deb, name], check=True, capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("deb")
    ap.add_argument("--major", required=True)
    ap.add_argument("--version", required=True)
    a = ap.parse_args()
    n, v = a.major, a.version
    name = f"postgresql-{n}-fetch-etl"
    problems = []

    def expect(ok, what):
        if not ok:
            problems.append(what)

    expect(Path(a.deb).name.startswith(f"{name}_{v}-1_"), f"file name {Path(a.deb).name}")
    expect(field(a.deb, "Package") == name, f"Package: {field(a.deb, 'Package')}")
    expect(field(a.deb, "Version") == f"{v}-1", f"Version: {field(a.deb, 'Version')}")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    expect(field(a.deb, "Architecture") == arch, f"Architecture: {field(a.deb, 'Architecture')}")
    depends = [d.strip() for d in field(a.deb, "Depends").split(",")]
    expect(f"postgresql-{n}" in depends, f"Depends lacks postgresql-{n}: {depends}")
    expect(any(re.fullmatch(r"libc6 \(>= [0-9.]+\)", d) for d in depends), f"Depends lacks libc6: {depends}")
    expect(not any(re.match(r"postgresql-(?!%s\b)\d+" % n, d) for d in depends), f"another major in Depends: {depends}")
    expect(re.match(r".+ <.+@.+>", field(a.deb, "Maintainer")) is not None, "Maintainer")
    expect(f"PostgreSQL {n}" in field(a.deb, "Description"), "Description names the major")
    expect(field(a.deb, "Section") == "database", "Section")

    listing = subprocess.run(["dpkg-deb", "-c", a.deb], check=True, capture_output=True, text=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines() if not line.startswith("d")}
    owners = {line.split()[1] for line in listing.splitlines()}
    expect(owners == {"root/root"}, f"owners: {owners}")
    lib, ext, doc = f"/usr/lib/postgresql/{n}/lib", f"/usr/share/postgresql/{n}/extension", f"/usr/share/doc/{name}"
    wanted = {f"{lib}/fetch_etl.so", f"{ext}/fetch_etl.control", f"{ext}/fetch_etl--{v}.sql",
              f"{doc}/copyright", f"{doc}/README.md"}
    # every hand-written upgrade script ships
    wanted |= {f"{ext}/{p.name}" for p in (REPO / "sql").glob("fetch_etl--*--*.sql")}
    expect(wanted <= files, f"missing: {sorted(wanted - files)}")
    expect(files <= wanted, f"unexpected files: {sorted(files - wanted)}")

    control = subprocess.run(["dpkg-deb", "--fsys-tarfile", a.deb], check=True, capture_output=True).stdout
    out = subprocess.run(["tar", "-xO", f".{ext}/fetch_etl.control"], input=control, check=True,
                         capture_output=True).stdout.decode()
    expect(f"default_version = '{v}'" in out, f"fetch_etl.control: {out!r}")

    if problems:
        print(f"check_deb: {a.deb}:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"check_deb: {Path(a.deb).name}: {name} {v}-1, Depends {', '.join(depends)}, {len(files)} files")


if __name__ == "__main__":
    main()

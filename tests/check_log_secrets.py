"""Fail if any masking key of any database in the test cluster, or any AWS secret
key or session token a fake credential endpoint handed out, appears in a server log.

Keys that tests installed on purpose with set_mask_key (a single byte repeated,
e.g. decode(repeat('ab', 32), 'hex')) are typed into SQL text by the tests
themselves and are skipped; every generated key must never reach the log, in
hex or base64, even with log_statement = 'all'.
"""
import argparse
import base64
import sys

import psycopg


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--log", required=True, action="append", help="a server log (repeatable)")
    ap.add_argument("--keys-file", help="more keys (hex, one per line) of databases the tests dropped")
    ap.add_argument("--secrets-file", help="AWS secret keys and session tokens handed out (one per line)")
    args = ap.parse_args()

    log = ""
    for path in args.log:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                log += f.read().lower()
        except FileNotFoundError:
            pass  # a cluster the layers run did not start

    with psycopg.connect(host=args.host, port=args.port, user="postgres", dbname="postgres") as c:
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")]

    checked = 0
    leaks = []
    for db in dbs:
        with psycopg.connect(host=args.host, port=args.port, user="postgres", dbname=db) as c:
            if not c.execute("SELECT 1 FROM pg_extension WHERE extname = 'fetch_etl'").fetchone():
                continue
            for (key,) in c.execute("SELECT key FROM fetch_etl.mask_keys"):
                key = bytes(key)
                if len(set(key)) == 1:
                    continue  # a test key typed into SQL on purpose
                checked += 1
                for form in (key.hex(), base64.b64encode(key).decode().lower()):
                    if form in log:
                        leaks.append(f"{db}: key of {len(key)} bytes found in the log")
    if args.keys_file:
        try:
            with open(args.keys_file) as f:
                extra = {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            extra = set()
        for hexkey in sorted(extra):
            key = bytes.fromhex(hexkey)
            if len(set(key)) == 1:
                continue
            checked += 1
            for form in (key.hex(), base64.b64encode(key).decode().lower()):
                if form in log:
                    leaks.append(f"a dropped test database's key of {len(key)} bytes found in the log")
    secrets = 0
    if args.secrets_file:
        try:
            with open(args.secrets_file) as f:
                handed_out = {line.strip() for line in f if len(line.strip()) >= 16}
        except FileNotFoundError:
            handed_out = set()
        secrets = len(handed_out)
        leaks += ["an AWS secret or session token handed out by a test endpoint found in a server log"
                  for s in handed_out if s.lower() in log]
    if checked == 0:
        print("check_log_secrets: no generated keys found to check", file=sys.stderr)
        return 1
    if leaks:
        print("\n".join(leaks), file=sys.stderr)
        return 1
    print(f"check_log_secrets: {checked} generated keys and {secrets} AWS secrets, none in the server logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

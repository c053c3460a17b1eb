"""The baseline loader for scripts/bench: how the Fetch exercise is usually
solved outside the database. One process: boto3 ReceiveMessage (10 at a
time), for each message parse, mask ip and device_id with unsalted SHA-256,
INSERT one row with psycopg (committed), DeleteMessage. Until the queue is
empty, or --max-messages have been loaded. Prints {"messages": N, "seconds": S}.
"""
import argparse
import hashlib
import json
import time

import boto3
import psycopg


def version_to_int(v):
    if v is None:
        return None
    parts = [int(p) for p in v.split(".")] + [0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--queue-url", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--max-messages", type=int, help="stop after this many (its rate per message is steady)")
    args = ap.parse_args()
    sqs = boto3.client("sqs", endpoint_url=args.endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    conn = psycopg.connect(args.dsn, autocommit=True)
    sha = lambda v: None if v is None else hashlib.sha256(v.encode()).hexdigest()  # noqa: E731
    count = 0
    start = time.perf_counter()
    while args.max_messages is None or count < args.max_messages:
        resp = sqs.receive_message(QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                   MessageSystemAttributeNames=["SentTimestamp"])
        msgs = resp.get("Messages", [])
        if not msgs:
            break
        for m in msgs:
            if args.max_messages is not None and count >= args.max_messages:
                break
            rec = json.loads(m["Body"])
            if "user_id" in rec:
                conn.execute(
                    f"INSERT INTO {args.table} (user_id, device_type, masked_ip, masked_device_id, locale,"
                    " app_version, create_date) VALUES (%s, %s, %s, %s, %s, %s, current_date)",
                    (rec["user_id"], rec.get("device_type"), sha(rec.get("ip")), sha(rec.get("device_id")),
                     rec.get("locale"), version_to_int(rec.get("app_version"))),
                )
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=m["ReceiptHandle"])
            count += 1
    print(json.dumps({"messages": count, "seconds": round(time.perf_counter() - start, 4)}))


if __name__ == "__main__":
    main()

"""A local SQS emulator for fetch_etl's demo and tests: moto in server mode.

    serve --port P [--host H] [--auth]      run moto (foreground)
    seed --endpoint URL --queue NAME --file JSON [--key K --secret S]
                                            create the queue, send one message per record
    create-key --endpoint URL               (with --auth) create an IAM user allowed sqs:*, sns:*, events:*, s3:*,
                                            print "ACCESS_KEY_ID SECRET_ACCESS_KEY"
    depth --endpoint URL --queue NAME       print visible and in-flight message counts

Differences from plain `moto_server`, both for fidelity to real SQS:
- ReceiveMessage is serialised. moto's threaded server checks a message's
  visibility and marks it received without a lock, so two concurrent receives
  can both get the same message; real SQS does not do that. The lock is
  released while a long poll waits, so waiting receives block nobody.
- Deleting and adding a message take the same lock. moto rebuilds the
  queue's message list on a delete without one, so of two concurrent
  DeleteMessageBatch calls one can put back the messages the other deleted
  (both reported deleted, then in flight again; seen on a loaded machine as
  10 messages left in flight after a drain), and a message sent meanwhile can
  be lost.
- --auth makes moto verify SigV4 signatures and access keys
  (INITIAL_NO_AUTH_ACTION_COUNT=3: the three IAM calls of create-key are the
  only unauthenticated requests it accepts).
"""
import argparse
import json
import os
import sys
import threading

ACCOUNT_ID = "000000000000"


def serve(args: argparse.Namespace) -> None:
    os.environ.setdefault("MOTO_ACCOUNT_ID", ACCOUNT_ID)
    os.environ["MOTO_PORT"] = str(args.port)
    if args.auth:
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    from moto.moto_server.threaded_moto_server import MotoRequestHandler  # noqa: E402
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.sqs import models
    from werkzeug.serving import run_simple

    # Re-entrant: a receive moves messages to a dead-letter queue under it.
    lock = threading.RLock()
    receive = models.SQSBackend.receive_message
    delete = models.Queue.delete_message
    add = models.Queue.add_message
    wait = models.Queue.wait_for_messages

    def locked_receive(self, *a, **kw):
        with lock:
            return receive(self, *a, **kw)

    def locked_delete(self, *a, **kw):
        with lock:
            return delete(self, *a, **kw)

    def locked_add(self, *a, **kw):
        with lock:
            return add(self, *a, **kw)

    def unlocked_wait(self, *a, **kw):
        lock.release()
        try:
            return wait(self, *a, **kw)
        finally:
            lock.acquire()

    models.SQSBackend.receive_message = locked_receive
    models.Queue.delete_message = locked_delete
    models.Queue.add_message = locked_add
    models.Queue.wait_for_messages = unlocked_wait

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


def client(service: str, endpoint: str, key: str, secret: str):
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def seed(args: argparse.Namespace) -> None:
    sqs = client("sqs", args.endpoint, args.key, args.secret)
    url = sqs.create_queue(QueueName=args.queue)["QueueUrl"]
    with open(args.file, encoding="utf-8") as f:
        records = json.load(f)
    # One message per record, body as the exercise's producer wrote it (json.dumps).
    for i in range(0, len(records), 10):
        entries = [{"Id": str(j), "MessageBody": json.dumps(r)} for j, r in enumerate(records[i : i + 10])]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    print(url)


def create_key(args: argparse.Namespace) -> None:
    iam = client("iam", args.endpoint, "bootstrap", "bootstrap")
    iam.create_user(UserName="fetch-etl")
    iam.put_user_policy(
        UserName="fetch-etl",
        PolicyName="sqs",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["sqs:*", "sns:*", "events:*", "s3:*", "iam:*", "sts:AssumeRole"], "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="fetch-etl")["AccessKey"]
    print(key["AccessKeyId"], key["SecretAccessKey"])


def depth(args: argparse.Namespace) -> None:
    sqs = client("sqs", args.endpoint, args.key, args.secret)
    url = sqs.get_queue_url(QueueName=args.queue)["QueueUrl"]
    a = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    print(f"{a['ApproximateNumberOfMessages']} visible, {a['ApproximateNumberOfMessagesNotVisible']} in flight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--auth", action="store_true")
    s.set_defaults(func=serve)
    d = sub.add_parser("seed")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--queue", required=True)
    d.add_argument("--file", required=True)
    d.add_argument("--key", default="test")
    d.add_argument("--secret", default="test")
    d.set_defaults(func=seed)
    k = sub.add_parser("create-key")
    k.add_argument("--endpoint", required=True)
    k.set_defaults(func=create_key)
    q = sub.add_parser("depth")
    q.add_argument("--endpoint", required=True)
    q.add_argument("--queue", required=True)
    q.add_argument("--key", default="test")
    q.add_argument("--secret", default="test")
    q.set_defaults(func=depth)
    args = ap.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

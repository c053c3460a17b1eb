"""The queues people have: SNS- and EventBridge-fed queues (envelopes made by
moto itself), 1 MiB messages, FIFO queues, and the message metadata columns.
Everything against moto with signature checking, through a real cluster."""
import collections
import datetime
import hashlib
import hmac
import json
import re
import time
import uuid

import boto3
import pytest

from conftest import (
    SAMPLE_RECORDS,
    SQS_PORT,
    USER_LOGINS_DDL,
    VALID,
    VIS,
    counts,
    drain,
    make_queue,
    queue_depth,
    via,
)

ENDPOINT = f"http://127.0.0.1:{SQS_PORT}"


def aws(service, aws_key):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=aws_key[0],
        aws_secret_access_key=aws_key[1],
    )


def local(raw_url):
    """The URL fetch_etl is given for a queue moto named `raw_url`."""
    return re.sub(r"^https?://[^/]+", f"http://localhost:{SQS_PORT}", raw_url)


def new_queue(sqs, fifo=False, **attributes):
    name = "q-" + uuid.uuid4().hex[:12] + (".fifo" if fifo else "")
    attrs = {k: str(v) for k, v in attributes.items()}
    if fifo:
        attrs["FifoQueue"] = "true"
    raw = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=raw, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return raw, local(raw), arn


def key_of(conn):
    return bytes(
        conn.execute("SELECT key FROM fetch_etl.mask_keys ORDER BY generation DESC, created_at LIMIT 1").fetchone()[0]
    )


def assert_sample_rows(conn):
    """user_logins holds the 99 valid sample records, masked with the active key."""
    key = key_of(conn)
    got = {
        r[0]: r[1:]
        for r in conn.execute("SELECT user_id, device_type, masked_ip, masked_device_id, locale FROM user_logins")
    }
    assert len(got) == len(VALID) == 99
    for rec in VALID:
        device_type, masked_ip, masked_device_id, locale = got[rec["user_id"]]
        assert device_type == rec["device_type"]
        assert masked_ip == hmac.new(key, rec["ip"].encode(), hashlib.sha256).hexdigest()
        assert masked_device_id == hmac.new(key, rec["device_id"].encode(), hashlib.sha256).hexdigest()
        assert locale == rec["locale"]


def dead_letters(conn):
    return conn.execute("SELECT reason_code, reason, body FROM fetch_etl.dead_letters ORDER BY dead_letter_id").fetchall()


def subscribed_queue(sqs, sns, raw_delivery):
    """A topic with an SQS subscription; moto delivers what is published to it."""
    raw, url, arn = new_queue(sqs)
    topic = sns.create_topic(Name="logins-" + uuid.uuid4().hex[:8])["TopicArn"]
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)["SubscriptionArn"]
    if raw_delivery:
        # (moto reads any value of the attribute as on: leave it unset for off)
        sns.set_subscription_attributes(
            SubscriptionArn=sub, AttributeName="RawMessageDelivery", AttributeValue="true"
        )
    return raw, url, topic


def test_sns_notifications_are_unwrapped_and_load_the_sample(pg, sqs, aws_key):
    sns = aws("sns", aws_key)
    raw, url, topic = subscribed_queue(sqs, sns, raw_delivery=False)
    for r in SAMPLE_RECORDS:
        sns.publish(TopicArn=topic, Message=json.dumps(r))
    body = sqs.receive_message(QueueUrl=raw, VisibilityTimeout=0)["Messages"][0]["Body"]
    assert json.loads(body)["Type"] == "Notification"  # moto made a real envelope

    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert_sample_rows(pg)
    # the one reject: the inner event's reason, where it was, the whole envelope kept
    [(code, reason, body)] = dead_letters(pg)
    assert code == "not_login_event"
    assert reason.startswith("not_login_event: in the SNS notification's Message: ")
    outer = json.loads(body)
    assert outer["Type"] == "Notification" and outer["TopicArn"] == topic
    assert [json.loads(outer["Message"])] == [r for r in SAMPLE_RECORDS if "user_id" not in r]
    assert queue_depth(sqs, raw) == (0, 0)


def test_sns_raw_delivery_loads_the_bare_events(pg, sqs, aws_key):
    sns = aws("sns", aws_key)
    raw, url, topic = subscribed_queue(sqs, sns, raw_delivery=True)
    for r in SAMPLE_RECORDS:
        sns.publish(TopicArn=topic, Message=json.dumps(r))
    body = sqs.receive_message(QueueUrl=raw, VisibilityTimeout=0)["Messages"][0]["Body"]
    assert "TopicArn" not in json.loads(body)  # no envelope

    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert_sample_rows(pg)


def test_eventbridge_rule_with_an_sqs_target_loads_the_detail(pg, sqs, aws_key):
    events = aws("events", aws_key)
    raw, url, arn = new_queue(sqs)
    rule = "logins-" + uuid.uuid4().hex[:8]
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["fetch.logins"]}))
    events.put_targets(Rule=rule, Targets=[{"Id": "sqs", "Arn": arn}])
    for i in range(0, len(SAMPLE_RECORDS), 10):
        entries = [
            {"Source": "fetch.logins", "DetailType": "user login", "Detail": json.dumps(r)}
            for r in SAMPLE_RECORDS[i : i + 10]
        ]
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
    body = sqs.receive_message(QueueUrl=raw, VisibilityTimeout=0)["Messages"][0]["Body"]
    assert json.loads(body)["detail-type"] == "user login"  # moto delivered a real event

    assert counts(drain(pg, url)) == (100, 99, 1, 0)
    assert_sample_rows(pg)
    [(code, reason, _)] = dead_letters(pg)
    assert (code, reason.split(": ")[1]) == ("not_login_event", "in the EventBridge event's detail")


def test_envelopes_none_takes_every_body_as_the_event(pg, sqs, aws_key):
    sns = aws("sns", aws_key)
    raw, url, topic = subscribed_queue(sqs, sns, raw_delivery=False)
    for r in VALID[:3]:
        sns.publish(TopicArn=topic, Message=json.dumps(r))
    pg.execute("SET fetch_etl.envelopes = none")
    assert counts(drain(pg, url)) == (3, 0, 3, 0)
    for code, reason, _ in dead_letters(pg):
        assert code == "not_login_event" and "fetch_etl.envelopes" in reason
    # and auto (the default) loads them when replayed
    pg.execute("RESET fetch_etl.envelopes")
    replayed = pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(%s)", (url,)).fetchone()
    assert tuple(replayed) == (3, 3, 0)


def test_malformed_envelope_is_dead_lettered_with_the_outer_body_byte_for_byte(pg, sqs, aws_key):
    event = json.dumps(VALID[0])
    bodies = [
        # SNS notification whose Message is an object, not a string
        '{"Type" : "Notification", "TopicArn":"arn:aws:sns:us-east-1:000000000000:t",\n "Message": ' + event + "}",
        # SNS notification without a Message
        '{"Type":"Notification","TopicArn":"arn:aws:sns:us-east-1:000000000000:t","MessageId":"x"}  ',
        # EventBridge event whose detail is a string
        '{"version":"0","id":"1","detail-type":"login","source":"s","detail":' + json.dumps(event) + "}",
        # SNS's confirmation message: not a notification
        '{"Type":"SubscriptionConfirmation","TopicArn":"arn:aws:sns:us-east-1:000000000000:t","Token":"t"}',
        # a valid envelope around a bad event: the inner reason, the outer body
        json.dumps({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:000000000000:t", "Message": "[1]"}),
    ]
    raw, url = make_queue(sqs, bodies)
    assert counts(drain(pg, url)) == (5, 0, 5, 0)
    got = {body: (code, reason) for code, reason, body in dead_letters(pg)}
    assert set(got) == set(bodies)  # byte for byte
    assert [got[b][0] for b in bodies] == [
        "malformed_envelope",
        "malformed_envelope",
        "malformed_envelope",
        "not_login_event",
        "not_object",
    ]
    assert got[bodies[0]][1] == "malformed_envelope: SNS notification whose Message is not a string"
    assert "confirm or remove the subscription" in got[bodies[3]][1]
    assert got[bodies[4]][1].startswith("not_object: in the SNS notification's Message: ")


def test_900_kib_events_load_with_default_settings(pg, sqs):
    raw, url, _ = new_queue(sqs, MaximumMessageSize=1048576)
    bodies = []
    for i in range(3):
        e = dict(VALID[i])
        e["padding"] = "x" * (900 * 1024)  # unknown fields are ignored
        bodies.append(json.dumps(e))
    for b in bodies:
        sqs.send_message(QueueUrl=raw, MessageBody=b)
    assert all(len(b) > 900 * 1024 for b in bodies)
    assert counts(drain(pg, url)) == (3, 3, 0, 0)
    users = {r[0] for r in pg.execute("SELECT user_id FROM user_logins")}
    assert users == {VALID[i]["user_id"] for i in range(3)}


METADATA_DDL = (
    "CREATE TABLE user_logins (n bigserial, user_id varchar(128), device_type varchar(32), masked_ip varchar(256),"
    " masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date,"
    " sqs_message_id uuid, sqs_sent_at timestamptz, sqs_attributes jsonb)"
)


def test_metadata_columns_get_the_message_id_sent_time_and_attributes(pg, sqs):
    pg.execute(METADATA_DDL)
    raw, url, _ = new_queue(sqs)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    sent = sqs.send_message(
        QueueUrl=raw,
        MessageBody=json.dumps(VALID[0]),
        MessageAttributes={
            "tenant": {"DataType": "String", "StringValue": "acme"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    plain = sqs.send_message(QueueUrl=raw, MessageBody=json.dumps(VALID[1]))
    assert counts(drain(pg, url)) == (2, 2, 0, 0)
    rows = {
        r[0]: r[1:]
        for r in pg.execute("SELECT user_id, sqs_message_id::text, sqs_sent_at, sqs_attributes FROM user_logins")
    }
    mid, at, attrs = rows[VALID[0]["user_id"]]
    assert mid == sent["MessageId"]
    assert before <= at <= datetime.datetime.now(datetime.timezone.utc)
    assert attrs["ApproximateReceiveCount"] == "1"
    assert attrs["SenderId"]
    assert attrs["MessageAttributes"] == {
        "blob": {"DataType": "Binary", "BinaryValue": "AAE="},
        "tenant": {"DataType": "String", "StringValue": "acme"},
    }
    mid, _, attrs = rows[VALID[1]["user_id"]]
    assert mid == plain["MessageId"]
    assert "MessageAttributes" not in attrs


def test_metadata_of_an_sns_notification_names_its_topic(pg, sqs, aws_key):
    pg.execute(METADATA_DDL)
    sns = aws("sns", aws_key)
    raw, url, topic = subscribed_queue(sqs, sns, raw_delivery=False)
    sns.publish(TopicArn=topic, Message=json.dumps(VALID[0]))
    assert counts(drain(pg, url)) == (1, 1, 0, 0)
    attrs = pg.execute("SELECT sqs_attributes FROM user_logins").fetchone()[0]
    assert attrs["TopicArn"] == topic


def test_a_table_without_sqs_attributes_asks_for_no_message_attributes(pg, sqs, proxy):
    raw, url = make_queue(sqs, [json.dumps(VALID[0])])
    assert counts(drain(pg, via(proxy, raw))) == (1, 1, 0, 0)
    receives = [b for a, b in proxy.bodies if a == "ReceiveMessage"]
    assert receives and not any(b"MessageAttributeNames" in b for b in receives)
    assert not any(b"ReceiveRequestAttemptId" in b for b in receives)  # not a FIFO queue


def fifo_send(sqs, raw, group, bodies, dedup=None):
    for i in range(0, len(bodies), 10):
        entries = [
            {
                "Id": str(j),
                "MessageBody": b,
                "MessageGroupId": group,
                "MessageDeduplicationId": dedup or uuid.uuid4().hex,
            }
            for j, b in enumerate(bodies[i : i + 10])
        ]
        sqs.send_message_batch(QueueUrl=raw, Entries=entries)


def group_events(group, n, bad=()):
    out = []
    for i in range(n):
        e = dict(VALID[i % len(VALID)])
        e["user_id"] = f"{group}-{i:03}"
        out.append("not json" if i in bad else json.dumps(e))
    return out


def loaded_order(conn):
    """{group: [i, ...]} in the order the rows were inserted."""
    out = {}
    for (user_id,) in conn.execute("SELECT user_id FROM user_logins ORDER BY n"):
        g, i = user_id.rsplit("-", 1)
        out.setdefault(g, []).append(int(i))
    return out


def test_fifo_queue_loads_each_group_in_the_order_sqs_delivered_it(pg, sqs):
    pg.execute(METADATA_DDL)
    raw, url, _ = new_queue(sqs, fifo=True)
    for g in ("a", "b", "c"):
        fifo_send(sqs, raw, g, group_events(g, 25))
    total = 0
    for _ in range(10):  # a group's next messages come once its earlier ones are deleted
        total += counts(drain(pg, url))[1]
        if total == 75:
            break
    assert total == 75
    assert loaded_order(pg) == {g: list(range(25)) for g in ("a", "b", "c")}
    # the FIFO system attributes are kept (moto's sequence numbers are random, not ordered)
    for user_id, attrs in pg.execute("SELECT user_id, sqs_attributes FROM user_logins"):
        assert attrs["MessageGroupId"] == user_id.split("-")[0]
        assert re.fullmatch(r"[0-9]{20}", attrs["SequenceNumber"]) and attrs["MessageDeduplicationId"]


def test_fifo_poison_message_is_dead_lettered_and_its_group_goes_on_in_order(pg, sqs):
    pg.execute(METADATA_DDL)
    raw, url, _ = new_queue(sqs, fifo=True)
    fifo_send(sqs, raw, "a", group_events("a", 12, bad={3}))
    received = 0
    for _ in range(5):
        received += counts(drain(pg, url))[0]
    assert received == 12
    assert loaded_order(pg) == {"a": [i for i in range(12) if i != 3]}
    [(code, _, body)] = dead_letters(pg)
    assert (code, body) == ("not_json", "not json")
    assert queue_depth(sqs, raw) == (0, 0)


def test_fifo_deduplication_loads_a_message_sent_twice_once(pg, sqs):
    raw, url, _ = new_queue(sqs, fifo=True)
    body = json.dumps(VALID[0])
    fifo_send(sqs, raw, "a", [body], dedup="same")
    fifo_send(sqs, raw, "a", [body], dedup="same")  # SQS drops it
    raw2, url2, _ = new_queue(sqs, fifo=True, ContentBasedDeduplication="true")
    for _ in range(2):
        sqs.send_message(QueueUrl=raw2, MessageBody=body, MessageGroupId="a")
    assert counts(drain(pg, url)) == (1, 1, 0, 0)
    assert counts(drain(pg, url2)) == (1, 1, 0, 0)
    assert pg.execute("SELECT count(*) FROM user_logins").fetchone()[0] == 2


def attempt_id(body):
    m = re.search(rb'"ReceiveRequestAttemptId"\s*:\s*"([^"]*)"', body)
    return m and m.group(1).decode()


def test_fifo_lost_receive_reply_is_retried_with_the_same_attempt_id(pg, sqs, proxy):
    raw, url, _ = new_queue(sqs, fifo=True, VisibilityTimeout=VIS)
    fifo_send(sqs, raw, "a", group_events("a", 5))
    proxy.lose_next("ReceiveMessage", 1)
    pg.execute("SET fetch_etl.sqs_protocol = json")
    # one call at a time: the lost reply is the one that carried the group
    # (with 8 in flight, moto might hand it to another, and the test would
    # depend on which call moto served first)
    pg.execute("SET fetch_etl.receive_concurrency = 1")
    first = counts(drain(pg, via(proxy, raw)))
    assert first[0] == 0, "the lost reply carried the whole group"
    receives = [attempt_id(b) for a, b in proxy.bodies if a == "ReceiveMessage"]
    assert len(receives) >= 2 and receives[0]
    # the retry of the lost call (the first to arrive) carries its id; every other call has its own
    tally = collections.Counter(receives)
    assert tally[receives[0]] == 2
    assert all(n == 1 for r, n in tally.items() if r != receives[0])
    assert all(len(r) <= 128 and re.fullmatch(r"[A-Za-z0-9]+", r) for r in receives)
    # moto ignores the id (real SQS answers the retry with the same messages):
    # here they come back after their visibility timeout, and load once. (Not
    # in order: moto 5.2.5 hands a FIFO group whose visibility ended back
    # from its last message on, a-004 first; real SQS keeps the group's
    # order, and the drain inserts in the order it receives, as the order
    # tests above show.)
    deadline = time.monotonic() + 6 * VIS
    loaded = first[1]
    while loaded < 5 and time.monotonic() < deadline:
        time.sleep(1)
        loaded += counts(drain(pg, url))[1]
    assert loaded == 5
    assert sorted(loaded_order_plain(pg)) == ["a-000", "a-001", "a-002", "a-003", "a-004"]


def loaded_order_plain(conn):
    return [r[0] for r in conn.execute("SELECT user_id FROM user_logins ORDER BY ctid")]

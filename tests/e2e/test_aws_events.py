"""The worked examples of docs/pipelines.md, each loaded as the docs show it:
an S3 ObjectCreated notification (made by moto's S3), an EventBridge event
(moto's EventBridge, the EC2 state-change event of AWS's documentation) and a
CloudWatch alarm delivered through SNS (moto's SNS around the alarm message
of AWS's documentation; moto's CloudWatch does not notify)."""
import datetime
import decimal
import hashlib
import hmac
import json
import re
import uuid

from conftest import counts, drain
from test_pipelines import dead_letters
from test_shapes import aws, key_of, new_queue

UTC = datetime.timezone.utc
DOC = open(__file__.replace("tests/e2e/test_aws_events.py", "docs/pipelines.md")).read()


def example(name):
    """The SQL block of docs/pipelines.md that follows `<!-- example: name -->`."""
    m = re.search(rf"<!-- example: {name} -->\s*```sql\n(.*?)```", DOC, re.S)
    assert m, f"docs/pipelines.md has no example {name}"
    return m.group(1)


def event(name):
    """The JSON block of docs/pipelines.md that follows `<!-- event: name -->`: AWS's own example."""
    m = re.search(rf"<!-- event: {name} -->\s*```json\n(.*?)```", DOC, re.S)
    assert m, f"docs/pipelines.md has no event {name}"
    return json.loads(m.group(1))


def run_example(pg, name):
    for statement in example(name).split(";\n"):
        if statement.strip():
            pg.execute(statement)


def test_s3_object_created_notifications_load_one_row_per_record(pg, sqs, aws_key):
    run_example(pg, "s3")
    s3 = aws("s3", aws_key)
    raw, url, arn = new_queue(sqs)
    bucket = "photos-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    s3.put_object(Bucket=bucket, Key="cat one.jpg", Body=b"x" * 1024)
    s3.put_object(Bucket=bucket, Key="dog.jpg", Body=b"y" * 10)
    # and AWS's own example, two records in one message (moto's lack requestParameters and sequencer)
    doc = event("s3")
    doc["Records"].append(json.loads(json.dumps(doc["Records"][0]).replace("HappyFace", "SadFace")))
    sqs.send_message(QueueUrl=raw, MessageBody=json.dumps(doc))
    received, loaded, rejected, dups = counts(drain(pg, url, pipeline="s3_objects"))
    rows = pg.execute("SELECT bucket, key, size, event_name, event_time, source_ip, sequencer"
                      " FROM public.s3_objects ORDER BY key").fetchall()
    key = key_of(pg)
    ip = hmac.new(key, b"127.0.0.1", hashlib.sha256).hexdigest()  # masked
    epoch = datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert [r[:4] + r[5:] for r in rows] == [
        ("mybucket", "HappyFace.jpg", 1024, "ObjectCreated:Put", ip, "0055AED6DCD90281E5"),
        ("mybucket", "SadFace.jpg", 1024, "ObjectCreated:Put", ip, "0055AED6DCD90281E5"),
        (bucket, "cat+one.jpg", 1024, "ObjectCreated:Put", None, None),  # keys come URL-encoded, as S3 sends them
        (bucket, "dog.jpg", 10, "ObjectCreated:Put", None, None),
    ]
    assert [r[4] for r in rows[:2]] == [epoch, epoch]
    for r in rows[2:]:
        assert abs(r[4] - datetime.datetime.now(UTC)) < datetime.timedelta(minutes=5)
    # S3's test event, if moto sent one, is the only dead letter: no Records
    assert loaded == 3 and dups == 0 and received == 3 + rejected
    assert [c for c, *_ in dead_letters(pg)] == ["no_rows"] * rejected


def test_an_eventbridge_ec2_state_change_loads_its_detail_and_envelope(pg, sqs, aws_key):
    run_example(pg, "eventbridge")
    events = aws("events", aws_key)
    raw, url, arn = new_queue(sqs)
    rule = "ec2-" + uuid.uuid4().hex[:8]
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["aws.ec2"]}))
    events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": arn}])
    doc = event("eventbridge")
    entry = {"Source": "aws.ec2", "DetailType": doc["detail-type"], "Detail": json.dumps(doc["detail"]),
             "Resources": doc["resources"]}
    running = dict(entry, Detail=json.dumps(dict(doc["detail"], state="running")))
    assert events.put_events(Entries=[running])["FailedEntryCount"] == 0
    made = json.loads(sqs.receive_message(QueueUrl=raw, VisibilityTimeout=0)["Messages"][0]["Body"])
    assert made["detail-type"] == doc["detail-type"]  # moto made the envelope (without "account")
    sqs.send_message(QueueUrl=raw, MessageBody=json.dumps(doc))  # and AWS's own example
    assert counts(drain(pg, url, pipeline="ec2_state")) == (2, 2, 0, 0)
    rows = pg.execute("SELECT instance_id, state, event_id, source, account, region, changed_at"
                      " FROM public.ec2_state ORDER BY state").fetchall()
    assert rows[0] == ("i-abcd1111", "pending", "7bf73129-1428-4cd3-a780-95db273d1602", "aws.ec2", "123456789012",
                       "us-east-1", datetime.datetime(2015, 11, 11, 21, 29, 54, tzinfo=UTC))
    assert rows[1][:6] == ("i-abcd1111", "running", made["id"], "aws.ec2", None, made["region"])
    assert abs(rows[1][6] - datetime.datetime.now(UTC)) < datetime.timedelta(minutes=5)
    # keyed by the envelope's id: the same event delivered again is a duplicate
    sqs.send_message(QueueUrl=raw, MessageBody=json.dumps(doc))
    assert counts(drain(pg, url, pipeline="ec2_state")) == (1, 0, 0, 1)


def test_a_cloudwatch_alarm_through_sns_loads_with_its_topic(pg, sqs, aws_key):
    run_example(pg, "cloudwatch")
    sns = aws("sns", aws_key)
    raw, url, arn = new_queue(sqs)
    topic = sns.create_topic(Name="alarms-" + uuid.uuid4().hex[:8])["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    subject = 'ALARM: "awsec2-i-08fc1a8e-CPU-Utilization" in US East (N. Virginia)'
    alarm = event("cloudwatch")  # AWS's example, as the docs show it
    sns.publish(TopicArn=topic, Subject=subject, Message=json.dumps(alarm))
    sns.publish(TopicArn=topic, Subject="OK", Message=json.dumps(dict(alarm, NewStateValue="OK",
                                                                      OldStateValue="ALARM")))
    sns.publish(TopicArn=topic, Message=json.dumps({"AlarmName": "x", "NewStateValue": "SOMETIMES"}))
    assert counts(drain(pg, url, pipeline="alarms")) == (3, 2, 1, 0)
    rows = pg.execute("SELECT alarm, new_state, old_state, changed_at, metric, instance, threshold, topic, subject"
                      " FROM public.alarms ORDER BY new_state").fetchall()
    changed = datetime.datetime(2022, 4, 27, 16, 11, 41, 520000, tzinfo=UTC)
    assert rows == [  # in the enum's order
        (alarm["AlarmName"], "OK", "ALARM", changed, "CPUUtilization", "i-08fc1a8e", decimal.Decimal("1.0"), topic,
         "OK"),
        (alarm["AlarmName"], "ALARM", "INSUFFICIENT_DATA", changed, "CPUUtilization", "i-08fc1a8e",
         decimal.Decimal("1.0"), topic, subject),
    ]
    [(code, reason, *_)] = dead_letters(pg)
    assert code == "bad_value" and reason.startswith(
        "bad_value: column new_state (PATH '$.NewStateValue'): 22P02 "), reason

"""Pipelines (docs/pipelines.md): any event into any table, declared in SQL.
Each test asserts the rows and the dead letters exactly, through a real
cluster and moto with signature checking. The threats of one role's pipeline
drained by another (a superuser's pg_cron job) are the threat_* tests."""
import datetime
import decimal
import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from conftest import connect, counts, drain, remember_keys, set_credentials
from test_shapes import aws, key_of, new_queue

UTC = datetime.timezone.utc


def create_pipeline(conn, name, target, columns, rows=None, idempotency="message_id", replace=False):
    conn.execute(
        "SELECT fetch_etl.create_pipeline(%s, target => %s, columns => %s, rows => %s,"
        " idempotency => %s, replace => %s)",
        (name, target, columns, rows, idempotency, replace),
    )


def send(sqs, raw, bodies, **kw):
    """Sends each body (a dict is sent as JSON); returns the MessageIds."""
    ids = []
    for b in bodies:
        body = b if isinstance(b, str) else json.dumps(b)
        ids.append(sqs.send_message(QueueUrl=raw, MessageBody=body, **kw)["MessageId"])
    return ids


def dead_letters(conn):
    return conn.execute(
        "SELECT reason_code, reason, pipeline, target_table, body FROM fetch_etl.dead_letters ORDER BY dead_letter_id"
    ).fetchall()


def mask(key, value):
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ sources


def test_every_message_and_event_source_fills_its_column(pg, sqs):
    pg.execute(
        "CREATE TABLE public.every_source (sku text, order_id text, event jsonb, message_id text,"
        " sent_at timestamptz, sent_date date, receive_count integer, group_id text, sequence_number text,"
        " deduplication_id text, sender_id text, attributes jsonb, body text, tenant text, kind text)"
    )
    create_pipeline(
        pg,
        "every_source",
        "every_source",
        """sku              PATH '$.sku',          -- the element
           order_id         EVENT PATH '$.order_id', -- the whole event
           event            EVENT,
           message_id       MESSAGE message_id,
           sent_at          MESSAGE sent_at,
           sent_date        MESSAGE sent_date,
           receive_count    MESSAGE receive_count,
           group_id         MESSAGE group_id,
           sequence_number  MESSAGE sequence_number,
           deduplication_id MESSAGE deduplication_id,
           sender_id        MESSAGE sender_id,
           attributes       MESSAGE attributes,
           body             MESSAGE body,
           tenant           ATTRIBUTE 'tenant',
           kind             CONSTANT 'order line'""",
        rows="$.lines[*]",
    )
    raw, url, _ = new_queue(sqs, fifo=True)
    event = {"order_id": "o-1", "lines": [{"sku": "a"}, {"sku": "b"}]}
    before = datetime.datetime.now(UTC)
    sent = sqs.send_message(
        QueueUrl=raw,
        MessageBody=json.dumps(event),
        MessageGroupId="g-1",
        MessageDeduplicationId="d-1",
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    assert counts(drain(pg, url, pipeline="every_source")) == (1, 1, 0, 0)
    got = pg.execute("SELECT * FROM public.every_source ORDER BY sku").fetchall()
    assert [r[0] for r in got] == ["a", "b"]
    for r in got:
        (_, order_id, ev, message_id, sent_at, sent_date, receive_count, group_id, sequence_number,
         deduplication_id, sender_id, attributes, body, tenant, kind) = r
        assert (order_id, ev, message_id) == ("o-1", event, sent["MessageId"])
        assert before - datetime.timedelta(seconds=5) <= sent_at <= datetime.datetime.now(UTC)
        assert sent_date == sent_at.astimezone(UTC).date()
        assert (receive_count, group_id, sequence_number) == (1, "g-1", sent["SequenceNumber"])
        assert (deduplication_id, body, tenant, kind) == ("d-1", json.dumps(event), "acme", "order line")
        assert sender_id and attributes["SenderId"] == sender_id
        assert attributes["MessageAttributes"] == {"tenant": {"DataType": "String", "StringValue": "acme"}}
        assert attributes["MessageGroupId"] == "g-1"
    assert dead_letters(pg) == []


# ------------------------------------------------------------------- types

TYPES_DDL = """
CREATE TYPE public.mood AS ENUM ('happy', 'sad');
CREATE DOMAIN public.email AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE public.typed (id integer NOT NULL, n numeric(10,2), b boolean, ts timestamptz, d date, ip inet,
    u uuid, j jsonb, tags text[], nums integer[], m public.mood, e public.email, s smallint, code varchar(3),
    f float8, big bigint);
"""
TYPED_COLUMNS = ", ".join(
    ["id integer PATH '$.id' REQUIRED"]
    + [f"{c} PATH '$.{c}'" for c in "n b ts d ip u j tags nums m e s code f big".split()]
)
GOOD = {
    "id": 1, "n": 12.34, "b": True, "ts": "2024-05-01T10:00:00Z", "d": "2024-05-01", "ip": "10.1.2.3",
    "u": "7f1b5c7e-3d0a-4a5e-9a57-0d7b6b8d2b11", "j": {"k": [1, 2]}, "tags": ["a", "b c"], "nums": [1, 2, 3],
    "m": "happy", "e": "a@b", "s": 7, "code": "abc", "f": 1.5, "big": 9007199254740993,
}
# (column, value, reason code, SQLSTATE): one refused value per message
REFUSED = [
    ("n", "abc", "bad_value", "22P02"),
    ("n", 123456789, "bad_value", "22003"),  # numeric(10,2): its typmod refuses it
    ("b", "maybe", "bad_value", "22P02"),
    ("ts", "not a time", "bad_value", "22007"),
    ("d", "2024-13-45", "bad_value", "22008"),
    ("ip", "999.1.1.1", "bad_value", "22P02"),
    ("u", "xyz", "bad_value", "22P02"),
    ("tags", "not an array", "bad_value", "22P02"),
    ("nums", ["a"], "bad_value", "22P02"),
    ("m", "angry", "bad_value", "22P02"),
    ("e", "nope", "bad_value", "23514"),  # the domain's CHECK
    ("s", 70000, "bad_value", "22003"),
    ("code", "abcd", "too_long", None),
    ("f", "x", "bad_value", "22P02"),
    ("big", 1e30, "bad_value", "22P02"),
]


def test_every_type_converts_and_each_refused_value_names_its_column(pg, sqs):
    pg.execute(TYPES_DDL)
    create_pipeline(pg, "typed", "public.typed", TYPED_COLUMNS)
    raw, url, _ = new_queue(sqs)
    bad = [dict(GOOD, id=i + 2, **{col: value}) for i, (col, value, _, _) in enumerate(REFUSED)]
    send(sqs, raw, [GOOD] + bad)
    assert counts(drain(pg, url, pipeline="typed")) == (16, 1, 15, 0)
    row = pg.execute("SELECT * FROM public.typed").fetchall()
    assert row == [(
        1, decimal.Decimal("12.34"), True, datetime.datetime(2024, 5, 1, 10, tzinfo=UTC), datetime.date(2024, 5, 1),
        ipaddress.ip_address("10.1.2.3"), uuid.UUID(GOOD["u"]), {"k": [1, 2]}, ["a", "b c"], [1, 2, 3], "happy",
        "a@b", 7, "abc", 1.5, 9007199254740993,
    )]
    letters = {json.loads(body)["id"]: (code, reason, p, t) for code, reason, p, t, body in dead_letters(pg)}
    assert len(letters) == len(REFUSED)
    for i, (col, value, code, sqlstate) in enumerate(REFUSED):
        got_code, reason, p, t = letters[i + 2]
        assert (got_code, p, t) == (code, "typed", "public.typed"), (col, value, reason)
        if sqlstate:
            assert reason.startswith(f"bad_value: column {col} (PATH '$.{col}'): {sqlstate} "), reason
        else:
            assert reason == "too_long: code has 4 characters; the column allows 3"


# ------------------------------------------------------------------- masks


def test_masks_equal_mask_pii_and_only_a_granted_role_unmasks(pg, sqs, db):
    pg.execute("CREATE TABLE public.contacts (name text, email text, phone text)")
    create_pipeline(
        pg,
        "contacts",
        "public.contacts",
        "name PATH '$.name', email PATH '$.email' MASKED, phone PATH '$.phone' MASKED UNRECOVERABLE",
    )
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"name": "ann", "email": "ann@example.com", "phone": "+1 555 0100"}])
    assert counts(drain(pg, url, pipeline="contacts")) == (1, 1, 0, 0)
    name, email, phone = pg.execute("SELECT * FROM public.contacts").fetchone()
    key = key_of(pg)
    assert (name, email, phone) == ("ann", mask(key, "ann@example.com"), mask(key, "+1 555 0100"))
    assert pg.execute("SELECT fetch_etl.mask_pii('ann@example.com')").fetchone()[0] == email
    # recoverable: in the vault; unrecoverable: only its mask exists
    assert pg.execute("SELECT fetch_etl.unmask(%s), fetch_etl.unmask(%s)", (email, phone)).fetchone() == (
        "ann@example.com", None)
    granted, other = "fe_unmask_" + uuid.uuid4().hex[:6], "fe_nounmask_" + uuid.uuid4().hex[:6]
    try:
        pg.execute(f"CREATE ROLE {granted}; CREATE ROLE {other}")
        pg.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.unmask TO {granted}")
        pg.execute(f"SET ROLE {granted}")
        assert pg.execute("SELECT fetch_etl.unmask(%s)", (email,)).fetchone()[0] == "ann@example.com"
        pg.execute(f"SET ROLE {other}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pg.execute("SELECT fetch_etl.unmask(%s)", (email,))
    finally:
        pg.execute("RESET ROLE")
        pg.execute(f"DROP OWNED BY {granted}; DROP ROLE {granted}; DROP ROLE {other}")


# ---------------------------------------------------- one message, many rows


def test_records_become_one_row_each_and_a_bad_element_refuses_its_whole_message(pg, sqs):
    pg.execute("CREATE TABLE public.objects (bucket text, key text, size bigint, event_name text)")
    create_pipeline(
        pg,
        "objects",
        "public.objects",
        "bucket PATH '$.s3.bucket.name', key PATH '$.s3.object.key' REQUIRED, size PATH '$.s3.object.size',"
        " event_name PATH '$.eventName'",
        rows="$.Records[*]",
    )
    rec = lambda k, size: {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
                                                                     "object": {"key": k, "size": size}}}
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [
        {"Records": [rec("a", 1), rec("b", 2), rec("c", 3)]},
        {"Records": [rec("d", 4), rec("e", "big"), rec("f", 6)]},  # element 1 refused: none of d, e, f
        {"Records": [rec("g", 7), {"s3": {"object": {}}}]},  # element 1 has no key
        {"Records": []},
        {"Other": 1},
    ])
    assert counts(drain(pg, url, pipeline="objects")) == (5, 1, 4, 0)
    assert pg.execute("SELECT key, size FROM public.objects ORDER BY key").fetchall() == [("a", 1), ("b", 2), ("c", 3)]
    reasons = sorted(r[1] for r in dead_letters(pg))
    assert reasons[0].startswith(
        "bad_value: element 1 of $.Records[*]: column size (PATH '$.s3.object.size'): 22P02 "), reasons
    assert reasons[1:] == [
        "missing_field: element 1 of $.Records[*]: s3.object.key is required",
        "no_rows: $.Records[*] selects no element of the event",
        "no_rows: $.Records[*] selects no element of the event",
    ]


# ----------------------------------------------------------------- routing


def test_a_router_sends_three_event_types_to_their_tables_and_the_rest_to_no_route(pg, sqs):
    for t in ("orders", "shipments", "refunds"):
        pg.execute(f"CREATE TABLE public.{t} (id text, amount numeric)")
        create_pipeline(pg, t, f"public.{t}", "id PATH '$.id' REQUIRED, amount PATH '$.amount'")
    pg.execute(
        "SELECT fetch_etl.create_router('shop', route_by => 'PATH ''$.type''', routes => %s)",
        (json.dumps({"OrderPlaced": "orders", "OrderShipped": "shipments", "RefundIssued": "refunds"}),),
    )
    raw, url, _ = new_queue(sqs)
    bodies = []
    for i in range(3):
        bodies += [{"type": "OrderPlaced", "id": f"o{i}", "amount": i}, {"type": "OrderShipped", "id": f"s{i}"},
                   {"type": "RefundIssued", "id": f"r{i}", "amount": -i}]
    bodies += [{"type": "OrderCancelled", "id": "c0"}, {"id": "x0"}]
    send(sqs, raw, bodies)
    assert counts(drain(pg, url, pipeline="shop")) == (11, 9, 2, 0)
    for t, prefix in (("orders", "o"), ("shipments", "s"), ("refunds", "r")):
        assert pg.execute(f"SELECT id FROM public.{t} ORDER BY id").fetchall() == [(f"{prefix}{i}",) for i in range(3)]
    # SQS returns messages in no set order: compare the dead letters as a sorted list.
    assert sorted((c, r, p, t) for c, r, p, t, _ in dead_letters(pg)) == [
        ("no_route", 'no_route: router shop has no route for PATH \'$.type\' = "OrderCancelled"', "shop", None),
        ("no_route", "no_route: router shop: the message has no PATH '$.type'", "shop", None),
    ]
    run = pg.execute("SELECT pipeline, target_table FROM fetch_etl.drain_runs").fetchone()
    assert run == ("shop", "public.orders, public.shipments, public.refunds")
    # Replay runs the router that refused them: a route added, they load.
    pg.execute("CREATE TABLE public.other (id text, amount numeric)")
    create_pipeline(pg, "other", "public.other", "id PATH '$.id' REQUIRED, amount PATH '$.amount'")
    pg.execute(
        "SELECT fetch_etl.create_router('shop', route_by => 'PATH ''$.type''', routes => %s, otherwise => 'other',"
        " replace => true)",
        (json.dumps({"OrderPlaced": "orders", "OrderShipped": "shipments", "RefundIssued": "refunds"}),),
    )
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(pipeline => 'shop')").fetchone() == (2, 2, 0)
    assert pg.execute("SELECT id FROM public.other ORDER BY id").fetchall() == [("c0",), ("x0",)]


def test_a_router_routes_by_a_message_attribute_and_by_eventbridge_detail_type(pg, sqs, aws_key):
    pg.execute("CREATE TABLE public.a (v text); CREATE TABLE public.b (v text)")
    create_pipeline(pg, "pa", "public.a", "v PATH '$.v'")
    create_pipeline(pg, "pb", "public.b", "v PATH '$.v'")
    pg.execute("SELECT fetch_etl.create_router('by_attr', 'ATTRIBUTE ''kind''', '{\"A\": \"pa\", \"B\": \"pb\"}')")
    raw, url, _ = new_queue(sqs)
    for kind, v in (("A", "1"), ("B", "2"), ("A", "3")):
        send(sqs, raw, [{"v": v}], MessageAttributes={"kind": {"DataType": "String", "StringValue": kind}})
    assert counts(drain(pg, url, pipeline="by_attr")) == (3, 3, 0, 0)
    assert pg.execute("SELECT v FROM public.a ORDER BY v").fetchall() == [("1",), ("3",)]
    # EventBridge: moto delivers the envelope; detail-type routes, detail loads
    events = aws("events", aws_key)
    raw2, url2, arn2 = new_queue(sqs)
    rule = "r-" + uuid.uuid4().hex[:8]
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["shop"]}))
    events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": arn2}])
    events.put_events(Entries=[{"Source": "shop", "DetailType": dt, "Detail": json.dumps({"v": v})}
                               for dt, v in (("Alpha", "4"), ("Beta", "5"))])
    pg.execute("SELECT fetch_etl.create_router('by_type', 'ENVELOPE detail_type', '{\"Alpha\": \"pa\", \"Beta\": \"pb\"}')")
    assert counts(drain(pg, url2, pipeline="by_type")) == (2, 2, 0, 0)
    assert pg.execute("SELECT v FROM public.b ORDER BY v").fetchall() == [("2",), ("5",)]


# ------------------------------------------------------------- idempotency


def test_an_event_id_key_loads_a_redriven_copy_once(pg, sqs):
    """SQS gives a message a new MessageId when it is redriven from a DLQ
    (StartMessageMoveTask) or sent again by a producer's retry: same body,
    new id. Keyed by the producer's event id, the copy is a duplicate; keyed
    by message id (the control, and the login pipeline's key) it loads again."""
    pg.execute("CREATE TABLE public.payments (event_id uuid, amount numeric)")
    cols = "event_id PATH '$.event_id', amount PATH '$.amount'"
    create_pipeline(pg, "by_event", "public.payments", cols, idempotency="$.event_id")
    create_pipeline(pg, "by_message", "public.payments", cols)
    events = [{"event_id": str(uuid.uuid4()), "amount": i} for i in range(3)]
    raw, url, _ = new_queue(sqs)
    first = send(sqs, raw, events)
    assert counts(drain(pg, url, pipeline="by_event")) == (3, 3, 0, 0)
    copies = send(sqs, raw, events)  # the redrive: new MessageIds, same bodies
    assert not set(first) & set(copies)
    assert counts(drain(pg, url, pipeline="by_event")) == (3, 0, 0, 3)
    assert pg.execute("SELECT count(*) FROM public.payments").fetchone()[0] == 3
    # the control: by message id the copies are new messages
    send(sqs, raw, events)
    assert counts(drain(pg, url, pipeline="by_message")) == (3, 3, 0, 0)
    assert pg.execute("SELECT count(*), count(DISTINCT event_id) FROM public.payments").fetchone() == (6, 3)
    # a message without the key is a dead letter (its message id its ledger key)
    send(sqs, raw, [{"amount": 9}])
    assert counts(drain(pg, url, pipeline="by_event")) == (1, 0, 1, 0)
    assert dead_letters(pg)[0][:3] == ("missing_field", "missing_field: the idempotency key $.event_id is missing",
                                       "by_event")


def test_a_redriven_copy_in_a_later_batch_of_the_same_drain_is_a_duplicate(pg, sqs):
    """A copy with the same event id in a later batch of one drain is another
    message, so a duplicate; before, it was counted as the first one received
    again (which `received` leaves out)."""
    pg.execute("CREATE TABLE public.payments (event_id uuid, amount numeric)")
    create_pipeline(pg, "by_event", "public.payments", "event_id PATH '$.event_id', amount PATH '$.amount'",
                    idempotency="$.event_id")
    events = [{"event_id": str(uuid.uuid4()), "amount": i} for i in range(10)]
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, events + events)
    pg.execute("SET fetch_etl.batch_size = 10")  # the smallest: the copies come in later batches
    assert counts(drain(pg, url, pipeline="by_event")) == (20, 10, 0, 10)
    assert pg.execute("SELECT count(*) FROM public.payments").fetchone() == (10,)


# ------------------------------------------------------- create-time errors


@pytest.mark.parametrize("target, columns, sqlstate, fragment", [
    ("public.t", "nope PATH '$.a'", "42703", "target table public.t has no column nope"),
    ("public.t", "a PATH '$.a'", "23502", "column req of public.t is NOT NULL without a default"),
    ("public.t", "req PATH '$.r', n MESSAGE sent_at", "42804", "column n of public.t is integer"),
    ("public.t", "req PATH '$.r', a integer PATH '$.a'", "42804", "the pipeline declares it integer"),
    ("public.t", "req PATH '$.r', a nosuchtype PATH '$.a'", "42704", "type nosuchtype of column a does not exist"),
    ("public.t", "req PATH '$.r', n PATH '$.a' MASKED", "42804", "a MASKED column needs a text type"),
    ("public.t", "req PATH '$.r', g PATH '$.g'", "428C9", "column g of public.t is generated"),
    ("public.t", "req PATH '$.r', a PATH '$.a' BOGUS", "42601", "BOGUS is not an option"),
    ("public.t", "req PATH '$.x-y'", "42601", "must be quoted"),
    ("public.nope", "a PATH '$.a'", "42704", "does not exist"),
    ("public.v", "a PATH '$.a'", "42809", "is not a table"),
])
def test_create_time_errors_name_the_column_with_their_sqlstate(pg, target, columns, sqlstate, fragment):
    pg.execute("CREATE TABLE public.t (req text NOT NULL, a text, n integer,"
               " g integer GENERATED ALWAYS AS (n + 1) STORED)")
    pg.execute("CREATE VIEW public.v AS SELECT 1 AS a")
    with pytest.raises(psycopg.Error) as e:
        create_pipeline(pg, "p", target, columns)
    assert e.value.sqlstate == sqlstate, e.value
    assert fragment in str(e.value), e.value
    assert pg.execute("SELECT count(*) FROM fetch_etl.pipelines WHERE NOT builtin").fetchone()[0] == 0


def test_names_the_builtin_and_duplicates_are_refused_with_their_sqlstate(pg):
    pg.execute("CREATE TABLE public.t (a text)")
    for name, sqlstate in (("Bad-Name", "42602"), ("login", "42501")):
        with pytest.raises(psycopg.Error) as e:
            create_pipeline(pg, name, "public.t", "a PATH '$.a'")
        assert e.value.sqlstate == sqlstate, e.value
    create_pipeline(pg, "p", "public.t", "a PATH '$.a'")
    with pytest.raises(psycopg.errors.DuplicateObject) as e:
        create_pipeline(pg, "p", "public.t", "a PATH '$.b'")
    assert "replace => true" in e.value.diag.message_hint
    create_pipeline(pg, "p", "public.t", "a  text  PATH '$.b' -- replaced", replace=True)
    assert pg.execute("SELECT columns FROM fetch_etl.pipelines WHERE name = 'p'").fetchone()[0] == "a text PATH '$.b'"
    with pytest.raises(psycopg.errors.UndefinedObject):
        pg.execute("SELECT fetch_etl.drop_pipeline('nope')")
    assert pg.execute("SELECT fetch_etl.drop_pipeline('nope', if_exists => true)").fetchone()[0] is False
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute("SELECT fetch_etl.drop_pipeline('login')")
    pg.execute("CREATE TEMP TABLE tt (a text)")
    with pytest.raises(psycopg.errors.WrongObjectType) as e:
        create_pipeline(pg, "temp", "pg_temp.tt", "a PATH '$.a'")
    assert "a pipeline cannot load a temporary table" in str(e.value)


def test_a_pipeline_a_router_uses_cannot_be_dropped(pg):
    pg.execute("CREATE TABLE public.t (a text)")
    create_pipeline(pg, "p", "public.t", "a PATH '$.a'")
    pg.execute("SELECT fetch_etl.create_router('r', 'PATH ''$.k''', '{\"x\": \"p\"}')")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
        pg.execute("SELECT fetch_etl.drop_pipeline('p')")
    assert "router r" in str(e.value)
    with pytest.raises(psycopg.errors.UndefinedObject):
        pg.execute("SELECT fetch_etl.create_router('r2', 'PATH ''$.k''', '{\"x\": \"missing\"}')")
    with pytest.raises(psycopg.errors.WrongObjectType):
        pg.execute("SELECT fetch_etl.create_router('r3', 'PATH ''$.k''', '{\"x\": \"r\"}')")
    assert pg.execute("SELECT fetch_etl.drop_pipeline('r'), fetch_etl.drop_pipeline('p')").fetchone() == (True, True)


# ------------------------------------------------- a table changed after create


def test_a_table_changed_after_create_is_refused_at_the_next_drain_and_nothing_is_lost(pg, sqs):
    pg.execute("CREATE TABLE public.t (a text, n integer, gone text)")
    create_pipeline(pg, "p", "public.t", "a text PATH '$.a', n PATH '$.n', gone PATH '$.g'")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"a": "x", "n": 1, "g": "y"}])
    pg.execute("ALTER TABLE public.t DROP COLUMN gone")
    with pytest.raises(psycopg.errors.UndefinedColumn) as e:
        drain(pg, url, pipeline="p")
    assert "pipeline p: target table public.t has no column gone" in str(e.value)
    pg.execute("ALTER TABLE public.t ADD COLUMN gone text, ALTER COLUMN a TYPE integer USING NULL")
    with pytest.raises(psycopg.errors.DatatypeMismatch) as e:
        drain(pg, url, pipeline="p")
    assert "pipeline p: column a of public.t is integer; the pipeline declares it text" in str(e.value)
    pg.execute("DROP TABLE public.t")
    with pytest.raises(psycopg.errors.UndefinedObject) as e:
        drain(pg, url, pipeline="p")
    assert "no longer exists" in str(e.value)
    # nothing was received, so nothing was lost
    assert pg.execute("SELECT count(*) FROM fetch_etl.processed_messages").fetchone()[0] == 0
    pg.execute("CREATE TABLE public.t (a text, n integer, gone text)")
    create_pipeline(pg, "p", "public.t", "a text PATH '$.a', n PATH '$.n', gone PATH '$.g'", replace=True)
    assert counts(drain(pg, url, pipeline="p")) == (1, 1, 0, 0)


# ----------------------------------------------------------- dump and restore


def test_a_user_pipeline_survives_pg_dump_and_restore(pg, sqs, db, aws_key):
    pg.execute("CREATE TABLE public.t (a text, m text)")
    create_pipeline(pg, "kept", "public.t", "a PATH '$.a', m PATH '$.m' MASKED", idempotency="$.a")
    pg.execute("SELECT fetch_etl.create_router('kept_router', 'ATTRIBUTE ''k''', '{\"x\": \"kept\"}')")
    before = pg.execute("SELECT name, kind, owner::text, target::text, columns, rows, idempotency, route_by, routes"
                        " FROM fetch_etl.pipelines ORDER BY name").fetchall()
    bindir = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    host, port = pg.info.host, str(pg.info.port)
    dump = subprocess.run([str(bindir / "pg_dump"), "-h", host, "-p", port, "-U", "postgres", db],
                          check=True, capture_output=True, text=True).stdout
    restored = "e2e_restored_" + uuid.uuid4().hex[:8]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{restored}"')
    try:
        r = subprocess.run([str(bindir / "psql"), "-h", host, "-p", port, "-U", "postgres", "-d", restored,
                            "-v", "ON_ERROR_STOP=1", "-q"], input=dump, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with connect(restored) as c:
            assert c.execute("SELECT name, kind, owner::text, target::text, columns, rows, idempotency, route_by,"
                             " routes FROM fetch_etl.pipelines ORDER BY name").fetchall() == before
            assert c.execute("SELECT count(*) FROM fetch_etl.pipeline_definitions WHERE builtin").fetchone()[0] == 1
            set_credentials(c, aws_key)
            raw, url, _ = new_queue(sqs)
            send(sqs, raw, [{"a": "1", "m": "secret"}])
            assert counts(drain(c, url, pipeline="kept")) == (1, 1, 0, 0)
            # the dumped key came back with the vault: masks match the original database's
            assert c.execute("SELECT m FROM public.t").fetchone()[0] == mask(key_of(pg), "secret")
    finally:
        remember_keys(restored)
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')


# ------------------------------------------------------------ threat_*


@pytest.fixture
def owner_role(db):
    """Role fe_owner_*: owns schema `app` and its table app.events, and may
    create pipelines; not a superuser."""
    name = "fe_owner_" + uuid.uuid4().hex[:8]
    with connect(db) as admin:
        admin.execute(f"CREATE ROLE {name}")
        admin.execute(f"CREATE SCHEMA app AUTHORIZATION {name}")
        admin.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.create_pipeline, fetch_etl.create_router,"
                      f" fetch_etl.drop_pipeline, fetch_etl.sqs_drain TO {name}")
        admin.execute(f"SET ROLE {name}")
        admin.execute("CREATE TABLE app.events (v text); CREATE TABLE app.audit (who text, what text)")
    yield name
    with connect(db) as admin:
        admin.execute(f"DROP OWNED BY {name} CASCADE")
        admin.execute(f"DROP ROLE {name}")


def as_owner_make(conn, role, sql, pipeline_columns="v PATH '$.v'"):
    """As `role`: runs `sql` (its trigger, domain...), then creates pipeline
    app_events into app.events."""
    conn.execute(f"SET ROLE {role}")
    try:
        conn.execute(sql)
        create_pipeline(conn, "app_events", "app.events", pipeline_columns)
    finally:
        conn.execute("RESET ROLE")


def test_threat_a_pipeline_owners_trigger_runs_as_the_owner_not_as_the_superuser_who_drains(pg, sqs, owner_role):
    as_owner_make(pg, owner_role, """
        CREATE FUNCTION app.audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO app.audit VALUES (current_user, 'insert'); RETURN NEW; END $$;
        CREATE TRIGGER audit BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.audit_row();""")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "1"}, {"v": "2"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (2, 2, 0, 0)  # a superuser's drain
    assert pg.execute("SELECT who, count(*) FROM app.audit GROUP BY 1").fetchall() == [(owner_role, 2)]


def test_threat_a_pipeline_owner_cannot_become_superuser_through_a_superusers_drain(pg, sqs, owner_role):
    as_owner_make(pg, owner_role, f"""
        CREATE FUNCTION app.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN ALTER ROLE {owner_role} SUPERUSER; RETURN NEW; END $$;
        CREATE TRIGGER escalate BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.escalate();""")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "1"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (1, 0, 1, 0)
    assert pg.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (owner_role,)).fetchone()[0] is False
    [(code, reason, *_)] = dead_letters(pg)
    assert code == "rejected_by_table" and "42501" in reason, reason


def test_threat_a_pipeline_owners_domain_check_runs_as_the_owner(pg, sqs, owner_role):
    as_owner_make(pg, owner_role, """
        CREATE FUNCTION app.check_v(v text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO app.audit VALUES (current_user, 'check'); RETURN v <> 'bad'; END $$;
        CREATE DOMAIN app.checked AS text CHECK (app.check_v(VALUE));
        ALTER TABLE app.events ADD COLUMN c app.checked;""", "v PATH '$.v', c PATH '$.v'")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "ok"}, {"v": "bad"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (2, 1, 1, 0)
    assert {w for (w,) in pg.execute("SELECT who FROM app.audit")} == {owner_role}
    [(code, reason, *_)] = dead_letters(pg)
    assert reason.startswith("bad_value: column c (PATH '$.v'): 23514 "), reason


def test_threat_settings_an_owners_trigger_changes_do_not_outlive_the_insert(pg, sqs, owner_role):
    as_owner_make(pg, owner_role, """
        CREATE FUNCTION app.hijack() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_catalog.set_config('search_path', 'app, public', false);
              PERFORM pg_catalog.set_config('work_mem', '64kB', false); RETURN NEW; END $$;
        CREATE TRIGGER hijack BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.hijack();""")
    before = pg.execute("SELECT current_setting('search_path'), current_setting('work_mem')").fetchone()
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "1"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (1, 1, 0, 0)
    assert pg.execute("SELECT current_setting('search_path'), current_setting('work_mem')").fetchone() == before


def test_threat_an_owners_deferred_trigger_never_fires_at_commit_as_the_superuser(pg, sqs, owner_role):
    as_owner_make(pg, owner_role, """
        CREATE FUNCTION app.later() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO app.audit VALUES (current_user, 'deferred'); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER later AFTER INSERT ON app.events DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION app.later();""")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "1"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (1, 0, 1, 0)
    assert pg.execute("SELECT count(*) FROM app.audit").fetchone()[0] == 0
    [(code, reason, *_)] = dead_letters(pg)
    assert code == "rejected_by_table" and "deferred trigger" in reason, reason


def test_threat_a_role_cannot_drain_replace_or_drop_another_roles_pipeline(pg, sqs, owner_role, db):
    as_owner_make(pg, owner_role, "SELECT 1")
    intruder = "fe_intruder_" + uuid.uuid4().hex[:6]
    pg.execute(f"CREATE ROLE {intruder}")
    pg.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.create_pipeline, fetch_etl.create_router,"
               f" fetch_etl.drop_pipeline, fetch_etl.sqs_drain TO {intruder}")
    pg.execute(f"CREATE TABLE public.mine (v text); ALTER TABLE public.mine OWNER TO {intruder}")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "1"}])
    try:
        pg.execute(f"SET ROLE {intruder}")
        for sql in ("SELECT * FROM fetch_etl.sqs_drain(%s, pipeline => 'app_events')",
                    "SELECT fetch_etl.drop_pipeline('app_events')",
                    "SELECT fetch_etl.create_pipeline('app_events', 'public.mine', 'v PATH ''$.v''', replace => true)",
                    "SELECT fetch_etl.create_router('mine', 'PATH ''$.k''', '{\"x\": \"app_events\"}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                pg.execute(sql, (url,) if "%s" in sql else None)
            assert "app_events belongs to role " + owner_role in e.value.diag.message_hint, sql
    finally:
        pg.execute("RESET ROLE")
    # the list shows it the built-in pipeline only
    pg.execute(f"GRANT SELECT ON fetch_etl.pipelines TO {intruder}")
    pg.execute(f"SET ROLE {intruder}")
    try:
        assert pg.execute("SELECT name FROM fetch_etl.pipelines").fetchall() == [("login",)]
    finally:
        pg.execute("RESET ROLE")
    # a member of the owner role may drain it (inserting as the owner)
    pg.execute(f"GRANT {owner_role} TO {intruder}")
    pg.execute(f"SET ROLE {intruder}")
    try:
        assert counts(drain(pg, url, pipeline="app_events")) == (1, 1, 0, 0)
    finally:
        pg.execute("RESET ROLE")
        pg.execute(f"DROP OWNED BY {intruder} CASCADE; DROP ROLE {intruder}")


def test_threat_a_router_cannot_send_a_superusers_drain_into_the_login_table(pg, owner_role):
    """An attacker's review: routed to, the login pipeline would insert into
    whatever `user_logins` the superuser's search_path finds, as the
    superuser. Routers route to pipelines of their own owner's only."""
    pg.execute(f"SET ROLE {owner_role}")
    try:
        for routes, otherwise in (('{"x": "login"}', None), ('{"x": "app_events"}', "login")):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                pg.execute("SELECT fetch_etl.create_router('r', 'PATH ''$.t''', %s, otherwise => %s)",
                           (routes, otherwise))
            assert "cannot route to the built-in login pipeline" in str(e.value)
    finally:
        pg.execute("RESET ROLE")


def test_threat_a_superuser_replacing_a_roles_pipeline_does_not_take_it_over(pg, sqs, owner_role):
    """An attacker's review: a replace made the replacer the owner, so a
    superuser who fixed a role's pipeline then inserted as the superuser,
    running the role's trigger with a superuser's rights."""
    as_owner_make(pg, owner_role, """
        CREATE FUNCTION app.audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO app.audit VALUES (current_user, 'insert'); RETURN NEW; END $$;
        CREATE TRIGGER audit BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.audit_row();""")
    create_pipeline(pg, "app_events", "app.events", "v PATH '$.value'", replace=True)  # the superuser
    assert pg.execute("SELECT owner::text FROM fetch_etl.pipelines WHERE name = 'app_events'").fetchone() == (
        owner_role,)
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"value": "1"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (1, 1, 0, 0)
    assert pg.execute("SELECT who FROM app.audit").fetchall() == [(owner_role,)]


def test_threat_a_pipeline_made_again_under_a_dropped_ones_name_gets_none_of_its_dead_letters(pg, sqs, owner_role):
    """An attacker's review: dead letters and ledger keys named a pipeline by
    its name, so a role that made a pipeline under a dropped one's name could
    replay its dead letters (raw PII) into a table of its own, and found its
    own events taken for duplicates. They name its catalog id now."""
    as_owner_make(pg, owner_role, "ALTER TABLE app.events ADD COLUMN n integer",
                  "v PATH '$.v', n PATH '$.n'")
    pg.execute(f"SET ROLE {owner_role}")
    create_pipeline(pg, "keyed", "app.events", "v PATH '$.v'", idempotency="$.id")
    pg.execute("RESET ROLE")
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"v": "secret", "n": "not a number", "id": "e1"}])
    assert counts(drain(pg, url, pipeline="app_events")) == (1, 0, 1, 0)
    send(sqs, raw, [{"v": "a", "id": "e1"}])
    assert counts(drain(pg, url, pipeline="keyed")) == (1, 1, 0, 0)
    pg.execute(f"SET ROLE {owner_role}")
    pg.execute("SELECT fetch_etl.drop_pipeline('app_events'), fetch_etl.drop_pipeline('keyed')")
    pg.execute("RESET ROLE")
    thief = "fe_thief_" + uuid.uuid4().hex[:6]
    pg.execute(f"CREATE ROLE {thief}")
    pg.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.create_pipeline, fetch_etl.replay_dead_letters,"
               f" fetch_etl.sqs_drain TO {thief}")
    pg.execute(f"CREATE TABLE public.loot (v text, n text); ALTER TABLE public.loot OWNER TO {thief}")
    try:
        pg.execute(f"SET ROLE {thief}")
        create_pipeline(pg, "app_events", "public.loot", "v PATH '$.v', n PATH '$.n'")
        assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(pipeline => 'app_events')").fetchone() == (
            0, 0, 0)
        create_pipeline(pg, "keyed", "public.loot", "v PATH '$.v'", idempotency="$.id")
        send(sqs, raw, [{"v": "b", "id": "e1"}])  # the thief's own event, same id as the old pipeline's
        assert counts(drain(pg, url, pipeline="keyed")) == (1, 1, 0, 0)
    finally:
        pg.execute("RESET ROLE")
    assert pg.execute("SELECT v FROM public.loot").fetchall() == [("b",)]
    assert pg.execute("SELECT count(*) FROM fetch_etl.dead_letters WHERE replayed_at IS NULL").fetchone() == (1,)
    pg.execute(f"DROP OWNED BY {thief} CASCADE; DROP ROLE {thief}")


def test_threat_a_router_whose_owner_lost_a_pipeline_cannot_drain_it(pg, sqs, owner_role):
    """An attacker's review: a router's pipelines were checked against the
    role draining, never its owner: a role that lost its membership in a
    pipeline's owner kept routing a superuser's drain into that role's tables."""
    as_owner_make(pg, owner_role, "SELECT 1")
    router_owner = "fe_router_" + uuid.uuid4().hex[:6]
    pg.execute(f"CREATE ROLE {router_owner}; GRANT {owner_role} TO {router_owner}")
    pg.execute(f"GRANT EXECUTE ON FUNCTION fetch_etl.create_router TO {router_owner}")
    try:
        pg.execute(f"SET ROLE {router_owner}")
        pg.execute("SELECT fetch_etl.create_router('r', 'PATH ''$.t''', '{\"x\": \"app_events\"}')")
        pg.execute("RESET ROLE")
        pg.execute(f"REVOKE {owner_role} FROM {router_owner}")
        raw, url, _ = new_queue(sqs)
        send(sqs, raw, [{"t": "x", "v": "1"}])
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            drain(pg, url, pipeline="r")  # a superuser's drain
        assert "router r's owner may no longer drain pipeline app_events" in str(e.value)
    finally:
        pg.execute("RESET ROLE")
        pg.execute(f"DROP OWNED BY {router_owner} CASCADE; DROP ROLE {router_owner}")


def test_threat_a_replayed_dead_letter_is_not_loaded_again_by_a_redriven_copy(pg, sqs):
    """A message a router refused (no route) was ledgered by its message id
    only: its pipeline's event-id key was never read. Before the fix, a replay
    loaded it without recording that key, so a redriven copy (same body, new
    MessageId) drained afterwards loaded the same event a second time."""
    pg.execute("CREATE TABLE public.orders (id text)")
    create_pipeline(pg, "orders", "public.orders", "id PATH '$.id' REQUIRED", idempotency="$.id")
    route_by = "PATH '$.type'"
    pg.execute("SELECT fetch_etl.create_router('shop', %s, %s)", (route_by, json.dumps({"OrderShipped": "orders"})))
    raw, url, _ = new_queue(sqs)
    event = {"type": "OrderPlaced", "id": "o-1"}
    send(sqs, raw, [event, event])  # two copies, both refused: no route
    assert counts(drain(pg, url, pipeline="shop")) == (2, 0, 2, 0)
    pg.execute("SELECT fetch_etl.create_router('shop', %s, %s, replace => true)",
               (route_by, json.dumps({"OrderShipped": "orders", "OrderPlaced": "orders"})))
    # both dead letters are done with; the event loads once
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(pipeline => 'shop')").fetchone() == (2, 1, 0)
    assert pg.execute("SELECT count(*) FROM fetch_etl.dead_letters WHERE replayed_at IS NULL").fetchone() == (0,)
    send(sqs, raw, [event])  # the redrive
    assert counts(drain(pg, url, pipeline="shop")) == (1, 0, 0, 1)
    assert pg.execute("SELECT id FROM public.orders").fetchall() == [("o-1",)]


def test_threat_a_replay_routes_by_the_attributes_the_message_was_sent_with(pg, sqs):
    """Before the fix a replay rebuilt messages without their attributes: a
    router by ATTRIBUTE sent every dead letter to `otherwise`, another table,
    where the value its own pipeline masks arrived in clear."""
    pg.execute("CREATE TABLE public.a (v text, ssn text); CREATE TABLE public.catchall (body jsonb)")
    create_pipeline(pg, "pa", "public.a", "v PATH '$.v' REQUIRED, ssn PATH '$.ssn' MASKED")
    create_pipeline(pg, "catchall", "public.catchall", "body EVENT")
    pg.execute("SELECT fetch_etl.create_router('k', %s, %s, otherwise => 'catchall')",
               ("ATTRIBUTE 'kind'", json.dumps({"A": "pa"})))
    raw, url, _ = new_queue(sqs)
    send(sqs, raw, [{"ssn": "123-45-6789"}], MessageAttributes={"kind": {"DataType": "String", "StringValue": "A"}})
    assert counts(drain(pg, url, pipeline="k")) == (1, 0, 1, 0)
    [(attributes,)] = pg.execute("SELECT attributes FROM fetch_etl.dead_letters").fetchall()
    assert attributes["message_attributes"] == [{"name": "kind", "data_type": "String", "string_value": "A"}]
    # pa now takes events without v
    create_pipeline(pg, "pa", "public.a", "v PATH '$.v', ssn PATH '$.ssn' MASKED", replace=True)
    assert pg.execute("SELECT * FROM fetch_etl.replay_dead_letters(pipeline => 'k')").fetchone() == (1, 1, 0)
    assert pg.execute("SELECT count(*) FROM public.catchall").fetchone() == (0,)
    [(v, ssn)] = pg.execute("SELECT v, ssn FROM public.a").fetchall()
    assert v is None and len(ssn) == 64 and ssn != "123-45-6789"


# ------------------------------------------------------------------ upgrade


def test_a_database_updated_from_0_4_0_keeps_draining_its_user_logins(sqs, aws_key):
    """0.4.0's catalog (its frozen install script) with this library drains
    the exercise's queue; ALTER EXTENSION UPDATE to this version; the same
    table keeps loading, nothing twice, and a dead letter from before the
    update replays through the login pipeline."""
    from conftest import SAMPLE_RECORDS, VALID

    bindir = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    sharedir = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    frozen = Path(__file__).resolve().parents[1] / "upgrade" / "fetch_etl--0.4.0.sql"
    installed = Path(sharedir) / "extension" / "fetch_etl--0.4.0.sql"
    name = "e2e_upd_" + uuid.uuid4().hex[:8]
    installed.write_text(frozen.read_text())
    try:
        with connect("postgres") as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        with connect(name) as c:
            c.execute("CREATE EXTENSION fetch_etl VERSION '0.4.0'")
            set_credentials(c, aws_key)
            raw, url, _ = new_queue(sqs)
            half = len(SAMPLE_RECORDS) // 2
            send(sqs, raw, SAMPLE_RECORDS[:half])
            first = counts(drain(c, url, wait_seconds=1))
            c.execute("ALTER EXTENSION fetch_etl UPDATE")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'fetch_etl'").fetchone()[0] != "0.4.0"
            send(sqs, raw, SAMPLE_RECORDS[half:] + SAMPLE_RECORDS[:1])  # the first one again: a new message
            second = counts(drain(c, url, wait_seconds=1))
            assert first[0] + second[0] == len(SAMPLE_RECORDS) + 1
            assert first[1] + second[1] == len(VALID) + (1 if "user_id" in SAMPLE_RECORDS[0] else 0)
            rows = c.execute("SELECT count(*), count(DISTINCT user_id) FROM user_logins").fetchone()
            assert rows[0] == first[1] + second[1]
            # the exercise's one bad message: dead-lettered by 0.4.0 or by this version, replayable
            pipelines = [p for (p,) in c.execute("SELECT pipeline FROM fetch_etl.dead_letters")]
            assert len(pipelines) == 1 and pipelines[0] in (None, "login"), pipelines
            assert c.execute("SELECT * FROM fetch_etl.replay_dead_letters()").fetchone() == (1, 0, 1)
    finally:
        installed.unlink()
        remember_keys(name)
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

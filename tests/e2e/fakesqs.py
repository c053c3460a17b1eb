"""A fake SQS endpoint (JSON protocol, no authentication) that hands out
messages with large bodies quickly, which moto cannot: for the memory tests.

Every message is received once (no visibility timeout); DeleteMessageBatch
confirms every entry. `delivered` counts what was handed out.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BigBodies:
    """A fake SQS endpoint handing out `count` valid login events of about
    `body_bytes` each, padded in the field `field` (a field the loader
    ignores by default; `ip` makes them PII the drain masks and vaults)."""

    def __init__(self, count: int, body_bytes: int, field: str = "pad"):
        self.count = count
        self.next = 0
        self.log = []  # (action, messages asked, messages given, reply bytes, seconds to write it)
        self.lock = threading.Lock()
        # Quotes: each is \" in the body and \\\" in the reply, the most
        # escaping SQS's JSON replies do (about twice the body's size).
        # Escaping is per character, so the long common tail is escaped once.
        pad = '"' * (max(0, body_bytes - 120) // 2)
        suffix = json.dumps(pad)[1:-1] + '"}'
        escaped_suffix = json.dumps(suffix)[1:-1]
        fields = {"user_id": "user-{i}", "ip": "10.0.0.1", "device_id": "d-{i}"}
        fields.pop(field, None)
        head = ", ".join(f'"{k}": "{v}"' for k, v in fields.items())
        # (the padded value starts with the message's number: each differs)
        prefix = lambda i: "{" + head.format(i=i) + f', "{field}": "{i}-'  # noqa: E731
        self.body = lambda i: prefix(i) + suffix
        self.reply_body = lambda i: json.dumps(prefix(i))[1:-1] + escaped_suffix
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                action = (self.headers.get("X-Amz-Target") or "").split(".")[-1]
                if action == "ReceiveMessage":
                    n = int(req.get("MaxNumberOfMessages", 1))
                    with fake.lock:
                        ids = list(range(fake.next, min(fake.count, fake.next + n)))
                        fake.next += len(ids)
                    now = str(int(time.time() * 1000))
                    msgs = ",".join(
                        f'{{"MessageId": "big-{i}", "ReceiptHandle": "h-{i}", "Body": "{fake.reply_body(i)}",'
                        f' "Attributes": {{"SentTimestamp": "{now}", "ApproximateReceiveCount": "1"}}}}'
                        for i in ids)
                    out = None
                    data = f'{{"Messages": [{msgs}]}}'.encode()
                elif action == "DeleteMessageBatch":
                    out = {"Successful": [{"Id": e["Id"]} for e in req.get("Entries", [])], "Failed": []}
                elif action == "GetQueueAttributes":
                    out = {"Attributes": {"ApproximateNumberOfMessages": str(fake.count - fake.next)}}
                else:
                    out = {}
                if out is not None:
                    data = json.dumps(out).encode()
                t = time.monotonic()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-amz-json-1.0")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    ok = True
                except OSError:
                    ok = False
                fake.log.append((action, len(data), round(time.monotonic() - t, 2), ok))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def delivered(self):
        return self.next

    def close(self):
        self.server.shutdown()
        self.server.server_close()

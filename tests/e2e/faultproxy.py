"""An HTTP proxy in front of the SQS emulator that injects faults on demand.

Tests set attributes on a FaultProxy to make it:
- answer JSON-protocol requests the way LocalStack before 3.0 did (an XML
  ErrorResponse), so the Query fallback can be tested;
- fail the next N requests of an action with a status (503, throttling...);
- fail every DeleteMessageBatch (a lost delete);
- lose the next N replies of an action: forward the request, then close the
  connection without answering (what a network failure after SQS acted looks like);
- hold the first DeleteMessageBatch (never forward it; `deletes_held` is set
  when it arrives) while forwarding the others;
- answer every request with a redirect;
- rewrite the upstream's reply bodies;
- add latency to every request, or to deletes only.
Requests are forwarded unchanged, Host header included, so SigV4 signatures
made for the proxy's address still verify upstream.
"""
import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCALSTACK2_JSON_ERROR = (
    b"<?xml version='1.0' encoding='utf-8'?>\n<ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">"
    b"<Error><Code>InvalidAction</Code><Message>The action  is not valid for this endpoint.</Message>"
    b"<Type>Sender</Type></Error><RequestId>0</RequestId></ErrorResponse>"
)


class QuietServer(ThreadingHTTPServer):
    """Clients that go away (a killed backend, a timeout) are expected here."""

    def handle_error(self, request, client_address):
        pass


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.reject_json = False
        self.fail_deletes = False
        self.hold_deletes = False
        self.deletes_held = threading.Event()
        self.redirect_to = None  # a URL: every request gets 307 Location: it
        self.rewrite = None  # bytes -> bytes, applied to upstream replies
        self.delay = 0.0
        self.delete_delay = 0.0  # seconds each DeleteMessageBatch waits before it is forwarded
        self.failures: dict[str, list] = {}  # action -> [remaining, status, body]
        self.seen: list[str] = []  # "json:ReceiveMessage" / "query:DeleteMessageBatch"
        self.bodies: list[tuple[str, bytes]] = []  # (action, request body), in arrival order
        self.lose: dict[str, int] = {}  # action -> replies still to lose
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target = self.headers.get("X-Amz-Target")
                if target:
                    proto, action = "json", target.split(".")[-1]
                else:
                    proto = "query"
                    action = urllib.parse.parse_qs(body.decode()).get("Action", [""])[0]
                with proxy.lock:
                    proxy.seen.append(f"{proto}:{action}")
                    proxy.bodies.append((action, body))
                    lose = proxy.lose.get(action, 0) > 0
                    if lose:
                        proxy.lose[action] -= 1
                    fail = proxy.failures.get(action)
                    injected = None
                    if fail and fail[0] > 0:
                        fail[0] -= 1
                        injected = (fail[1], fail[2])
                if proxy.delay:
                    time.sleep(proxy.delay)
                if action == "DeleteMessageBatch" and proxy.delete_delay:
                    time.sleep(proxy.delete_delay)
                if proxy.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", proxy.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hold = False
                if action == "DeleteMessageBatch" and proxy.hold_deletes:
                    with proxy.lock:
                        hold = not proxy.deletes_held.is_set()
                        proxy.deletes_held.set()
                if hold:
                    while proxy.hold_deletes:
                        time.sleep(0.05)
                    return self.reply(500, b'{"__type":"com.amazonaws.sqs#InternalError","message":"held"}',
                                      "application/x-amz-json-1.0")
                if proto == "json" and proxy.reject_json:
                    return self.reply(400, LOCALSTACK2_JSON_ERROR, "text/xml")
                if injected:
                    return self.reply(injected[0], injected[1], "application/x-amz-json-1.0")
                if action == "DeleteMessageBatch" and proxy.fail_deletes:
                    return self.reply(500, b'{"__type":"com.amazonaws.sqs#InternalError","message":"injected"}',
                                      "application/x-amz-json-1.0")
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                if lose:
                    conn.close()
                    self.close_connection = True
                    return
                if proxy.rewrite:
                    data = proxy.rewrite(data)
                headers = [(k, v) for k, v in resp.getheaders()
                           if k.lower() not in ("content-length", "connection", "transfer-encoding")]
                conn.close()
                self.reply(resp.status, data, None, headers)

            def reply(self, status, data, ctype, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, action: str, times: int, status: int, body: bytes):
        with self.lock:
            self.failures[action] = [times, status, body]

    def lose_next(self, action: str, times: int = 1):
        with self.lock:
            self.lose[action] = times

    def close(self):
        self.hold_deletes = False
        self.server.shutdown()
        self.server.server_close()


class Recorder:
    """An HTTP server that records every request it gets and answers 200 {}."""

    def __init__(self):
        self.seen = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length", 0) or 0)
                self.rfile.read(n)
                rec.seen.append((self.command, self.path, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = _any

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

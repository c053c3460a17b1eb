"""Local stand-ins for the AWS credential endpoints, handing out moto-issued credentials.

Every credential they hand out comes from moto's own STS AssumeRole (signed with
the test IAM user's key), so moto, which checks signatures and session tokens,
verifies the SQS requests fetch_etl signs with them.

- FakeSts: AssumeRoleWithWebIdentity, which SDKs send unsigned and which moto
  with signature checking on cannot answer (HTTP 500). It checks the token
  against the one it expects and the role against moto's IAM, as STS would, and
  answers in STS's XML.
- FakeContainer: the ECS / EKS Pod Identity endpoint; refuses a request
  without the expected Authorization header.
- FakeImds: EC2 instance metadata, IMDSv2 only; refuses a request without a
  session token from PUT /latest/api/token.

Each records how many credential sets it handed out and appends their secrets
to $FETCH_ETL_SECRETS_SEEN, which scripts/test's log scan reads.
"""
import datetime
import json
import os
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler

import boto3

from faultproxy import QuietServer

SECRETS_SEEN = os.environ.get("FETCH_ETL_SECRETS_SEEN")
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
SQS_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}


def moto(service, endpoint, key):
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key[0], aws_secret_access_key=key[1]
    )


def make_role(endpoint, key, name=None):
    """An IAM role in moto allowed sqs:*; returns its ARN."""
    name = name or "loader-" + uuid.uuid4().hex[:8]
    iam = moto("iam", endpoint, key)
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="sqs", PolicyDocument=json.dumps(SQS_ALL))
    return arn


def remember(creds):
    if SECRETS_SEEN:
        with open(SECRETS_SEEN, "a") as f:
            f.write(creds["SecretAccessKey"] + "\n" + creds["SessionToken"] + "\n")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Server:
    """A threaded HTTP server on a free loopback port, handled by `handle(h, method)`."""

    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.handle(self, "GET")

            def do_PUT(self):
                outer.handle(self, "PUT")

            def do_POST(self):
                outer.handle(self, "POST")

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.handed_out = 0
        self.refused = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(h, status, body, ctype="application/json", headers=()):
        data = body.encode() if isinstance(body, str) else body
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def body(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def count_refusal(self):
        with self.lock:
            self.refused += 1

    def credentials(self, moto_endpoint, key, role_arn, lifetime):
        """Fresh moto credentials for `role_arn`, claimed to expire in `lifetime` seconds."""
        c = moto("sts", moto_endpoint, key).assume_role(RoleArn=role_arn, RoleSessionName="fetch-etl-test")[
            "Credentials"
        ]
        remember(c)
        with self.lock:
            self.handed_out += 1
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
        return c, expires

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeSts(_Server):
    """AssumeRoleWithWebIdentity (unsigned, as SDKs send it)."""

    def __init__(self, moto_endpoint, key, token):
        self.moto_endpoint, self.key, self.token = moto_endpoint, key, token
        super().__init__()

    def error(self, h, status, code, message):
        self.count_refusal()
        body = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>0</RequestId></ErrorResponse>"
        )
        self.reply(h, status, body, "text/xml")

    def handle(self, h, method):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.body(h).decode()).items()}
        if form.get("Action") != "AssumeRoleWithWebIdentity":
            return self.error(h, 400, "InvalidAction", "only AssumeRoleWithWebIdentity here")
        if form.get("WebIdentityToken") != self.token:
            return self.error(h, 400, "InvalidIdentityToken", "token rejected: not a secret here")
        role = form.get("RoleArn", "")
        try:
            moto("iam", self.moto_endpoint, self.key).get_role(RoleName=role.rsplit("/", 1)[-1])
        except Exception:
            return self.error(h, 403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        c, expires = self.credentials(self.moto_endpoint, self.key, role, 3600)
        body = (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult>"
            f"<Credentials><AccessKeyId>{c['AccessKeyId']}</AccessKeyId><SecretAccessKey>{c['SecretAccessKey']}"
            f"</SecretAccessKey><SessionToken>{c['SessionToken']}</SessionToken><Expiration>{iso(expires)}"
            "</Expiration></Credentials>"
            f"<AssumedRoleUser><Arn>{role}/fetch-etl</Arn><AssumedRoleId>AROA0:fetch-etl</AssumedRoleId></AssumedRoleUser>"
            "<SubjectFromWebIdentityToken>system:serviceaccount:db:postgres</SubjectFromWebIdentityToken>"
            "</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>0</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        )
        self.reply(h, 200, body, "text/xml")


class FakeContainer(_Server):
    """GET <any path> with Authorization: <token> -> the ECS credentials JSON."""

    def __init__(self, moto_endpoint, key, role_arn, token, lifetime=3600):
        self.moto_endpoint, self.key, self.role_arn, self.token, self.lifetime = (
            moto_endpoint, key, role_arn, token, lifetime
        )
        super().__init__()

    def handle(self, h, method):
        self.body(h)
        if h.headers.get("Authorization") != self.token:
            self.count_refusal()
            return self.reply(h, 401, '{"Code":"Unauthorized","Message":"no or wrong Authorization"}')
        c, expires = self.credentials(self.moto_endpoint, self.key, self.role_arn, self.lifetime)
        doc = {
            "AccessKeyId": c["AccessKeyId"],
            "SecretAccessKey": c["SecretAccessKey"],
            "Token": c["SessionToken"],
            "Expiration": iso(expires),
            "RoleArn": self.role_arn,
        }
        self.reply(h, 200, json.dumps(doc))


class FakeImds(_Server):
    """IMDSv2: PUT /latest/api/token, then GETs carrying X-aws-ec2-metadata-token."""

    ROLE = "fetch-etl-instance-role"

    def __init__(self, moto_endpoint, key, role_arn, lifetime=3600):
        self.moto_endpoint, self.key, self.role_arn, self.lifetime = moto_endpoint, key, role_arn, lifetime
        self.tokens = set()
        self.v1_requests = 0
        super().__init__()

    def handle(self, h, method):
        self.body(h)
        path = h.path.split("?")[0]
        if method == "PUT" and path == "/latest/api/token":
            if not h.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self.reply(h, 400, "missing TTL", "text/plain")
            token = uuid.uuid4().hex
            with self.lock:
                self.tokens.add(token)
            return self.reply(h, 200, token, "text/plain", [("X-aws-ec2-metadata-token-ttl-seconds", "21600")])
        if h.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            with self.lock:
                self.v1_requests += 1
            self.count_refusal()
            return self.reply(h, 401, "", "text/plain")
        base = "/latest/meta-data/iam/security-credentials/"
        if path == base:
            return self.reply(h, 200, self.ROLE, "text/plain")
        if path == base + self.ROLE:
            c, expires = self.credentials(self.moto_endpoint, self.key, self.role_arn, self.lifetime)
            doc = {
                "Code": "Success",
                "LastUpdated": iso(datetime.datetime.now(datetime.timezone.utc)),
                "Type": "AWS-HMAC",
                "AccessKeyId": c["AccessKeyId"],
                "SecretAccessKey": c["SecretAccessKey"],
                "Token": c["SessionToken"],
                "Expiration": iso(expires),
            }
            return self.reply(h, 200, json.dumps(doc))
        self.reply(h, 404, "", "text/plain")

"""A fake EC2 instance metadata service (IMDSv2) for tests/imds_test.sh, and a logging IAM relay.

usage: fake_imds.py imds ADDR PORT LOG [--mode normal|token403|norole|hang] [--delay SECONDS]
                                       [--region R] [--role NAME] [--expires-in SECONDS]
                                       [--tags FILE] [--tags-status CODE]
       fake_imds.py relay PORT UPSTREAM_PORT LOG

imds (ADDR IPv4 or IPv6): PUT /latest/api/token (needs X-aws-ec2-metadata-token-ttl-seconds), then with the token
GET /latest/meta-data/iam/security-credentials/, .../<role>, /latest/meta-data/placement/region.
Each request is appended to LOG as "METHOD PATH STATUS". --delay sleeps before every answer;
--mode hang accepts connections and never answers; token403 refuses the token (IMDS disabled);
norole answers 404 for the role list (no instance profile).
Instance tags (GET /latest/meta-data/tags/instance[/KEY]) come from FILE, lines KEY=VALUE, read at
each request so a test can change them; without FILE (or when it does not exist) tags are not in
instance metadata (404, as on an instance without metadata tags). --tags-status answers every tags
request with that HTTP status instead (a failing IMDS).

relay: forwards every request to 127.0.0.1:UPSTREAM_PORT (moto) and appends the SigV4 credential
scope of its Authorization header to LOG, so a test can see which region signed an IAM request.
"""
import datetime
import http.client
import http.server
import json
import socket
import socketserver
import sys
import threading
import time

TOKEN = "fake-imds-token-0123456789"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Server6(Server):
    """The same on an IPv6 address (IMDS's fd00:ec2::254)."""

    address_family = socket.AF_INET6


def imds(addr, port, log, opts):
    mode = opts.get("mode", "normal")
    delay = float(opts.get("delay", "0"))
    region = opts.get("region", "eu-west-3")
    role = opts.get("role", "iak-host-role")
    expires_in = int(opts.get("expires-in", "3600"))
    tags_file = opts.get("tags")
    tags_status = int(opts.get("tags-status", "0"))
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; with Nagle the body would wait for the client's delayed
        # ACK (up to 40 ms a request), a stall of this fake that IMDS does not have.
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def answer(self, status, body=b"", headers=()):
            with lock, open(log, "a") as f:
                f.write(f"{self.command} {self.path} {status}\n")
            if mode == "hang":
                time.sleep(3600)
            time.sleep(delay)
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            if self.path != "/latest/api/token":
                return self.answer(404)
            if mode == "token403":
                return self.answer(403)
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if not ttl or not ttl.isdigit():
                return self.answer(400)
            self.answer(200, TOKEN.encode(), [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                return self.answer(401)
            base = "/latest/meta-data/iam/security-credentials/"
            if self.path == "/latest/meta-data/placement/region":
                return self.answer(200, region.encode())
            if self.path.startswith("/latest/meta-data/tags/instance"):
                return self.tags()
            if self.path == base:
                if mode == "norole":
                    return self.answer(404)
                return self.answer(200, role.encode())
            if self.path == base + role and mode != "norole":
                now = datetime.datetime.now(datetime.timezone.utc)
                exp = now + datetime.timedelta(seconds=expires_in)
                body = {
                    "Code": "Success",
                    "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIAFAKEIMDS0000TEST",
                    "SecretAccessKey": "fake-secret",
                    "Token": "fake-session-token",
                    "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                return self.answer(200, json.dumps(body).encode())
            self.answer(404)

        def tags(self):
            if tags_status:
                return self.answer(tags_status)
            try:
                with open(tags_file) as f:
                    tags = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
            except (TypeError, FileNotFoundError):
                return self.answer(404)
            rest = self.path[len("/latest/meta-data/tags/instance"):]
            if rest in ("", "/"):
                return self.answer(200, "\n".join(tags).encode())
            key = rest[1:]
            if key in tags:
                return self.answer(200, tags[key].encode())
            self.answer(404)

    server = Server6 if ":" in addr else Server
    server((addr, port), H).serve_forever()


def relay(port, upstream, log):
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            auth = self.headers.get("Authorization", "")
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0] if "Credential=" in auth else "-"
            # Keep the key id out of the log: date/region/service/aws4_request is what is checked.
            with lock, open(log, "a") as f:
                f.write(scope.split("/", 1)[-1] + "\n")
            c = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            c.request("POST", self.path, body, headers)
            r = c.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    Server(("127.0.0.1", port), H).serve_forever()


def main(argv):
    if argv[0] == "imds":
        addr, port, log = argv[1], int(argv[2]), argv[3]
        rest = argv[4:]
        opts = {rest[i].lstrip("-"): rest[i + 1] for i in range(0, len(rest), 2)}
        imds(addr, port, log, opts)
    elif argv[0] == "relay":
        relay(int(argv[1]), int(argv[2]), argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

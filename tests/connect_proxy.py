"""A forward proxy for tests/proxy_test.sh: CONNECT only, to names it alone can resolve.

usage: connect_proxy.py PORT LOG NAME=ADDR... [--auth USER:PASSWORD] [--refuse] [--tls CERT KEY]

Each CONNECT is appended to LOG as "CONNECT host:port STATUS auth=yes|no [tls=VERSION]". Only the NAMEs
given are tunnelled (to ADDR, always on loopback in the tests); anything else gets 502, so nothing leaves
the machine. --auth demands Proxy-Authorization: Basic (407 otherwise); --refuse answers 403 to every
CONNECT; --tls makes it an https:// proxy: clients speak TLS to the proxy itself (CERT and KEY, PEM), and
the CONNECT and the tunnelled bytes travel inside that TLS session.
"""
import base64
import select
import socket
import socketserver
import ssl
import sys
import threading


def main(argv):
    port, log = int(argv[0]), argv[1]
    names, auth, refuse, tls = {}, None, False, None
    rest = argv[2:]
    i = 0
    while i < len(rest):
        if rest[i] == "--auth":
            auth = rest[i + 1]
            i += 2
        elif rest[i] == "--refuse":
            refuse = True
            i += 1
        elif rest[i] == "--tls":
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(rest[i + 1], rest[i + 2])
            i += 3
        else:
            n, a = rest[i].split("=", 1)
            names[n] = a
            i += 1
    lock = threading.Lock()

    class H(socketserver.StreamRequestHandler):
        # Each relayed chunk is sent as it comes: without TCP_NODELAY, Nagle holds a small one back until
        # the previous is acknowledged (a delayed-ACK stall of up to 40 ms that the proxy would add).
        disable_nagle_algorithm = True

        def note(self, line):
            if tls is not None:
                line += f" tls={self.connection.version()}"
            with lock, open(log, "a") as f:
                f.write(line + "\n")

        def setup(self):
            if tls is not None:
                # The handshake here, in the connection's own thread, not in the accept loop.
                self.request = tls.wrap_socket(self.request, server_side=True)
            super().setup()

        def handle(self):
            head = self.rfile.readline(8192).decode("latin-1").strip()
            headers = {}
            while True:
                line = self.rfile.readline(8192).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            parts = head.split()
            if len(parts) != 3 or parts[0] != "CONNECT":
                self.note(f"{head} 405")
                self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            target = parts[1]
            sent = headers.get("proxy-authorization", "")
            has_auth = "yes" if sent else "no"
            if refuse:
                self.note(f"CONNECT {target} 403 auth={has_auth}")
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            if auth is not None:
                want = "Basic " + base64.b64encode(auth.encode()).decode()
                if sent != want:
                    self.note(f"CONNECT {target} 407 auth={has_auth}")
                    self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                     b"Proxy-Authenticate: Basic realm=\"iak\"\r\nContent-Length: 0\r\n\r\n")
                    return
            host, _, tport = target.rpartition(":")
            if host not in names:
                self.note(f"CONNECT {target} 502 auth={has_auth}")
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            up = socket.create_connection((names[host], int(tport)), timeout=10)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            self.note(f"CONNECT {target} 200 auth={has_auth}")
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            down = self.connection
            for _ in range(100000):
                r, _, _ = select.select([down, up], [], [], 30)
                if not r:
                    break
                done = False
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        done = True
                        break
                    # TLS may hold decrypted bytes that select() cannot see: take them too.
                    while s is down and tls is not None and down.pending():
                        data += down.recv(65536)
                    (up if s is down else down).sendall(data)
                if done:
                    break
            up.close()

    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    S(("127.0.0.1", port), H).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

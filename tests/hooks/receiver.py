#!/usr/bin/env python3
"""A webhook receiver for the tests: an HTTP/1.1 server on a loopback port
that records every request it gets as one JSON line on stdout.

Prints `listening PORT` first. Options:
  --port N            listen on this port (default 0: any free port)
  --status N          answer with this status (default 204)
  --fail-first N      answer the first N requests with --fail-status
  --fail-status N     (default 500)
  --retry-after S     add `Retry-After: S` to failing answers
  --sleep S           wait S seconds before answering each request
  --close-mid N       on the first N requests, send half an answer and close
  --secret whsec_...  verify each request with the standardwebhooks package
  --tls-cert F --tls-key F   serve HTTPS with this certificate and key
  --hold-full         listen with a backlog of 0, fill it and never accept:
                      further connects hang (a peer that never answers SYN)
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
lock = threading.Lock()
count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        global count
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with lock:
            count += 1
            n = count
        verified = None
        if args.secret:
            from standardwebhooks.webhooks import Webhook

            try:
                Webhook(args.secret).verify(body, dict(self.headers))
                verified = True
            except Exception as e:  # noqa: BLE001
                verified = "failed: %s" % e
        status = args.status
        extra = {}
        if n <= args.fail_first:
            status = args.fail_status
            if args.retry_after is not None:
                extra["Retry-After"] = str(args.retry_after)
        record = {
            "n": n,
            "t": time.time(),
            "path": self.path,
            "peer_port": self.client_address[1],
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "status": status,
            "verified": verified,
        }
        if args.sleep:
            time.sleep(args.sleep)
        if n <= args.close_mid:
            record["status"] = "cut"
            with lock:
                print(json.dumps(record), flush=True)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            self.wfile.flush()
            self.close_connection = True
            return
        with lock:
            print(json.dumps(record), flush=True)
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        if status in (204, 304):
            self.end_headers()
            return
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--status", type=int, default=204)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--retry-after", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0)
    p.add_argument("--close-mid", type=int, default=0)
    p.add_argument("--secret", default=None)
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--hold-full", action="store_true")
    args = p.parse_args()
    if args.secret:
        try:
            import standardwebhooks  # noqa: F401
        except ImportError:
            sys.exit(
                "receiver.py: the Python package standardwebhooks is missing: "
                "pip install standardwebhooks (.ci/setup installs it)"
            )
    if args.hold_full:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.2)
        print("listening %d" % port, flush=True)
        while True:
            time.sleep(3600)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

"""The Python CPU time of one proxied request, without the network: the
client's socket is replaced by a stub that answers every read with the next
request (its empty body's message and the envelope the proxy sends), and
writes go nowhere. What is left is the client's and the adapter's own work.

    PYTHONPATH=clients/python python3 benches/proxy_python_stub.py line [N]
    PYTHONPATH=clients/python python3 benches/proxy_python_stub.py wsgi [N]

line: the request loop of benches/proxy_handlers.py; wsgi: the adapter's
handle() with clients/python/examples/hello_app.py. Prints CPU µs a request
(process time over N requests, default 200000).
"""

import json
import os
import sys
import time

import switchboard_client
from switchboard_client import Client

ENVELOPE = json.dumps(
    {
        "bodyAddr": "6B15AB01.2",
        "headers": {"Host": "127.0.0.1:8080"},
        "id": "6b15ab01-1",
        "method": "GET",
        "protocol": "HTTP/1.1",
        "url": "/hello",
    },
    separators=(",", ":"),
).encode()
REQUEST = b"> %d 180 msglite.httpRequests 6B15AB01.1\r\n%s\r\n" % (len(ENVELOPE), ENVELOPE)
BODY = b"> 0 180 6B15AB01.2\r\n"


class Stub:
    """The first read gives a request; each later one the body of the last
    request and the next request, as the server writes them."""

    def __init__(self):
        self.reads = 0

    def recv(self, n, flags=0):
        self.reads += 1
        return REQUEST if self.reads == 1 else BODY + REQUEST

    def sendall(self, data):
        pass

    def gettimeout(self):
        return None

    def close(self):
        pass


def line(n):
    body = b"hello, world\n"
    head = b'["200",["Content-Type","text/plain","Content-Length","%d"]]' % len(body)
    queue = "msglite.httpRequests"
    c = Client("stub:1")
    m = c.ready(queue, timeout=60)
    t = time.process_time()
    for _ in range(n):
        body_addr = m.body.split(b'"bodyAddr":"', 1)[1].split(b'"', 1)[0]
        c.ready(body_addr, timeout=5, pipeline=True)
        c.send(m.reply, head, timeout=m.timeout, flush=False)
        c.send(m.reply, body, timeout=m.timeout, flush=False)
        c.send(m.reply, b"", timeout=m.timeout, flush=False)
        c.ready(queue, timeout=60, pipeline=True)
        c.answer()
        m = c.answer()
    return time.process_time() - t


def wsgi(n):
    from switchboard_client import wsgi

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "clients", "python", "examples"))
    import hello_app

    queue = "msglite.httpRequests"
    c = Client("stub:1")
    m = c.ready(queue, timeout=60)
    t = time.process_time()
    for _ in range(n):
        deferred = wsgi.handle(c, hello_app.app, m, True)
        c.ready(queue, timeout=1, pipeline=True)
        for _ in range(deferred):
            c.answer()
        m = c.answer()
    return time.process_time() - t


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "line"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
    switchboard_client._connect = lambda address, timeout: Stub()
    spent = {"line": line, "wsgi": wsgi}[what](n)
    print("%s: %.2f µs of CPU a request (%d requests)" % (what, spent * 1e6 / n, n))


if __name__ == "__main__":
    main()

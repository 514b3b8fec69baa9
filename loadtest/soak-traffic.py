#!/usr/bin/env python3
"""The soak's traffic that flood-pub and flood-sub do not make (soak.sh
starts it): line-protocol queues (`?` callers on fresh connections, `<`
services that reconnect now and then), event-stream subscribers (one that
stays and checks that every numbered message arrives, in order; others that
come and go) fed by HTTP POSTs, and short-lived line subscribers that leave
without a word.

    soak-traffic.py LINE_ADDR BUS_ADDR SECONDS

Runs for SECONDS, then prints one JSON line of counts on stdout and exits
0 when every call was answered right and nothing was lost, 1 otherwise.
Standard library only.
"""

import http.client
import json
import socket
import sys
import threading
import time

LINE, BUS, SECONDS = sys.argv[1], sys.argv[2], float(sys.argv[3])
QUEUE = "soak.rpc"
SSE_CHANNEL = "soak-sse"
STOP = threading.Event()
LOCK = threading.Lock()
COUNTS = {
    "rpc_ok": 0,
    "rpc_failed": 0,
    "served": 0,
    "sse_published": 0,
    "sse_received": 0,
    "sse_lost": 0,
    "sse_out_of_order": 0,
    "sse_churned": 0,
    "sse_churn_failed": 0,
    "line_churned": 0,
    "line_churn_failed": 0,
}
ERRORS = []


def count(key, n=1):
    with LOCK:
        COUNTS[key] += n


def error(what):
    with LOCK:
        if len(ERRORS) < 20:
            ERRORS.append(what)


def connect(addr, timeout=10.0):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    """Lines and bodies from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("closed by the server")
        self.buf += data

    def line(self):
        while b"\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def pace(period, start, i):
    """Sleeps until the i-th tick of `period` seconds after `start`."""
    delay = start + i * period - time.monotonic()
    if delay > 0:
        STOP.wait(delay)


def service(index):
    """Answers `?` calls on QUEUE with the body reversed; reconnects every
    200 calls."""
    while not STOP.is_set():
        try:
            sock = connect(LINE)
            r = Reader(sock)
            for _ in range(200):
                if STOP.is_set():
                    break
                sock.sendall(f"< 1 {QUEUE}\r\n".encode())
                head = r.line().split()
                if head == [b"*"]:
                    continue
                if len(head) != 5 or head[0] != b">":
                    raise ValueError(f"service {index}: unexpected {head!r}")
                body = r.exact(int(head[1]) + 2)[:-2]
                answer = body[::-1]
                sock.sendall(
                    b"> %d 10 %s\r\n%s\r\n" % (len(answer), head[4], answer)
                )
                count("served")
            sock.sendall(b".\r\n")
            sock.close()
        except (OSError, EOFError, ValueError) as e:
            error(f"service {index}: {e}")
            STOP.wait(0.5)


def caller(index, rate):
    """One `?` call per connection, `rate` calls a second; the answer must
    be the body reversed."""
    start = time.monotonic()
    i = 0
    while not STOP.is_set():
        i += 1
        body = f"call-{index}-{i}".encode()
        try:
            sock = connect(LINE)
            r = Reader(sock)
            sock.sendall(b"? %d 10 %s\r\n%s\r\n" % (len(body), QUEUE.encode(), body))
            head = r.line().split()
            if len(head) >= 4 and head[0] == b">":
                got = r.exact(int(head[1]) + 2)[:-2]
                if got == body[::-1]:
                    count("rpc_ok")
                else:
                    count("rpc_failed")
                    error(f"caller {index}: answer {got!r} to {body!r}")
            else:
                count("rpc_failed")
                error(f"caller {index}: {head!r}")
            sock.close()
        except (OSError, EOFError, ValueError) as e:
            count("rpc_failed")
            error(f"caller {index}: {e}")
        pace(1.0 / rate, start, i)


def sse_open(path):
    sock = connect(BUS)
    host = BUS
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    r = Reader(sock)
    status = r.line()
    if not status.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"event stream refused: {status!r}")
    while r.line() != b"":
        pass
    # The stream opens with fields of its own (`retry:`) and the comment
    # `: subscribed`, within its first few lines.
    for _ in range(4):
        if r.line() == b": subscribed":
            break
    else:
        raise ValueError("no `: subscribed`")
    return sock, r


class Events:
    """The events of a stream, one data text each (its `data:` lines
    joined). A read that times out loses nothing: call `next` again."""

    def __init__(self, r):
        self.r = r
        self.data = []

    def next(self):
        while True:
            line = self.r.line()
            if line == b"":
                if self.data:
                    out, self.data = b"\n".join(self.data), []
                    return out
            elif line.startswith(b"data: "):
                self.data.append(line[6:])


def sse_keeper(ready, published_total):
    """Stays subscribed; every numbered message must arrive once, in order.
    Ends when all that was published has come, or after 10 s of silence
    once publishing has stopped."""
    try:
        sock, r = sse_open(f"/msgbus/{SSE_CHANNEL}")
    except (OSError, EOFError, ValueError) as e:
        error(f"event-stream subscriber: {e}")
        ready.set()
        return
    ready.set()
    sock.settimeout(1.0)
    events = Events(r)
    expect = 0
    silent = 0
    while not (done_publishing.is_set() and expect >= published_total[0]):
        try:
            data = events.next()
        except socket.timeout:
            if done_publishing.is_set():
                silent += 1
                if silent >= 10:
                    break
            continue
        except (OSError, EOFError) as e:
            error(f"event-stream subscriber: {e}")
            break
        silent = 0
        n = int(data.split(b"-", 1)[1])
        if n != expect:
            count("sse_out_of_order")
            error(f"event stream: message {n}, expected {expect}")
        expect = n + 1
        count("sse_received")
    sock.close()


done_publishing = threading.Event()


def sse_publisher(rate, published_total):
    """POSTs numbered messages to SSE_CHANNEL over one kept-alive
    connection, `rate` a second."""
    host, port = BUS.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    start = time.monotonic()
    n = 0
    while not STOP.is_set():
        body = f"sse-{n}".encode()
        try:
            conn.request(
                "POST", f"/msgbus/{SSE_CHANNEL}", body, {"Content-Type": "text/plain"}
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status // 100 != 2:
                error(f"event-stream publish: {resp.status}")
            else:
                n += 1
                count("sse_published")
        except (OSError, http.client.HTTPException) as e:
            error(f"event-stream publish: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        pace(1.0 / rate, start, n)
    conn.close()
    published_total[0] = n
    done_publishing.set()


def sse_churn():
    """Event-stream subscribers (plain, JSON, root) that read one event
    and leave, or leave at once without reading."""
    paths = [
        f"/msgbus/{SSE_CHANNEL}",
        f"/msgbus/{SSE_CHANNEL}?format=json",
        "/msgbus/",
    ]
    i = 0
    while not STOP.is_set():
        i += 1
        try:
            sock, r = sse_open(paths[i % len(paths)])
            if i % 2 == 0:
                Events(r).next()
            sock.close()
            count("sse_churned")
        except (OSError, EOFError, ValueError) as e:
            if STOP.is_set() and isinstance(e, TimeoutError):
                # The run ended (and its publisher with it) while this
                # subscriber waited for its one event: nothing was lost.
                break
            count("sse_churn_failed")
            error(f"event-stream churn: {e}")
        STOP.wait(0.2)


def line_churn():
    """Line subscribers of the flood channels that stay a moment and then
    drop the connection without `.`."""
    i = 0
    while not STOP.is_set():
        i += 1
        try:
            sock = connect(LINE)
            sock.sendall(b"+ soak-line\r\n+ soak-other\r\n")
            STOP.wait(0.3)
            sock.close()
            count("line_churned")
        except OSError as e:
            count("line_churn_failed")
            error(f"line churn: {e}")
        STOP.wait(0.1)


def main():
    published_total = [-1]
    ready = threading.Event()
    threads = [threading.Thread(target=sse_keeper, args=(ready, published_total))]
    threads[0].start()
    ready.wait(30)
    threads += [threading.Thread(target=service, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=caller, args=(i, 20)) for i in range(2)]
    threads += [
        threading.Thread(target=sse_publisher, args=(50, published_total)),
        threading.Thread(target=sse_churn),
        threading.Thread(target=line_churn),
    ]
    for t in threads[1:]:
        t.start()
    STOP.wait(SECONDS)
    STOP.set()
    for t in threads:
        t.join(30)
    with LOCK:
        COUNTS["sse_lost"] = max(0, published_total[0] - COUNTS["sse_received"])
        out = dict(COUNTS, errors=ERRORS)
    print(json.dumps(out))
    bad = (
        out["rpc_failed"]
        or out["sse_lost"]
        or out["sse_out_of_order"]
        or out["sse_churn_failed"]
        or out["line_churn_failed"]
        or out["rpc_ok"] == 0
        or out["sse_received"] == 0
        or any(t.is_alive() for t in threads)
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

"""Minimal Python handlers for benches/proxy-compare.sh: each answers every
request with 200 and "hello, world\n", with its Content-Length.

    python3 proxy_handlers.py line HOST:PORT [N] [whole] # switchboard's proxy, line protocol,
                                                        # up to N requests a round trip; with
                                                        # whole, each answer in one message
    python3 proxy_handlers.py zmq SEND_SPEC RECV_SPEC   # Mongrel2, ZeroMQ (python3-zmq)
"""

import sys

BODY = b"hello, world\n"

#: A request with a body has a Content-Length in its envelope; one without
#: has an empty body, which the handlers need not read (the proxy drops it
#: once the response has ended).
HAS_BODY = b'"Content-Length":'


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


def line(address, batch=1, whole=False):
    from switchboard_client import Client, Error

    try:
        if batch == 1:
            serve_line(Client(address), whole)
        else:
            serve_batches(Client(address), batch, whole)
    except (OSError, Error):
        pass  # the server went away: the run is over


def serve_line(c, whole):
    """One connection: each answer, its request body's wait before it (if
    it has one) and the next wait after it, in one write."""
    queue = "msglite.httpRequests"
    head = b'["200",["Content-Type","text/plain","Content-Length","%d"]]' % len(BODY)
    m = None
    while True:
        if m is None:
            m = c.ready(queue, timeout=60)
            continue
        has_body = HAS_BODY in m.body
        if has_body:
            body_addr = m.body.split(b'"bodyAddr":"', 1)[1].split(b'"', 1)[0]
            c.ready(body_addr, timeout=5, pipeline=True)
        if whole:
            c.send(m.reply, RESPONSE, timeout=m.timeout, flush=False)
        else:
            c.send(m.reply, head, timeout=m.timeout, flush=False)
            c.send(m.reply, BODY, timeout=m.timeout, flush=False)
            c.send(m.reply, b"", timeout=m.timeout, flush=False)
        c.ready(queue, timeout=60, pipeline=True)
        if has_body:
            c.answer()  # the body
        m = c.answer()


def serve_batches(c, n, whole):
    """Up to N requests a round trip (Client.take, `<< N`: one wait for a
    request, then up to N - 1 more already queued). The answers to a round's
    requests leave in one write with the next round's take; a request with
    a body (none in the benches) has it read before its answer."""
    queue = "msglite.httpRequests"
    head = b'["200",["Content-Type","text/plain","Content-Length","%d"]]' % len(BODY)
    while True:
        for m in c.take(queue, n, timeout=60):
            if HAS_BODY in m.body:
                body_addr = m.body.split(b'"bodyAddr":"', 1)[1].split(b'"', 1)[0]
                c.ready(body_addr, timeout=5)
            if whole:
                c.send(m.reply, RESPONSE, timeout=m.timeout, flush=False)
                continue
            c.send(m.reply, head, timeout=m.timeout, flush=False)
            c.send(m.reply, BODY, timeout=m.timeout, flush=False)
            c.send(m.reply, b"", timeout=m.timeout, flush=False)


def zmq_handler(send_spec, recv_spec):
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(send_spec)
    pub = ctx.socket(zmq.PUB)
    pub.connect(recv_spec)
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (len(BODY), BODY)
    )
    while True:
        msg = pull.recv()
        sender, conn_id, path, _ = msg.split(b" ", 3)
        if path == b"@*":  # a disconnect notice
            continue
        pub.send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, response))


if __name__ == "__main__":
    if sys.argv[1] == "line":
        line(
            sys.argv[2],
            int(sys.argv[3]) if len(sys.argv) > 3 else 1,
            len(sys.argv) > 4 and sys.argv[4] == "whole",
        )
    else:
        zmq_handler(sys.argv[2], sys.argv[3])

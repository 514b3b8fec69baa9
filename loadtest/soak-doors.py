#!/usr/bin/env python3
"""The soak's traffic on the doors soak-traffic.py and the flood tools do
not reach (soak.sh starts it), each with its own "nothing lost" count:

  - the msglite HTTP proxy: two handlers on the proxy's queue, one on the
    line door and one on the line door over TLS, each reconnecting every
    200 requests; POSTs on a kept-alive connection (answers with a length)
    and GETs on fresh connections (chunked answers), every request answered
    with what its body or URL says;
  - the webhook door: a receiver on loopback (in this process) that stays
    registered and must get every message sent, senders that connect, send
    20 messages and disconnect, and receivers that connect and disconnect;
  - WebSockets on the HTTP bus and on the HTTPS bus: connections that
    publish one numbered message, must receive it back, and leave (with a
    close frame, or dropping the connection);
  - TLS: line-over-TLS subscribers (of the flood channel and of their own)
    that publish one message, must receive it and then leave, and HTTPS
    publishes on fresh connections.

    soak-doors.py LINE LINE_TLS BUS BUS_TLS PROXY HOOKS CA SECONDS LATENCY_DIR

LATENCY_DIR gets proxy.log and hooks.log: every second a line `n N p50 X us
p99 Y us` with the proxy's round-trip and the webhooks' send-to-delivery
times of the last 10 s (nothing when there were none). Runs for SECONDS, then
waits for the webhooks still under way, prints one JSON line of counts on
stdout and exits 0 when nothing was lost or refused, 1 otherwise.
Standard library only.
"""

import base64
import collections
import http.client
import http.server
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time

(LINE, LINE_TLS, BUS, BUS_TLS, PROXY, HOOKS, CA, SECONDS, LAT_DIR) = sys.argv[1:10]
SECONDS = float(SECONDS)
PROXY_QUEUE = b"msglite.httpRequests"
STOP = threading.Event()
LOCK = threading.Lock()
TLS = ssl.create_default_context(cafile=CA)
COUNTS = {
    "proxy_ok": 0,
    "proxy_failed": 0,
    "proxy_handled": 0,
    "proxy_handler_reconnects": 0,
    "hook_sent": 0,
    "hook_send_refused": 0,
    "hook_delivered": 0,
    "hook_lost": 0,
    "hook_duplicates": 0,
    "hook_sender_sessions": 0,
    "hook_receivers_churned": 0,
    "hook_churn_deliveries": 0,
    "hook_api_failed": 0,
    "ws_ok": 0,
    "wss_ok": 0,
    "ws_failed": 0,
    "tls_line_churned": 0,
    "tls_line_failed": 0,
    "https_ok": 0,
    "https_failed": 0,
}
ERRORS = []


def count(key, n=1):
    with LOCK:
        COUNTS[key] += n


def error(what):
    with LOCK:
        if len(ERRORS) < 30:
            ERRORS.append(what)


def connect(addr, tls=False, timeout=10.0):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        s = TLS.wrap_socket(s, server_hostname="localhost")
    return s


class Reader:
    """Lines and exact byte counts from a socket."""

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
    delay = start + i * period - time.monotonic()
    if delay > 0:
        STOP.wait(delay)


class Latency:
    """Times (seconds) of the last 10 s; `flush` appends their count and
    percentiles as a line (soak.sh takes the newest line at each sample)."""

    def __init__(self, name):
        self.path = os.path.join(LAT_DIR, name + ".log")
        self.samples = collections.deque()
        open(self.path, "w").close()

    def add(self, seconds):
        with LOCK:
            self.samples.append((time.monotonic(), seconds))

    def flush(self):
        with LOCK:
            while self.samples and self.samples[0][0] < time.monotonic() - 10:
                self.samples.popleft()
            s = sorted(v for _, v in self.samples)
        if not s:
            return
        p50 = s[(len(s) - 1) // 2] * 1e6
        p99 = s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6
        with open(self.path, "a") as f:
            f.write(f"n {len(s)} p50 {p50:.1f} us p99 {p99:.1f} us\n")


PROXY_LAT = Latency("proxy")
HOOK_LAT = Latency("hooks")


def reporter():
    while not STOP.wait(1):
        PROXY_LAT.flush()
        HOOK_LAT.flush()


# --- the msglite HTTP proxy -------------------------------------------------


def line_message(r):
    """Reads the answer to `<`: (fields, body), or None for `*`."""
    head = r.line().split()
    if head == [b"*"]:
        return None
    if len(head) < 4 or head[0] != b">":
        raise ValueError(f"unexpected {head!r}")
    n = int(head[1])
    return head, (r.exact(n + 2)[:n] if n else b"")


def proxy_handler(index, addr, tls):
    """Answers proxied requests: a POST with its body reversed, anything
    else with its URL. Leaves after 200 requests (between two `<`, when
    nothing is handed to it), then comes back."""

    def send(sock, to, body):
        sock.sendall(b"> %d 10 %s\r\n" % (len(body), to) + (body + b"\r\n" if body else b""))

    while not STOP.is_set():
        try:
            sock = connect(addr, tls)
            r = Reader(sock)
            handled = 0
            while handled < 200 and not STOP.is_set():
                sock.sendall(b"< 1 " + PROXY_QUEUE + b"\r\n")
                got = line_message(r)
                if got is None:
                    continue
                fields, envelope = got
                env = json.loads(envelope)
                sock.sendall(b"< 10 %s\r\n" % env["bodyAddr"].encode())
                body = line_message(r)
                if body is None:
                    raise ValueError("no request body message")
                reply = fields[4]
                if env["method"] == "POST":
                    answer = [body[1][::-1]]
                    headers = ["Content-Length", str(len(body[1]))]
                else:
                    # No length: the client gets the URL in two chunks, and
                    # the last chunk once the end message is in.
                    url = env["url"].encode()
                    answer = [url[:5], url[5:]]
                    headers = []
                head = json.dumps(["200", ["Content-Type", "text/plain"] + headers])
                send(sock, reply, head.encode())
                for piece in answer:
                    send(sock, reply, piece)
                send(sock, reply, b"")
                handled += 1
                count("proxy_handled")
            sock.sendall(b".\r\n")
            sock.close()
            count("proxy_handler_reconnects")
        except (OSError, EOFError, ValueError, KeyError) as e:
            error(f"proxy handler {index}: {e}")
            STOP.wait(0.5)


def proxy_check(resp_status, got, want, what):
    if resp_status == 200 and got == want:
        count("proxy_ok")
        return True
    count("proxy_failed")
    error(f"proxy {what}: {resp_status} {got[:60]!r}")
    return False


def proxy_keepalive_client(rate):
    """POSTs over one kept-alive connection; the answer is the body
    reversed."""
    host, port = PROXY.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    start = time.monotonic()
    i = 0
    while not STOP.is_set():
        i += 1
        body = f"proxied-{i}".encode()
        try:
            t = time.monotonic()
            conn.request("POST", "/soak/post", body, {"Content-Type": "text/plain"})
            resp = conn.getresponse()
            got = resp.read()
            if proxy_check(resp.status, got, body[::-1], f"POST {i}"):
                PROXY_LAT.add(time.monotonic() - t)
        except (OSError, http.client.HTTPException) as e:
            count("proxy_failed")
            error(f"proxy POST {i}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        pace(1.0 / rate, start, i)
    conn.close()


def proxy_fresh_client(rate):
    """GETs, each on a connection of its own; the answer is the URL,
    chunked, read to its last chunk before the connection is closed. (With
    a length, the client could close before the handler's end message is
    in; the proxy would then withdraw the reply address and that message
    would expire, counted as `expired` though nothing was lost.)"""
    start = time.monotonic()
    i = 0
    while not STOP.is_set():
        i += 1
        url = f"/soak/get/{i}?q={i}"
        try:
            t = time.monotonic()
            sock = connect(PROXY, timeout=30)
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
            r = Reader(sock)
            status = r.line().split()
            chunked = False
            while True:
                h = r.line()
                if not h:
                    break
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"transfer-encoding":
                    chunked = value.strip().lower() == b"chunked"
            if not chunked:
                raise ValueError(f"not chunked: {status!r}")
            got = b""
            while True:
                n = int(r.line().split(b";")[0], 16)
                if n == 0:
                    r.line()
                    break
                got += r.exact(n + 2)[:n]
            sock.close()
            code = int(status[1]) if len(status) > 1 else 0
            if proxy_check(code, got, url.encode(), f"GET {i}"):
                PROXY_LAT.add(time.monotonic() - t)
        except (OSError, EOFError, ValueError) as e:
            count("proxy_failed")
            error(f"proxy GET {i}: {e}")
        pace(1.0 / rate, start, i)


# --- webhooks -----------------------------------------------------------------

HOOK_SENT = {}  # message key -> send time
HOOK_GOT = set()


class HookReceiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        key = json.loads(body)["body"]
        if self.path == "/steady":
            now = time.monotonic()
            with LOCK:
                if key in HOOK_GOT:
                    COUNTS["hook_duplicates"] += 1
                else:
                    HOOK_GOT.add(key)
                    COUNTS["hook_delivered"] += 1
                sent = HOOK_SENT.get(key)
            if sent is not None:
                HOOK_LAT.add(now - sent)
        else:
            count("hook_churn_deliveries")

    def log_message(self, *args):
        pass


class HookServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A receiver disconnected while a delivery was under way: the
        # server closed the connection; nothing to report.
        pass


def hooks_api(path, obj):
    host, port = HOOKS.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, json.dumps(obj), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def hooks_register(url, mode):
    status, answer = hooks_api("/connect/", {"ClientURL": url, "mode": mode})
    if status != 200 or "id" not in answer:
        raise ValueError(f"/connect/ {mode}: {status} {answer}")
    return answer["id"]


def hooks_disconnect(id):
    status, answer = hooks_api("/disconnect/", {"id": id})
    if status != 200:
        raise ValueError(f"/disconnect/ {id}: {status} {answer}")


def hook_sender(index, rate):
    """Connects as a sender, sends 20 messages, disconnects; again."""
    start = time.monotonic()
    i = 0
    while not STOP.is_set():
        try:
            id = hooks_register(f"soak-sender-{index}", "send")
            count("hook_sender_sessions")
            for _ in range(20):
                if STOP.is_set():
                    break
                i += 1
                key = f"{index}-{i}"
                with LOCK:
                    HOOK_SENT[key] = time.monotonic()
                status, answer = hooks_api("/send/", {"id": id, "body": key})
                if status == 200:
                    count("hook_sent")
                else:
                    with LOCK:
                        del HOOK_SENT[key]
                    count("hook_send_refused")
                    error(f"/send/ {key}: {status} {answer}")
                pace(1.0 / rate, start, i)
            hooks_disconnect(id)
        except (OSError, http.client.HTTPException, ValueError) as e:
            count("hook_api_failed")
            error(f"hook sender {index}: {e}")
            STOP.wait(0.5)


def hook_receiver_churn(base):
    """Receivers that register, get what is sent for a second, and
    disconnect."""
    k = 0
    while not STOP.is_set():
        k += 1
        try:
            id = hooks_register(f"{base}/churn/{k}", "receive")
            STOP.wait(1.0)
            hooks_disconnect(id)
            count("hook_receivers_churned")
        except (OSError, http.client.HTTPException, ValueError) as e:
            count("hook_api_failed")
            error(f"hook receiver churn: {e}")
        STOP.wait(0.5)


# --- WebSockets and TLS --------------------------------------------------------


def ws_frame(opcode, payload):
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(r):
    """(opcode, payload) of the next server frame."""
    b0, b1 = r.exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", r.exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", r.exact(8))[0]
    return b0 & 0x0F, r.exact(n)


def ws_churn():
    """A WebSocket on the HTTP bus or the HTTPS bus, by turns: publishes one
    numbered message to its channel, must receive it back, and leaves with
    a close frame (answered by one) or by dropping the connection."""
    i = 0
    while not STOP.is_set():
        i += 1
        tls = i % 2 == 0
        try:
            sock = connect(BUS_TLS if tls else BUS, tls)
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                (
                    f"GET /msgbus/soak-ws-churn HTTP/1.1\r\nHost: soak\r\n"
                    f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            r = Reader(sock)
            status = r.line()
            if not status.startswith(b"HTTP/1.1 101"):
                raise ValueError(f"handshake: {status!r}")
            while r.line():
                pass
            mine = f"ws-{i}".encode()
            sock.sendall(ws_frame(1, mine))
            while True:
                op, payload = ws_read(r)
                if op == 1 and payload == mine:
                    break
                if op == 8:
                    raise ValueError(f"closed by the server: {payload!r}")
            if i % 4 < 2:
                sock.sendall(ws_frame(8, struct.pack(">H", 1000)))
                while True:
                    op, _ = ws_read(r)
                    if op == 8:
                        break
            sock.close()
            count("wss_ok" if tls else "ws_ok")
        except (OSError, EOFError, ValueError) as e:
            count("ws_failed")
            error(f"{'wss' if tls else 'ws'} {i}: {e}")
        STOP.wait(0.15)


def tls_line_churn(channel):
    """Line-over-TLS subscribers of a flood channel and of a channel of
    their own: each publishes one numbered message to its own channel, must
    receive it (among the flood's), and then drops the connection."""
    i = 0
    while not STOP.is_set():
        i += 1
        mine = f"tls-{i}".encode()
        try:
            sock = connect(LINE_TLS, True)
            sock.sendall(
                b"+ %s\r\n+ soak-tls-own\r\n! %d soak-tls-own text/plain\r\n%s\r\n"
                % (channel.encode(), len(mine), mine)
            )
            r = Reader(sock)
            while True:
                head = r.line().split()
                if len(head) < 3 or head[0] != b"!":
                    raise ValueError(f"unexpected {head!r}")
                n = int(head[1])
                body = r.exact(n + 2)[:n] if n else b""
                if head[2] == b"soak-tls-own" and body == mine:
                    break
            sock.close()
            count("tls_line_churned")
        except (OSError, EOFError, ValueError) as e:
            count("tls_line_failed")
            error(f"line-TLS churn {i}: {e}")
        STOP.wait(0.2)


def https_oneshot(rate):
    """POSTs to a channel over HTTPS, each on a fresh connection."""
    start = time.monotonic()
    i = 0
    while not STOP.is_set():
        i += 1
        try:
            host, port = BUS_TLS.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            # Connected here, over TLS (the certificate names localhost;
            # the connection goes to the address).
            conn.sock = connect(BUS_TLS, True, timeout=30)
            conn.request("POST", "/msgbus/soak-https", f"https-{i}", {"Content-Type": "text/plain"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status // 100 == 2:
                count("https_ok")
            else:
                count("https_failed")
                error(f"HTTPS publish {i}: {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            count("https_failed")
            error(f"HTTPS publish {i}: {e}")
        pace(1.0 / rate, start, i)


def main():
    hook_server = HookServer(("127.0.0.1", 0), HookReceiver)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{hook_server.server_address[1]}"
    steady = hooks_register(f"{base}/steady", "receive")

    threads = [threading.Thread(target=reporter)]
    threads += [
        threading.Thread(target=proxy_handler, args=(0, LINE, False)),
        threading.Thread(target=proxy_handler, args=(1, LINE_TLS, True)),
        threading.Thread(target=proxy_keepalive_client, args=(20,)),
        threading.Thread(target=proxy_fresh_client, args=(10,)),
        threading.Thread(target=hook_sender, args=(0, 10)),
        threading.Thread(target=hook_sender, args=(1, 10)),
        threading.Thread(target=hook_receiver_churn, args=(base,)),
        threading.Thread(target=ws_churn),
        threading.Thread(target=tls_line_churn, args=("soak-tls-line",)),
        threading.Thread(target=https_oneshot, args=(10,)),
    ]
    for t in threads:
        t.start()
    STOP.wait(SECONDS)
    STOP.set()
    for t in threads:
        t.join(60)

    # Webhooks still under way (a failed attempt is retried after 1, 2,
    # 4, ... s): wait for them, up to two minutes.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with LOCK:
            missing = [k for k in HOOK_SENT if k not in HOOK_GOT]
        if not missing:
            break
        time.sleep(0.5)
    PROXY_LAT.flush()
    HOOK_LAT.flush()
    try:
        _, dash = hooks_api_get("/dashboard/stats.json")
        mine = [x for x in dash.get("receivers", []) if x.get("id") == steady]
        hook_stats = mine[0] if mine else {}
        hooks_disconnect(steady)
    except (OSError, http.client.HTTPException, ValueError) as e:
        hook_stats = {}
        error(f"hooks at the end: {e}")
        count("hook_api_failed")
    hook_server.shutdown()

    with LOCK:
        COUNTS["hook_lost"] = len([k for k in HOOK_SENT if k not in HOOK_GOT])
        out = dict(
            COUNTS,
            hook_steady_failed=hook_stats.get("failed"),
            hook_steady_dropped=hook_stats.get("dropped"),
            hook_steady_retried=hook_stats.get("retried"),
            errors=ERRORS,
        )
    print(json.dumps(out))
    bad = (
        out["proxy_failed"]
        or out["hook_lost"]
        or out["hook_send_refused"]
        or out["hook_api_failed"]
        or out["hook_steady_failed"] != 0
        or out["hook_steady_dropped"] != 0
        or out["ws_failed"]
        or out["tls_line_failed"]
        or out["https_failed"]
        or out["proxy_ok"] == 0
        or out["hook_delivered"] == 0
        or out["ws_ok"] == 0
        or out["wss_ok"] == 0
        or out["tls_line_churned"] == 0
        or out["https_ok"] == 0
        or any(t.is_alive() for t in threads)
    )
    sys.exit(1 if bad else 0)


def hooks_api_get(path):
    host, port = HOOKS.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


if __name__ == "__main__":
    main()

"""Serves a WSGI application through switchboard's msglite HTTP proxy door.

    python -m switchboard_client.wsgi myapp:app --workers 4 --connect 127.0.0.1:9813

Each worker is a process with one line-protocol connection. It takes a
request from the proxy queue (``<``), reads its body from ``bodyAddr`` (a
request without a body has no ``Content-Length``: its empty body message is
not read, and the proxy drops it once the response has ended), runs the
application, and answers on the request's reply address: the head
``["STATUS", ["Name", "value", ...]]`` once the first body bytes are ready,
each non-empty piece of the body as one message, then an empty message.

A response given as a list or tuple is sent with a ``Content-Length`` (when
the application gave none) and in one write; any other iterable is streamed
piece by piece as the application yields it.

SIGTERM or SIGINT: each worker finishes its request and leaves after its
next empty wait (it waits with a one-second timeout), so no request handed
to it is ever lost; the parent waits for them. A worker that dies otherwise
is started again.
"""

import argparse
import gc
import importlib
import io
import json
import os
import signal
import sys
import time
import traceback
import urllib.parse

from json.encoder import encode_basestring_ascii as _json_str

from . import DEFAULT_ADDRESS, Client, Error

DEFAULT_QUEUE = "msglite.httpRequests"

#: Seconds each wait for a request lasts: how long a stop may take.
WAIT_S = 1


def load_app(spec):
    """``module:callable`` (the callable may be a dotted attribute path)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit("the application is MODULE:CALLABLE, e.g. myapp:app (got %r)" % spec)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise SystemExit("%s is not callable" % spec)
    return obj


def _native(value):
    """A header value as WSGI wants it: the bytes sent, read as Latin-1."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _unnative(value):
    """A WSGI (Latin-1) string back to the text the proxy writes as UTF-8."""
    if value.isascii():
        return value
    return value.encode("latin-1").decode("utf-8", "replace")


#: The environ entries that are the same for every request.
_CONSTANT = {
    "SCRIPT_NAME": "",
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.run_once": False,
}

#: Header names already turned into environ keys (``Host``: ``HTTP_HOST``).
_KEYS = {"Content-Type": "CONTENT_TYPE", "Content-Length": "CONTENT_LENGTH"}
_KEYS_MAX = 512


def _key(name):
    key = _KEYS.get(name)
    if key is None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def build_environ(env, body, multiprocess=False):
    """The WSGI environ of the request envelope ``env`` and its ``body``."""
    url = env.get("url") or "/"
    path, _, query = url.partition("?")
    if "://" in path:
        # An absolute-form target: keep its path and query.
        parts = urllib.parse.urlsplit(url)
        path, query = parts.path or "/", parts.query
    headers = env.get("headers") or {}
    host = headers.get("Host", "")
    forwarded_proto = headers.get("X-Forwarded-Proto")
    if forwarded_proto and forwarded_proto.split(",")[0].strip() == "https":
        scheme, default_port = "https", "443"
    else:
        scheme, default_port = "http", "80"
    server_name, _, server_port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if not server_port.isdigit():
        server_name, server_port = host, ""
    remote = headers.get("X-Forwarded-For")
    if remote is None:
        remote = headers.get("X-Real-Ip")
    environ = _CONSTANT.copy()
    environ["REQUEST_METHOD"] = env.get("method", "GET")
    environ["PATH_INFO"] = (
        urllib.parse.unquote_to_bytes(path).decode("latin-1")
        if "%" in path or not path.isascii()
        else path
    )
    environ["QUERY_STRING"] = query
    environ["SERVER_NAME"] = server_name or "localhost"
    environ["SERVER_PORT"] = server_port or default_port
    environ["SERVER_PROTOCOL"] = env.get("protocol", "HTTP/1.1")
    environ["REMOTE_ADDR"] = remote.split(",")[0].strip() if remote else ""
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.errors"] = sys.stderr
    environ["wsgi.multiprocess"] = multiprocess
    environ["switchboard.request_id"] = env.get("id", "")
    for name, value in headers.items():
        environ[_KEYS.get(name) or _key(name)] = value if value.isascii() else _native(value)
    if body and "CONTENT_LENGTH" not in environ:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def _chunk(data):
    """A piece of the body as bytes (a str, which WSGI does not allow, as
    UTF-8)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    return memoryview(data).tobytes()


class Response:
    """The answer to one request, on its reply address."""

    def __init__(self, client, reply, timeout):
        self.client = client
        self.reply = reply
        self.timeout = timeout
        self.status = None
        self.headers = None
        self.head_sent = False

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response was called twice")
        self.status = status
        self.headers = list(headers)
        return self.write

    def _head(self, length=None):
        """The head, as the bytes of its JSON (the same bytes ``json.dumps``
        with compact separators gives)."""
        if self.status is None:
            raise AssertionError("the application sent a body before start_response")
        code = self.status.split(" ", 1)[0]
        flat = []
        named_length = False
        for name, value in self.headers:
            if not named_length and name.lower() == "content-length":
                named_length = True
            flat.append(_json_str(name))
            flat.append(_json_str(value if value.isascii() else _unnative(value)))
        if length is not None and not named_length:
            flat.append('"Content-Length","%d"' % length)
        self.head_sent = True
        return ('[%s,[%s]]' % (_json_str(code), ",".join(flat))).encode("ascii")

    def write(self, data, flush=True):
        if not data:
            return
        if self.head_sent:
            self.client.send(self.reply, data, timeout=self.timeout, flush=flush)
        else:
            self.client._send_many(self.reply, (self._head(), data), self.timeout)
            if flush:
                self.client.flush()

    def whole(self, chunks):
        """A body known in full: with its length, and the end, in one write
        (it leaves with the worker's next wait)."""
        chunks = [c if c.__class__ is bytes else _chunk(c) for c in chunks]
        # An empty message ends the response: empty pieces are not sent.
        chunks = [c for c in chunks if c]
        if not self.head_sent:
            chunks.insert(0, self._head(length=sum(map(len, chunks))))
        chunks.append(b"")
        self.client._send_many(self.reply, chunks, self.timeout)

    def end(self):
        """The end; it leaves with the worker's next wait, in one write."""
        if self.head_sent:
            self.client._send_many(self.reply, (b"",), self.timeout)
        else:
            head = self._head(length=0 if self.status is not None else None)
            self.client._send_many(self.reply, (head, b""), self.timeout)


_scan = json.JSONDecoder().scan_once


def _envelope(body):
    """The request envelope: a JSON object."""
    text = body.decode("utf-8")
    try:
        env, end = _scan(text, 0)
    except StopIteration:
        env, end = None, -1
    if end != len(text) or env.__class__ is not dict:
        # Not the compact object the proxy writes: the standard parser
        # says what is wrong, or takes it.
        env = json.loads(text)
        if not isinstance(env, dict):
            raise ValueError("the request envelope is not a JSON object")
    return env


def handle(client, app, message, multiprocess=False):
    """Answers one request message; the answer's end is left buffered. A
    request without a body (no ``Content-Length`` in its envelope, or 0)
    does not read its empty body message: the proxy drops it once the
    response has ended. A request with a body reads it first (the worker
    has no wait pending then: ``Client.take`` has read every answer of the
    round)."""
    env = _envelope(message.body)
    body = b""
    body_addr = env.get("bodyAddr")
    headers = env.get("headers") or {}
    if body_addr and headers.get("Content-Length", "0") != "0":
        got = client.ready(body_addr, timeout=1)
        if got is not None:
            body = got.body
    resp = Response(client, message.reply, message.timeout or 30)
    environ = build_environ(env, body, multiprocess)
    result = None
    try:
        result = app(environ, resp.start_response)
        if isinstance(result, (list, tuple)):
            resp.whole(result)
        else:
            for chunk in result:
                resp.write(chunk)
            resp.end()
    except Exception:
        sys.stderr.write(
            "request %s: %s" % (env.get("id", "?"), traceback.format_exc())
        )
        if not resp.head_sent:
            resp.status, resp.headers = "500 Internal Server Error", [
                ("Content-Type", "text/plain")
            ]
            resp.whole([b"Internal Server Error\n"])
        else:
            resp.end()
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


class _Stop:
    def __init__(self):
        self.stopping = False

    def __call__(self, signum, frame):
        self.stopping = True


def worker(app, address, queue, multiprocess, credential=None, batch=1):
    """One worker's loop: until stopped, take requests and answer them, up
    to ``batch`` a round trip."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # serve() forks with the stop signals blocked: one sent meanwhile is
    # delivered now, to this worker's own handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    # What the worker inherited (the application, its modules) lives as
    # long as the worker: the cyclic collector need not look at it again.
    gc.freeze()
    client = None
    backoff = 0.1
    while not stop.stopping:
        try:
            if client is None:
                client = Client(address, credential=credential)
                backoff = 0.1
            # A round (Client.take, `<< batch`): one wait for a request, then
            # up to batch - 1 more that are already queued, taken by the
            # server once the first came. It leaves in one write with the
            # last round's answer.
            messages = client.take(queue, batch, timeout=WAIT_S)
            # Every request taken is answered, a stop notwithstanding; an
            # answer leaves before the application runs for the next one.
            for message in messages:
                if client._out:
                    client.flush()
                handle(client, app, message, multiprocess)
            if stop.stopping:
                client.flush()
        except (OSError, Error) as e:
            sys.stderr.write("worker %d: %s; connecting again\n" % (os.getpid(), e))
            if client is not None:
                try:
                    client.close()
                except OSError:
                    pass
                client = None
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
    if client is not None:
        client.close()


def serve(
    app, address=DEFAULT_ADDRESS, queue=DEFAULT_QUEUE, workers=1, credential=None, batch=1
):
    """Runs ``workers`` worker processes until SIGTERM or SIGINT.
    ``credential`` authenticates each worker's connection (see ``Client``).
    ``batch``: the most requests a worker takes in one round trip (those
    beyond the first only when they are already queued)."""
    stopping = [False]
    children = {}

    stop_signals = {signal.SIGTERM, signal.SIGINT}

    def start_one():
        # A stop signal that comes while the child has no handler of its own
        # yet would run the parent's handler in it, and the worker would
        # then serve on: the signals wait, blocked, until the child has its
        # own handlers (worker() unblocks them).
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        if pid == 0:
            code = 0
            try:
                worker(app, address, queue, workers > 1, credential, batch)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def on_stop(signum, frame):
        stopping[0] = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    for _ in range(workers):
        start_one()
    sys.stderr.write(
        "serving with %d worker%s from %s, queue %s\n"
        % (workers, "" if workers == 1 else "s", address, queue)
    )
    sys.stderr.flush()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        if started is None or stopping[0]:
            continue
        sys.stderr.write("worker %d ended (status %d); starting another\n" % (pid, status))
        if time.monotonic() - started < 1:
            time.sleep(1)
        if not stopping[0]:
            start_one()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m switchboard_client.wsgi",
        description="Serve a WSGI application through switchboard's HTTP proxy door.",
    )
    p.add_argument("app", help="the application, MODULE:CALLABLE (e.g. myapp:app)")
    p.add_argument("--workers", "-w", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--connect",
        default=DEFAULT_ADDRESS,
        help="switchboard's line protocol: HOST:PORT or a Unix socket path (default %s)"
        % DEFAULT_ADDRESS,
    )
    p.add_argument(
        "--queue", default=DEFAULT_QUEUE, help="the proxy queue (default %s)" % DEFAULT_QUEUE
    )
    p.add_argument(
        "--credential-env",
        metavar="NAME",
        help="authenticate with the secret or token in this environment variable "
        "(kept out of the process list)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="take up to N requests a round trip when they are already queued: less CPU "
        "per request under load, but a request taken waits for those before it in the "
        "worker (default 1)",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if not 1 <= args.batch <= 64:
        p.error("--batch must be from 1 to 64")
    credential = None
    if args.credential_env:
        credential = os.environ.get(args.credential_env)
        if not credential:
            p.error("the environment variable %s is empty or not set" % args.credential_env)
    app = load_app(args.app)
    return serve(app, args.connect, args.queue, args.workers, credential, args.batch)


if __name__ == "__main__":
    sys.exit(main())

"""A client for switchboard's line protocol (msglite's, byte for byte).

One :class:`Client` is one connection. Its methods follow the protocol's
commands: :meth:`Client.send` (``>``), :meth:`Client.ready` (``<``),
:meth:`Client.query` (``?``), :meth:`Client.publish` (``!``),
:meth:`Client.subscribe` (``+``) and :meth:`Client.unsubscribe` (``~``).
Channel messages that arrive while the client waits for an answer are kept
for :meth:`Client.next_published`.
"""

import collections
import re
import socket

__all__ = [
    "Client",
    "Message",
    "Published",
    "Error",
    "ServerError",
    "QueueFull",
    "ProtocolError",
]

__version__ = "0.1.0"

#: The line protocol's default TCP address.
DEFAULT_ADDRESS = "127.0.0.1:9813"

#: The most addresses one ``<`` may wait on.
MAX_ADDRESSES = 8

Message = collections.namedtuple("Message", "to reply timeout body")
Message.__doc__ = """A queue message: its address, its reply address (or None), the
timeout it was sent with (seconds) and its body (bytes)."""

Published = collections.namedtuple("Published", "channel content_type body")
Published.__doc__ = """A channel message: its channel, its content type and its body."""


class Error(Exception):
    """Anything that went wrong with the connection or the server."""


class ServerError(Error):
    """The server answered ``- reason`` and closed the connection."""


class QueueFull(Error):
    """A query was refused because the queue is full (``- queue full``); the
    connection stays usable."""


#: What ``- queue full`` reads as.
_REFUSED = object()
#: A frame not yet whole in the input.
_INCOMPLETE = object()


class ProtocolError(Error):
    """The server sent something this client does not understand, or the
    connection closed."""


_NOT_A_FIELD = re.compile(rb"[\x00-\x20\x7f]")


def _field(name, what):
    """Checks that ``name`` can be one field of a command line."""
    if isinstance(name, bytes):
        raw = name
    else:
        raw = str(name).encode("utf-8")
    if not raw:
        raise ValueError("%s is empty" % what)
    if _NOT_A_FIELD.search(raw):
        raise ValueError("%s %r has a space or a control character" % (what, name))
    return raw


def _body(body):
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def _timeout(t):
    t = int(t)
    if t < 0:
        raise ValueError("a timeout is a number of seconds, not %r" % t)
    return t


def _connect(address, socket_timeout):
    """``HOST:PORT`` (TCP) or a path (a Unix socket)."""
    if isinstance(address, tuple):
        s = socket.create_connection(address, timeout=socket_timeout)
    elif "/" in address or not address.rsplit(":", 1)[-1].isdigit():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(socket_timeout)
        s.connect(address)
        return s
    else:
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=socket_timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Client:
    """One line-protocol connection.

    ``address`` is ``HOST:PORT`` or a Unix socket path. ``socket_timeout``
    bounds each read and write on the socket (``None``: no bound); when it
    passes, ``socket.timeout`` is raised and the connection should be
    closed. ``credential`` (the server's ``--secret``, or a token verified
    with its ``--token-key``) is sent first as ``@ CREDENTIAL``; a refused
    one closes the connection, and the next command that reads raises
    ``ServerError`` with the server's reason.
    """

    def __init__(self, address=DEFAULT_ADDRESS, socket_timeout=None, credential=None):
        self._sock = _connect(address, socket_timeout)
        # Bytes read and not yet taken: a frame is taken only once it is
        # whole, so a socket timeout never leaves half of one behind.
        self._in = bytearray()
        self._out = []
        self._published = collections.deque()
        #: Sends refused with ``- queue full`` so far, as far as the
        #: client has read (a send has no answer; its refusal is seen by
        #: the next command that reads one).
        self.refused = 0
        #: `<` commands written or buffered whose answers are not yet read.
        self._pending = 0
        if credential is not None:
            self._frame(b"@ " + _field(credential, "a credential") + b"\r\n")

    # -- output ------------------------------------------------------------

    def _frame(self, line, body=None):
        self._out.append(line)
        if body:
            self._out.append(body)
            self._out.append(b"\r\n")

    def flush(self):
        """Writes every command buffered with ``flush=False``."""
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._sock.sendall(data)

    def send(self, to, body=b"", timeout=30, reply=None, flush=True):
        """Sends a message to ``to`` (``> LEN TIMEOUT TO [REPLY]``). It waits at
        most ``timeout`` seconds in the queue for a receiver. With
        ``flush=False`` the command is buffered until the next flush (or the
        next command that needs an answer), so that several sends leave in
        one write."""
        body = _body(body)
        line = b"> %d %d %s" % (len(body), _timeout(timeout), _field(to, "an address"))
        if reply is not None:
            line += b" " + _field(reply, "a reply address")
        self._frame(line + b"\r\n", body)
        if flush:
            self.flush()

    def ready(self, addresses, timeout=30, pipeline=False):
        """Waits up to ``timeout`` seconds for one message on any of
        ``addresses`` (a name, or a list of at most 8). Returns a
        :class:`Message`, or ``None`` when none came in time.

        With ``pipeline=True`` the command is only buffered (it leaves with
        the next flush) and its answer is read later, in order, with
        :meth:`answer`: a handler can write its reply and its next waits in
        one write and read their answers afterwards."""
        if isinstance(addresses, (str, bytes)):
            addresses = [addresses]
        addresses = [_field(a, "an address") for a in addresses]
        if not 1 <= len(addresses) <= MAX_ADDRESSES:
            raise ValueError("ready takes 1 to %d addresses" % MAX_ADDRESSES)
        self._frame(b"< %d %s\r\n" % (_timeout(timeout), b" ".join(addresses)))
        self._pending += 1
        if pipeline:
            return None
        return self.answer()

    def answer(self):
        """The answer to the oldest ``ready`` not yet answered (see
        ``pipeline``): a :class:`Message` or ``None``. Flushes first."""
        if self._pending <= 0:
            raise Error("no ready is waiting for its answer")
        self.flush()
        self._pending -= 1
        return self._answer()

    def query(self, to, body=b"", timeout=30):
        """Sends ``body`` to ``to`` with a fresh reply address and waits up to
        ``timeout`` seconds for the reply: a :class:`Message`, or ``None``."""
        if self._pending:
            raise Error("read the answers of pipelined readies first")
        body = _body(body)
        self._frame(
            b"? %d %d %s\r\n" % (len(body), _timeout(timeout), _field(to, "an address")),
            body,
        )
        self.flush()
        return self._answer(query=True)

    def publish(self, channel, body=b"", content_type=None, flush=True):
        """Publishes to every subscriber of ``channel``."""
        body = _body(body)
        line = b"! %d %s" % (len(body), _field(channel, "a channel"))
        if content_type is not None:
            line += b" " + _field(content_type, "a content type")
        self._frame(line + b"\r\n", body)
        if flush:
            self.flush()

    def subscribe(self, channel):
        """Subscribes to ``channel`` (``*``: every channel)."""
        self._frame(b"+ %s\r\n" % _field(channel, "a channel"))
        self.flush()

    def unsubscribe(self, channel):
        """Ends a subscription."""
        self._frame(b"~ %s\r\n" % _field(channel, "a channel"))
        self.flush()

    def next_published(self, timeout=None):
        """The next channel message (a :class:`Published`). Waits at most
        ``timeout`` seconds (``None``: the socket's own timeout); returns
        ``None`` when none came in time."""
        if self._published:
            return self._published.popleft()
        self.flush()
        old = self._sock.gettimeout()
        if timeout is not None:
            self._sock.settimeout(timeout)
        try:
            while True:
                frame = self._read_frame()
                if frame is _REFUSED:
                    self.refused += 1
                    continue
                break
        except socket.timeout:
            return None
        finally:
            if timeout is not None:
                self._sock.settimeout(old)
        if isinstance(frame, Published):
            return frame
        raise ProtocolError("an answer came with no command waiting for it: %r" % (frame,))

    def close(self):
        """Says ``.`` and closes the connection."""
        try:
            self._out.append(b".\r\n")
            self.flush()
        except OSError:
            pass
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- input -------------------------------------------------------------

    def _answer(self, query=False):
        """The answer to a ``<`` or ``?``. A ``- queue full`` before it
        refused an earlier send (``<`` is never refused); for a ``?`` it is
        taken as the refusal of the query itself, the likelier case, since
        the two cannot be told apart."""
        while True:
            frame = self._read_frame()
            if isinstance(frame, Published):
                self._published.append(frame)
                continue
            if frame is _REFUSED:
                if query:
                    raise QueueFull("queue full")
                self.refused += 1
                continue
            return frame

    def _fill(self):
        data = self._sock.recv(65536)
        if not data:
            raise ProtocolError("the server closed the connection")
        self._in += data

    def _read_frame(self):
        """One frame: a Message, None (``*``), a Published, or _REFUSED.
        Raises ServerError on any other ``- reason``."""
        while True:
            frame = self._take_frame()
            if frame is not _INCOMPLETE:
                return frame
            self._fill()

    def _take_frame(self):
        """Takes one whole frame from the input, or returns _INCOMPLETE."""
        buf = self._in
        while True:
            end = buf.find(b"\n")
            if end < 0:
                return _INCOMPLETE
            line = bytes(buf[:end]).rstrip(b"\r")
            fields = line.split()
            if fields:
                break
            del buf[: end + 1]
        kind = fields[0]
        if kind == b"*":
            del buf[: end + 1]
            return None
        if kind == b"-":
            del buf[: end + 1]
            reason = line[1:].strip().decode("utf-8", "replace")
            if reason == "queue full":
                return _REFUSED
            raise ServerError(reason)
        try:
            n = int(fields[1])
        except (IndexError, ValueError):
            raise ProtocolError("not a frame: %r" % line)
        if not ((kind == b">" and len(fields) in (4, 5)) or (kind == b"!" and len(fields) == 4)):
            raise ProtocolError("not a frame: %r" % line)
        start = end + 1
        stop = start + n + (2 if n else 0)
        if len(buf) < stop:
            return _INCOMPLETE
        body = bytes(buf[start : start + n])
        if n and buf[start + n : stop] != b"\r\n":
            raise ProtocolError("a body was not followed by CRLF")
        del buf[:stop]
        if kind == b">":
            reply = fields[4].decode() if len(fields) == 5 else None
            return Message(fields[3].decode(), reply, int(fields[2]), body)
        return Published(fields[2].decode(), fields[3].decode(), body)

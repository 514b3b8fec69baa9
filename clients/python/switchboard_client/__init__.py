"""A client for switchboard's line protocol (msglite's, byte for byte).

One :class:`Client` is one connection. Its methods follow the protocol's
commands: :meth:`Client.send` (``>``), :meth:`Client.ready` (``<``),
:meth:`Client.query` (``?``), :meth:`Client.publish` (``!``),
:meth:`Client.subscribe` (``+``) and :meth:`Client.unsubscribe` (``~``);
:meth:`Client.take` takes up to N queued messages a round trip.
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

#: The most messages one ``take`` (``<<``) may ask for.
MAX_TAKE = 1024

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
#: Makes a named tuple from a tuple without the Python-level __new__.
_tuple = tuple.__new__


class ProtocolError(Error):
    """The server sent something this client does not understand, or the
    connection closed."""


_NOT_A_FIELD = re.compile(rb"[\x00-\x20\x7f]")

#: Names already checked, by the str or bytes given: a handler names the
#: same queue and reply address again and again. Cleared when full.
_FIELDS = {}
_FIELDS_MAX = 1024
#: ``<`` lines already made, by (address, timeout); cleared when full.
_READY_LINES = {}
#: ``take``'s commands already made, by (addresses, count, timeout).
_TAKE_LINES = {}


def _field(name, what):
    """Checks that ``name`` can be one field of a command line."""
    cls = name.__class__
    if cls is str or cls is bytes:
        raw = _FIELDS.get(name)
        if raw is not None:
            return raw
        raw = name if cls is bytes else name.encode("utf-8")
    elif isinstance(name, bytes):
        raw = bytes(name)
    else:
        raw = str(name).encode("utf-8")
    if not raw:
        raise ValueError("%s is empty" % what)
    if _NOT_A_FIELD.search(raw):
        raise ValueError("%s %r has a space or a control character" % (what, name))
    if cls is str or cls is bytes:
        if len(_FIELDS) >= _FIELDS_MAX:
            _FIELDS.clear()
        _FIELDS[name] = raw
    return raw


def _body(body):
    if body.__class__ is bytes:
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def _timeout(t):
    if t.__class__ is int and t >= 0:
        return t
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
        # Bytes read, taken up to self._at: a frame is taken only once it
        # is whole, so a socket timeout never leaves half of one behind.
        self._in = b""
        self._at = 0
        # How many bytes from self._at the frame being read needs in all,
        # once its command line is in (0: not known).
        self._want = 0
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
            self._out += (body, b"\r\n")

    def _send_many(self, to, bodies, timeout):
        """Buffers one message to ``to`` per body (each bytes or str), in
        order; for the WSGI adapter, whose answer is several messages to one
        reply address."""
        to = _field(to, "an address")
        timeout = _timeout(timeout)
        out = self._out
        for body in bodies:
            if body.__class__ is not bytes:
                body = _body(body)
            if body:
                out += (b"> %d %d %s\r\n" % (len(body), timeout, to), body, b"\r\n")
            else:
                out.append(b"> 0 %d %s\r\n" % (timeout, to))

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
        if body.__class__ is not bytes:
            body = _body(body)
        if reply is None:
            line = b"> %d %d %s\r\n" % (len(body), _timeout(timeout), _field(to, "an address"))
        else:
            line = b"> %d %d %s %s\r\n" % (
                len(body),
                _timeout(timeout),
                _field(to, "an address"),
                _field(reply, "a reply address"),
            )
        if body:
            self._out += (line, body, b"\r\n")
        else:
            self._out.append(line)
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
            # A handler asks for the same queue with the same timeout again
            # and again: the line is made and checked once.
            key = (addresses, timeout)
            line = _READY_LINES.get(key)
            if line is None:
                line = b"< %d %s\r\n" % (_timeout(timeout), _field(addresses, "an address"))
                if len(_READY_LINES) >= _FIELDS_MAX:
                    _READY_LINES.clear()
                _READY_LINES[key] = line
        else:
            addresses = [_field(a, "an address") for a in addresses]
            if not 1 <= len(addresses) <= MAX_ADDRESSES:
                raise ValueError("ready takes 1 to %d addresses" % MAX_ADDRESSES)
            line = b"< %d %s\r\n" % (_timeout(timeout), b" ".join(addresses))
        self._out.append(line)
        self._pending += 1
        if pipeline:
            return None
        return self.answer()

    def take(self, addresses, n, timeout=30):
        """Takes up to ``n`` messages in one round trip and returns them, a
        list (empty when none came in time), with ``<< N TIMEOUT ADDR...``:
        one wait of up to ``timeout`` seconds on ``addresses`` (a name, or a
        list of at most 8, as for :meth:`ready`); once it has a message, the
        server adds up to ``n - 1`` more already queued there, without
        waiting. Commands buffered with ``flush=False`` leave in the same
        write, so a handler that answers a round's messages with
        ``send(..., flush=False)`` sends its replies and its next round's
        wait together. The answers of waits made with ``pipeline=True`` must
        be read before it is called."""
        if self._pending:
            raise Error("take: %d pipelined waits are not answered yet" % self._pending)
        one = isinstance(addresses, (str, bytes))
        # A handler takes from the same queue in the same way again and
        # again: its command is made and checked once.
        line = _TAKE_LINES.get((addresses, n, timeout)) if one else None
        if line is None:
            if n.__class__ is not int or not 1 <= n <= MAX_TAKE:
                raise ValueError("take takes 1 to %d messages, not %r" % (MAX_TAKE, n))
            if one:
                names = _field(addresses, "an address")
            else:
                names = [_field(a, "an address") for a in addresses]
                if not 1 <= len(names) <= MAX_ADDRESSES:
                    raise ValueError("take takes 1 to %d addresses" % MAX_ADDRESSES)
                names = b" ".join(names)
            line = b"<< %d %d %s\r\n" % (n, _timeout(timeout), names)
            if one:
                if len(_TAKE_LINES) >= _FIELDS_MAX:
                    _TAKE_LINES.clear()
                _TAKE_LINES[addresses, n, timeout] = line
        self._out.append(line)
        self.flush()
        # The answer: up to n messages, then `*` when fewer came.
        self._pending = 1
        got = []
        take_frame = self._take_frame
        while True:
            frame = take_frame()
            if frame.__class__ is Message:
                got.append(frame)
                if len(got) == n:
                    break
            elif frame is None:
                break
            else:
                self._aside(frame)
        self._pending = 0
        return got

    def answer(self):
        """The answer to the oldest ``ready`` not yet answered (see
        ``pipeline``): a :class:`Message` or ``None``. Flushes first."""
        if self._pending <= 0:
            raise Error("no ready is waiting for its answer")
        if self._out:
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
            frame = self._take_frame()
            if frame is None or frame.__class__ is Message:
                return frame
            self._aside(frame, query)

    def _aside(self, frame, query=False):
        """A frame read while waiting for an answer that is not one: more
        input is read, a refusal counted (raised for a query), a channel
        message kept."""
        if frame is _INCOMPLETE:
            self._fill()
        elif frame is _REFUSED:
            if query:
                raise QueueFull("queue full")
            self.refused += 1
        else:
            self._published.append(frame)

    def _fill(self):
        """Reads more input. The bytes already read stay whatever happens (a
        socket timeout included); a frame whose length is known is read to
        its end before the pieces are joined, once."""
        rest = self._in[self._at :] if self._at else self._in
        need = self._want - len(rest)
        chunks = [rest]
        try:
            while True:
                data = self._sock.recv(min(max(need, 65536), 262144))
                if not data:
                    raise ProtocolError("the server closed the connection")
                chunks.append(data)
                need -= len(data)
                if need <= 0:
                    break
        finally:
            if len(chunks) == 2 and not rest:
                self._in = chunks[1]
            else:
                self._in = b"".join(chunks)
            self._at = 0

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
        at = self._at
        if buf.startswith(b"*\r\n", at):
            # A poll that found nothing: the commonest short answer.
            self._at = at + 3
            return None
        while True:
            end = buf.find(b"\n", at)
            if end < 0:
                self._want = 0
                return _INCOMPLETE
            fields = buf[at:end].split()
            if fields:
                break
            at = self._at = end + 1
        kind = fields[0]
        if kind == b"*":
            self._at = end + 1
            return None
        if kind == b"-":
            self._at = end + 1
            reason = buf[at:end].rstrip(b"\r")[1:].strip().decode("utf-8", "replace")
            if reason == "queue full":
                return _REFUSED
            raise ServerError(reason)
        nf = len(fields)
        if not ((kind == b">" and (nf == 4 or nf == 5)) or (kind == b"!" and nf == 4)):
            raise ProtocolError("not a frame: %r" % buf[at:end].rstrip(b"\r"))
        try:
            n = int(fields[1])
            if n < 0:
                raise ValueError
        except ValueError:
            raise ProtocolError("not a frame: %r" % buf[at:end].rstrip(b"\r"))
        start = end + 1
        if n:
            stop = start + n + 2
            if len(buf) < stop:
                self._want = stop - at
                return _INCOMPLETE
            if buf[stop - 2 : stop] != b"\r\n":
                raise ProtocolError("a body was not followed by CRLF")
            body = buf[start : stop - 2]
        else:
            stop = start
            body = b""
        try:
            if kind == b">":
                if nf == 5:
                    raw = fields[4]
                    reply = raw.decode()
                    # The answer goes back to it: checked once, here.
                    if len(_FIELDS) >= _FIELDS_MAX:
                        _FIELDS.clear()
                    _FIELDS[reply] = raw
                else:
                    reply = None
                frame = _tuple(Message, (fields[3].decode(), reply, int(fields[2]), body))
            else:
                frame = _tuple(Published, (fields[2].decode(), fields[3].decode(), body))
        except ValueError:
            raise ProtocolError("not a frame: %r" % buf[at:end].rstrip(b"\r"))
        self._at = stop
        self._want = 0
        return frame

"""The line-protocol client against the real server."""

import os
import socket
import tempfile
import time
import unittest

from switchboard_client import (
    Client,
    Error,
    Message,
    ProtocolError,
    Published,
    QueueFull,
    ServerError,
)

from .support import Server


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def client(self, **kw):
        c = Client(self.server.line, socket_timeout=10, **kw)
        self.addCleanup(c.close)
        return c

    def test_send_and_ready_are_binary_safe(self):
        a, b = self.client(), self.client()
        every_byte = bytes(range(256)) + b"\r\n> 5 30 x\r\n\r\n"
        a.send("c.bin", every_byte, timeout=30, reply="back.1")
        a.send("c.bin", "text é", timeout=30)
        a.send("c.bin", b"")
        m = b.ready("c.bin", timeout=5)
        self.assertEqual(m, Message("c.bin", "back.1", 30, every_byte))
        self.assertEqual(b.ready(["c.other", "c.bin"], timeout=5).body, "text é".encode())
        self.assertEqual(b.ready("c.bin", timeout=5), Message("c.bin", None, 30, b""))

    def test_ready_times_out_with_none(self):
        c = self.client()
        self.assertIsNone(c.ready("c.empty", timeout=0))
        self.assertIsNone(c.ready(["c.empty", "c.empty2"], timeout=1))

    def test_query_is_answered_on_its_reply_address(self):
        asker, answerer = self.client(), self.client()
        asker.send("c.clock", b"warm-up")  # buffered on the queue
        self.assertEqual(answerer.ready("c.clock", timeout=5).body, b"warm-up")
        # The query waits; the answerer, on another connection, replies.
        import threading

        got = {}
        t = threading.Thread(target=lambda: got.update(m=asker.query("c.clock", b"time?", timeout=10)))
        t.start()
        req = answerer.ready("c.clock", timeout=10)
        self.assertEqual(req.body, b"time?")
        self.assertIsNotNone(req.reply)
        answerer.send(req.reply, b"noon")
        t.join(10)
        self.assertEqual(got["m"].body, b"noon")
        self.assertEqual(got["m"].to, req.reply)
        self.assertIsNone(self.client().query("c.nobody", b"?", timeout=0))

    def test_publish_and_subscribe(self):
        sub, pub = self.client(), self.client()
        sub.subscribe("c.news")
        sub.subscribe("c.sync")
        # A barrier: once this comes back, the subscriptions are in place.
        sub.publish("c.sync", b"x")
        self.assertEqual(sub.next_published(timeout=5), Published("c.sync", "application/octet-stream", b"x"))
        pub.publish("c.news", b"one\r\ntwo", content_type="text/plain")
        pub.publish("c.news", b"")
        self.assertEqual(sub.next_published(timeout=5), Published("c.news", "text/plain", b"one\r\ntwo"))
        self.assertEqual(sub.next_published(timeout=5).body, b"")
        # Channel messages that come while an answer is awaited are kept.
        pub.publish("c.news", b"meanwhile")
        pub.send("c.q", b"job")
        self.assertEqual(sub.ready("c.q", timeout=5).body, b"job")
        self.assertEqual(sub.next_published(timeout=5).body, b"meanwhile")
        sub.unsubscribe("c.news")
        # A barrier: the unsubscribe has been run once this comes back.
        sub.publish("c.sync", b"z")
        self.assertEqual(sub.next_published(timeout=5).body, b"z")
        pub.publish("c.news", b"not for sub")
        sub.publish("c.sync", b"y")
        self.assertEqual(sub.next_published(timeout=5).channel, "c.sync")
        self.assertIsNone(sub.next_published(timeout=0.2))

    def test_bad_names_are_refused_before_sending(self):
        c = self.client()
        for bad in ["", "a b", "a\r\nb", "tab\there"]:
            with self.assertRaises(ValueError):
                c.send(bad, b"x")
        with self.assertRaises(ValueError):
            c.ready(["a"] * 9)
        with self.assertRaises(ValueError):
            c.ready("a", timeout=-1)
        # The connection is still fine.
        self.assertIsNone(c.ready("c.fine", timeout=0))

    def test_pipelined_readies_are_answered_in_order(self):
        a, b = self.client(), self.client()
        b.send("c.p1", b"one")
        b.send("c.p2", b"two")
        # A barrier: b's sends have been run once this is answered.
        self.assertIsNone(b.ready("c.barrier", timeout=0))
        self.assertIsNone(a.ready("c.p1", timeout=0, pipeline=True))
        a.ready("c.none", timeout=0, pipeline=True)
        a.ready("c.p2", timeout=0, pipeline=True)
        self.assertEqual(a.answer().body, b"one")
        self.assertIsNone(a.answer())
        self.assertEqual(a.answer().body, b"two")
        with self.assertRaises(Exception):
            a.answer()

    def test_buffered_sends_leave_in_one_write(self):
        a, b = self.client(), self.client()
        for i in range(3):
            a.send("c.batch", b"%d" % i, flush=False)
        a.flush()
        self.assertEqual([b.ready("c.batch", timeout=5).body for _ in range(3)], [b"0", b"1", b"2"])

    def test_take_takes_what_is_queued_up_to_its_count(self):
        a, b = self.client(), self.client()
        for i in range(5):
            b.send("c.take", b"%d" % i, reply="r.%d" % i)
        self.assertIsNone(b.ready("c.barrier", timeout=0))
        got = a.take("c.take", 3, timeout=30)
        self.assertEqual(got, [Message("c.take", "r.%d" % i, 30, b"%d" % i) for i in range(3)])
        # Fewer queued than asked for: those there are, at once (a wait of
        # 30 s would outlast the socket timeout of 10).
        self.assertEqual([m.body for m in a.take(["c.other", "c.take"], 16, timeout=30)], [b"3", b"4"])
        self.assertEqual(a.take("c.take", 4, timeout=0), [])

    def test_take_sends_what_is_buffered_with_its_waits(self):
        handler, caller = self.client(), self.client()
        caller.send("c.jobs", b"job 1", reply="c.done")
        handler.send("c.log", b"before", flush=False)
        (m,) = handler.take("c.jobs", 4, timeout=30)
        # The answer, buffered, leaves with the next round's waits.
        handler.send(m.reply, b"done: " + m.body, flush=False)
        caller.send("c.jobs", b"job 2", reply="c.done")
        self.assertEqual([m.body for m in handler.take("c.jobs", 4, timeout=30)], [b"job 2"])
        self.assertEqual(caller.ready("c.done", timeout=5).body, b"done: job 1")
        self.assertEqual(caller.ready("c.log", timeout=5).body, b"before")

    def test_take_keeps_channel_messages_and_refuses_bad_arguments(self):
        a, b = self.client(), self.client()
        a.subscribe("c.news")
        self.assertIsNone(a.ready("c.barrier", timeout=0))
        b.publish("c.news", b"hello")
        b.send("c.take2", b"x")
        self.assertIsNone(b.ready("c.barrier", timeout=0))
        self.assertEqual([m.body for m in a.take("c.take2", 2, timeout=5)], [b"x"])
        self.assertEqual(a.next_published(timeout=5).body, b"hello")
        for bad in [0, -1, 1.5, 1025]:
            with self.assertRaises(ValueError):
                a.take("c.take2", bad)
        with self.assertRaises(ValueError):
            a.take("a b", 2)
        with self.assertRaises(ValueError):
            a.take(["q"] * 9, 2)
        a.ready("c.take2", timeout=0, pipeline=True)
        with self.assertRaises(Error):
            a.take("c.take2", 2)
        self.assertIsNone(a.answer())
        self.assertEqual(a.take("c.take2", 2, timeout=0), [])


class LimitsTest(unittest.TestCase):
    def test_server_errors_and_full_queues(self):
        server = Server("--max-body", "16", "--max-queued-bytes", "200")
        self.addCleanup(server.stop)
        c = Client(server.line, socket_timeout=10)
        self.addCleanup(c.close)
        # 64 bytes of overhead + body each: the third send does not fit.
        for _ in range(3):
            c.send("l.full", b"0123456789")
        self.assertIsNone(c.ready("l.other", timeout=0))
        self.assertEqual(c.refused, 1)
        with self.assertRaises(QueueFull):
            c.query("l.full2", b"0123456789", timeout=1)
        # A body over --max-body: the server says why and closes.
        c.send("l.big", b"x" * 17)
        with self.assertRaises(ServerError) as e:
            c.ready("l.other", timeout=0)
        self.assertIn("16", str(e.exception))

    def test_a_credential_is_sent_first(self):
        server = Server("--secret", "s3cret")
        self.addCleanup(server.stop)
        c = Client(server.line, socket_timeout=10, credential="s3cret")
        self.addCleanup(c.close)
        c.send("l.auth", b"ok")
        self.assertEqual(c.ready("l.auth", timeout=1).body, b"ok")
        # Without it, the server refuses the first command and closes.
        anonymous = Client(server.line, socket_timeout=10)
        self.addCleanup(anonymous.close)
        with self.assertRaises(ServerError) as e:
            anonymous.ready("l.auth", timeout=0)
        self.assertIn("unauthorized", str(e.exception))
        wrong = Client(server.line, socket_timeout=10, credential="nope")
        self.addCleanup(wrong.close)
        with self.assertRaises(ServerError) as e:
            wrong.ready("l.auth", timeout=0)
        self.assertIn("invalid credentials", str(e.exception))

    def test_unix_socket_and_socket_timeout(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "line.sock")
        server = Server("--line-unix", path)
        self.addCleanup(server.stop)
        c = Client(path, socket_timeout=0.5)
        self.addCleanup(c.close)
        c.send("u.q", b"over unix")
        self.assertEqual(c.ready("u.q", timeout=1).body, b"over unix")
        c.subscribe("u.quiet")
        self.assertIsNone(c.next_published(timeout=0.2))
        with self.assertRaises(socket.timeout):
            c.ready("u.nothing", timeout=5)


class FramingTest(unittest.TestCase):
    """How the client reads frames that arrive in pieces, with the test as the
    peer (a listening socket it writes to by hand), so that where the input
    is cut is chosen, not left to the network."""

    def setUp(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        host, port = listener.getsockname()
        self.client = Client("%s:%d" % (host, port), socket_timeout=10)
        self.addCleanup(self.client.close)
        self.peer, _ = listener.accept()
        self.addCleanup(self.peer.close)

    def read(self, n):
        """N bytes the client wrote."""
        self.peer.settimeout(10)
        got = b""
        while len(got) < n:
            data = self.peer.recv(n - len(got))
            self.assertTrue(data, "the client closed its connection")
            got += data
        return got

    def test_a_timeout_inside_a_frame_loses_none_of_it(self):
        c = self.client
        body = b"one\r\ntwo"
        frame = b"! %d news text/plain\r\n%s\r\n" % (len(body), body)
        for cut in (1, 10, len(frame) - len(body) - 2, len(frame) - 1):
            self.peer.sendall(frame[:cut])
            # The first part is read, the rest does not come in time.
            self.assertIsNone(c.next_published(timeout=0.1))
            self.peer.sendall(frame[cut:] + b"! 0 news x\r\n")
            self.assertEqual(c.next_published(timeout=5), Published("news", "text/plain", body))
            self.assertEqual(c.next_published(timeout=5), Published("news", "x", b""))

    def test_a_large_body_in_many_pieces_and_frames_in_one_piece(self):
        c = self.client
        big = bytes(range(256)) * 4096 + b"\r\n> 1 2 x\r\n"
        c.ready("q", timeout=5, pipeline=True)
        c.ready("q", timeout=5, pipeline=True)
        c.ready("q", timeout=5, pipeline=True)
        c.flush()
        self.assertEqual(self.read(21), b"< 5 q\r\n" * 3)
        data = b"> %d 30 q R.1\r\n%s\r\n*\r\n\r\n> 0 7 q\r\n" % (len(big), big)
        for i in range(0, len(data), 1000):
            self.peer.sendall(data[i : i + 1000])
        self.assertEqual(c.answer(), Message("q", "R.1", 30, big))
        self.assertIsNone(c.answer())
        self.assertEqual(c.answer(), Message("q", None, 7, b""))

    def test_waits_are_framed_the_same_however_often_they_are_made(self):
        c = self.client
        for _ in range(2):
            c.ready("q", timeout=0, pipeline=True)
            c.ready(b"q", timeout=0, pipeline=True)
            c.ready("q", timeout=7, pipeline=True)
            c.ready("q", timeout=2.9, pipeline=True)
            c.ready(["q", b"r"], timeout=0, pipeline=True)
            for bad in ["a b", "", "\x00"]:
                with self.assertRaises(ValueError):
                    c.ready(bad, timeout=0, pipeline=True)
            with self.assertRaises(ValueError):
                c.ready("q", timeout=-1, pipeline=True)
        c.flush()
        want = b"< 0 q\r\n< 0 q\r\n< 7 q\r\n< 2 q\r\n< 0 q r\r\n" * 2
        self.assertEqual(self.read(len(want)), want)
        # Polls that found nothing, between messages.
        self.peer.sendall(b"*\r\n> 1 3 q\r\nx\r\n*\r\n*\r\n\r\n*\r\n> 0 4 r R\r\n*\r\n")
        got = [c.answer() for _ in range(7)]
        self.assertEqual(
            got,
            [None, Message("q", None, 3, b"x"), None, None, None, Message("r", "R", 4, b""), None],
        )
        c.ready("q", timeout=0, pipeline=True)
        c.ready("q", timeout=0, pipeline=True)
        c.ready("q", timeout=0, pipeline=True)
        # A `*` cut in two by the network.
        self.peer.sendall(b"*\r")
        time.sleep(0.05)
        self.peer.sendall(b"\n*\r\n*\r\n")
        self.assertEqual([c.answer() for _ in range(3)], [None, None, None])

    def test_take_reads_answers_in_pieces_past_refusals(self):
        c = self.client
        c.send("out", b"r", flush=False)
        # A refusal of the earlier send and a channel message come first;
        # the messages arrive cut at any byte; `*` ends the answer.
        pieces = [
            b"- queue ",
            b"full\r\n! 2 news x\r\nhi\r\n> 1 3 q R",
            b"\r\nx",
            b"\r\n> 2 3 q R2\r\nyz\r",
            b"\n*",
            b"\r\n",
        ]
        for piece in pieces:
            self.peer.sendall(piece)
            time.sleep(0.02)
        self.assertEqual(
            c.take("q", 4, timeout=5),
            [Message("q", "R", 3, b"x"), Message("q", "R2", 3, b"yz")],
        )
        want = b"> 1 30 out\r\nr\r\n<< 4 5 q\r\n"
        self.assertEqual(self.read(len(want)), want)
        self.assertEqual(c.refused, 1)
        self.assertEqual(c.next_published(timeout=5), Published("news", "x", b"hi"))
        # Nothing is left pending.
        with self.assertRaises(Error):
            c.answer()

    def test_take_of_n_reads_no_further_than_its_nth_message(self):
        c = self.client
        self.peer.sendall(b"> 1 3 q\r\na\r\n> 1 3 q\r\nb\r\n> 1 3 q\r\nc\r\n")
        # Two asked, two came: no `*` follows them, and the third message
        # is the answer of the next command that reads one.
        self.assertEqual(
            c.take("q", 2, timeout=5), [Message("q", None, 3, b"a"), Message("q", None, 3, b"b")]
        )
        self.assertEqual(c.ready("q", timeout=5), Message("q", None, 3, b"c"))
        want = b"<< 2 5 q\r\n< 5 q\r\n"
        self.assertEqual(self.read(len(want)), want)

    def test_malformed_frames_are_protocol_errors(self):
        for bad in [
            b"> -5 30 q\r\n",
            b"> x 30 q\r\n",
            b"> 1 30\r\n",
            b"! 1 news\r\n",
            b"> 3 30 q\r\nabcXY",
            b"> 0 soon q\r\n",
            b"> 0 30 \xff\r\n",
            b"? 0 30 q\r\n",
        ]:
            with self.subTest(bad=bad):
                self.setUp()
                self.peer.sendall(bad)
                with self.assertRaises(ProtocolError):
                    self.client.ready("q", timeout=5)

    def test_sends_are_framed_as_the_protocol_says(self):
        c = self.client
        c.send("q", b"", flush=False)
        c.send(b"q", "\u00e9", timeout=7, reply="r.1", flush=False)
        c.send("q", bytearray(b"ab"), timeout=2.9)
        want = b"> 0 30 q\r\n> 2 7 q r.1\r\n\xc3\xa9\r\n> 2 2 q\r\nab\r\n"
        self.assertEqual(self.read(len(want)), want)
        # A name checked once is checked the same way again.
        for _ in range(2):
            with self.assertRaises(ValueError):
                c.send("a b", b"x")
            with self.assertRaises(ValueError):
                c.send("q", b"x", reply="a\x00b")
            with self.assertRaises(ValueError):
                c.send("q", b"x", timeout=-1)


if __name__ == "__main__":
    unittest.main()

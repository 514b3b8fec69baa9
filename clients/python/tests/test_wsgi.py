"""The WSGI adapter: its environ, and real requests through the proxy door."""

import http.client
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from switchboard_client.wsgi import Response, build_environ

from .support import HERE, PYTHON, Server, python_env


class EnvironTest(unittest.TestCase):
    def test_the_envelope_becomes_a_wsgi_environ(self):
        env = {
            "method": "POST",
            "url": "/a%20b/c%2Fd?x=1&y=%20",
            "protocol": "HTTP/1.1",
            "id": "abc-1",
            "bodyAddr": "B.1",
            "headers": {
                "Host": "example.org:8080",
                "Content-Type": "text/plain",
                "Content-Length": "3",
                "X-Forwarded-For": "10.0.0.1, 10.0.0.2",
                "X-Forwarded-Proto": "https",
                "X-Custom": "caf\u00e9",
            },
        }
        e = build_environ(env, b"abc", multiprocess=True)
        self.assertEqual(e["REQUEST_METHOD"], "POST")
        self.assertEqual(e["PATH_INFO"], "/a b/c/d")
        self.assertEqual(e["QUERY_STRING"], "x=1&y=%20")
        self.assertEqual((e["SERVER_NAME"], e["SERVER_PORT"]), ("example.org", "8080"))
        self.assertEqual((e["CONTENT_TYPE"], e["CONTENT_LENGTH"]), ("text/plain", "3"))
        self.assertEqual(e["REMOTE_ADDR"], "10.0.0.1")
        self.assertEqual(e["wsgi.url_scheme"], "https")
        # Header values are the bytes sent, read as Latin-1 (PEP 3333).
        self.assertEqual(e["HTTP_X_CUSTOM"], "caf\u00c3\u00a9")
        self.assertEqual(e["wsgi.input"].read(), b"abc")
        self.assertTrue(e["wsgi.multiprocess"])
        self.assertEqual(e["switchboard.request_id"], "abc-1")
        self.assertNotIn("HTTP_CONTENT_TYPE", e)
        e = build_environ({"method": "GET", "url": "/", "protocol": "HTTP/1.0", "headers": {}}, b"")
        self.assertEqual((e["SERVER_NAME"], e["SERVER_PORT"]), ("localhost", "80"))
        self.assertNotIn("CONTENT_LENGTH", e)


class HeadTest(unittest.TestCase):
    def test_the_head_is_the_json_of_status_and_headers(self):
        headers = [
            ("Content-Type", "text/plain"),
            ("X-Quote", 'a "b" \\ c'),
            ("X-Latin", "caf\u00c3\u00a9"),  # WSGI's Latin-1 of UTF-8 bytes
            ("X-Tab", "a\tb"),
        ]
        r = Response(None, "R.1", 30)
        r.start_response("201 Created", headers)
        got = json.loads(r._head(length=12))
        self.assertEqual(
            got,
            ["201", ["Content-Type", "text/plain", "X-Quote", 'a "b" \\ c', "X-Latin", "caf\u00e9",
                     "X-Tab", "a\tb", "Content-Length", "12"]],
        )
        # A length the application gave is kept, and not given twice.
        r = Response(None, "R.1", 30)
        r.start_response("200 OK", [("content-length", "3")])
        self.assertEqual(r._head(length=3), b'["200",["content-length","3"]]')


class AdapterTest(unittest.TestCase):
    """The adapter in front of the real server, with two workers."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server("--proxy-listen", "127.0.0.1:0")
        cls.adapter = cls.start_adapter()

    @classmethod
    def start_adapter(cls, workers=2, *extra):
        return subprocess.Popen(
            [PYTHON, "-m", "switchboard_client.wsgi", "apps:app", "--workers", str(workers),
             "--connect", cls.server.line, *extra],
            cwd=HERE, env=python_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    @classmethod
    def tearDownClass(cls):
        stop(cls.adapter)
        cls.server.stop()

    def conn(self):
        host, port = self.server.proxy.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=20)
        self.addCleanup(c.close)
        return c

    def fetch(self, c, method, path, body=None, headers=None):
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r, r.read()

    def test_get_post_and_keep_alive(self):
        c = self.conn()
        r, body = self.fetch(c, "GET", "/hello?name=proxy")
        self.assertEqual((r.status, body), (200, b"hello, proxy\n"))
        self.assertEqual(r.getheader("X-App"), "apps")
        self.assertEqual(r.getheader("Content-Length"), str(len(body)))
        payload = os.urandom(300_000)
        r, body = self.fetch(c, "POST", "/echo", payload, {"Content-Type": "application/x-bytes"})
        self.assertEqual(r.status, 200)
        self.assertTrue(body == payload, "the echo differs")
        self.assertEqual(r.getheader("Content-Type"), "application/x-bytes")
        r, body = self.fetch(c, "GET", "/nowhere")
        self.assertEqual((r.status, body), (404, b"no such page\n"))

    def test_streamed_iterables_and_write(self):
        c = self.conn()
        r, body = self.fetch(c, "GET", "/stream")
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(body, b"part 0\npart 1\npart 2\n")
        r, body = self.fetch(c, "GET", "/write")
        self.assertEqual((r.status, body), (201, b"written, then returned"))

    def test_environ_through_the_proxy(self):
        c = self.conn()
        r, body = self.fetch(c, "PUT", "/environ/%7Eme?q=1", b"xyz",
                             {"X-Custom": "yes", "Content-Type": "text/x"})
        e = json.loads(body)
        self.assertEqual(e["REQUEST_METHOD"], "PUT")
        self.assertEqual(e["PATH_INFO"], "/environ/~me")
        self.assertEqual(e["QUERY_STRING"], "q=1")
        self.assertEqual((e["CONTENT_TYPE"], e["CONTENT_LENGTH"]), ("text/x", "3"))
        self.assertEqual(e["HTTP_X_CUSTOM"], "yes")
        self.assertEqual(e["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertTrue(e["wsgi.multiprocess"])
        self.assertTrue(e["switchboard.request_id"])

    def test_an_application_error_is_a_500(self):
        r, body = self.fetch(self.conn(), "GET", "/error")
        self.assertEqual((r.status, body), (500, b"Internal Server Error\n"))

    def test_a_killed_worker_is_replaced(self):
        c = self.conn()
        _, pid = self.fetch(c, "GET", "/pid")
        os.kill(int(pid), signal.SIGKILL)
        # A request handed to the worker in the instant it dies would be
        # lost with it (see docs/proxy.md): go on once it is dead, its
        # socket closed (a zombie, or reaped).
        deadline = time.monotonic() + 10
        while is_running(int(pid)):
            self.assertLess(time.monotonic(), deadline, "the killed worker lives on")
            time.sleep(0.01)
        # Every later request is answered (by the other worker or the new one).
        pids = set()
        for _ in range(6):
            r, body = self.fetch(self.conn(), "GET", "/pid")
            self.assertEqual(r.status, 200)
            pids.add(int(body))
        self.assertNotIn(int(pid), pids)


class RestartTest(unittest.TestCase):
    def test_requests_wait_for_the_adapter_and_a_stop_loses_none(self):
        server = Server("--proxy-listen", "127.0.0.1:0")
        self.addCleanup(server.stop)
        host, port = server.proxy.rsplit(":", 1)
        # Requests sent while no adapter runs.
        conns = []
        for i in range(3):
            c = http.client.HTTPConnection(host, int(port), timeout=30)
            self.addCleanup(c.close)
            c.request("GET", "/hello?name=early%d" % i)
            conns.append(c)
        adapter = AdapterTest.start_adapter.__func__(type("S", (), {"server": server}), workers=1)
        try:
            for i, c in enumerate(conns):
                r = c.getresponse()
                self.assertEqual(r.read(), b"hello, early%d\n" % i)
        finally:
            code = stop(adapter)
        self.assertEqual(code, 0)
        # Stopped: a new request waits, and a new adapter answers it.
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        self.addCleanup(c.close)
        c.request("GET", "/hello?name=later")
        adapter = AdapterTest.start_adapter.__func__(type("S", (), {"server": server}), workers=1)
        try:
            self.assertEqual(c.getresponse().read(), b"hello, later\n")
        finally:
            self.assertEqual(stop(adapter), 0)


class BatchTest(unittest.TestCase):
    def test_requests_taken_in_batches_are_each_answered_with_their_own_body(self):
        server = Server("--proxy-listen", "127.0.0.1:0", "--bus-listen", "127.0.0.1:0")
        self.addCleanup(server.stop)
        host, port = server.proxy.rsplit(":", 1)
        # Sent while no adapter runs, so that they are queued when it comes
        # and its one worker takes them four at a time: bodies and empty
        # bodies mixed, streamed and failing answers among them.
        sent = []
        for i in range(11):
            c = http.client.HTTPConnection(host, int(port), timeout=30)
            self.addCleanup(c.close)
            kind = i % 4
            if kind == 0:
                c.request("GET", "/hello?name=n%d" % i)
                want = (200, b"hello, n%d\n" % i)
            elif kind == 1:
                payload = os.urandom(1000 * i)
                c.request("POST", "/echo", payload, {"Content-Type": "application/x-%d" % i})
                want = (200, payload)
            elif kind == 2:
                c.request("GET", "/stream" if i % 8 == 2 else "/error")
                if i % 8 == 2:
                    want = (200, b"part 0\npart 1\npart 2\n")
                else:
                    want = (500, b"Internal Server Error\n")
            else:
                c.request("PUT", "/echo", b"", {"Content-Type": "text/x"})
                want = (200, b"")
            sent.append((c, want))
        adapter = AdapterTest.start_adapter.__func__(
            type("S", (), {"server": server}), 1, "--batch", "4"
        )
        try:
            for i, (c, want) in enumerate(sent):
                r = c.getresponse()
                self.assertEqual((r.status, r.read()), want, "request %d" % i)
            # The empty bodies the adapter did not read are gone with their
            # responses: nothing is left queued.
            host, port = server.doors["bus"].rsplit(":", 1)
            s = http.client.HTTPConnection(host, int(port), timeout=10)
            self.addCleanup(s.close)
            s.request("GET", "/msgbus-stats")
            stats = json.loads(s.getresponse().read())
            self.assertEqual(stats["queues"]["queued"], 0, stats["queues"])
        finally:
            code = stop(adapter)
        self.assertEqual(code, 0)


    def test_an_answer_in_a_batch_leaves_before_the_next_request_runs(self):
        server = Server("--proxy-listen", "127.0.0.1:0")
        self.addCleanup(server.stop)
        host, port = server.proxy.rsplit(":", 1)
        flag = os.path.join(tempfile.mkdtemp(), "go")
        first = http.client.HTTPConnection(host, int(port), timeout=30)
        self.addCleanup(first.close)
        first.request("GET", "/hello?name=first")
        second = http.client.HTTPConnection(host, int(port), timeout=30)
        self.addCleanup(second.close)
        # The second runs until the test, having the first's answer, makes
        # the file: were the first's answer held back until the second was
        # done, the second would wait in vain.
        second.request("GET", "/until?" + flag)
        adapter = AdapterTest.start_adapter.__func__(
            type("S", (), {"server": server}), 1, "--batch", "2"
        )
        try:
            r = first.getresponse()
            self.assertEqual(r.read(), b"hello, first\n")
            open(flag, "w").close()
            self.assertEqual(second.getresponse().read(), b"it exists")
        finally:
            self.assertEqual(stop(adapter), 0)


def is_running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open, or reaped between the open and the read.
        return False


def stop(proc):
    """SIGTERM, and the exit status (the workers finish and leave)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the adapter did not stop on SIGTERM")
    proc.stderr.close()
    return code


if __name__ == "__main__":
    unittest.main()

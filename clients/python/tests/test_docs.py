"""The handler printed in docs/proxy.md answers real requests."""

import http.client
import os
import re
import subprocess
import sys
import unittest

from .support import REPO, Server

DOC = os.path.join(REPO, "docs", "proxy.md")
MARKER = "<!-- handler tested by clients/python/tests/test_docs.py -->"


def doc_handler():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    after = text.split(MARKER, 1)[1]
    m = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    if m is None:
        raise AssertionError("no python block after the marker in docs/proxy.md")
    return m.group(1)


class DocHandlerTest(unittest.TestCase):
    def test_the_dozen_line_handler_answers(self):
        server = Server("--proxy-listen", "127.0.0.1:0")
        self.addCleanup(server.stop)
        code = doc_handler()
        host, port = server.line.rsplit(":", 1)
        self.assertIn('("127.0.0.1", 9813)', code)
        code = code.replace('("127.0.0.1", 9813)', '("%s", %s)' % (host, port))
        handler = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
        self.addCleanup(handler.wait)
        self.addCleanup(handler.kill)
        phost, pport = server.proxy.rsplit(":", 1)
        c = http.client.HTTPConnection(phost, int(pport), timeout=20)
        self.addCleanup(c.close)
        for path in ["/first", "/second?x=1"]:
            c.request("POST" if path == "/first" else "GET", path, body=b"ignored" if path == "/first" else None)
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"hello from %s\n" % path.encode()))
            self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")


if __name__ == "__main__":
    unittest.main()

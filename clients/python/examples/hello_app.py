"""A small WSGI application (stdlib only), served through the proxy door by
the adapter in docs/proxy.md and in the test that puts nginx in front:

    python -m switchboard_client.wsgi hello_app:app --workers 2
"""

import time
from wsgiref.simple_server import demo_app


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        name = environ["QUERY_STRING"].partition("name=")[2] or "world"
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [("hello, %s\n" % name).encode()]
    if path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/clock":
        # Streamed: each line goes out as it is made.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return clock(int(environ["QUERY_STRING"].partition("n=")[2] or 3))
    # Everything else: the standard library's demo page (the environ).
    return demo_app(environ, start_response)


def clock(n):
    for i in range(n):
        if i:
            time.sleep(0.05)
        yield ("tick %d\n" % i).encode()

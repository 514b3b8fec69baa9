"""WSGI applications the tests serve through the adapter (stdlib only)."""

import json
import os
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        name = environ["QUERY_STRING"].partition("name=")[2] or "world"
        body = ("hello, %s\n" % name).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "apps")])
        return [body]
    if path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n)
        start_response("200 OK", [("Content-Type", environ.get("CONTENT_TYPE", ""))])
        return [data]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (("part %d\n" % i).encode() for i in range(3))
    if path.startswith("/environ"):
        keys = [
            "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
            "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "HTTP_X_CUSTOM", "REMOTE_ADDR",
            "wsgi.url_scheme", "wsgi.multiprocess", "switchboard.request_id",
        ]
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/until":
        # Answers once the file named in the query exists (a test makes it).
        name = environ["QUERY_STRING"]
        deadline = time.monotonic() + 20
        while not os.path.exists(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"it exists" if os.path.exists(name) else b"it never came"]
    if path == "/error":
        raise RuntimeError("this page fails on purpose")
    if path == "/write":
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then returned"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page\n"]

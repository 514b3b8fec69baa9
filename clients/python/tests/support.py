"""Starts the real switchboard server for the tests, on ephemeral loopback
ports, and stops it at the end."""

import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(PACKAGE_ROOT))


def server_binary():
    path = os.environ.get("SWITCHBOARD_BIN") or os.path.join(REPO, "target", "debug", "switchboard")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            "no switchboard binary at %s: run `cargo build` first, or set SWITCHBOARD_BIN" % path
        )
    return path


class Server:
    """The server with ``args``; ``doors`` maps door names to addresses."""

    def __init__(self, *args):
        argv = [server_binary(), "--log-level", "warn"]
        if "--bus-listen" not in args:
            argv += ["--bus-listen", "off"]
        if "--line-listen" not in args:
            argv += ["--line-listen", "127.0.0.1:0"]
        argv += list(args)
        expected = sum(
            1
            for i, a in enumerate(argv)
            if a.endswith("-listen") and i + 1 < len(argv) and argv[i + 1] != "off"
        ) + argv.count("--line-unix")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.doors = {}
        while len(self.doors) < expected:
            line = self.proc.stdout.readline().decode()
            if not line:
                err = self.proc.stderr.read().decode()
                raise RuntimeError("switchboard exited before listening: " + err)
            f = line.split()
            if len(f) == 3 and f[0] == "listening":
                self.doors[f[1]] = f[2]
        self.stderr_lines = []
        self.drains = [
            threading.Thread(target=_drain, args=(stream, keep), daemon=True)
            for stream, keep in ((self.proc.stdout, None), (self.proc.stderr, self.stderr_lines))
        ]
        for t in self.drains:
            t.start()

    @property
    def line(self):
        return self.doors["line"]

    @property
    def proxy(self):
        return self.doors["proxy"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.drains:
            t.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _drain(stream, keep):
    for line in stream:
        if keep is not None:
            keep.append(line.decode("utf-8", "replace"))


def python_env():
    """The environment of a child Python that imports this package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, HERE, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable

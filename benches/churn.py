#!/usr/bin/env python3
"""Connection churn: the server's peak memory after many short-lived
line-protocol connections.

Starts SWITCHBOARD_BINARY (line door on 127.0.0.1:0, nothing else) and runs
ROUNDS rounds. In each round CONNS connections are opened and held; then
each, one right after the other, subscribes to a private channel,
publishes one byte to it and unsubscribes (the probe with which flood-sub
and the tests confirm a subscription); each reads its probe back; then all
of them close. After each round it prints
the server's VmRSS and VmHWM (peak RSS) from /proc, and at the end the
peak.

usage: python3 benches/churn.py SWITCHBOARD_BINARY [ROUNDS [CONNS]]
       (defaults: 6 rounds of 2,000 connections)
"""

import resource
import socket
import subprocess
import sys


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def main():
    if not 2 <= len(sys.argv) <= 4:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < conns + 100:
        raise SystemExit(f"the open-file limit {hard} is too low for {conns} connections")

    server = subprocess.Popen(
        [binary, "--line-listen", "127.0.0.1:0", "--bus-listen", "off",
         "--log-level", "warn"],
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().split()
        if line[:2] != ["listening", "line"]:
            raise SystemExit(f"unexpected first line from the server: {line}")
        host, port = line[2].rsplit(":", 1)
        addr = (host, int(port))
        print(f"server {binary}: VmRSS {status_kib(server.pid, 'VmRSS')} KiB at start")
        for r in range(rounds):
            # All connected first, then all probes sent back to back, so
            # that the server meets many of them in one turn of its loop.
            socks = [(socket.create_connection(addr, timeout=30), f"churn.{r}.{i}")
                     for i in range(conns)]
            for s, ch in socks:
                s.sendall(f"+ {ch}\r\n! 1 {ch}\r\nx\r\n~ {ch}\r\n".encode())
            for s, ch in socks:
                want = f"! 1 {ch} application/octet-stream\r\nx\r\n".encode()
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(len(want) - len(got))
                    if not chunk:
                        raise SystemExit(f"round {r}: {ch} closed before its probe")
                    got += chunk
                if got != want:
                    raise SystemExit(f"round {r}: {ch} got {got!r}")
            for s, _ in socks:
                s.close()
            print(f"round {r + 1}: {conns} connections, VmRSS "
                  f"{status_kib(server.pid, 'VmRSS')} KiB, VmHWM "
                  f"{status_kib(server.pid, 'VmHWM')} KiB")
        print(f"peak RSS (VmHWM) {status_kib(server.pid, 'VmHWM')} KiB after "
              f"{rounds} rounds of {conns} connections")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

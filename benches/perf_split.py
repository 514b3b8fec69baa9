#!/usr/bin/env python3
"""Where one core's time went during a wrk run, per request, from `perf script`.

usage: perf script -F pid,ip,sym,dso -i perf.data | \\
         perf_split.py REQUESTS_PER_SECOND "SERVER PIDS" "HANDLER PIDS"

`perf record -C 0 -g` samples core 0 at a fixed rate whether it is busy or
not, so a share of the samples is a share of its time; at
REQUESTS_PER_SECOND (wrk's figure for the run), one second of it is spread
over that many requests. Each sample is put in
one of these rooms, by its process (server, handlers, anything else; idle)
and by its call chain:

  user      the process' own code and its libraries
  send      in a send system call (send, sendto, sendmsg, write, writev)
  recv      in a receive system call (recv, recvfrom, recvmsg, read, readv)
  poll      waiting for readiness (epoll_wait, poll, select and the like)
  syscall   in any other system call
  other     the kernel outside a system call (interrupts, scheduling)

and for send and recv, how much of it was the kernel delivering a segment
over loopback to the socket at the other end (net_rx_action below the call:
the peer's receive path, paid by the sender on loopback).

Prints one row per side: microseconds per request in each room.
"""

import sys

SEND = {"send", "sendto", "sendmsg", "sendmmsg", "write", "writev"}
RECV = {"recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv"}
POLL = {"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6"}
ROOMS = ["user", "send", "recv", "poll", "syscall", "other"]


def room(frames):
    """The room of one sample, from its frames (leaf first), and whether
    the loopback delivery to a peer was below it."""
    if not frames or "[kernel.kallsyms]" not in frames[0]:
        return "user", False
    delivery = False
    for f in frames:
        if " net_rx_action " in f:
            delivery = True
        i = f.find(" __x64_sys_")
        if i >= 0:
            name = f[i + len(" __x64_sys_"):].split(" ", 1)[0]
            if name in SEND:
                return "send", delivery
            if name in RECV:
                return "recv", delivery
            if name in POLL:
                return "poll", False
            return "syscall", False
    return "other", False


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rate = float(sys.argv[1])
    sides = {int(p): "server" for p in sys.argv[2].split()}
    sides.update({int(p): "handlers" for p in sys.argv[3].split()})
    counts = {}  # (side, room) -> samples; (side, room + "/delivery") too
    total = 0
    pid, frames = None, []

    def flush():
        nonlocal total
        if pid is None:
            return
        total += 1
        side = "idle" if pid == 0 else sides.get(pid, "others")
        r, delivery = room(frames)
        counts[side, r] = counts.get((side, r), 0) + 1
        if delivery:
            counts[side, r + "/delivery"] = counts.get((side, r + "/delivery"), 0) + 1

    for line in sys.stdin:
        if not line.strip():
            continue
        if line[0] != "\t":  # a sample's pid, right-aligned; its frames follow, indented by a tab
            flush()
            pid, frames = int(line.split()[0]), []
        else:
            frames.append(line.strip())
    flush()
    if total == 0 or rate <= 0:
        sys.exit("no samples or no requests")
    per = 1e6 / rate / total  # µs of core 0 per sample, per request
    print("| side | " + " | ".join(ROOMS) + " | of send + recv: loopback delivery | total |")
    print("|---" * (len(ROOMS) + 3) + "|")
    for side in ["server", "handlers", "others", "idle"]:
        cells = [counts.get((side, r), 0) * per for r in ROOMS]
        if sum(cells) < 0.005 and side != "server":
            continue
        d = (counts.get((side, "send/delivery"), 0) + counts.get((side, "recv/delivery"), 0)) * per
        print(f"| {side} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {d:.2f} | {sum(cells):.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Workloads for `cargo xtask bench`.

  noise N              open N unrelated TCP sockets (N/2 loopback connections), hold them
  holder PORT          listen on PORT, hold it
  probe PORT COUNT MS  COUNT failing binds of PORT, MS apart; one JSON line per bind:
                       {"pid":..,"port":..,"returned_ns": CLOCK_REALTIME after bind() returned}
Each holding mode prints {"ready": true, "pid": ...} and waits for stdin to close.
"""
import json
import os
import resource
import socket
import sys
import time


def ready(**kw):
    print(json.dumps({"ready": True, "pid": os.getpid(), **kw}), flush=True)
    sys.stdin.read()


def noise(n):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    keep = []
    for _ in range(n // 2):
        c = socket.socket()
        c.connect(srv.getsockname())
        a, _ = srv.accept()
        keep += [c, a]
    ready(sockets=len(keep))


def holder(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    ready(port=port)


def probe(port, count, ms):
    for _ in range(count):
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            t = time.time_ns()
            print(json.dumps({"pid": os.getpid(), "port": port, "returned_ns": t}), flush=True)
        s.close()
        time.sleep(ms / 1000)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"noise": noise, "holder": holder, "probe": probe}[mode](*map(int, args))

#!/usr/bin/env python3
"""Real bind()/listen()/connect() situations for bindtrace's kernel tests.

Run inside a private network namespace (the tests use `ip netns exec`). Each case sets up real
sockets (and, where the case says "another process", real child processes), provokes the failure
and prints one JSON object on stdout: what the kernel actually answered, with the pid and command
of each process involved. The tests then compare bindtrace's events with this ground truth.

Cases follow ../../../shared/docs/seed-digest.md (numbers are the seed's).
"""

import ctypes
import errno
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
# With BINDCASES_HOLD=1 a case keeps its sockets and helper processes until a line arrives on
# stdin, so a test can look at what bindtrace said about them while they still exist.
HOLD = os.environ.get("BINDCASES_HOLD") == "1"


def sock(family=socket.AF_INET, kind=socket.SOCK_STREAM, reuseaddr=False, reuseport=False):
    s = socket.socket(family, kind)
    if reuseaddr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def attempt(fn):
    """Runs fn(); returns 0 on success or the errno it failed with."""
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def server(port, family=socket.AF_INET, host=HOST):
    """A listener to connect to (not the port under test)."""
    s = sock(family, reuseaddr=True)
    s.bind((host, port))
    s.listen(128)
    return s


TCP_TIME_WAIT = 6
TCP_FIN_WAIT2 = 5


class SetupFailed(Exception):
    """The kernel did not produce the situation a case needs (see `wait_for_tcp_state`); the case
    is run again (`__main__`)."""


SETUP_ATTEMPTS = 3


def wait_for_tcp_state(port, state, timeout=30.0, count=1):
    """Waits until `count` TCP sockets of this namespace bound to `port` are in `state` (the
    kernel's number, as /proc/net/tcp and tcp6 show it). The peer's FIN is processed in softirq: without
    this a busy machine may still show the closing side in FIN_WAIT2 when the next step runs.
    In the VM tier (software emulation, two VMs sharing the host) a helper's connection, closed
    first, has at times left no socket at all on its port: states seen [] after 30 s, in about
    one run of the whole tier in three, in a different case each time (tracepoint and kprobe).
    That is a setup failure, not bindtrace's: the case is run again, saying so on stderr."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                states += [int(fields[3], 16)
                           for fields in (line.split() for line in f.readlines()[1:])
                           if int(fields[1].rsplit(":", 1)[1], 16) == port]
        if states.count(state) >= count:
            return
        if time.monotonic() >= deadline:
            raise SetupFailed(f"no {count} socket(s) on port {port} reached TCP state {state} in "
                              f"{timeout} s; states seen there: {states}")
        time.sleep(0.005)


def spawn(case, *args, user=None):
    """Starts this script as another process running `case` (as `user` if given); returns
    (proc, first JSON line)."""
    p = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), case, *map(str, args)],
        stdin=subprocess.PIPE,  # the helper holds its sockets until this pipe closes
        stdout=subprocess.PIPE,
        text=True,
        user=user,
        env={**os.environ, "BINDCASES_HOLD": "0"},
    )
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"helper {case} died before reporting")
    return p, json.loads(line)


def report(**kw):
    kw.setdefault("pid", os.getpid())
    with open("/proc/self/comm") as f:
        kw.setdefault("comm", f.read().strip())
    print(json.dumps(kw), flush=True)


def finish(**kw):
    """Reports, then (with BINDCASES_HOLD=1) waits for the test before tearing anything down."""
    report(**kw)
    if HOLD:
        sys.stdin.readline()


# --- helpers run as "another process" -------------------------------------------------------


def helper_listen(port, reuseaddr, reuseport="0"):
    s = sock(reuseaddr=reuseaddr == "1", reuseport=reuseport == "1")
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    report(role="listener", uid=os.getuid())
    sys.stdin.read()


def helper_listen_on_device(port, dev):
    """A listener on 0.0.0.0:P bound to device `dev` (SO_BINDTODEVICE), after making a veth pair
    bt0/bt1 in this namespace (a second device to bind to); held until stdin closes."""
    subprocess.run(["ip", "link", "add", "bt0", "type", "veth", "peer", "name", "bt1"],
                   check=True, capture_output=True)
    s = sock()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    report(role="listener")
    sys.stdin.read()


def case_bind_on_device(port, dev):
    """The kernel's answer to a bind of 0.0.0.0:P from a socket bound to device `dev`."""
    s = sock()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    report(case="bind_on_device", errno=attempt(lambda: s.bind(("0.0.0.0", port))))


def helper_connect_and_leave(port, server_port, reuseaddr="0"):
    """Connects from `port` (no SO_REUSEADDR unless asked; port 0: the kernel chooses, from the
    ephemeral range, at connect()), closes first (so this side enters TIME-WAIT) and exits: the
    seed's 1a."""
    s = sock(reuseaddr=reuseaddr == "1")
    if int(port):
        s.bind((HOST, int(port)))
    s.connect((HOST, int(server_port)))
    report(role="client", local_port=s.getsockname()[1])
    s.close()


def helper_connect_v6(server_port):
    """A dual-stack client: an IPv6 socket without IPV6_V6ONLY connects to [::1]:server_port
    from an ephemeral port and holds the connection."""
    s = sock(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.connect(("::1", int(server_port)))
    report(role="client", local_port=s.getsockname()[1])
    sys.stdin.read()


def helper_connect_v6_and_leave(server_port):
    """A dual-stack client, as `curl -6` or a JVM's: an IPv6 socket without IPV6_V6ONLY connects
    to [::1]:server_port from an ephemeral port, closes first (TIME-WAIT on this side) and
    exits."""
    s = sock(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.connect(("::1", int(server_port)))
    report(role="client", local=s.getsockname()[1])
    s.close()


def helper_client_closes_on_line(server_port):
    """A client connected to server_port from an ephemeral port; on a line on stdin it closes
    first (its side goes to TIME-WAIT) and exits."""
    s = sock()
    s.connect((HOST, int(server_port)))
    report(role="client", local_port=s.getsockname()[1])
    sys.stdin.readline()
    s.close()


def helper_time_wait(port, reuseaddr):
    """Leaves a TIME-WAIT on `port` (a connection from it to a server of this process on port + 1,
    closed first on the connecting side; SO_REUSEADDR on that side if asked) and exits."""
    srv = server(int(port) + 1)
    c = sock(reuseaddr=reuseaddr == "1")
    c.bind((HOST, int(port)))
    c.connect((HOST, int(port) + 1))
    conn, _ = srv.accept()
    c.close()
    conn.recv(1)  # the client's FIN
    conn.close()  # now the client side moves to TIME-WAIT
    wait_for_tcp_state(int(port), TCP_TIME_WAIT)
    report(role="time_wait")


def helper_connect_nonblocking_and_leave(server_port):
    """Connects to server_port the way event loops and the JVM do — non-blocking, from an
    ephemeral port — closes first (TIME-WAIT on this side) and exits: the seed's 1a as it
    happens in production."""
    import select
    s = sock()
    s.setblocking(False)
    err = s.connect_ex((HOST, int(server_port)))
    select.select([], [s], [], 5)
    report(role="client", local=s.getsockname()[1], connect_errno=err)
    s.close()


def possible_cpus():
    """How many CPUs the kernel allows for (/sys/devices/system/cpu/possible: "0-1", "0-3,6")."""
    with open("/sys/devices/system/cpu/possible") as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n


def helper_slow_connect_among_new_threads(server_port, threads):
    """Connects to server_port from an ephemeral port while the server's accept queue is full (the
    SYN is dropped and retried a second or more later), and meanwhile starts `threads` short-lived
    threads on the same CPU, each making one traced call (listen() on a fresh socket). Reports once
    the threads are done, again once connected; then closes first (TIME-WAIT on this side) and
    exits."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    done = {}

    def connect():
        c = sock()
        started = time.monotonic()
        c.connect((HOST, int(server_port)))
        done["sock"], done["took"] = c, time.monotonic() - started

    t = threading.Thread(target=connect)
    t.start()
    time.sleep(0.2)  # its SYN has gone out and been dropped

    def one():
        s = socket.socket()
        s.listen()
        s.close()

    for _ in range(int(threads)):
        th = threading.Thread(target=one)
        th.start()
        th.join()
    report(role="threads", threads=int(threads), connected=not t.is_alive())
    t.join()
    c = done["sock"]
    report(role="client", local=c.getsockname()[1], connect_s=done["took"])
    c.close()


def helper_slow_connect_sharing_slot(server_port, hold_port, slots):
    """Connects to server_port from an ephemeral port while the server drops its SYN, and
    meanwhile starts a thread whose thread id equals the connecting thread's modulo `slots`
    (bindtrace keeps each thread's call in flight in slot tid % slots). That thread fails a bind
    on `hold_port`, held here, while the connect is still in flight; then this reports both thread
    ids and waits for the connect, reports again, closes first (TIME-WAIT on this side) and
    exits."""
    slots = int(slots)
    hold = sock()
    hold.bind((HOST, int(hold_port)))
    done = {}

    def connect():
        done["tid"] = threading.get_native_id()
        c = sock()
        c.connect((HOST, int(server_port)))
        done["sock"] = c

    t = threading.Thread(target=connect)
    t.start()
    time.sleep(0.2)  # its SYN has gone out and been dropped
    found = {}

    def one(want):
        tid = threading.get_native_id()
        if tid % slots == want % slots and tid != done["tid"]:
            s = sock()
            found["tid"], found["errno"] = tid, attempt(lambda: s.bind((HOST, int(hold_port))))
            found["connect_in_flight"] = t.is_alive()

    # Ask the kernel for a thread id sharing the slot (as root, ns_last_pid sets the id the next
    # task gets: what checkpoint/restore tools use), for each free candidate in turn; a task
    # another process starts at the same moment can take it, so up to 50 tries. A candidate in
    # use is waited for (up to 10 s in all): with a VM's pid_max of 32 768 there is one, and a
    # short-lived task of a test running beside this one had it. Failing that, start threads
    # until the ids come round, for at most a minute.
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    started = 0
    candidates = [(done["tid"] + k * slots) % pid_max for k in range(1, pid_max // slots + 1)]
    candidates = [c for c in candidates if c > 300 and c != done["tid"]]
    patience = time.monotonic() + 10
    turn = 0
    while candidates and started < 50 and not found:
        want = candidates[turn % len(candidates)]
        turn += 1
        if os.path.exists(f"/proc/{want}"):
            if time.monotonic() > patience:
                break
            time.sleep(0.05)
            continue
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(want - 1))
        except OSError:
            break
        th = threading.Thread(target=one, args=(want,))
        th.start()
        th.join()
        started += 1
        if found:
            break
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        th = threading.Thread(target=one, args=(done["tid"],))
        th.start()
        th.join()
        started += 1
    report(role="collider", connect_tid=done["tid"], collider_tid=found.get("tid"),
           collider_errno=found.get("errno"), connect_in_flight=found.get("connect_in_flight"),
           threads=started)
    t.join()
    c = done["sock"]
    report(role="client", local=c.getsockname()[1])
    c.close()


def helper_serve_one(port, close_first, dual="0"):
    """A server on P without SO_REUSEADDR (on 127.0.0.1, or with `dual` on [::] without
    IPV6_V6ONLY, as a JVM's or Node's) with one connection, from an IPv4 client of its own: with
    `close_first` it closes that connection first (its side goes to TIME-WAIT), closes the
    listener and exits; otherwise it closes only the listener and keeps serving the connection
    until stdin closes — a server being replaced while it drains its clients."""
    if dual == "1":
        lst = sock(socket.AF_INET6)
        lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        lst.bind(("::", int(port)))
    else:
        lst = sock()
        lst.bind((HOST, int(port)))
    lst.listen(4)
    client = socket.create_connection((HOST, int(port)))
    client_port = client.getsockname()[1]
    conn, _ = lst.accept()
    lst.close()
    if close_first == "1":
        conn.close()
        client.recv(1)  # the server's FIN
        client.close()
        report(client_port=client_port)
        return
    report(client_port=client_port)
    sys.stdin.readline()



def helper_listen_named(port, name):
    """Listens on P under the command name `name` (prctl PR_SET_NAME), as a daemon of that name
    would, and holds it until stdin closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
    lst = sock()
    lst.bind(("0.0.0.0", int(port)))
    lst.listen(4)
    report()
    sys.stdin.readline()


def helper_udp_bound(port):
    """A UDP socket bound to 0.0.0.0:P (a receiver), held until stdin closes."""
    s = sock(kind=socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    report(role="udp")
    sys.stdin.read()


def helper_udp_sendto(port):
    """A UDP client that sends to P without bind(): the kernel gives its socket an ephemeral
    port at the send. Reports that port; held until stdin closes."""
    s = sock(kind=socket.SOCK_DGRAM)
    s.sendto(b"x", (HOST, int(port)))
    report(role="udp_client", local=s.getsockname()[1])
    sys.stdin.read()


def helper_listen_and_leak(port):
    """Listens on P, starts `sleep` with the listener passed on (as a program started without
    closing its descriptors would), reports sleep's pid and exits."""
    lst = sock()
    lst.bind((HOST, int(port)))
    lst.listen(4)
    child = subprocess.Popen(["sleep", "120"], pass_fds=[lst.fileno()])
    report(child_pid=child.pid)


def helper_listen_and_fork(port):
    """Listens on P and forks a worker that keeps the listener, as a pre-fork server does;
    reports the worker's pid and holds until stdin closes (the worker until it is killed)."""
    lst = sock()
    lst.bind((HOST, int(port)))
    lst.listen(4)
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    report(worker_pid=child)
    sys.stdin.read()


def helper_connect_from(port, server_port, reuseaddr):
    """Connects to server_port from local port `port`, holds the connection until stdin closes."""
    s = sock(reuseaddr=reuseaddr == "1")
    s.bind((HOST, int(port)))
    s.connect((HOST, int(server_port)))
    report(role="client", local=s.getsockname()[1])
    sys.stdin.read()


# --- cases ------------------------------------------------------------------------------------


def case_3_1(port):
    """A listens on *:P; B (another process) binds P as a source port to connect out."""
    a, info = spawn("helper_listen", port, 1)
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="3.1", errno=err, port=port, addr=HOST, reuseaddr=True, reuseport=False, holder_pid=info["pid"])
    a.kill()


def case_3_2a(port):
    """B connected from P (no SO_REUSEADDR); A binds P with SO_REUSEADDR to listen."""
    srv = server(port + 1)
    b, info = spawn("helper_connect_from", port, port + 1, 0)
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="3.2a", errno=err, port=port, addr="0.0.0.0", reuseaddr=True, reuseport=False, holder_pid=info["pid"])
    b.kill()


def case_3_3(port):
    """One process connects from P to a server, then binds P to listen (no SO_REUSEADDR)."""
    srv = server(port + 1)
    c = sock()
    c.bind((HOST, port))
    c.connect((HOST, port + 1))
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="3.3", errno=err, port=port, addr="0.0.0.0", reuseaddr=False, reuseport=False)


def case_3_4(port):
    """One process listens on P, then binds a new socket to P as a source port."""
    lst = sock(reuseaddr=True)
    lst.bind(("0.0.0.0", port))
    lst.listen(16)
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="3.4", errno=err, port=port, addr=HOST, reuseaddr=True, reuseport=False)


def case_ipv6(port):
    """[::]:P is taken; a second IPv6 socket binds [::]:P."""
    a = sock(socket.AF_INET6)
    a.bind(("::", port))
    a.listen(16)
    s = sock(socket.AF_INET6)
    err = attempt(lambda: s.bind(("::", port)))
    finish(case="ipv6", errno=err, port=port, addr="::", reuseaddr=False, reuseport=False)


def case_udp(port):
    """Two UDP sockets on the same address, the second with SO_REUSEADDR only."""
    a = sock(kind=socket.SOCK_DGRAM)
    a.bind((HOST, port))
    s = sock(kind=socket.SOCK_DGRAM, reuseaddr=True)
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="udp", errno=err, port=port, addr=HOST, reuseaddr=True, reuseport=False)


def case_holders_gone(port):
    """The holders go before bindtrace looks (the test has it stopped meanwhile): another
    process's listener on P refuses a bind, then that process exits; a UDP socket here on P+1
    refuses another's bind, then is closed; a listener here on P+2 refuses a second socket's
    listen(), then is closed; a connection from P+3 refuses a bind, then is reset (no
    TIME-WAIT left)."""
    p, info = spawn("helper_listen", port, "0")
    err = attempt(lambda: sock().bind((HOST, port)))
    p.stdin.close()
    p.wait()
    u = sock(kind=socket.SOCK_DGRAM)
    u.bind((HOST, port + 1))
    udp_err = attempt(lambda: sock(kind=socket.SOCK_DGRAM).bind((HOST, port + 1)))
    u.close()
    a, b = sock(reuseaddr=True), sock(reuseaddr=True)
    a.bind((HOST, port + 2))
    b.bind((HOST, port + 2))
    a.listen(16)
    listen_err = attempt(lambda: b.listen(16))
    a.close()
    srv = server(port + 4)
    c = sock()
    c.bind((HOST, port + 3))
    c.connect((HOST, port + 4))
    conn_err = attempt(lambda: sock().bind((HOST, port + 3)))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    srv.close()
    finish(case="holders_gone", errno=err, udp_errno=udp_err, listen_errno=listen_err,
           conn_errno=conn_err, port=port, addr=HOST,
           holder_pid=info["pid"], holder_comm=info["comm"], reuseaddr=False, reuseport=False)


def case_listen(port):
    """A and B both SO_REUSEADDR, both bind P (allowed); A listens; B's listen() fails."""
    a = sock(reuseaddr=True)
    b = sock(reuseaddr=True)
    a.bind((HOST, port))
    b.bind((HOST, port))
    a.listen(16)
    err = attempt(lambda: b.listen(16))
    finish(case="listen", errno=err, port=port, addr=HOST, reuseaddr=True, reuseport=False)


def wildcard_listener(v6):
    """A SO_REUSEADDR socket about to bind the wildcard address: IPv4's, or with `v6` IPv6's
    without IPV6_V6ONLY, as a JVM binds by default. Returns (socket, address)."""
    if v6:
        s = sock(family=socket.AF_INET6, reuseaddr=True)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        return s, "::"
    return sock(reuseaddr=True), "0.0.0.0"


def case_1a(port, v6=0):
    """Another process connected from P without SO_REUSEADDR, closed first and exited: its
    TIME-WAIT (no owner left in the kernel) blocks a SO_REUSEADDR listener on P (IPv6's wildcard
    with `v6`)."""
    srv = server(port + 1)
    c, info = spawn("helper_connect_and_leave", port, port + 1)
    conn, _ = srv.accept()
    conn.recv(1)  # the client's FIN
    conn.close()  # now the client side moves to TIME-WAIT
    c.wait()
    wait_for_tcp_state(port, TCP_TIME_WAIT)
    s, addr = wildcard_listener(v6)
    err = attempt(lambda: s.bind((addr, port)))
    finish(case="1a", errno=err, port=port, addr=addr, reuseaddr=True, reuseport=False,
           holder_pid=info["pid"], holder_comm=info["comm"], remote_port=port + 1)


def case_1a_two_peers(port):
    """Two processes connected from the same port P to two different servers (SO_REUSEADDR lets
    the second bind P over the first's TIME-WAIT; the kernel allows the two 4-tuples), each closed
    first and exited: two TIME-WAITs on P, each from its own process. A bind of P without
    SO_REUSEADDR fails on both."""
    pids = []
    for peer in (port + 1, port + 2):
        srv = server(peer)
        c, info = spawn("helper_connect_and_leave", port, peer, "1")
        conn, _ = srv.accept()
        conn.recv(1)  # the client's FIN
        conn.close()
        c.wait()
        pids.append(info["pid"])
        wait_for_tcp_state(port, TCP_TIME_WAIT, count=len(pids))
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="1a_two_peers", errno=err, port=port, addr="0.0.0.0", reuseaddr=False,
           reuseport=False, pid_1=pids[0], pid_2=pids[1], comm_1=info["comm"])


def bind_over_time_wait(conn, client, local):
    """The server's end `conn` of a connection from the helper process `client`, which closes
    first and exits: closes it, so the client's side (port `local`) moves to TIME-WAIT, then tries
    a SO_REUSEADDR bind of 0.0.0.0:`local`. Returns 0 or the errno."""
    conn.recv(1)  # the client's FIN
    conn.close()
    client.wait()
    wait_for_tcp_state(local, TCP_TIME_WAIT)
    s = sock(reuseaddr=True)
    return attempt(lambda: s.bind(("0.0.0.0", local)))


def case_1a_nonblocking(port):
    """Like 1a, with a non-blocking connect from an ephemeral port to a server on `port`; then a
    SO_REUSEADDR listener wants that ephemeral port."""
    srv = server(port)
    c, info = spawn("helper_connect_nonblocking_and_leave", port)
    conn, _ = srv.accept()
    local = info["local"]
    err = bind_over_time_wait(conn, c, local)
    finish(case="1a_nonblocking", errno=err, port=local, addr="0.0.0.0", reuseaddr=True,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"], remote_port=port,
           connect_errno=info["connect_errno"])


def case_v6_client_time_wait(port):
    """An exited IPv6 client's TIME-WAIT, from an ephemeral port to a server on [::1]:P, blocks a
    SO_REUSEADDR bind of 0.0.0.0 on that port: without IPV6_V6ONLY the connection holds the port
    for IPv4's wildcard too."""
    srv = server(port, socket.AF_INET6, "::1")
    c, info = spawn("helper_connect_v6_and_leave", port)
    conn, _ = srv.accept()
    local = info["local"]
    err = bind_over_time_wait(conn, c, local)
    finish(case="v6_client_time_wait", errno=err, port=local, addr="0.0.0.0", reuseaddr=True,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"], remote_port=port)


def slow_connect_then_bind_over_time_wait(port, helper, *args):
    """Starts `helper` (another process, given `port` and `args`), whose connect to a server on
    `port` waits for its handshake: the server's accept queue (backlog 0) is full, so the first SYN
    is dropped. Once the helper's first report is in, makes room for its retried SYN (it comes 1,
    3, 7, 15, 31 or 63 s after the first: exponential backoff; under software emulation the helper
    can take tens of seconds), takes the connection and binds over its TIME-WAIT
    (`bind_over_time_wait`). Returns the bind's errno, the helper's first report and its report
    once connected (with `local`, its port)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(0)
    filler = socket.socket()
    filler.connect((HOST, port))  # the accept queue is now full: SYNs are dropped
    c, first = spawn(helper, port, *args)
    srv.settimeout(130)
    srv.accept()[0].close()  # room for the client's retried SYN
    conn, _ = srv.accept()
    info = json.loads(c.stdout.readline())
    return bind_over_time_wait(conn, c, info["local"]), first, info


def case_1a_among_new_threads(port):
    """Like 1a, but the connect waits for its handshake while thousands of new threads start making
    calls on its CPU: more than one CPU's share of bindtrace's per-thread table of calls in flight
    (16 384 entries, tracer-ebpf/src/pending.rs) if that table were split per CPU, as it
    once was. Its owner must still be remembered."""
    threads = min(16384 // possible_cpus() + 1000, 12000)
    err, _, info = slow_connect_then_bind_over_time_wait(
        port, "helper_slow_connect_among_new_threads", threads)
    finish(case="1a_among_new_threads", errno=err, port=info["local"], addr="0.0.0.0",
           reuseaddr=True, reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"],
           remote_port=port, threads=threads, connect_s=info["connect_s"])


def case_1a_shared_slot(port, slots):
    """Like 1a, but while the connect waits for its handshake another thread of the same process,
    whose thread id shares the connecting thread's slot in bindtrace's table of calls in flight,
    fails a bind: both calls must keep their own record. The failing bind must be reported, and the
    connection's owner remembered."""
    err, collider, info = slow_connect_then_bind_over_time_wait(
        port, "helper_slow_connect_sharing_slot", port + 1, slots)
    if collider.get("collider_tid") is None:
        # With pid_max 32 768 and 16 384 slots there is one candidate id, and a long-lived task
        # of another process can hold it for good (seen on the host tier: 751 422 threads in a
        # minute, none on the slot). Another connecting thread has another candidate.
        raise SetupFailed(f"no thread id sharing the connecting thread's slot came up "
                          f"({collider.get('threads')} threads started)")
    finish(case="1a_shared_slot", errno=err, port=info["local"], addr="0.0.0.0", reuseaddr=True,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"], remote_port=port,
           hold_port=port + 1, **{k: v for k, v in collider.items() if k not in ("pid", "comm")})


def case_1a_gated(port):
    """Reports its pid and waits for a line on stdin (the test moves it into a cgroup, which the
    helper it starts inherits), then runs 1a."""
    report(case="1a_gated", stage="ready", port=port)
    sys.stdin.readline()
    case_1a(port)


def case_time_wait_older_than_the_watch(port):
    """A server on P closes a connection it accepted, first (its side is then an orphaned
    FIN_WAIT2, no process holding it), and closes its listener; then it reports and waits for a
    line on stdin (the test starts a watch), the client closes, the server's side becomes a
    TIME-WAIT on P, and a bind of P fails on it. Nothing the watch could have seen made it."""
    srv = server(port)
    c = sock()
    c.connect((HOST, port))
    conn, _ = srv.accept()
    conn.close()
    srv.close()
    report(case="time_wait_older_than_the_watch", stage="ready", port=port)
    sys.stdin.readline()
    c.close()
    wait_for_tcp_state(port, TCP_TIME_WAIT)
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="time_wait_older_than_the_watch", errno=err, port=port, addr=HOST,
           reuseaddr=False, reuseport=False)


def case_time_wait_evicted(port, stride, count):
    """As 1a (an exited process's TIME-WAIT on P), then `count` more connections from ports P +
    k * `stride`, whose history records share P's set of slots (the test picks the stride), so
    that they evict P's: a bind of P fails on a TIME-WAIT whose record is gone."""
    port, stride = int(port), int(stride)
    srv = server(port + 1)
    c, info = spawn("helper_connect_and_leave", port, port + 1)
    conn, _ = srv.accept()
    conn.recv(1)
    conn.close()
    c.wait()
    wait_for_tcp_state(port, TCP_TIME_WAIT)
    for k in range(1, int(count) + 1):
        other = sock()
        other.bind((HOST, port + k * stride))
        other.connect((HOST, port + 1))
        theirs, _ = srv.accept()
        other.close()
        theirs.close()
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="time_wait_evicted", errno=err, port=port, addr=HOST, reuseaddr=False,
           reuseport=False, holder_pid=info["pid"])


def case_thread_fails_and_exits(port):
    """A listener on P; a thread named "worker-bind" binds P, fails, and the process exits at
    once (os._exit), before anyone could read its /proc."""
    import ctypes
    import threading
    srv = server(port)
    out = {}

    def work():
        ctypes.CDLL(None).prctl(15, b"worker-bind", 0, 0, 0)  # PR_SET_NAME, this thread only
        s = sock()
        out["errno"] = attempt(lambda: s.bind((HOST, port)))
        out["tid"] = threading.get_native_id()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    report(case="thread_fails_and_exits", errno=out["errno"], tid=out["tid"], port=port)
    srv.close()
    os._exit(0)


def case_1b(port, v6=0):
    """Another process holds an ESTABLISHED connection from P (no SO_REUSEADDR); a SO_REUSEADDR
    listener on P (IPv6's wildcard with `v6`) fails."""
    srv = server(port + 1)
    b, info = spawn("helper_connect_from", port, port + 1, 0)
    s, addr = wildcard_listener(v6)
    err = attempt(lambda: s.bind((addr, port)))
    finish(case="1b", errno=err, port=port, addr=addr, reuseaddr=True, reuseport=False,
           holder_pid=info["pid"], remote_port=port + 1)
    b.kill()


def case_reuseport_uids(port):
    """SO_REUSEPORT on both, but the listener belongs to uid 65534 and this process to root."""
    a, info = spawn("helper_listen", port, 0, 1, user=65534)
    s = sock(reuseport=True)
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="reuseport_uids", errno=err, port=port, addr="0.0.0.0", reuseaddr=False,
           reuseport=True, holder_pid=info["pid"], holder_uid=info["uid"])
    a.kill()


def helper_listen_then_drop(port):
    """A SO_REUSEPORT listener made as root by a process that then becomes uid 65534 (a server
    dropping privileges after binding): the socket stays root's."""
    s = sock(reuseport=True)
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    report(role="listener", uid=os.getuid())
    sys.stdin.read()


def case_reuseport_dropped_privileges(port):
    """The listener's process runs as uid 65534 but its socket is root's: a SO_REUSEPORT bind by
    uid 65534 (this process, after dropping to it) is refused, as the sockets' users differ."""
    a, info = spawn("helper_listen_then_drop", port)
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    s = sock(reuseport=True)
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="reuseport_dropped_privileges", errno=err, port=port, addr="0.0.0.0",
           reuseaddr=False, reuseport=True, holder_pid=info["pid"], holder_uid=info["uid"])
    a.kill()


def case_dual_stack(port):
    """[::]:P without IPV6_V6ONLY also covers IPv4: a bind of 0.0.0.0:P fails."""
    a = sock(socket.AF_INET6)
    a.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    a.bind(("::", port))
    a.listen(16)
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="dual_stack", errno=err, port=port, addr="0.0.0.0", reuseaddr=False, reuseport=False)


def case_client_chose_its_port(port):
    """With ip_local_port_range narrowed to P..P+1, a client binds P itself and connects, and
    another connects from a port the kernel chooses (P+1: P's bind bucket is not one connect()
    reuses); both close first and exit. Binds of P and then P+1 fail on their TIME-WAITs."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{port} {port + 1}")
    srv = server(port + 10)
    out = {}
    for name, asked in (("bound", port), ("ephemeral", 0)):
        c, info = spawn("helper_connect_and_leave", asked, port + 10)
        conn, _ = srv.accept()
        conn.recv(1)
        conn.close()
        c.wait()
        wait_for_tcp_state(info["local_port"], TCP_TIME_WAIT)
        out[name] = info["local_port"]
    for name in ("bound", "ephemeral"):
        s = sock()
        out[name + "_errno"] = attempt(lambda: s.bind((HOST, out[name])))
    finish(case="client_chose_its_port", **out)


def case_connect_exhaust(port):
    """With ip_local_port_range narrowed to 4 ports in this namespace, the 5th connection to
    the same server finds no free source port: connect() fails with EADDRNOTAVAIL."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("40000 40003")
    srv = server(port)
    conns = []
    err = 0
    for _ in range(5):
        c = sock()
        err = attempt(lambda: c.connect((HOST, port)))
        if err:
            break
        conns.append(c)
    finish(case="connect_exhaust", errno=err, port=0, remote_port=port, connected=len(conns),
           reuseaddr=False, reuseport=False)


def case_connect_exhaust_by_clients(port):
    """As case_connect_exhaust, but the range's 4 ports are held by 4 client processes (forked,
    one connection each, as a client run once per request): the 5th connection, the parent's,
    fails with EADDRNOTAVAIL."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("40000 40003")
    srv = server(port)
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    clients = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            c = sock()
            c.connect((HOST, port))
            os.write(ready_w, b".")
            os.read(hold_r, 1)
            os._exit(0)
        clients.append(pid)
    for _ in clients:
        os.read(ready_r, 1)
    c = sock()
    err = attempt(lambda: c.connect((HOST, port)))
    finish(case="connect_exhaust_by_clients", errno=err, port=0, remote_port=port,
           clients=clients, reuseaddr=False, reuseport=False)
    os.close(hold_w)
    for pid in clients:
        os.waitpid(pid, 0)
    srv.close()


def case_udp_connect_exhaust(port):
    """With ip_local_port_range narrowed to 2 ports and both held by UDP sockets, a UDP socket's
    connect() finds no port to autobind: EAGAIN. Before it, a non-blocking AF_UNIX connect() to a
    full backlog fails with EAGAIN too, which is not a port problem and must not be reported."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("40000 40001")
    held = [sock(kind=socket.SOCK_DGRAM) for _ in range(2)]
    for u in held:
        u.bind(("0.0.0.0", 0))
    name = "\0bindtrace-full-backlog-%d" % os.getpid()
    unix_srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_srv.bind(name)
    unix_srv.listen(0)
    waiting = []
    unix_err = 0
    for _ in range(4):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        unix_err = attempt(lambda: c.connect(name))
        waiting.append(c)
        if unix_err:
            break
    u = sock(kind=socket.SOCK_DGRAM)
    err = attempt(lambda: u.connect((HOST, port)))
    finish(case="udp_connect_exhaust", errno=err, unix_errno=unix_err, port=0, remote_port=port,
           held_ports=sorted(h.getsockname()[1] for h in held), reuseaddr=False, reuseport=False)


def case_connect_tuple(port):
    """Another process connected from P to a server, both with SO_REUSEADDR, so this one can bind
    P too (what `curl --local-port` does); its connect() to the same server is refused with
    EADDRNOTAVAIL: the four-tuple is taken, with every other port of the range free."""
    srv = server(port + 1)
    helper, info = spawn("helper_connect_from", port, port + 1, "1")
    s = sock(reuseaddr=True)
    s.bind((HOST, port))
    err = attempt(lambda: s.connect((HOST, port + 1)))
    finish(case="connect_tuple", errno=err, port=port, addr=HOST, remote_port=port + 1,
           reuseaddr=True, reuseport=False, holder_pid=info["pid"])
    helper.kill()


def case_device(port):
    """A listener bound to `lo` (SO_BINDTODEVICE) on P; a second socket bound to `lo` fails to
    bind P."""
    a = sock()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    a.bind(("0.0.0.0", port))
    a.listen(16)
    s = sock()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="device", errno=err, port=port, addr="0.0.0.0", reuseaddr=False, reuseport=False)


def case_server_restart(port, draining):
    """A server on P without SO_REUSEADDR is replaced: the previous one closed its connection
    first and exited (its side of it is in TIME-WAIT on P, owned by no process), or with
    `draining` closed only its listener and still serves the connection. The new server binds P
    without SO_REUSEADDR."""
    helper, info = spawn("helper_serve_one", port, 0 if draining else 1)
    if not draining:
        helper.wait()
        wait_for_tcp_state(port, TCP_TIME_WAIT)
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="server_restart", errno=err, port=port, addr=HOST, reuseaddr=False,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"],
           remote_port=info["client_port"])


def case_server_restart_two_sockets(port, dual=0):
    """A server on P without SO_REUSEADDR (on 127.0.0.1, or with `dual` on [::] without
    IPV6_V6ONLY) closed its connection first and exited (its side is in TIME-WAIT on P); its
    successor, with SO_REUSEADDR, listens on [::]:P with IPV6_V6ONLY (which the TIME-WAIT does not
    meet), then binds 0.0.0.0:P — nginx's `listen 80; listen [::]:80 ipv6only=on` — which the
    old server's TIME-WAIT refuses."""
    helper, info = spawn("helper_serve_one", port, 1, dual)
    helper.wait()
    wait_for_tcp_state(port, TCP_TIME_WAIT)
    s6 = sock(socket.AF_INET6, reuseaddr=True)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.bind(("::", port))
    s6.listen(8)
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="server_restart_two_sockets", errno=err, port=port, addr="0.0.0.0",
           reuseaddr=True, reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"],
           remote_port=info["client_port"])


def case_known_holder(port):
    """docker-proxy (by name) listens on P, publishing a container's port; bind P."""
    helper, info = spawn("helper_listen_named", port, "docker-proxy")
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    finish(case="known_holder", errno=err, port=port, addr="0.0.0.0", reuseaddr=False,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"])
    helper.kill()


def case_inherited(port):
    """A server listened on P, started a program that inherited the listener, and exited: the
    program holds P. Bind P."""
    helper, info = spawn("helper_listen_and_leak", port)
    helper.wait()
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    try:
        finish(case="inherited", errno=err, port=port, addr=HOST, reuseaddr=False,
               reuseport=False, holder_pid=info["child_pid"], opener_pid=info["pid"],
               opener_comm=info["comm"])
    finally:
        os.kill(info["child_pid"], 9)


def case_forked_workers(port):
    """A server listens on P and forks a worker that shares the listener, both running: bind P.
    The worker keeps the port as much as the server does."""
    server, info = spawn("helper_listen_and_fork", port)
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    try:
        finish(case="forked_workers", errno=err, port=port, addr=HOST, reuseaddr=False,
               reuseport=False, holder_pid=info["pid"], worker_pid=info["worker_pid"])
    finally:
        os.kill(info["worker_pid"], 9)
        server.kill()


def case_worker_outlives_server(port):
    """A pre-fork server listens on P, forks a worker and exits (or daemonizes): the worker, the
    same program, holds P. Bind P."""
    server, info = spawn("helper_listen_and_fork", port)
    server.stdin.close()
    server.wait()
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    try:
        finish(case="worker_outlives_server", errno=err, port=port, addr=HOST, reuseaddr=False,
               reuseport=False, holder_pid=info["worker_pid"], opener_pid=info["pid"])
    finally:
        os.kill(info["worker_pid"], 9)


def case_orphaned_connection(port):
    """A client connected from P to a server of this process, closed and exited; the server
    does not close its end (CLOSE_WAIT), so the client's end stays in FIN_WAIT2 with no process
    holding it. Bind P with SO_REUSEADDR."""
    srv = server(port + 1)
    client, info = spawn("helper_connect_and_leave", port, port + 1)
    client.wait()
    conn, _ = srv.accept()
    # The FIN's ACK moves it from FIN_WAIT1 on (in softirq, which a busy machine delays).
    wait_for_tcp_state(port, TCP_FIN_WAIT2)
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="orphaned_connection", errno=err, port=port, addr=HOST, reuseaddr=True,
           reuseport=False, holder_pid=info["pid"])
    conn.close()


def case_reuseport_sibling_left(port):
    """A listens on P with SO_REUSEPORT; B, started later, joins the group and exits; a bind of
    P without SO_REUSEPORT fails against A. The history saw B take the port last, but A ran
    before that and opened its own socket: it must not be said to have inherited B's."""
    a, a_info = spawn("helper_listen", port, "0", "1")
    time.sleep(0.05)  # A starts some clock ticks (10 ms each in /proc) before B binds
    b, b_info = spawn("helper_listen", port, "0", "1")
    b.stdin.close()
    b.wait()
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", port)))
    try:
        finish(case="reuseport_sibling_left", errno=err, port=port, addr="0.0.0.0",
               reuseaddr=False, reuseport=False, holder_pid=a_info["pid"], left_pid=b_info["pid"])
    finally:
        a.kill()


def case_thread_time_wait(port):
    """A thread named `pool-conn-1` of this process connects from P to a server, closes first
    (TIME-WAIT on its side) and ends; the process, still running, then binds P. The TIME-WAIT's
    owner comes from history, which has the thread's name: the process's is given, the
    thread's beside it."""
    srv = server(port + 1)

    def work():
        ctypes.CDLL(None).prctl(15, b"pool-conn-1", 0, 0, 0)  # PR_SET_NAME, this thread only
        c = sock()
        c.bind((HOST, port))
        c.connect((HOST, port + 1))
        a, _ = srv.accept()
        c.close()
        a.close()
        wait_for_tcp_state(port, TCP_TIME_WAIT)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="thread_time_wait", errno=err, port=port, addr=HOST, reuseaddr=False,
           reuseport=False, thread="pool-conn-1")


def helper_thread_connect_and_leave(port, server_port):
    """A thread named `pool-conn-1` connects from P to server_port and closes first (TIME-WAIT
    on its side); then the process exits."""
    def work():
        ctypes.CDLL(None).prctl(15, b"pool-conn-1", 0, 0, 0)  # PR_SET_NAME, this thread only
        c = sock()
        c.bind((HOST, int(port)))
        c.connect((HOST, int(server_port)))
        c.close()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    report(role="client")


def case_exited_thread_time_wait(port):
    """A thread named `pool-conn-1` of another process left a TIME-WAIT on P, and that process
    has exited: the history kept the process's name. Bind P."""
    srv = server(port + 1)
    client, info = spawn("helper_thread_connect_and_leave", port, port + 1)
    client.wait()
    a, _ = srv.accept()
    a.close()
    wait_for_tcp_state(port, TCP_TIME_WAIT)
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    finish(case="exited_thread_time_wait", errno=err, port=port, addr=HOST, reuseaddr=False,
           reuseport=False, holder_pid=info["pid"], holder_comm=info["comm"])


def case_bind_reuseaddr(port):
    """Binds 127.0.0.1:P with SO_REUSEADDR and reports the errno (0: bound)."""
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind((HOST, port)))
    report(case="bind_reuseaddr", errno=err, port=port)


def case_address_checks(port):
    """bind() refused its address before any port rule, one way per port from P: an IPv6
    link-local address with no interface (EINVAL), an IPv4-mapped address on an IPV6_V6ONLY
    socket (EINVAL), a multicast address on TCP (EINVAL), a scope id naming no interface
    (ENODEV), and an address still tentative — on a veth whose peer is down, IPv6 duplicate
    address detection waits for carrier (EADDRNOTAVAIL)."""
    def v6(v6only=None):
        s = sock(family=socket.AF_INET6)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        return s
    errs = {
        "link_local": attempt(lambda: v6(0).bind(("fe80::1", port))),
        "mapped": attempt(lambda: v6(1).bind(("::ffff:127.0.0.1", port + 1))),
        "multicast": attempt(lambda: v6().bind(("ff05::1", port + 2))),
        "no_device": attempt(lambda: v6().bind(("fe80::1", port + 3, 0, 9999))),
    }
    # A socket bound already: its second bind is refused for that, whatever the address.
    again = v6(0)
    again.bind(("::1", port + 5))
    errs["rebound"] = attempt(lambda: again.bind(("fe80::1", port + 6)))
    # An address shorter than the socket's family needs (a sockaddr_in on an AF_INET6 socket):
    # malformed, refused before any port rule, reported by no backend.
    libc = ctypes.CDLL(None, use_errno=True)
    short = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port + 7),
                        socket.inet_aton(HOST))
    s6 = v6()
    errs["short"] = 0 if libc.bind(s6.fileno(), short, len(short)) == 0 else ctypes.get_errno()
    try:
        for args in (["link", "add", "bt0", "type", "veth", "peer", "name", "bt1"],
                     ["link", "set", "bt0", "up"],
                     ["-6", "addr", "add", "2001:db8::7/64", "dev", "bt0"]):
            subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
        errs["tentative"] = attempt(lambda: v6().bind(("2001:db8::7", port + 4)))
    except (OSError, subprocess.CalledProcessError) as e:
        errs["tentative_setup"] = f"{e} {getattr(e, 'stderr', '')}".strip()
    # The last call: once its failure is reported, every earlier one is in.
    errs["marker"] = attempt(lambda: sock().bind(("192.0.2.1", port + 9)))
    report(case="address_checks", port=port, **errs)



def case_successes(port, count=50):
    """`count` binds that all succeed, then one marker failure (bind of an address not on
    this host): once the marker is reported, every earlier event of this process has been."""
    socks = []
    for i in range(count):
        s = sock(reuseaddr=i % 2 == 0)
        s.bind((HOST, port + i))
        if i % 3 == 0:
            s.listen(4)
        socks.append(s)
    anyport = sock()
    anyport.bind((HOST, 0))
    marker = sock()
    err = attempt(lambda: marker.bind(("192.0.2.1", port)))
    report(case="successes", ok=count, marker_errno=err, marker_port=port, first=port, last=port + count - 1,
           any_port=anyport.getsockname()[1])


def case_errnos(port):
    """EADDRNOTAVAIL (address not on this host) and EINVAL (a socket bound twice)."""
    a = sock()
    e1 = attempt(lambda: a.bind(("192.0.2.7", port)))
    b = sock()
    b.bind((HOST, port))
    e2 = attempt(lambda: b.bind((HOST, port + 1)))
    report(case="errnos", eaddrnotavail=e1, einval=e2, port=port)


def case_eacces(port):
    """Run as an unprivileged user: binding a port below 1024 fails with EACCES."""
    s = sock()
    err = attempt(lambda: s.bind((HOST, port)))
    report(case="eacces", errno=err, port=port, uid=os.getuid())


def case_filters(port):
    """Failures on port+1 (twice), then on port: for --port filter tests. Once the failure on
    `port` is reported, the earlier ones would have been too had the filter let them through."""
    hold = sock()
    hold.bind((HOST, port))
    hold2 = sock()
    hold2.bind((HOST, port + 1))
    results = []
    for p in (port + 1, port + 1, port):
        s = sock()
        results.append(attempt(lambda: s.bind((HOST, p))))
    report(case="filters", errnos=results, port=port, other=port + 1)


def case_burst(port, count):
    """Holds `port`, fails one bind on it, then after 20 ms `count` more, 1 ms apart, and keeps
    quiet afterwards. The collector reads each record faster than 1 ms (its holder lookup for
    the port is fresh), so it sleeps between them; records within 5 ms of a CPU's last waking one
    do not wake it, and only its follow-up read brings in the last of them."""
    hold = sock()
    hold.bind((HOST, port))
    errnos = []

    def fail():
        s = sock()
        errnos.append(attempt(lambda: s.bind((HOST, port))))
        s.close()

    fail()
    time.sleep(0.02)
    for _ in range(count):
        fail()
        time.sleep(0.001)
    report(case="burst", failures=sum(1 for e in errnos if e == 98), port=port)


def case_other_netns(port, netns_path):
    """A socket made in this namespace, bound after the process moved to another one
    (setns): the bind happens, and fails, in the socket's namespace, where `port` is held."""
    hold = sock()
    hold.bind((HOST, port))
    s = sock()
    home = os.stat("/proc/self/ns/net").st_ino
    libc = ctypes.CDLL(None, use_errno=True)
    with open(netns_path) as f:
        if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    now_in = os.stat("/proc/self/ns/net").st_ino
    err = attempt(lambda: s.bind((HOST, port)))
    report(case="other_netns", errno=err, port=port, socket_netns=home, process_netns=now_in,
           addr=HOST, reuseaddr=False, reuseport=False)


def case_storm(port, seconds):
    """Holds `port`, reports, then fails binds on it as fast as it can until a line arrives on
    stdin (or `seconds` pass); reports how many failed."""
    import select
    hold = sock()
    hold.bind((HOST, port))
    report(case="storm", stage="ready", port=port)
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(50):
            s = sock()
            if attempt(lambda: s.bind((HOST, port))):
                failures += 1
            s.close()
        if select.select([sys.stdin], [], [], 0)[0]:
            break
    report(case="storm", stage="done", failures=failures, port=port)


def case_v6_client_blocks_v4_wildcard(port):
    """A server of this process listens on [::1]:P; another process's IPv6 connection to it,
    from an ephemeral port E, holds E for IPv4's 0.0.0.0 too: a
    SO_REUSEADDR bind of 0.0.0.0:E fails, one of 127.0.0.1:E does not."""
    srv = sock(socket.AF_INET6, reuseaddr=True)
    srv.bind(("::1", port))
    srv.listen(16)
    client, info = spawn("helper_connect_v6", port)
    conn, _ = srv.accept()
    e = info["local_port"]
    specific = sock(reuseaddr=True)
    err_specific = attempt(lambda: specific.bind((HOST, e)))
    s = sock(reuseaddr=True)
    err = attempt(lambda: s.bind(("0.0.0.0", e)))
    finish(case="v6_client_blocks_v4_wildcard", errno=err, errno_specific=err_specific, port=e,
           addr="0.0.0.0", reuseaddr=True, reuseport=False, holder_pid=info["pid"],
           server_port=port)
    client.stdin.close()
    client.wait()


def case_scoped_link_local(port):
    """fe80::1 on a veth (bt2, no duplicate address detection): a listener on fe80::1%bt2:P,
    then a second bind of fe80::1%bt2:P (EADDRINUSE) and one of fe80::1%lo:P+1, where the
    address is not (EADDRNOTAVAIL). The interface comes only from the scope id."""
    for args in (["link", "add", "bt2", "type", "veth", "peer", "name", "bt3"],
                 ["link", "set", "bt2", "up"],
                 ["-6", "addr", "add", "fe80::1/64", "dev", "bt2", "nodad"]):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
    dev = socket.if_nametoindex("bt2")
    lst = sock(socket.AF_INET6)
    lst.bind(("fe80::1", port, 0, dev))
    lst.listen(16)
    again = sock(socket.AF_INET6)
    err = attempt(lambda: again.bind(("fe80::1", port, 0, dev)))
    other = sock(socket.AF_INET6)
    err_lo = attempt(lambda: other.bind(("fe80::1", port + 1, 0, socket.if_nametoindex("lo"))))
    finish(case="scoped_link_local", errno=err, errno_lo=err_lo, port=port, addr="fe80::1",
           ifindex=dev, reuseaddr=False, reuseport=False)


def case_connected_before_start(port):
    """A client process connects to a server of this process on P from an ephemeral port E and
    stays connected; after the go-ahead (the test starts bindtrace meanwhile) it closes first and
    exits, leaving E in TIME-WAIT, and this process binds 0.0.0.0:E: EADDRINUSE, from a
    connection made before bindtrace started and closed while it ran."""
    srv = server(port)
    client, info = spawn("helper_client_closes_on_line", port)
    conn, _ = srv.accept()
    e = info["local_port"]
    report(case="connected_before_start", stage="ready", port=e, holder_pid=info["pid"],
           holder_comm=info["comm"])
    sys.stdin.readline()
    client.stdin.write("close\n")
    client.stdin.flush()
    client.wait()
    conn.recv(1)  # the client's FIN
    conn.close()
    wait_for_tcp_state(e, TCP_TIME_WAIT)
    s = sock()
    err = attempt(lambda: s.bind(("0.0.0.0", e)))
    report(case="connected_before_start", stage="done", errno=err, port=e)


def case_gated(port, comm="", thread=""):
    """Reports its pid, waits for a line on stdin, then fails a bind on `port` (which it holds
    itself). `comm`, if given, renames the process first (as prctl(PR_SET_NAME) would); `thread`,
    if given, makes the failing bind from a thread of that name (a JVM's acceptor thread)."""
    if comm:
        with open("/proc/self/comm", "w") as f:
            f.write(comm)
    hold = sock()
    hold.bind((HOST, port))
    report(case="gated", stage="ready", port=port)
    sys.stdin.readline()
    out = {"tid": threading.get_native_id()}

    def fail():
        if thread:
            with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
                f.write(thread)
            out["tid"] = threading.get_native_id()
        s = sock()
        out["errno"] = attempt(lambda: s.bind((HOST, port)))

    if thread:
        t = threading.Thread(target=fail)
        t.start()
        t.join()
    else:
        fail()
    report(case="gated", stage="done", errno=out["errno"], tid=out["tid"], port=port, addr=HOST,
           reuseaddr=False, reuseport=False)


def run(name, args):
    fn = globals()[name]
    if name.startswith("helper_"):
        fn(*args)
    elif name == "case_gated":
        fn(int(args[0]), *args[1:])
    elif name == "case_storm":
        fn(int(args[0]), float(args[1]))
    elif name in ("case_other_netns", "case_bind_on_device"):
        fn(int(args[0]), args[1])
    else:
        fn(*map(int, args))


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    for tries in range(1, SETUP_ATTEMPTS + 1):
        try:
            run(name, args)
            break
        except SetupFailed as e:
            if tries == SETUP_ATTEMPTS:
                raise SystemExit(f"{name}: setup failed {tries} times; the last: {e}")
            print(f"bindcases: {name}: setup failed ({e}); running it again", file=sys.stderr,
                  flush=True)
        # The failed attempt's sockets close once nothing refers to its frames any more.
        gc.collect()

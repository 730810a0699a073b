//! Root-only kernel tests of calls made through io_uring, which never enter the bind() or
//! connect() syscalls.
//!
//! - A bind (`IORING_OP_BIND`, 6.11+): the fexit and kprobe backends hook `inet_bind()` and must
//!   report it; the tracepoint backend hooks the syscall and cannot (README, "Kernels and
//!   backends"). The test pins both facts.
//! - A connect (`IORING_OP_CONNECT`, 5.5+): every backend must remember its owner, so that its
//!   TIME-WAIT is named when it blocks a bind — the fexit and kprobe backends at
//!   `__inet_hash_connect()`, the tracepoint backend through its `CONNECTING` map.

mod common;

use std::{net::SocketAddr, os::fd::AsRawFd};

use common::{Netns, Tracer, can_run};
use io_uring::{IoUring, opcode, types};
use socket2::{Domain, SockAddr, Socket, Type};

/// Runs `f` on a thread named `name` inside `netns` and returns its result.
fn in_netns<T: Send + 'static>(
    netns: &str,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            // SAFETY: setns affects only this thread, which ends here.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .unwrap()
        .join()
        .unwrap()
}

fn tcp_socket() -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket")
}

fn addr(ip: [u8; 4], port: u16) -> SockAddr {
    SocketAddr::from((ip, port)).into()
}

/// Submits `sqe` on a fresh ring and waits for its result (0 or -errno); None if io_uring is
/// unavailable. The caller keeps what `sqe` points to alive until this returns.
fn uring_call(sqe: &io_uring::squeue::Entry) -> Option<i32> {
    let mut ring = IoUring::new(4).ok()?;
    // SAFETY: the caller keeps the submission's memory alive; it completes before we return.
    unsafe { ring.submission().push(sqe).ok()? };
    ring.submit_and_wait(1).ok()?;
    Some(ring.completion().next()?.result())
}

/// Binds a fresh TCP socket to 0.0.0.0:`port` through io_uring from a thread inside `netns`;
/// returns the completion's result (0 or -errno), or None if io_uring is unavailable.
fn uring_bind(netns: &str, port: u16) -> Option<i32> {
    in_netns(netns, "uring-bind", move || {
        let sock = tcp_socket();
        let sa = addr([0; 4], port);
        uring_call(
            &opcode::Bind::new(types::Fd(sock.as_raw_fd()), sa.as_ptr().cast(), sa.len()).build(),
        )
    })
}

/// The states of the TCP sockets on local `port` in the calling thread's namespace, as
/// `/proc/thread-self/net/tcp` gives them (the kernel's numbers: 6 is TIME-WAIT).
fn tcp_states(port: u16) -> Vec<u8> {
    std::fs::read_to_string("/proc/thread-self/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port).then(|| u8::from_str_radix(f.get(3)?, 16).ok())?
        })
        .collect()
}

const TCP_TIME_WAIT: u8 = 6;

/// What `uring_connect_then_bind_over_time_wait` saw.
struct UringConnect {
    /// The ephemeral port the connect got.
    port: u16,
    /// The SO_REUSEADDR bind of 0.0.0.0:`port` over its TIME-WAIT: 0 or the errno.
    bind_errno: i32,
}

/// From a thread named "uring-connect" inside `netns`: connects to a listener on 127.0.0.1:`server`
/// through io_uring (from an ephemeral port), shuts down first (its side moves to TIME-WAIT once
/// the server closes too), waits for the TIME-WAIT, then tries a SO_REUSEADDR bind of that port — the
/// seed's failure, with the connection made by io_uring. None if io_uring is unavailable.
fn uring_connect_then_bind_over_time_wait(netns: &str, server: u16) -> Option<UringConnect> {
    in_netns(netns, "uring-connect", move || {
        let listener = std::net::TcpListener::bind(("127.0.0.1", server)).unwrap();
        let client = tcp_socket();
        let sa = addr([127, 0, 0, 1], server);
        let res = uring_call(
            &opcode::Connect::new(types::Fd(client.as_raw_fd()), sa.as_ptr().cast(), sa.len())
                .build(),
        )?;
        assert_eq!(res, 0, "the io_uring connect failed");
        let port = client.local_addr().unwrap().as_socket().unwrap().port();
        let (accepted, _) = listener.accept().unwrap();
        // The FIN goes now: a plain close would not send it while the ring, whose teardown runs
        // later in a kernel worker, may still hold a reference to the socket's file — the server
        // would close first, and the TIME-WAIT be on its side.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        drop(accepted);
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !tcp_states(port).contains(&TCP_TIME_WAIT) {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} reached no TIME-WAIT in 30 s; states seen: {:?}",
                tcp_states(port)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let sock = tcp_socket();
        sock.set_reuse_address(true).unwrap();
        let bind_errno = sock
            .bind(&addr([0; 4], port))
            .err()
            .map_or(0, |e| e.raw_os_error().unwrap());
        Some(UringConnect { port, bind_errno })
    })
}

#[test]
fn io_uring_bind_is_seen_by_the_function_hooks_only() {
    if !can_run("io_uring") {
        return;
    }
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let holder = ns.hold_case("helper_listen", &["8380", "0"]);
    let Some(res) = uring_bind(&ns.name, 8380) else {
        eprintln!("SKIP io_uring: io_uring is unavailable here (kernel.io_uring_disabled?)");
        return;
    };
    if res == -libc::EINVAL || res == -libc::EOPNOTSUPP {
        eprintln!("SKIP io_uring: this kernel has no IORING_OP_BIND (added in 6.11): {res}");
        return;
    }
    assert_eq!(
        res,
        -libc::EADDRINUSE,
        "the io_uring bind must fail like bind() would"
    );
    // A plain bind() failure by this process afterwards: once it is reported, the io_uring one
    // would have been too.
    let marker = ns.run_case("case_3_4", &["8381"]);
    tracer.failure(marker["pid"].as_u64().unwrap(), 8381);
    let me = u64::from(std::process::id());
    let seen = tracer
        .events()
        .into_iter()
        .find(|v| v["pid"] == me && v["port"] == 8380);
    match tracer.backend.as_str() {
        "fexit" | "kprobe" => {
            let ev = tracer.wait_for("the io_uring bind failure", |v| {
                v["pid"] == me && v["port"] == 8380
            });
            assert_eq!(ev["error"], "EADDRINUSE");
            assert_eq!(ev["addr"], "0.0.0.0");
            assert_eq!(ev["cause"], "listener_conflict", "{ev:#}");
            assert_eq!(ev["holders"][0]["pid"], holder.report["pid"]);
        }
        "tracepoint" => assert!(
            seen.is_none(),
            "the syscall tracepoints now see io_uring binds ({seen:?}): update the README's \
             kernel table"
        ),
        other => panic!("unexpected backend {other}"),
    }
    eprintln!(
        "io_uring bind seen by the {} backend: {}",
        tracer.backend,
        seen.is_some()
    );
    holder.release();
}

/// A connection made through io_uring leaves a TIME-WAIT on its ephemeral port; a bind of that
/// port fails on it, and the holder must be named from history as this process: no socket of any
/// process owns a TIME-WAIT, so the owner remembered when the connection was made is the only
/// name there is.
#[test]
fn io_uring_connect_owner_is_named_from_history() {
    if !can_run("io_uring_connect") {
        return;
    }
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let Some(seen) = uring_connect_then_bind_over_time_wait(&ns.name, 8386) else {
        eprintln!(
            "SKIP io_uring_connect: io_uring is unavailable here (kernel.io_uring_disabled?)"
        );
        return;
    };
    assert_eq!(
        seen.bind_errno,
        libc::EADDRINUSE,
        "the bind over the TIME-WAIT must fail"
    );
    let me = u64::from(std::process::id());
    let ev = tracer.wait_for(
        "the bind failure over the io_uring connection's TIME-WAIT",
        |v| v["pid"] == me && v["port"] == seen.port && v["event"] == "bind_failure",
    );
    assert_eq!(ev["cause"], "time_wait_conflict", "{ev:#}");
    let h = &ev["holders"][0];
    assert_eq!(h["state"], "TIME_WAIT", "{ev:#}");
    assert_eq!(h["source"], "history", "{ev:#}");
    assert_eq!(
        h["pid"], me,
        "the connection was made by this process: {ev:#}"
    );
    // The connect runs in the submitting thread, or in one of the ring's io-wq workers (threads
    // of this process): either way the process is named by its own name.
    let own = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    assert_eq!(h["comm"], own.trim_end(), "{ev:#}");
    assert_eq!(h["remote"], "127.0.0.1:8386", "{ev:#}");
    assert_eq!(
        h["owner_alive"], true,
        "this process still runs, though the thread that connected has a name of its own: {ev:#}"
    );
}

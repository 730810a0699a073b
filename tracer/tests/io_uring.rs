//! Root-only kernel test: a bind through io_uring (`IORING_OP_BIND`, 6.11+) never enters the
//! bind() syscall. The fexit and kprobe backends hook `inet_bind()` and must report it; the
//! tracepoint backend hooks the syscall and cannot (README, "Kernels and backends"). The test
//! pins both facts.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::{Netns, Tracer, can_run};
use io_uring::{IoUring, opcode, types};

/// Binds a fresh TCP socket to 0.0.0.0:`port` through io_uring from a thread inside `netns`;
/// returns the completion's result (0 or -errno), or None if io_uring is unavailable.
fn uring_bind(netns: &str, port: u16) -> Option<i32> {
    let path = format!("/run/netns/{netns}");
    std::thread::Builder::new()
        .name("uring-bind".into())
        .spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            // SAFETY: setns affects only this thread, which ends here.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut ring = IoUring::new(4).ok()?;
            // SAFETY: a fresh socket, owned right away.
            let sock =
                unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            let sqe = opcode::Bind::new(
                types::Fd(sock.as_raw_fd()),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
            .build();
            // SAFETY: `sa` outlives the submission, which completes before we return.
            unsafe { ring.submission().push(&sqe).ok()? };
            ring.submit_and_wait(1).ok()?;
            let res = ring.completion().next()?.result();
            Some(res)
        })
        .unwrap()
        .join()
        .unwrap()
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

//! Tracepoint backend: the `syscalls:sys_{enter,exit}_{bind,listen,connect}` tracepoints.
//!
//! The request is recorded as the thread's call in flight (`pending`) — at syscall entry for
//! listen() and connect(), by the cgroup bind hook (`cgroup_bind`) for bind() — and
//! `sock:inet_sock_set_state` (`sock_state`) adds what only the kernel knows while the call runs;
//! the exit reports. These tracepoints exist on every kernel with `CONFIG_FTRACE_SYSCALLS`
//! (checked on 6.1, 6.12 and 6.18: fd @16, address @24, addrlen @32, ret @16 — the collector
//! reads the real offsets from tracefs). They do not see io_uring's `IORING_OP_BIND`/`LISTEN` (6.11+), in-kernel
//! `kernel_bind()` callers or 32-bit compat tasks; the fexit and kprobe backends do.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use tracer_common::{BindEvent, Syscall, flags, tp_layout as L};

use crate::{
    config::conf,
    kernel::{current_tid, tp_read},
    pending::{self, Pending},
    report::finish,
    sock_state,
};

const EADDRNOTAVAIL: i64 = 99;

/// `int connect(int fd, struct sockaddr *uservaddr, int addrlen)`: open a pending call. The
/// destination is not read from user memory here (the costliest part of a probe on connect());
/// `sock_state` takes it, and the socket, when a TCP connect moves it CLOSE→SYN_SENT, which every
/// connect that can fail for want of a local port does. Other connects stay unmarked: never
/// reported, never remembered.
#[inline(always)]
fn enter_connect() {
    let mut ev = BindEvent::ZERO;
    ev.syscall = Syscall::Connect as u8;
    pending::put(current_tid(), &ev, 0);
}

/// Takes this thread's pending call, if it is of the expected kind, and reports it via `f`.
#[inline(always)]
fn exit_with(ctx: &TracePointContext, syscall: Syscall, f: impl FnOnce(&mut Pending, i64)) {
    let tid = current_tid();
    let Some(p) = pending::entry(tid, syscall) else {
        return;
    };
    if let Some(ret) = tp_read::<{ L::SYS_RET as usize }, u64>(ctx, conf!(tp.sys_ret)) {
        let ret = ret as i64;
        if conf!(debug) != 0 {
            info!(
                ctx,
                "syscall {} exit: tid={} ret={} family={} port={} flags={:x}",
                p.ev.syscall,
                tid,
                ret,
                p.ev.family,
                p.ev.port,
                p.ev.flags
            );
        }
        f(p, ret);
    }
    pending::done(tid, &mut p.ev);
}

/// bind()'s pending entry is created by the cgroup bind hook (`cgroup_bind.rs`), which runs only
/// for INET sockets and sees the address exactly as the kernel uses it; no entry program is
/// needed. A call refused before that hook (an address too short for the socket's family) is not
/// reported: a malformed call, not a port problem; the other backends skip it too
/// (`inet::bind_request`).
#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    // A call opened longer ago than any bind() takes was left by a bind that did not return
    // through the syscall (io_uring, in-kernel): `pending::entry` does not return it.
    exit_with(&ctx, Syscall::Bind, |Pending { ev, sk, .. }, ret| {
        finish(ev, ret, *sk);
    });
    0
}

/// `int listen(int fd, int backlog)`: the socket's address is filled in by `sock_state` when
/// `inet_csk_listen_start()` moves it CLOSE→LISTEN, just before it asks `get_port()` to re-check.
#[tracepoint]
pub fn sys_enter_listen(_ctx: TracePointContext) -> u32 {
    let mut ev = BindEvent::ZERO;
    ev.syscall = Syscall::Listen as u8;
    pending::put(current_tid(), &ev, 0);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Listen, |Pending { ev, .. }, ret| {
        // Not an INET stream socket (or already listening): nothing about ports to report.
        if ev.flags & flags::PROTO_KNOWN != 0 {
            finish(ev, ret, 0);
        }
    });
    0
}

#[tracepoint]
pub fn sys_enter_connect(_ctx: TracePointContext) -> u32 {
    enter_connect();
    0
}

/// A connect() that failed for want of a local port is reported: `__inet_hash_connect()` returns
/// -EADDRNOTAVAIL when the whole `ip_local_port_range` is taken (or the bound port's 4-tuple is in
/// use). Any other TCP connect() has had its source port chosen by now — whatever it returns: 0,
/// -EINPROGRESS (non-blocking), -EINTR (a signal; the handshake goes on): its owner is remembered
/// (`sock_state::connected`), unless the socket has already let the port go (refused).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Connect, |p, ret| {
        if ret == -EADDRNOTAVAIL && p.ev.flags & flags::PROTO_KNOWN != 0 {
            finish(&mut p.ev, ret, p.sk);
        } else if p.sk != 0 {
            sock_state::connected(&p.ev, p.sk);
        }
    });
    0
}

//! Tracepoint backend: the `syscalls:sys_{enter,exit}_{bind,listen,connect}` tracepoints.
//!
//! The request is recorded as the thread's call in flight (`pending`) — at syscall entry for
//! listen() and connect(), by the cgroup bind hook (`cgroup_bind`) for bind() — and
//! `sock:inet_sock_set_state` (`sock_state`) adds what only the kernel knows while the call runs;
//! the exit reports. These tracepoints exist on every kernel with `CONFIG_FTRACE_SYSCALLS`
//! (checked on 6.1, 6.12 and 6.18: fd @16, address @24, addrlen @32, ret @16 — the collector
//! reads the real offsets from tracefs). They do not see io_uring's `IORING_OP_BIND`/`LISTEN` (6.11+), in-kernel
//! `kernel_bind()` callers or 32-bit compat tasks; the fexit and kprobe backends do.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use tracer_common::{BindEvent, Syscall, flags, tp_layout as L};

use crate::{
    config::conf,
    inet,
    kernel::{current_fd_sock, current_tid, tp_read},
    pending::{self, Pending},
    report::finish,
    sock_state,
};

const EADDRNOTAVAIL: i64 = 99;
const EAGAIN: i64 = 11;

/// `int connect(int fd, struct sockaddr *uservaddr, int addrlen)`: open a pending call. The
/// destination is not read from user memory here (the costliest part of a probe on connect());
/// `sock_state` takes it, and the socket, when a TCP connect moves it CLOSE→SYN_SENT, which every
/// TCP connect that can fail for want of a local port does. Other connects stay unmarked: never
/// reported, never remembered — except a datagram socket's that fails for want of a port (EAGAIN),
/// which its exit finds from the descriptor and address kept here.
#[inline(always)]
fn enter_connect(ctx: &TracePointContext) {
    let Some(p) = pending::open(current_tid(), Syscall::Connect) else {
        return;
    };
    p.ev = BindEvent::ZERO;
    p.ev.syscall = Syscall::Connect as u8;
    p.sk = 0;
    p.fd = tp_read::<{ L::SYS_ARG0 as usize }, u64>(ctx, conf!(tp.sys_arg0)).unwrap_or(u64::MAX);
    p.uaddr = tp_read::<{ L::SYS_ARG1 as usize }, u64>(ctx, conf!(tp.sys_arg1)).unwrap_or(0);
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
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_connect(&ctx);
    0
}

/// A connect() that failed for want of a local port is reported: `__inet_hash_connect()` returns
/// -EADDRNOTAVAIL when the whole `ip_local_port_range` is taken (or the bound port's 4-tuple is in
/// use). Any other TCP connect() has had its source port chosen by now — whatever it returns: 0,
/// -EINPROGRESS (non-blocking), -EINTR (a signal; the handshake goes on): its owner is remembered
/// (`sock_state::connected`), unless the socket has already let the port go (refused).
/// -EAGAIN with no TCP socket seen is a datagram socket's failed autobind, or an AF_UNIX socket's
/// full backlog: the socket, found from the descriptor, tells (`inet::autobind_failed`).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Connect, |p, ret| {
        if ret == -EADDRNOTAVAIL && p.ev.flags & flags::PROTO_KNOWN != 0 {
            finish(&mut p.ev, ret, p.sk);
        } else if p.sk != 0 {
            sock_state::connected(&p.ev, p.sk);
        } else if ret == -EAGAIN
            && let Some(sk) = current_fd_sock(p.fd)
        {
            inet::autobind_failed(sk, &user_sockaddr(p.uaddr));
        }
    });
    0
}

/// The destination a connect() was given, read from the caller's memory at the call's exit (the
/// same thread, so the pointer is still its own); all zero if unreadable.
#[inline(always)]
fn user_sockaddr(uaddr: u64) -> [u8; 24] {
    let p = uaddr as *const u8;
    // SAFETY: bpf_probe_read_user checks the address. A `sockaddr_in` may end 8 bytes short of
    // the 24 read first, at the end of a page: then its 16 bytes are read alone.
    if let Ok(raw) = unsafe { bpf_probe_read_user(p.cast::<[u8; 24]>()) } {
        return raw;
    }
    let mut raw = [0u8; 24];
    if let Ok(short) = unsafe { bpf_probe_read_user(p.cast::<[u8; 16]>()) } {
        raw[..16].copy_from_slice(&short);
    }
    raw
}

//! Tracepoint backend: the `syscalls:sys_{enter,exit}_{bind,listen,connect}` tracepoints.
//!
//! Entry records the request per thread in `PENDING`; the cgroup bind hook (`cgroup_bind`) and
//! `sock:inet_sock_set_state` (`sock_state`) add what only the kernel knows while the call runs;
//! exit reports. These tracepoints exist on every kernel with `CONFIG_FTRACE_SYSCALLS` (checked on
//! 6.1, 6.12 and 6.18: fd @16, address @24, addrlen @32, ret @16 — the collector reads the real
//! offsets from tracefs). They do not see io_uring's `IORING_OP_BIND`/`LISTEN` (6.11+), in-kernel
//! `kernel_bind()` callers or 32-bit compat tasks; the fexit and kprobe backends do.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use tracer_common::{AF_INET, AF_INET6, BindEvent, Syscall, flags};

use crate::{
    config::conf,
    kernel::{current_tid, parse_sockaddr, tp_read},
    maps::PENDING,
    report::finish,
};

const EADDRNOTAVAIL: i64 = 99;

/// Family, port (host order) and address of a user-space `sockaddr_in`/`sockaddr_in6`. Reads
/// only as many bytes as the family's structure has: a 16-byte `sockaddr_in` may end a page.
#[inline(always)]
fn read_user_sockaddr(uaddr: u64) -> Option<(u16, u16, [u8; 16])> {
    let p = uaddr as *const u8;
    // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
    let family: u16 = unsafe { bpf_probe_read_user(p.cast::<u16>()) }.ok()?;
    let mut raw = [0u8; 24];
    if family == AF_INET6 {
        raw = unsafe { bpf_probe_read_user(p.cast::<[u8; 24]>()) }.ok()?;
    } else if family == AF_INET {
        let head: [u8; 8] = unsafe { bpf_probe_read_user(p.cast::<[u8; 8]>()) }.ok()?;
        raw[..8].copy_from_slice(&head);
    }
    parse_sockaddr(&raw)
}

/// `int bind(int fd, struct sockaddr *umyaddr, int addrlen)` /
/// `int connect(int fd, struct sockaddr *uservaddr, int addrlen)`: remember what was asked for.
/// Non-INET families (unix, netlink, ...) are not this tool's business and are skipped here.
#[inline(always)]
fn enter_with_sockaddr(ctx: &TracePointContext, syscall: Syscall) -> Option<()> {
    let uaddr = tp_read(ctx, conf!(tp.sys_arg1))?;
    let (family, port, addr) = read_user_sockaddr(uaddr)?;
    let mut ev = BindEvent::ZERO;
    ev.syscall = syscall as u8;
    ev.family = family;
    if syscall == Syscall::Connect {
        ev.remote_addr = addr;
        ev.remote_port = port;
    } else {
        ev.addr = addr;
        ev.port = port;
        ev.flags = flags::ADDR_KNOWN;
    }
    PENDING.insert(current_tid(), ev, 0).ok()
}

/// Takes this thread's pending call, if it is of the expected kind, and reports it via `f`.
#[inline(always)]
fn exit_with(ctx: &TracePointContext, syscall: Syscall, f: impl FnOnce(&mut BindEvent, i64)) {
    let tid = current_tid();
    let Some(ev) = PENDING.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the entry belongs to this thread, which is inside the syscall; nothing else writes it.
    let ev = unsafe { &mut *ev };
    if ev.syscall == syscall as u8
        && let Some(ret) = tp_read(ctx, conf!(tp.sys_ret))
    {
        let ret = ret as i64;
        if conf!(debug) != 0 {
            info!(
                ctx,
                "syscall {} exit: tid={} ret={} family={} port={} flags={:x}",
                ev.syscall,
                tid,
                ret,
                ev.family,
                ev.port,
                ev.flags
            );
        }
        f(ev, ret);
    }
    let _ = PENDING.remove(tid);
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let _ = enter_with_sockaddr(&ctx, Syscall::Bind);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Bind, finish);
    0
}

/// `int listen(int fd, int backlog)`: the socket's address is filled in by `sock_state` when
/// `inet_csk_listen_start()` moves it CLOSE→LISTEN, just before it asks `get_port()` to re-check.
#[tracepoint]
pub fn sys_enter_listen(_ctx: TracePointContext) -> u32 {
    let mut ev = BindEvent::ZERO;
    ev.syscall = Syscall::Listen as u8;
    let _ = PENDING.insert(current_tid(), ev, 0);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Listen, |ev, ret| {
        // Not an INET stream socket (or already listening): nothing about ports to report.
        if ev.flags & flags::PROTO_KNOWN != 0 {
            finish(ev, ret);
        }
    });
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = enter_with_sockaddr(&ctx, Syscall::Connect);
    0
}

/// Only "no free local port" matters here: `__inet_hash_connect()` returns -EADDRNOTAVAIL when the
/// whole `ip_local_port_range` is taken (or the bound port's 4-tuple is in use).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_with(&ctx, Syscall::Connect, |ev, ret| {
        if ret == -EADDRNOTAVAIL && ev.flags & flags::PROTO_KNOWN != 0 {
            finish(ev, ret);
        }
    });
    0
}

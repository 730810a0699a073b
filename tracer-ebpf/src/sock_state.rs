//! `sock:inet_sock_set_state` (4.16+; `TP_PROTO(const struct sock *sk, const int oldstate,
//! const int newstate)`, fired from `inet_sk_set_state()`/`inet_sk_state_store()`; checked on 6.1,
//! 6.12, 6.18). Attached by every backend: it is how owners of outgoing connections are
//! remembered, so that a TIME-WAIT socket left by a process that has since exited still has a name.
//!
//! - CLOSE→SYN_SENT runs in `tcp_v4_connect()`/`tcp_v6_connect()`, in the connecting process,
//!   before `inet_hash_connect()` chooses the source port. Inside a connect() syscall traced by
//!   the tracepoint backend, note the socket in the pending call: `sys_exit_connect` remembers the
//!   owner under (netns, port) once the port is chosen (`connected`). Other connects under the
//!   tracepoint backend (io_uring's, in-kernel ones): remember the process against the socket's
//!   address, in `CONNECTING`. The fexit and kprobe backends need neither: they hook
//!   `__inet_hash_connect()` itself and remember the owner at its return (`hashed`).
//! - SYN_SENT→ESTABLISHED runs in softirq (any process): the source port is now known; move an
//!   owner remembered in `CONNECTING` into `HISTORY` under (netns, port).
//! - CLOSE→LISTEN runs in `inet_csk_listen_start()` inside listen(), before `get_port()` re-checks
//!   the port: fill in the pending listen() with the socket's address and options.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    AF_INET6, Backend, BindEvent, HistoryKey, IPPROTO_TCP, Owner, Role, Syscall, flags, tcp_state,
    tp_layout as L,
};

use crate::{
    config::conf,
    kernel::{self, Caller, SockView, current_tid, sock_head_view, sock_view, tp_bytes, tp_read},
    maps::{CONNECTING, CONNECTING_LIVE},
    pending,
    report::remember,
};

const SOCK_STREAM: u16 = 1;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    if tp_read::<{ L::SS_PROTOCOL as usize }, u16>(ctx, conf!(tp.ss_protocol))? as u16
        != IPPROTO_TCP
    {
        return None;
    }
    let old = tp_read::<{ L::SS_OLDSTATE as usize }, u32>(ctx, conf!(tp.ss_oldstate))? as u8;
    let new = tp_read::<{ L::SS_NEWSTATE as usize }, u32>(ctx, conf!(tp.ss_newstate))? as u8;
    let sk = tp_read::<{ L::SS_SKADDR as usize }, u64>(ctx, conf!(tp.ss_skaddr))?;
    match (old, new) {
        (tcp_state::CLOSE, tcp_state::LISTEN) => on_listen(ctx, sk),
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => on_connect(ctx, sk),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) if connecting_live() => {
            on_established(ctx, sk)
        }
        (tcp_state::SYN_SENT, tcp_state::CLOSE) if connecting_live() => CONNECTING
            .remove(sk)
            .ok()
            .map(|()| add_connecting(u64::MAX)),
        _ => None,
    }
}

/// Whether outgoing connections may wait in `CONNECTING`: only under the tracepoint backend,
/// for the connects no `sys_exit_connect` sees. (A frozen `CONFIG` field: the verifier drops the
/// branches the backend does not take.)
#[inline(always)]
fn uses_connecting() -> bool {
    conf!(backend) == Backend::Tracepoint as u8
}

/// Whether `CONNECTING` may hold a connect now (`CONNECTING_LIVE`), under the backend that uses it.
#[inline(always)]
fn connecting_live() -> bool {
    uses_connecting()
        && CONNECTING_LIVE
            .get_ptr(0)
            // SAFETY: a map value; a racy read is fine (see `CONNECTING_LIVE`).
            .is_some_and(|n| unsafe { core::ptr::read_volatile(n) } != 0)
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to `CONNECTING_LIVE`, atomically: connects start and
/// finish on every CPU at once.
#[inline(always)]
fn add_connecting(delta: u64) {
    if let Some(n) = CONNECTING_LIVE.get_ptr_mut(0) {
        // SAFETY: a map value shared between CPUs, written only through this atomic add (its
        // result unused, so it compiles to BPF's plain atomic add, in every instruction set).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
                n, delta,
            )
        };
    }
}

/// The local address as the tracepoint reports it.
#[inline(always)]
fn tp_local(ctx: &TracePointContext, family: u16) -> [u8; 16] {
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = tp_bytes::<{ L::SS_SADDR_V6 as usize }, 16>(ctx, conf!(tp.ss_saddr_v6))
            .unwrap_or([0; 16]);
    } else if let Some(a) = tp_bytes::<{ L::SS_SADDR as usize }, 4>(ctx, conf!(tp.ss_saddr)) {
        addr[..4].copy_from_slice(&a);
    }
    addr
}

#[inline(always)]
fn tp_remote(ctx: &TracePointContext, family: u16) -> [u8; 16] {
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = tp_bytes::<{ L::SS_DADDR_V6 as usize }, 16>(ctx, conf!(tp.ss_daddr_v6))
            .unwrap_or([0; 16]);
    } else if let Some(a) = tp_bytes::<{ L::SS_DADDR as usize }, 4>(ctx, conf!(tp.ss_daddr)) {
        addr[..4].copy_from_slice(&a);
    }
    addr
}

/// Options of the socket as flags, plus the bits saying they are TCP and known.
#[inline(always)]
fn stream_flags(view: &SockView) -> u16 {
    (view.flags
        & (flags::REUSEADDR
            | flags::REUSEPORT
            | flags::V6ONLY
            | flags::SOCKOPTS_KNOWN
            | flags::V6ONLY_KNOWN
            | flags::DEV_KNOWN))
        | flags::PROTO_KNOWN
}

#[inline(always)]
fn on_listen(ctx: &TracePointContext, sk: u64) -> Option<()> {
    let ev = pending::get(current_tid(), Syscall::Listen)?;
    let view = sock_view(sk as *const u8);
    ev.family = tp_read::<{ L::SS_FAMILY as usize }, u16>(ctx, conf!(tp.ss_family))? as u16;
    ev.port = tp_read::<{ L::SS_SPORT as usize }, u16>(ctx, conf!(tp.ss_sport))? as u16;
    ev.addr = tp_local(ctx, ev.family);
    ev.protocol = IPPROTO_TCP;
    ev.sock_type = SOCK_STREAM;
    ev.bound_dev_if = view.bound_dev_if;
    ev.netns = view.netns;
    ev.flags |= stream_flags(&view) | flags::ADDR_KNOWN;
    Some(())
}

/// Who made an outgoing connection from `local`, as far as its CLOSE→SYN_SENT tells: the
/// remote end and the port are filled in once known.
#[inline(always)]
fn connection_owner(c: &Caller, family: u16, local: [u8; 16], view: &SockView) -> Owner {
    Owner {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: c.cgroup_id,
        pid: c.pid,
        uid: c.uid,
        comm: kernel::owner_comm(c.pid, c.tid, &c.comm),
        local_addr: local,
        remote_addr: [0; 16],
        remote_port: 0,
        family,
        flags: stream_flags(view),
        role: Role::Connected as u8,
        _pad: 0,
    }
}

/// The addresses come from the tracepoint record (set by `tcp_v4_connect()`/`tcp_v6_connect()`
/// before the state change); the socket's head — its options, device and, once chosen, its port —
/// is read later, by whichever path remembers or reports the connection.
#[inline(always)]
fn on_connect(ctx: &TracePointContext, sk: u64) -> Option<()> {
    let family = tp_read::<{ L::SS_FAMILY as usize }, u16>(ctx, conf!(tp.ss_family))? as u16;
    let local = tp_local(ctx, family);

    // A connect() syscall in flight on this thread (tracepoint backend): it is a TCP one; note
    // what it asked for, and the socket. Its exit remembers its owner (`connected`) once the
    // source port is chosen, or reports it if it failed (the socket's options, device, port and
    // namespace are then read from the socket: `report::add_from_sock`) — no map entry per
    // connection, and no read of the socket here.
    if let Some(p) = pending::entry(current_tid(), Syscall::Connect) {
        let ev = &mut p.ev;
        ev.protocol = IPPROTO_TCP;
        ev.sock_type = SOCK_STREAM;
        ev.family = family;
        ev.addr = local;
        ev.remote_addr = tp_remote(ctx, family);
        ev.remote_port = tp_read::<{ L::SS_DPORT as usize }, u16>(ctx, conf!(tp.ss_dport))? as u16;
        ev.flags |= flags::PROTO_KNOWN | flags::ADDR_KNOWN;
        p.sk = sk;
        return Some(());
    }

    // Any other connect under the tracepoint backend (io_uring's, in-kernel): remember the caller
    // until SYN_SENT→ESTABLISHED. (The fexit and kprobe backends remember it when
    // `__inet_hash_connect()` returns: `hashed`.)
    if !uses_connecting() {
        return None;
    }
    let view = sock_head_view(sk as *const u8);
    let owner = connection_owner(&kernel::caller(), family, local, &view);
    // Raised first: a SYN_SENT→ESTABLISHED (on any CPU, after this insert) must see it.
    add_connecting(1);
    if CONNECTING.insert(sk, owner, 0).is_err() {
        add_connecting(u64::MAX);
    }
    Some(())
}

/// A connect() syscall on `sk` returned (tracepoint backend, in the caller's context) after
/// `__inet_hash_connect()` chose its source port. Remembers the caller as the port's owner, if
/// the socket still holds it: a refused connection from an ephemeral port has released it (0,
/// skipped); a socket bound to its port before connecting keeps it, and is remembered. This
/// includes a non-blocking connect refused later: harmless, as the collector only trusts a
/// remembered connection whose remote end matches the holder's.
#[inline(always)]
pub fn connected(ev: &BindEvent, sk: u64) {
    let view = sock_head_view(sk as *const u8);
    let netns = kernel::view_netns(&view, sk as *const u8);
    remember_connection(
        netns,
        &view,
        ev.family,
        ev.addr,
        (ev.remote_addr, ev.remote_port),
    );
}

/// `__inet_hash_connect()` returned 0 on `sk` (fexit and kprobe backends, in the connecting task's
/// context): its source port is chosen and hashed. Remembers the caller as the port's owner, all
/// from the socket — `tcp_v4_connect()`/`tcp_v6_connect()` set the destination before hashing.
/// Like `connected`, this includes a connection refused later.
#[inline(always)]
pub fn hashed(sk: *const u8) {
    let view = sock_view(sk);
    let remote = kernel::sock_remote(sk, view.family);
    remember_connection(view.netns, &view, view.family, view.addr, remote);
}

/// Remembers the current task as the owner of the outgoing connection on `view`'s port.
#[inline(always)]
fn remember_connection(
    netns: u32,
    view: &SockView,
    family: u16,
    local: [u8; 16],
    (remote_addr, remote_port): ([u8; 16], u16),
) {
    let owner = Owner {
        remote_addr,
        remote_port,
        ..connection_owner(&kernel::caller(), family, local, view)
    };
    let key = HistoryKey {
        netns,
        port: view.port,
        protocol: IPPROTO_TCP as u8,
        role: Role::Connected as u8,
    };
    remember(&key, &owner);
}

#[inline(always)]
fn on_established(ctx: &TracePointContext, sk: u64) -> Option<()> {
    // SAFETY: the value is copied out before the entry is removed.
    let mut owner = unsafe { *CONNECTING.get(sk)? };
    if CONNECTING.remove(sk).is_ok() {
        add_connecting(u64::MAX);
    }
    let family = tp_read::<{ L::SS_FAMILY as usize }, u16>(ctx, conf!(tp.ss_family))? as u16;
    owner.family = family;
    owner.local_addr = tp_local(ctx, family);
    owner.remote_addr = tp_remote(ctx, family);
    owner.remote_port = tp_read::<{ L::SS_DPORT as usize }, u16>(ctx, conf!(tp.ss_dport))? as u16;
    let key = HistoryKey {
        netns: kernel::sock_netns(sk as *const u8),
        port: tp_read::<{ L::SS_SPORT as usize }, u16>(ctx, conf!(tp.ss_sport))? as u16,
        protocol: IPPROTO_TCP as u8,
        role: Role::Connected as u8,
    };
    remember(&key, &owner);
    Some(())
}

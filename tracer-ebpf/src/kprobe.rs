//! kprobe backend: kprobe + kretprobe on the inet functions (see `inet.rs` for prototypes and
//! kernels). The entry probe saves what the return probe needs as the thread's call in flight
//! (`pending`): a thread is inside at most one of these calls at a time (bind() and listen() are
//! distinct syscalls, and get_port is only remembered for listen()'s LISTEN sockets).

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{BindEvent, Syscall};

use crate::{
    config::conf,
    inet,
    kernel::{current_tid, read_ptr, sock_head_view},
    maps::CONNECT_ARGS,
    pending,
    report::finish,
};

/// Reports this thread's pending call of kind `syscall` via `f`, and closes it.
#[inline(always)]
fn take(syscall: Syscall, f: impl FnOnce(&mut BindEvent)) {
    let tid = current_tid();
    if let Some(ev) = pending::get(tid, syscall) {
        f(ev);
        pending::done(tid, ev);
    }
}

#[inline(always)]
fn bind_entry(ctx: &ProbeContext, min_len: i32) {
    let (Some(sock), Some(uaddr), Some(addr_len)) = (
        ctx.arg::<*const u8>(0),
        ctx.arg::<*const u8>(1),
        ctx.arg::<u64>(2),
    ) else {
        return;
    };
    if let Some(ev) = inet::bind_request(sock, uaddr, addr_len as i32, min_len) {
        let sk = read_ptr(sock, conf!(kernel.socket_sk)).map_or(0, |p| p as u64);
        pending::put(current_tid(), ev, sk);
    }
}

#[kprobe(function = "inet_bind")]
pub fn kp_inet_bind(ctx: ProbeContext) -> u32 {
    bind_entry(&ctx, inet::MIN_ADDR_LEN_V4);
    0
}

#[kprobe(function = "inet6_bind")]
pub fn kp_inet6_bind(ctx: ProbeContext) -> u32 {
    bind_entry(&ctx, inet::MIN_ADDR_LEN_V6);
    0
}

/// Shared by `inet_bind` and `inet6_bind` returns.
#[kretprobe]
pub fn krp_bind(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let tid = current_tid();
    if let Some(p) = pending::entry(tid, Syscall::Bind) {
        // With `--all`, a bind() to port 0 is shown with the port it got: chosen inside the
        // call, after the entry probe.
        if ret == 0 && p.ev.port == 0 && p.sk != 0 && conf!(report_success) != 0 {
            p.ev.chosen_port = sock_head_view(p.sk as *const u8).port;
        }
        finish(&mut p.ev, i64::from(ret), 0);
        pending::done(tid, &mut p.ev);
    }
    0
}

#[kprobe(function = "inet_csk_get_port")]
pub fn kp_inet_csk_get_port(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(snum)) = (ctx.arg::<*const u8>(0), ctx.arg::<u64>(1))
        && let Some(ev) = inet::listen_request(sk, snum as u16)
    {
        pending::put(current_tid(), ev, 0);
    }
    0
}

#[kretprobe(function = "inet_csk_get_port")]
pub fn krp_inet_csk_get_port(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    take(Syscall::Listen, |ev| {
        inet::get_port_done(ev, i64::from(ret))
    });
    0
}

/// Which entry probe saved a thread's `CONNECT_ARGS`: a return probe takes only its own function's
/// (a kretprobe can be missed — its instances run out while a call sleeps — and a later return of
/// the other function must not read a `struct socket *` as a `struct sock *`).
const HASH_CONNECT: u64 = 1;
const DGRAM_CONNECT: u64 = 2;

/// Saves this thread's arguments for the return probe (the connect() has no pending event), in
/// the thread's entry: reused, like `PENDING`'s, so a connection costs a lookup, not an insert and
/// a delete. `args[0]` is the tag of the function saving them.
#[inline(always)]
fn save_connect_args(args: [u64; 3]) {
    let tid = current_tid();
    if let Some(p) = CONNECT_ARGS.get_ptr_mut(tid) {
        // SAFETY: the entry belongs to this thread; nothing else writes it.
        unsafe { *p = args };
    } else {
        let _ = CONNECT_ARGS.insert(tid, args, 0);
    }
}

/// Takes the arguments the entry probe of the function tagged `tag` saved (a zero tag marks them
/// consumed).
#[inline(always)]
fn take_connect_args(tag: u64) -> Option<[u64; 2]> {
    let p = CONNECT_ARGS.get_ptr_mut(current_tid())?;
    // SAFETY: as above.
    let args = unsafe { core::mem::replace(&mut *p, [0; 3]) };
    (args[0] == tag).then_some([args[1], args[2]])
}

#[kprobe(function = "__inet_hash_connect")]
pub fn kp_inet_hash_connect(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(1) {
        save_connect_args([HASH_CONNECT, sk, 0]);
    }
    0
}

#[kretprobe(function = "__inet_hash_connect")]
pub fn krp_inet_hash_connect(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some([sk, _]) = take_connect_args(HASH_CONNECT) {
        inet::hash_connect_done(sk as *const u8, i64::from(ret));
    }
    0
}

/// A thread is inside at most one of `inet_dgram_connect()` (datagram sockets) and
/// `__inet_hash_connect()` (TCP) at a time, so they share the thread's saved arguments.
#[kprobe(function = "inet_dgram_connect")]
pub fn kp_inet_dgram_connect(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        save_connect_args([DGRAM_CONNECT, sock, uaddr]);
    }
    0
}

#[kretprobe(function = "inet_dgram_connect")]
pub fn krp_inet_dgram_connect(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some([sock, uaddr]) = take_connect_args(DGRAM_CONNECT) {
        inet::dgram_connect_done(sock as *const u8, uaddr as *const u8, i64::from(ret));
    }
    0
}

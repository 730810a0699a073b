//! Tracepoint backend, part 2: `cgroup/bind4` and `cgroup/bind6` on the cgroup-v2 root.
//!
//! Kernel path (checked on 6.1, 6.12, 6.18): `__sys_bind()` → `inet_bind()` / `inet6_bind()` →
//! (6.6+: `inet_bind_sk()` / `inet6_bind_sk()`) → `BPF_CGROUP_RUN_PROG_INET{4,6}_BIND_LOCK()` →
//! `__inet_bind()` / `__inet6_bind()` → `sk->sk_prot->get_port()`. The hook runs after the
//! length check (a shorter address than the socket's family needs is never seen) and before the
//! family, address, privileged-port and state checks and port allocation, in the caller's
//! context, with the address exactly as the kernel will use it (`user_ip4`/`user_ip6`/`user_port`)
//! and the socket at hand, whose option bits `sys_exit_bind` reads from its head when it reports
//! or remembers the call (or, when their offsets are unknown, this hook asks `bpf_getsockopt()`:
//! SO_REUSEPORT from 5.13, SO_REUSEADDR from 6.1).
//!
//! The program only observes. It always returns 1 ("allow"): returning 0 would make the traced
//! bind() fail with EPERM. The collector attaches it with `BPF_F_ALLOW_MULTI` so it runs beside,
//! and never displaces, programs others attached to the same cgroup.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_getsockopt, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use tracer_common::{BindEvent, Syscall, flags};

use crate::{config::conf, kernel::current_tid, pending};

const ALLOW: i32 = 1;
const SOL_SOCKET: i32 = 1;
const SO_REUSEADDR: i32 = 2;
const SO_REUSEPORT: i32 = 15;

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    let _ = observe::<false>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    let _ = observe::<true>(&ctx);
    ALLOW
}

/// An int socket option. The output slot starts uninitialised on purpose: a slot holding a
/// constant makes some verifiers (seen on 6.1 with `bpf_get_func_ret`) keep believing the constant
/// after the helper wrote it, and prune the branches that test the real value.
#[inline(always)]
fn getsockopt_int(ctx: &SockAddrContext, level: i32, name: i32) -> Option<i32> {
    let mut v = core::mem::MaybeUninit::<i32>::uninit();
    // SAFETY: the helper writes `optlen` (4) bytes into `v` on success, the only case read.
    let r = unsafe {
        bpf_getsockopt(
            ctx.sock_addr.cast::<c_void>(),
            level,
            name,
            v.as_mut_ptr().cast::<c_void>(),
            4,
        )
    };
    // SAFETY: see above.
    (r == 0).then(|| unsafe { v.assume_init() })
}

#[inline(always)]
fn set_options(ev: &mut BindEvent, reuseaddr: bool, reuseport: bool) {
    ev.flags |= flags::SOCKOPTS_KNOWN;
    if reuseaddr {
        ev.flags |= flags::REUSEADDR;
    }
    if reuseport {
        ev.flags |= flags::REUSEPORT;
    }
}

/// Starts this thread's pending bind() with what the kernel is about to act on; `sys_exit_bind`
/// finishes it. The entry is created here, not at syscall entry: this hook runs only for INET
/// sockets, after the kernel checked the address length and family, so binds of other families
/// cost nothing. `V6` selects the address field: the verifier lets bind4 read only `user_ip4`
/// and bind6 only `user_ip6`.
#[inline(always)]
fn observe<const V6: bool>(ctx: &SockAddrContext) -> Option<()> {
    let call = pending::open(current_tid(), Syscall::Bind)?;
    let ev = &mut call.ev;
    *ev = BindEvent::ZERO;
    ev.syscall = Syscall::Bind as u8;
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; every field below is readable in bind4/bind6 with a
    // 4-byte load (the verifier rewrites these loads), and `sk` is never NULL there.
    unsafe {
        ev.family = (*sa).user_family as u16;
        ev.port = u16::from_be((*sa).user_port as u16);
        ev.addr = [0; 16];
        if V6 {
            let mut i = 0;
            while i < 4 {
                let w = core::ptr::read_volatile(&raw const (*sa).user_ip6[i]);
                ev.addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                i += 1;
            }
        } else {
            ev.addr[..4].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
        }
        ev.flags |= flags::ADDR_KNOWN;
        ev.protocol = (*sa).protocol as u16;
        ev.sock_type = (*sa).type_ as u16;
        ev.flags |= flags::PROTO_KNOWN;
        let sk = (*sa).__bindgen_anon_1.sk;
        ev.bound_dev_if = (*sk).bound_dev_if;
        ev.flags |= flags::DEV_KNOWN;
        // The option bits (SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY) are not read here: they
        // live in the socket's head, which `sys_exit_bind` reads only for a call it reports or
        // remembers (`report::add_from_sock`); a bind(0) that succeeds never pays for them. Only
        // when their offsets are unknown, ask the kernel now, while the context allows it.
        if !(conf!(kernel.skc_reuse).known() && conf!(kernel.skc_reuseport).known())
            && let (Some(reuseaddr), Some(reuseport)) = (
                getsockopt_int(ctx, SOL_SOCKET, SO_REUSEADDR),
                getsockopt_int(ctx, SOL_SOCKET, SO_REUSEPORT),
            )
        {
            set_options(ev, reuseaddr != 0, reuseport != 0);
        }
        call.sk = sk as u64;
    }
    Some(())
}

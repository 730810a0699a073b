//! fexit backend: BTF trampolines on the inet functions (see `inet.rs` for prototypes and
//! kernels). Arguments and the return value arrive together, so nothing is kept between entry
//! and exit. The return value is read with `bpf_get_func_ret()` (5.17+), which does not depend on
//! the number of arguments.

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_func_ret, macros::fexit, programs::FExitContext,
};

use crate::inet;

/// The traced function's return value.
///
/// Not `FExitContext::ret()`: it hands the helper a slot holding a constant 0, and the 6.1
/// verifier keeps believing that constant after the helper overwrote the slot — it then proves
/// `ret == 0`, and prunes every failure branch as dead code (seen: connect's -EADDRNOTAVAIL was
/// never reported on 6.1). An uninitialised slot carries no such belief.
#[inline(always)]
fn func_ret(ctx: &FExitContext) -> Option<i64> {
    let mut v = MaybeUninit::<u64>::uninit();
    // SAFETY: the helper writes the u64 on success (return 0), which is the only case read.
    let err = unsafe { bpf_get_func_ret(ctx.as_ptr(), v.as_mut_ptr()) };
    // Sign-extend the low 32 bits: every function traced here returns `int`.
    (err == 0).then(|| i64::from(unsafe { v.assume_init() } as u32 as i32))
}

#[fexit(function = "inet_bind")]
pub fn fexit_inet_bind(ctx: FExitContext) -> i32 {
    bind(&ctx, inet::MIN_ADDR_LEN_V4);
    0
}

#[fexit(function = "inet6_bind")]
pub fn fexit_inet6_bind(ctx: FExitContext) -> i32 {
    bind(&ctx, inet::MIN_ADDR_LEN_V6);
    0
}

#[inline(always)]
fn bind(ctx: &FExitContext, min_len: i32) {
    let sock: *const u8 = ctx.arg(0);
    let uaddr: *const u8 = ctx.arg(1);
    let addr_len: i32 = ctx.arg(2);
    if let Some(ret) = func_ret(ctx) {
        inet::bind_done(sock, uaddr, addr_len, min_len, ret);
    }
}

#[fexit(function = "inet_csk_get_port")]
pub fn fexit_inet_csk_get_port(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let snum: u64 = ctx.arg(1);
    if let (Some(ev), Some(ret)) = (inet::listen_request(sk, snum as u16), func_ret(&ctx)) {
        inet::get_port_done(ev, ret);
    }
    0
}

#[fexit(function = "__inet_hash_connect")]
pub fn fexit_inet_hash_connect(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(1);
    if let Some(ret) = func_ret(&ctx) {
        inet::hash_connect_done(sk, ret);
    }
    0
}

#[fexit(function = "inet_dgram_connect")]
pub fn fexit_inet_dgram_connect(ctx: FExitContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let uaddr: *const u8 = ctx.arg(1);
    if let Some(ret) = func_ret(&ctx) {
        inet::dgram_connect_done(sock, uaddr, ret);
    }
    0
}

//! Empty programs for `cargo xtask bench`'s "floor": attached to the same hooks as a backend, they
//! measure what the hooks themselves cost, so bindtrace's own work can be told apart. Never used
//! by `watch`.

use aya_ebpf::{
    macros::{cgroup_sock_addr, fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, SockAddrContext, TracePointContext},
};

#[tracepoint]
pub fn floor_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[cgroup_sock_addr(bind4)]
pub fn floor_bind4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(bind6)]
pub fn floor_bind6(_ctx: SockAddrContext) -> i32 {
    1
}

#[kprobe]
pub fn floor_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[kretprobe]
pub fn floor_kretprobe(_ctx: RetProbeContext) -> u32 {
    0
}

// An fexit program is bound to one function when loaded: one per hooked function.
#[fexit(function = "inet_bind")]
pub fn floor_fexit_inet_bind(_ctx: FExitContext) -> i32 {
    0
}

#[fexit(function = "inet6_bind")]
pub fn floor_fexit_inet6_bind(_ctx: FExitContext) -> i32 {
    0
}

#[fexit(function = "inet_csk_get_port")]
pub fn floor_fexit_inet_csk_get_port(_ctx: FExitContext) -> i32 {
    0
}

#[fexit(function = "__inet_hash_connect")]
pub fn floor_fexit_inet_hash_connect(_ctx: FExitContext) -> i32 {
    0
}

#[fexit(function = "inet_dgram_connect")]
pub fn floor_fexit_inet_dgram_connect(_ctx: FExitContext) -> i32 {
    0
}

//! bindtrace's kernel programs.
//!
//! One module per hook family; each program is a thin wrapper around a `try_*` function.
//! Nothing here may change what the traced program sees: tracepoints cannot, and the cgroup hooks
//! always return "allow".
#![no_std]
#![no_main]
// `core::intrinsics::atomic_cxchg`: the BPF target has no compare-and-swap in `core::sync`
// (its spec says `atomic-cas: false`), though every kernel bindtrace supports runs BPF_CMPXCHG.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup_bind;
mod config;
mod fexit;
mod floor;
mod inet;
mod kernel;
mod kprobe;
mod maps;
mod pending;
mod probe;
mod report;
mod sock_state;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

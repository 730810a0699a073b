//! Programs that exist only so `bindtrace doctor` can ask the kernel whether it accepts a program
//! type, by loading them. They are never attached.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

/// `tp_btf/inet_sock_set_state` (BTF raw tracepoint, 5.5+).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

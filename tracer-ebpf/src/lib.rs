//! Exists only so `tracer`'s build script can depend on this package (cargo then rebuilds the
//! collector when the programs change). The programs themselves are the `tracer-ebpf` binary,
//! built for `bpfel-unknown-none` by `aya-build`.
#![no_std]

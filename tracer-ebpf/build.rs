//! Rebuild the programs when bpf-linker changes (it is what turns them into BPF bytecode), and
//! tell it to let LLVM expand `memset`/`memcpy` of known size into word stores. By default
//! bpf-linker passes `--bpf-expand-memcpy-in-order`, which keeps memcpy inline but turns every
//! zeroed array or struct (`[0u8; 16]`, `BindEvent::ZERO`) into a call to aya-ebpf's byte-by-byte
//! `memset`: 120 iterations for an event, the largest single cost of the cheap programs.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}

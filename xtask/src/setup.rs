//! Idempotent set-up: each step checks first and does nothing when its piece is already there, so a
//! warm run takes a second or two. A cold run installs (see README "Set-up" for measured times):
//! - nightly's `rust-src` (aya-build compiles `core` for the BPF target with `-Z build-std`);
//! - LLVM 22 development packages, and `bpf-linker` 0.13 built against them (the linker that
//!   turns Rust's LLVM bitcode into BPF objects; a plain `cargo install bpf-linker` looks for
//!   libLLVM in the wrong place on Debian);
//! - what the kernel tests run: iproute2 (`ip netns`), util-linux (`setpriv`), python3, and the
//!   real programs they trace (curl, a JDK).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{self, output, run, step, succeeds};

/// Needed to build the eBPF programs.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
/// Needed by the kernel tests on this host.
/// `curl` and a JDK are real programs the kernel tests run bindtrace against.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "python3",
    "curl",
    "openjdk-17-jdk-headless",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything needed to build.
pub fn build_tools() -> Result<()> {
    step("nightly toolchain with rust-src", rust_src)?;
    step("LLVM 22 packages", || apt(BUILD_PACKAGES))?;
    step("bpf-linker", bpf_linker)
}

/// Everything needed to build and run the tests this host can run.
pub fn all() -> Result<()> {
    build_tools()?;
    step("test packages", || apt(TEST_PACKAGES))
}

/// What the VM tier needs: qemu, Debian's 6.1 and 6.12 kernels, virtme-ng.
pub fn vm() -> Result<()> {
    let mut pkgs = vec!["qemu-system-x86", "busybox-static"];
    pkgs.extend(crate::kernels::VM_KERNELS.iter().map(|(_, pkg, _)| *pkg));
    step("VM packages (qemu, kernels)", || apt(&pkgs))?;
    step("virtme-ng", || {
        if util::succeeds(Command::new("vng").arg("--version")) {
            return Ok(());
        }
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "virtme-ng"]))
    })
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    if installed.is_empty() {
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Abbrev}", pkg]))
        .is_some_and(|s| s.starts_with("ii"))
}

/// Installs the Debian packages of `pkgs` that are missing.
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("    installing {}", missing.join(" "));
    if !util::is_root() && !succeeds(Command::new("sudo").args(["-n", "true"])) {
        bail!(
            "missing packages {}; install them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(util::as_root("apt-get").args(["update", "-qq"]))?;
    run(util::as_root("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
    .with_context(|| format!("installing {}", missing.join(" ")))
}

fn bpf_linker() -> Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    eprintln!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))
}

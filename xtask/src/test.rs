//! The test tiers, in order:
//! 1. formatting, lints and the logic tests that need no privileges (`cargo test`);
//! 2. kernel tests on this host, as root: the real programs, real failures in private network
//!    namespaces (`tracer/tests/*.rs`).

use std::process::Command;

use anyhow::Result;

use crate::{
    setup,
    util::{self, cargo, step},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip set-up (when it is known to be done).
    #[arg(long)]
    no_setup: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    if !args.no_setup {
        step("set-up", setup::all)?;
    }
    step("format check", || cargo(&["fmt", "--all", "--", "--check"]))?;
    step("clippy", || {
        // The default members: tracer-ebpf only builds for the BPF target (aya-build does that,
        // with warnings denied by its own lints).
        cargo(&[
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    step("tier 1: logic tests (no root)", || {
        cargo(&["test", "--release", "--lib", "--bins"])
    })?;
    step("tier 2: kernel tests on this host (root)", kernel_tests)?;
    Ok(())
}

fn kernel_tests() -> Result<()> {
    if util::is_root() {
        return cargo(&["test", "--release", "--package", "tracer", "--test", "*"]);
    }
    if !util::succeeds(Command::new("sudo").args(["-n", "true"])) {
        eprintln!("SKIP tier 2: not root and sudo needs a password; run `sudo cargo xtask test`");
        return Ok(());
    }
    util::run(
        util::as_root("cargo")
            .args(["test", "--release", "--package", "tracer", "--test", "*"])
            .current_dir(util::root()),
    )
}

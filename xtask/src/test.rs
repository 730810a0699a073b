//! The test tiers, in order:
//! 1. formatting, lints and the logic tests that need no privileges (`cargo test`);
//! 2. kernel tests on this host, as root: the real programs, real failures in private network
//!    namespaces (`tracer/tests/*.rs`), with the backend `auto` picks here;
//! 3. the same kernel tests in VMs booting Debian's 6.1 and 6.12 kernels, side by side, once per
//!    backend each kernel offers (`kernels.rs`).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{
    kernels, setup,
    util::{self, cargo, step},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip set-up (when it is known to be done).
    #[arg(long)]
    no_setup: bool,
    /// Skip the VM tier (tier 3).
    #[arg(long)]
    no_vm: bool,
    /// Write the kernel matrix of this run to docs/kernels.md.
    #[arg(long)]
    update_docs: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    if !args.no_setup {
        step("set-up", setup::all)?;
        if !args.no_vm {
            step("set-up for the VM tier", setup::vm)?;
        }
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
    if !util::is_root() && !util::succeeds(std::process::Command::new("sudo").args(["-n", "true"]))
    {
        eprintln!(
            "SKIP tiers 2 and 3: not root and sudo needs a password; run `sudo cargo xtask test`"
        );
        return Ok(());
    }
    let bins = step("build the kernel tests", kernels::build_tests)?;
    let mut runs = Vec::new();
    let host = step("tier 2: kernel tests on this host (root)", || {
        let started = std::time::Instant::now();
        let doctor = kernels::doctor_here()?;
        let auto = doctor["auto"].as_str().unwrap_or("auto").to_string();
        let outcome = kernels::run_here(&bins, "auto", None)?;
        let lab = kernels::lab_here(&auto)?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Ok(kernels::KernelRun {
            label: "host".into(),
            release: release.trim().to_string(),
            doctor,
            backends: [(auto.clone(), outcome)].into(),
            labs: [(auto, lab)].into(),
            seconds: started.elapsed().as_secs_f64(),
            incidents: Vec::new(),
        })
    })?;
    report(&host);
    runs.push(host);
    step(
        "tier 2b: kernel tests with only the packaged capabilities",
        || {
            let caps = kernels::packaged_caps()?;
            eprintln!("    capabilities: {caps}");
            // The programs suite (JVM, curl) adds nothing about privileges.
            let privileged: Vec<_> = bins
                .iter()
                .filter(|b| !b.to_string_lossy().contains("programs-"))
                .cloned()
                .collect();
            let o = kernels::run_here(&privileged, "auto", Some(&caps))?;
            eprintln!("    {}", o.cell());
            if !o.ok() {
                eprintln!("{}", o.log);
                bail!("the kernel tests fail with only the packaged capabilities ({caps})");
            }
            Ok(())
        },
    )?;
    if !args.no_vm {
        vm_tier(&bins, &mut runs)?;
    }
    let table = kernels::table(&runs);
    let skips = kernels::skips(&runs);
    println!("\nkernel matrix:\n{table}");
    let doc = kernels::document(&runs, &table, &skips);
    let lab = kernels::lab_document(&runs);
    std::fs::write(util::root().join("target/kernel-matrix.md"), &doc)?;
    std::fs::write(util::root().join("target/lab.md"), &lab)?;
    if args.update_docs {
        std::fs::write(util::root().join("docs/kernels.md"), &doc)?;
        std::fs::write(util::root().join("docs/lab.md"), &lab)?;
    }
    if runs.iter().any(kernels::KernelRun::failed) {
        bail!("kernel tests failed (see above)");
    }
    Ok(())
}

/// Tier 3: the kernel tests in a VM of each of Debian's kernels, all VMs at once.
fn vm_tier(bins: &[PathBuf], runs: &mut Vec<kernels::KernelRun>) -> Result<()> {
    let mut images = Vec::new();
    for (label, _, prefix) in kernels::VM_KERNELS {
        let Some(image) = kernels::image(prefix) else {
            bail!("no /boot/{prefix}* kernel image: run `cargo xtask setup`");
        };
        images.push((label, image));
    }
    // The VMs at once: each runs single-threaded software emulation, so each keeps one host
    // core busy. One after the other they took 19–20 min; side by side 11.8 min (each VM 15–25 %
    // slower than alone: 704 and 710 s against 568–624 and 572–610).
    let labels: Vec<_> = images.iter().map(|(label, _)| *label).collect();
    step(
        &format!(
            "tier 3: kernel tests in {} VMs, side by side",
            labels.join(" and ")
        ),
        || {
            let results: Vec<Result<kernels::KernelRun>> = std::thread::scope(|scope| {
                let handles: Vec<_> = images
                    .iter()
                    .map(|(label, image)| scope.spawn(|| kernels::run_in_vm(label, image, bins)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| bail!("a VM runner panicked")))
                    .collect()
            });
            // Every VM's results are reported, whichever failed.
            let mut errors = Vec::new();
            for result in results {
                match result {
                    Ok(run) => {
                        report(&run);
                        runs.push(run);
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Prints a kernel's results, with the logs of failed tests.
fn report(run: &kernels::KernelRun) {
    for (backend, o) in &run.backends {
        eprintln!(
            "    {} {backend}: {} ({:.0} s for the kernel)",
            run.label,
            o.cell(),
            run.seconds
        );
        for skip in &o.skipped {
            eprintln!("      {skip}");
        }
        if !o.ok() {
            eprintln!("{}", o.log);
        }
    }
    for (backend, md) in &run.labs {
        let ok = kernels::lab_ok(md);
        eprintln!(
            "    {} lab --check ({backend}): {}",
            run.label,
            if ok { "pass" } else { "FAIL" }
        );
        if !ok {
            eprintln!("{md}");
        }
    }
}

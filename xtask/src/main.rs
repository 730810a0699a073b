//! Project tasks cargo alone cannot do: tool set-up, running the tracer as root, the test tiers
//! (including VMs booting other kernels) and benchmarks.
//!
//!     cargo xtask setup            install what building and testing need (idempotent)
//!     cargo xtask run [-- ARGS]    set up, build, run `bindtrace watch ARGS` as root
//!     cargo xtask test             set up, then every test tier this machine can run
//!     cargo xtask bench ...        benchmarks (root; see src/bench/mod.rs)

mod bench;
mod kernels;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bindtrace's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces, packages and VM kernels needed to build and test
    /// (idempotent).
    Setup,
    /// Set up, build (release) and run `bindtrace watch` with ARGS, as root.
    Run {
        /// Arguments for `bindtrace watch` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test tier this machine can run.
    Test(test::TestArgs),
    /// Benchmarks (root).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// A long run (root): mixed traffic and failure bursts; memory must stay flat, every failure
    /// be reported or counted lost, and the rotated log hold every report.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    util::extend_path();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::all().and_then(|()| setup::vm()),
        Task::Run { args } => {
            setup::build_tools()?;
            util::cargo(&["build", "--release", "--package", "tracer"])?;
            let bin = util::root().join("target/release/bindtrace");
            let mut cmd = util::as_root(&bin);
            cmd.arg("watch").args(&args);
            util::exec(cmd)
        }
        Task::Test(args) => test::run(&args),
        Task::Bench(b) => {
            setup::build_tools()?;
            bench::run(&b)
        }
        Task::Soak { minutes } => {
            setup::build_tools()?;
            bench::soak_run(minutes)
        }
    }
}

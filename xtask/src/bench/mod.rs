//! Benchmarks (as root). Numbers come from real runs on the machine they are run on and go into
//! `docs/performance.md` with the command that made them; they are never asserted in tests.
//!
//!     cargo xtask bench overhead   per-operation cost under nothing / floor / bindtrace / peer
//!         --against REV            ... and bindtrace built from commit REV, in the same rounds
//!     cargo xtask bench storm      a failure storm: generated = reported + lost, CPU, peak RSS
//!     cargo xtask bench idle       the collector's CPU when nothing fails
//!     cargo xtask bench verdict    failure → verdict latency with 10 000 sockets open
//!     cargo xtask bench all        all of them, results also in target/bench.json
//!     cargo xtask soak             10 minutes of mixed traffic: memory flat, nothing lost silently

mod against;
mod overhead;
mod soak;
mod storm;
mod verdict;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, cargo, step};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Per-operation cost of bind, failing bind, connect/accept/close and failing listen, with
    /// nothing attached, the floor (empty programs on the same hooks), bindtrace and a bpftrace
    /// peer, interleaved over rounds.
    Overhead {
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Also measure bindtrace built from this commit (A/B), in the same rounds.
        #[arg(long, value_name = "REV")]
        against: Option<String>,
    },
    /// Failing binds as fast as one core can while bindtrace runs on the other.
    Storm {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The collector's CPU use over a quiet period.
    Idle {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Failure-to-verdict latency with many unrelated sockets open.
    Verdict {
        #[arg(long, default_value_t = 10_000)]
        sockets: u32,
        #[arg(long, default_value_t = 100)]
        probes: u32,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// All of the above; the results also go to target/bench.json.
    All,
}

pub fn run(bench: &Bench) -> Result<()> {
    if !util::is_root() {
        bail!("benchmarks load eBPF programs: run `sudo cargo xtask bench ...`");
    }
    step("build (release)", || {
        cargo(&["build", "--release", "--package", "tracer"])
    })?;
    match bench {
        Bench::Overhead { rounds, against } => {
            let against = against.as_deref().map(against::build).transpose()?;
            overhead::run(*rounds, against.as_ref()).map(drop)
        }
        Bench::Storm { seconds } => storm::storm(*seconds).map(drop),
        Bench::Idle { seconds } => storm::idle(*seconds).map(drop),
        Bench::Verdict {
            sockets,
            probes,
            json,
        } => verdict::run(*sockets, *probes, json.as_deref()),
        Bench::All => {
            let o = overhead::run(7, None)?;
            let s = storm::storm(5)?;
            let i = storm::idle(20)?;
            verdict::run(10_000, 100, None)?;
            let all = serde_json::json!({ "overhead": o, "storm": s, "idle": i });
            std::fs::write(
                util::root().join("target/bench.json"),
                serde_json::to_string_pretty(&all)?,
            )?;
            Ok(())
        }
    }
}

/// Pins the calling thread (or, in `pre_exec`, the child) to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a plain cpu_set_t on the stack, passed to sched_setaffinity for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// The CPU the measured workload runs on; what is measured against runs on the other.
pub const WORK_CPU: usize = 0;
pub const TOOL_CPU: usize = 1;

/// A tool attached for a measurement (bindtrace, the floor, bpftrace), stopped on drop.
pub struct Attached {
    pub child: Child,
    /// Lines of its stdout, counted as they arrive.
    pub lines: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Attached {
    /// Starts `cmd` on `TOOL_CPU`; waits for `ready` (a file) or for a stdout line containing
    /// `ready_line`.
    pub fn start(
        mut cmd: Command,
        ready: Option<&std::path::Path>,
        ready_line: Option<&str>,
    ) -> Result<Self> {
        if let Some(r) = ready {
            let _ = std::fs::remove_file(r);
        }
        // SAFETY: sched_setaffinity is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                pin_to_cpu(TOOL_CPU);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().context("stdout")?);
        let counter = std::sync::Arc::clone(&lines);
        let want = ready_line.map(str::to_string);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if want.as_deref().is_some_and(|w| line.contains(w)) {
                    let _ = tx.send(());
                } else {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let err = BufReader::new(child.stderr.take().context("stderr")?);
        let e = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut s = e.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let start = Instant::now();
        loop {
            if ready.is_some_and(std::path::Path::exists) || rx.try_recv().is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                bail!("{cmd:?} exited ({status}):\n{}", stderr.lock().unwrap());
            }
            if start.elapsed() > Duration::from_mins(1) {
                bail!("{cmd:?} did not attach within a minute");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }

    /// SIGINT, wait, and return what it printed on stderr.
    pub fn stop(mut self) -> String {
        self.interrupt();
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.lock().unwrap().clone()
    }

    fn interrupt(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }

    /// The process's current resident size, KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmRSS:")
    }

    /// (user + system CPU seconds, peak RSS in KiB) of the process so far.
    pub fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may contain spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15: 12 and 13 after the ')'.
        let cpu = (ticks(11) + ticks(12)) / hz;
        (cpu, status_kib(pid, "VmHWM:"))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// A kB field of /proc/PID/status (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This tree's release build of bindtrace.
pub fn bindtrace_path() -> PathBuf {
    util::root().join("target/release/bindtrace")
}

pub fn bindtrace_cmd() -> Command {
    Command::new(bindtrace_path())
}

/// Runs `f` on a thread inside a fresh network namespace (loopback up), pinned to `WORK_CPU`.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: unshare(2) affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!("unshare: {}", std::io::Error::last_os_error());
        }
        // A child inherits the calling thread's namespaces: this is the new one's loopback.
        util::run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
        pin_to_cpu(WORK_CPU);
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the workload thread panicked"))?
}

/// `cargo xtask soak`: build, then run the soak (root).
pub fn soak_run(minutes: u64) -> Result<()> {
    if !util::is_root() {
        bail!("the soak loads eBPF programs: run `sudo cargo xtask soak`");
    }
    step("build (release)", || {
        cargo(&["build", "--release", "--package", "tracer"])
    })?;
    soak::run(minutes)
}

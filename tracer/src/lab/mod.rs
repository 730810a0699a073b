//! `bindtrace lab`: the seed's experiments (and the conflict rules around them) as one command,
//! run in a throwaway network namespace with real sockets and processes, each with the outcome
//! expected, the outcome observed on this kernel, and whether bindtrace — attached in-process,
//! filtered to the lab's namespace — reported the failure and named the right cause and holder.
//!
//! With `--check` the lab is bindtrace's own end-to-end self-test: it exits non-zero if bindtrace
//! missed, misdiagnosed, or invented a failure. A kernel that answers differently from the seed is
//! reported, not counted against bindtrace (bindtrace reports what the kernel did).

mod cases;
pub mod helper;
mod space;

use std::{
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use serde::Serialize;
use tracer_common::{Config, names};

use crate::{
    backend::{self, BackendChoice},
    collector::Collector,
    diagnose::Cause,
    errno,
    event::Event,
    owners,
    pipeline::{Pipeline, Writer},
};
use cases::{Ctx, Expect};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LabFormat {
    #[default]
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Exit non-zero if bindtrace missed or misdiagnosed a failure the lab provoked.
    #[arg(long)]
    pub check: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = LabFormat::Text)]
    pub output: LabFormat,

    /// Only these cases (ids as listed by a full run), repeatable.
    #[arg(long = "case", value_name = "ID")]
    pub cases: Vec<String>,

    /// Which kernel hooks the tracer uses.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

/// bindtrace's events, as the pipeline finishes them.
#[derive(Clone, Default)]
struct Seen(Arc<(Mutex<Vec<Event>>, Condvar)>);

impl Writer for Seen {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let (m, c) = &*self.0;
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ev.clone());
        c.notify_all();
        Ok(())
    }
    fn lost(&mut self, _: &str, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seen {
    /// The first event matching `pred`, waiting up to `deadline`.
    fn wait(&self, deadline: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let (m, c) = &*self.0;
        let start = Instant::now();
        let mut evs = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(e) = evs.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let left = deadline.checked_sub(start.elapsed())?;
            evs = c
                .wait_timeout(evs, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn any(&self, pred: impl Fn(&Event) -> bool) -> bool {
        let (m, _) = &*self.0;
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(pred)
    }
}

/// How long the lab waits for an event that must come.
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Serialize)]
struct TracerCheck {
    ok: bool,
    reported: bool,
    cause: Option<Cause>,
    holder_pid: Option<u32>,
    detail: String,
}

#[derive(Serialize)]
struct CaseResult {
    id: &'static str,
    setup: &'static str,
    expected: String,
    observed: String,
    /// Whether this kernel did what the seed (or the rules) say.
    kernel_as_expected: bool,
    bindtrace: TracerCheck,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn outcome_text(errno: i32) -> String {
    if errno == 0 {
        "ok".into()
    } else {
        errno::name(errno)
    }
}

/// Judges bindtrace's report of one call against what the kernel answered.
fn judge(case: &cases::Case, out: &cases::Outcome, me: u32, seen: &Seen) -> TracerCheck {
    let matches = |e: &Event| {
        e.pid == me && e.is_failure() && (e.port == out.port || e.remote_port == Some(out.port))
    };
    if out.errno == 0 {
        // A marker failure after it: once that is reported, a false report would be in.
        let marker_port = out.port.wrapping_add(5);
        let m = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).and_then(
            |s| s.bind(&std::net::SocketAddr::from(([192, 0, 2, 1], marker_port)).into()),
        );
        let marker = m.is_err()
            && seen
                .wait(DEADLINE, |e| {
                    e.pid == me && e.port == marker_port && e.addr == "192.0.2.1"
                })
                .is_some();
        let invented = seen.any(|e| matches(e));
        return TracerCheck {
            ok: marker && !invented,
            reported: invented,
            cause: None,
            holder_pid: None,
            detail: match (marker, invented) {
                (false, _) => "the marker failure after the call was not reported".into(),
                (true, true) => "reported a failure that did not happen".into(),
                (true, false) => "nothing reported, rightly".into(),
            },
        };
    }
    let Some(ev) = seen.wait(DEADLINE, matches) else {
        return TracerCheck {
            ok: false,
            reported: false,
            cause: None,
            holder_pid: None,
            detail: format!("the {} was not reported", errno::name(out.errno)),
        };
    };
    let d = ev.diagnosis.as_ref();
    let reported = d.map(|d| d.cause);
    let holder = d.and_then(|d| d.holders.first()).and_then(|h| h.pid);
    let mut problems = Vec::new();
    if ev.errno != out.errno {
        problems.push(format!(
            "errno {} reported, {} happened",
            ev.errno, out.errno
        ));
    }
    // The expected cause holds only where the kernel behaved as expected.
    if let Expect::Fails(e, want) = case.expect
        && e == out.errno
        && reported != Some(want)
    {
        problems.push(format!(
            "cause {} instead of {}",
            reported.map_or("none", Cause::as_str),
            want.as_str()
        ));
    }
    if let Some(want) = out.holder_pid
        && holder != Some(want)
    {
        problems.push(format!("holder pid {holder:?} instead of {want}"));
    }
    TracerCheck {
        ok: problems.is_empty(),
        reported: true,
        cause: reported,
        holder_pid: holder,
        detail: if problems.is_empty() {
            match (reported, holder) {
                (Some(c), Some(h)) => format!("{}, holder pid {h}", c.as_str()),
                (Some(c), None) => c.as_str().to_string(),
                _ => "reported".into(),
            }
        } else {
            problems.join("; ")
        },
    }
}

/// Runs the chosen cases on the calling thread, which is already inside the lab namespace.
fn run_cases(mut ctx: Ctx, only: &[String], seen: &Seen) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for case in cases::all() {
        if !only.is_empty() && !only.iter().any(|c| c == case.id) {
            continue;
        }
        let expected = match case.expect {
            Expect::Ok => "ok".to_string(),
            Expect::Fails(e, _) => errno::name(e),
        };
        let result = match (case.run)(&mut ctx) {
            Ok(out) => {
                let observed = outcome_text(out.errno);
                let check = judge(&case, &out, ctx.me, seen);
                CaseResult {
                    id: case.id,
                    setup: case.setup,
                    kernel_as_expected: observed == expected,
                    expected,
                    observed,
                    bindtrace: check,
                    note: out.note.clone(),
                }
            }
            Err(e) => CaseResult {
                id: case.id,
                setup: case.setup,
                expected,
                observed: format!("setup failed: {e:#}"),
                kernel_as_expected: false,
                bindtrace: TracerCheck {
                    ok: true,
                    reported: false,
                    cause: None,
                    holder_pid: None,
                    detail: "not run".into(),
                },
                note: None,
            },
        };
        results.push(result);
    }
    results
}

/// Runs the lab. Returns false when `--check` finds bindtrace wrong.
pub async fn run(args: LabArgs) -> Result<bool> {
    // A mistyped id would otherwise run nothing and pass.
    let ids: Vec<&str> = cases::all().iter().map(|c| c.id).collect();
    if let Some(unknown) = args.cases.iter().find(|c| !ids.contains(&c.as_str())) {
        anyhow::bail!(
            "--case {unknown}: no such case (the cases: {})",
            ids.join(", ")
        );
    }
    let seen = Seen::default();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u64>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let only = args.cases.clone();
    let lab_seen = seen.clone();
    let lab = std::thread::Builder::new()
        .name("bindtrace-lab".into())
        .spawn(move || -> Vec<CaseResult> {
            let ns = match space::enter_new_netns() {
                Ok(ns) => ns,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Vec::new();
                }
            };
            let _ = ready_tx.send(Ok(space::inode(&ns)));
            if go_rx.recv().is_err() {
                return Vec::new();
            }
            run_cases(Ctx::new(ns), &only, &lab_seen)
        })?;
    let netns = ready_rx.recv().context("the lab thread died")??;

    let config = Config {
        filter_netns: netns as u32,
        self_pid: 0,
        ..Config::default()
    };
    let mut tracer = backend::start(&backend::Settings {
        choice: args.backend,
        kernel_btf: None,
        config,
        history_size: 32_768,
        cgroup: None,
    })?;
    let history = tracer
        .ebpf
        .take_map(names::HISTORY)
        .and_then(owners::History::open);
    let collector = Collector::new(&mut tracer.ebpf)?;
    let mut pipeline = Pipeline::start(seen.clone(), Some(owners::Investigator::new(history)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collecting = tokio::spawn(async move {
        let r = collector
            .run(
                &mut pipeline,
                async {
                    let _ = stop_rx.await;
                },
                // The cases are over by then; the tracer is dropped below.
                || {},
            )
            .await;
        let _ = pipeline.finish();
        r
    });
    go_tx.send(()).map_err(|_| anyhow!("the lab thread died"))?;
    let results = tokio::task::spawn_blocking(move || lab.join())
        .await?
        .map_err(|_| anyhow!("the lab thread panicked"))?;
    let _ = stop_tx.send(());
    collecting.await??;
    let backend = tracer.backend;
    drop(tracer);

    let all_ok = results.iter().all(|r| r.bindtrace.ok);
    render(&results, args.output, backend.as_str())?;
    Ok(!args.check || all_ok)
}

fn render(results: &[CaseResult], format: LabFormat, backend: &str) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    let wrong = results.iter().filter(|r| !r.bindtrace.ok).count();
    let differs = results.iter().filter(|r| !r.kernel_as_expected).count();
    match format {
        LabFormat::Json => {
            #[derive(Serialize)]
            struct Doc<'a> {
                kernel: &'a str,
                backend: &'a str,
                cases: &'a [CaseResult],
                bindtrace_wrong: usize,
                kernel_differs: usize,
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&Doc {
                    kernel,
                    backend,
                    cases: results,
                    bindtrace_wrong: wrong,
                    kernel_differs: differs,
                })?
            );
        }
        LabFormat::Markdown => {
            println!("| case | setup | expected | observed | bindtrace |");
            println!("|---|---|---|---|---|");
            for r in results {
                let mark = if r.bindtrace.ok { "✓" } else { "✗" };
                let obs = if r.kernel_as_expected {
                    r.observed.clone()
                } else {
                    format!("**{}**", r.observed)
                };
                let note = r
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!(
                    "| {} | {} | {} | {obs} | {mark} {}{note} |",
                    r.id, r.setup, r.expected, r.bindtrace.detail
                );
            }
            println!(
                "\nKernel `{kernel}`, backend `{backend}`: {} case(s), bindtrace wrong in {wrong}, \
                 kernel different from expected in {differs}.",
                results.len()
            );
        }
        LabFormat::Text => {
            for r in results {
                let mark = if r.bindtrace.ok { "ok  " } else { "FAIL" };
                let obs = if r.kernel_as_expected {
                    r.observed.clone()
                } else {
                    format!("{} (expected {})", r.observed, r.expected)
                };
                println!("{mark} {:<20} {:<34} {}", r.id, obs, r.bindtrace.detail);
                if let Some(n) = &r.note {
                    println!("     {:<20} {n}", "");
                }
            }
            println!(
                "\nkernel {kernel}, backend {backend}: {} case(s); bindtrace wrong in {wrong}; \
                 kernel different from expected in {differs}",
                results.len()
            );
        }
    }
    Ok(())
}

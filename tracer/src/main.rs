//! bindtrace: catches bind()/listen() failures as they happen and says who failed, on what, who
//! held the port and why.

mod addresses;
mod backend;
mod btf;
mod checkport;
mod cli;
mod collector;
mod container;
mod diagnose;
mod doctor;
mod errno;
mod event;
#[cfg(test)]
mod fuzz;
mod host;
mod lab;
mod logfile;
mod metrics;
mod netns;
mod output;
mod owners;
mod pipeline;
mod preexisting;
mod procfs;
mod report;
mod sockdiag;
mod stopping;
mod tracefs;

use std::{fmt::Write as _, fs, path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tracer_common::{Config, names};

use crate::{
    cli::{Cli, Command, WatchArgs},
    collector::Collector,
    output::Renderer,
    pipeline::Pipeline,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Command::LabHelper(args) = &cli.command {
        lab::helper::run(args);
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Command::Report(_) | Command::CheckPort(_)) {
        // These print and exit: piped into `head`, they end quietly when the reader goes, as
        // Unix tools do, instead of panicking in println! on EPIPE. The others keep SIGPIPE
        // ignored: `watch` handles a closed output itself (it still detaches and prints its
        // summary), and `lab` writes to helpers' stdin pipes, which may have closed already.
        // SAFETY: restoring a signal's default disposition, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bindtrace: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // check-port's 1 means "blocked": a check that could not be made says so apart (2, as a
    // usage error), so that a pre-start hook can tell a busy port from a mistake.
    let error_code = if matches!(cli.command, Command::CheckPort(_)) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => watch(args).await.map(|()| true),
            Command::Doctor(args) => doctor::run(args.kernel_btf.as_deref(), args.output),
            Command::Lab(args) => lab::run(args).await,
            Command::Report(args) => report::run(&args).map(|()| true),
            Command::CheckPort(args) => checkport::run(&args),
            Command::LabHelper(_) => unreachable!("handled before the runtime starts"),
            Command::Floor(args) => floor(&args).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            output::notice(format_args!("bindtrace: {e:#}"));
            error_code
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns what completes on either. Now, not
/// at the first await: a signal sent after the ready file appears but before the collector
/// first waits is kept for it — where it would otherwise be lost to an inherited SIG_IGN (a
/// background job of a script ignores SIGINT), leaving the run to go on for nobody.
///
/// SIGHUP too (the terminal of an ssh session that dropped): a clean stop, with the summary and
/// the log's stop record, where its default action would end the run without them — unless it is
/// ignored (`nohup bindtrace watch &`), which is kept.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    let hangup = (!hangup_ignored())
        .then(|| signal(SignalKind::hangup()).ok())
        .flatten();
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            // Without signal handlers the default action (exit) still applies.
            return std::future::pending().await;
        };
        let hup = async move {
            match hangup {
                Some(mut h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            () = hup => {}
        }
        // The stop must end: a second signal, or its deadline, ends the process if it does not.
        stopping::asked(int, term);
    }
}

/// Whether SIGHUP is ignored (inherited from `nohup`).
fn hangup_ignored() -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: sigaction(2) with no new action only reads the current one into `old`.
    let ok = unsafe { libc::sigaction(libc::SIGHUP, std::ptr::null(), old.as_mut_ptr()) } == 0;
    // SAFETY: zero-initialised, and filled on success.
    ok && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Opens the network namespace with inode `inode` (`--netns`), or says that none has it.
fn hold_netns(inode: u32) -> Option<netns::Netns> {
    let ns = netns::Finder::default().open(u64::from(inode), 0, 0);
    if ns.is_none() {
        eprintln!(
            "bindtrace: note: --netns {inode}: no process or /run/netns entry is in such a \
             network namespace now (nothing is reported unless one is made with that inode)"
        );
    }
    ns
}

/// `--cgroup`'s directory, which must be on the cgroup-v2 hierarchy (a v1 directory, or any
/// other, cannot be matched in the kernel).
fn open_cgroup2_dir(p: &Path) -> Result<fs::File> {
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    // A path as /proc/PID/cgroup shows it ("0::/kubepods.slice/..."), relative to the cgroup2
    // mount, is taken from there when it is not a path of its own.
    let in_mount = (!p.exists())
        .then(|| host::cgroup2_root().ok())
        .flatten()
        .map(|root| root.join(p.strip_prefix("/").unwrap_or(p)))
        .filter(|q| q.is_dir());
    let p = in_mount.as_deref().unwrap_or(p);
    let f = fs::File::open(p).with_context(|| format!("--cgroup {}: cannot open", p.display()))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `st` on success, the only case read.
    let ok = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), st.as_mut_ptr()) } == 0;
    // SAFETY: see above.
    let v2 = ok && unsafe { st.assume_init() }.f_type as libc::c_long == CGROUP2_SUPER_MAGIC;
    if !v2 || !f.metadata()?.is_dir() {
        anyhow::bail!(
            "--cgroup {}: not a cgroup-v2 directory (give one under the cgroup2 mount that \
             `findmnt -t cgroup2` shows, such as a pod's kubepods.slice/... directory)",
            p.display()
        );
    }
    Ok(f)
}

/// Completes on SIGINT or SIGTERM (handled from this call on), or, when the terminal is the only
/// output (`alone`), once its reader has gone.
fn stop_requested(alone: bool) -> impl Future<Output = ()> {
    let signal = shutdown_signal();
    async move {
        tokio::select! {
            () = signal => {}
            () = reader_gone(), if alone => {}
        }
    }
}

/// Completes when stdout is a pipe or socket whose reader has gone (`bindtrace watch | head
/// -1`): without a write to fail, a quiet host would keep the programs attached for nobody.
/// Checked once a second (a `poll()` of stdout reports `POLLERR` then).
async fn reader_gone() {
    use std::os::fd::AsRawFd;
    let stdout = std::io::stdout();
    let fd = stdout.as_raw_fd();
    let is_pipe = fs::metadata("/proc/self/fd/1").is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo() || m.file_type().is_socket()
    });
    if !is_pipe {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&raw mut p, 1, 0) };
        if n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return;
        }
    }
}

/// Whether `e` is a write to a reader that has gone.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) || e.to_string().contains("Broken pipe")
}

/// Writes `contents` to `path` atomically, so a reader never sees half of it.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// `__floor`: attach the benchmark's empty programs and hold them until SIGINT/SIGTERM.
async fn floor(args: &cli::FloorArgs) -> Result<()> {
    let stop = shutdown_signal();
    let (ebpf, backend) = backend::start_floor(args.backend)?;
    if let Some(path) = &args.ready_file {
        write_atomically(path, &format!("{}\n", backend.as_str()))?;
    }
    stop.await;
    drop(ebpf);
    Ok(())
}

/// Start-up (reading the kernel's BTF, loading and attaching the programs) peaks at ~40 MiB of
/// heap, all freed by the time events flow; glibc keeps freed heap pages mapped unless told.
/// Handing them back makes the long-running collector's resident size what it really uses
/// (`cargo xtask bench idle`: 32 MiB before this, 9 MiB after).
fn release_start_up_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What looks up holders, with the kernel programs' history of owners.
fn investigator(ebpf: &mut aya::Ebpf) -> owners::Investigator {
    let history = ebpf
        .take_map(names::HISTORY)
        .and_then(owners::History::open);
    if history.is_none() {
        eprintln!("bindtrace: note: owner history unavailable; TIME-WAIT owners stay unknown");
    }
    owners::Investigator::new(history)
}

/// What the kernel programs are told: the filters, applied there, and the switches.
fn kernel_config(args: &WatchArgs) -> Config {
    if let Some(pid) = args.filters.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        eprintln!(
            "bindtrace: note: --pid {pid}: no such process now (nothing is reported unless a \
             process with that pid makes the calls)"
        );
    }
    Config {
        filter_pid: args.filters.pid.unwrap_or(0),
        filter_port: args.filters.port.unwrap_or(0),
        filter_comm: args.filters.comm_bytes(),
        filter_netns: args.filters.netns.unwrap_or(0),
        self_pid: std::process::id(),
        report_success: u8::from(args.all),
        debug: u8::from(args.debug_ebpf),
        ..Config::default()
    }
}

/// What takes a watch's events besides the terminal, if anything: then its reader going away (a
/// logger that died) must not stop a daemon whose log still takes every event.
fn other_outputs(args: &WatchArgs) -> Option<&'static str> {
    match (&args.log_file, &args.metrics_addr) {
        (Some(_), Some(_)) => Some("the log file and the metrics"),
        (Some(_), None) => Some("the log file"),
        (None, Some(_)) => Some("the metrics"),
        (None, None) => None,
    }
}

/// Where a watch's events go: the log file, the metrics, and the terminal (`others`: what else
/// takes them, if anything).
fn outputs(
    args: &WatchArgs,
    backend: &str,
    log: Option<logfile::LogFile>,
    metrics_listener: Option<tokio::net::TcpListener>,
    unwritten: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    others: Option<&'static str>,
) -> Vec<Box<dyn pipeline::Writer>> {
    let mut writers: Vec<Box<dyn pipeline::Writer>> = Vec::new();
    if let Some(mut log) = log {
        log.started(backend, &args.filters.scope());
        writers.push(Box::new(log));
    }
    if let Some(listener) = metrics_listener {
        let (m, registry) = metrics::Metrics::new(backend, unwritten);
        metrics::serve(listener, registry);
        writers.push(Box::new(m));
    }
    // The terminal last: once an event is shown there, the log file and the metrics have it too
    // (what a watcher that reads the output and then scrapes or reads the log relies on).
    let terminal = Renderer::stdout(args.output);
    match others {
        Some(others) => writers.push(Box::new(output::Detachable::new(terminal, others))),
        None => writers.push(Box::new(terminal)),
    }
    writers
}

async fn watch(args: WatchArgs) -> Result<()> {
    let others = other_outputs(&args);
    let stop = stop_requested(others.is_none());
    // Everything that can be wrong with the arguments fails before anything is attached.
    let log = args
        .log_file
        .as_deref()
        .map(|p| logfile::LogFile::open(p, args.log_max_size, args.log_keep))
        .transpose()?;
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let cgroup = args
        .filters
        .cgroup
        .as_deref()
        .map(open_cgroup2_dir)
        .transpose()?;
    // Held open for the whole run: a namespace that loses its last process (a pod deleted)
    // then stays, so its inode number, which the kernel filter matches, cannot be given to a
    // new namespace whose calls would be reported as this one's.
    let _watched_netns = args.filters.netns.and_then(hold_netns);
    let config = kernel_config(&args);
    let mut tracer = backend::start(&backend::Settings {
        choice: args.backend,
        kernel_btf: args.kernel_btf.clone(),
        config,
        history_size: args.history_size,
        cgroup,
    })?;
    for note in &tracer.notes {
        eprintln!("bindtrace: note: {note}");
    }
    if args.debug_ebpf {
        match aya_log::EbpfLogger::init(&mut tracer.ebpf) {
            Ok(logger) => {
                let mut logger = collector::readable(logger)?;
                tokio::spawn(async move {
                    while let Ok(mut guard) = logger.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => eprintln!("bindtrace: note: eBPF logging unavailable: {e}"),
        }
    }
    let collector = Collector::new(&mut tracer.ebpf)?;
    let investigator = (!args.no_holders).then(|| investigator(&mut tracer.ebpf));
    let unwritten = log.as_ref().map(|l| std::sync::Arc::clone(&l.unwritten));
    let writers = outputs(
        &args,
        tracer.backend.as_str(),
        log,
        metrics_listener,
        unwritten.clone(),
        others,
    );
    // Ready once the owners of connections made before now are known too (the kernel programs
    // already record every failure meanwhile).
    if let Some(inv) = &investigator {
        inv.wait_for_start_scan();
    }
    if let Some(path) = &args.ready_file {
        write_atomically(path, &format!("{}\n", tracer.backend.as_str()))?;
    }
    eprintln!(
        "bindtrace: tracing bind(), listen() and connect() failures with the {} backend (Ctrl-C to stop)",
        tracer.backend.as_str()
    );
    release_start_up_memory();
    let mut pipeline = Pipeline::start(pipeline::Fanout(writers), investigator);
    let stats = collector
        .run(&mut pipeline, stop, move || drop(tracer))
        .await;
    stopping::at(stopping::Step::Writing);
    let finished = pipeline.finish();
    // `bindtrace watch | head -1`: the reader leaving is the end of the run, not a failure.
    let (stats, finished) = match (stats, finished) {
        (Err(e), _) | (_, Err(e)) if broken_pipe(&e) => {
            output::notice(format_args!(
                "bindtrace: the output's reader went away; stopped"
            ));
            return Ok(());
        }
        (stats, finished) => (stats, finished),
    };
    finished?;
    let stats = stats?;
    let unwritten = unwritten.map_or(0, |u| u.load(std::sync::atomic::Ordering::Relaxed));
    let mut extra = String::new();
    if stats.untracked > 0 {
        let _ = write!(extra, ", {} call(s) not tracked", stats.untracked);
    }
    if unwritten > 0 {
        let _ = write!(extra, ", {unwritten} log line(s) not written");
    }
    output::notice(format_args!(
        "bindtrace: {} failure(s) reported, {} event(s) lost, {} record(s) unreadable{extra}",
        stats.failures, stats.lost, stats.corrupt,
    ));
    Ok(())
}

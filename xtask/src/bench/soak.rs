//! `cargo xtask soak`: bindtrace watches a long run of mixed traffic with failure bursts. It passes
//! when memory stays flat, every failure the workload saw is reported or counted as lost by the
//! kernel (exactly), and the rotated post-mortem log holds every reported failure, intact.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Attached, bindtrace_cmd, in_netns, status_kib, storm::summary};

/// What the workload did, counted as it went.
#[derive(Default)]
struct Tally {
    /// bind()/listen() calls that failed (each must show up as a report or as a lost event).
    failures: u64,
    binds_ok: u64,
    connections: u64,
}

pub fn run(minutes: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("bindtrace-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("soak.log");
    let ready = dir.join("ready");
    let mut cmd = bindtrace_cmd();
    cmd.args(["watch", "--output", "json", "--pid"])
        .arg(std::process::id().to_string())
        .arg("--log-file")
        .arg(&log)
        // Small files, many kept: the soak rotates often and must not lose a line doing so.
        .args(["--log-max-size", "1M", "--log-keep", "1000"])
        .arg("--ready-file")
        .arg(&ready);
    let tool = Attached::start(cmd, Some(&ready), None)?;
    let pid = tool.child.id();

    let done = Arc::new(AtomicBool::new(false));
    let rss_sampler = sample_rss(pid, Arc::clone(&done));

    println!("soak: {minutes} min of mixed traffic with failure bursts, bindtrace pid {pid}");
    let started = Instant::now();
    let tally = in_netns(move || workload(Duration::from_mins(minutes)))??;
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3)); // let the collector drain
    let (cpu, peak) = tool.usage();
    done.store(true, Ordering::Relaxed);
    let samples = rss_sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let stderr = tool.stop();
    let (reported, lost) = summary(&stderr).context("bindtrace printed no summary")?;
    let logged = read_logs(&log)?;
    let _ = std::fs::remove_dir_all(&dir);

    let unaccounted = tally.failures as i64 - reported as i64 - lost as i64;
    let (early, late) = rss_trend(&samples);
    let growth_kib = late.saturating_sub(early);
    // Flat: after warm-up, the last fifth of the run is within 10 % (and 4 MiB) of the first.
    let flat = late <= early + (early / 10).max(4096);
    println!(
        "  workload: {} failures, {} binds, {} connections in {secs:.0} s",
        tally.failures, tally.binds_ok, tally.connections
    );
    println!("  bindtrace: {reported} reported, {lost} counted lost, unaccounted {unaccounted}");
    println!(
        "  log: {} files, {} failure lines, {} lost-event lines, {} malformed",
        logged.files, logged.failures, logged.lost, logged.malformed
    );
    println!(
        "  RSS: {:.1} MiB after warm-up, {:.1} MiB at the end (growth {:.1} MiB), peak {:.1} MiB; CPU {cpu:.1} s ({:.1} % of one core)",
        early as f64 / 1024.0,
        late as f64 / 1024.0,
        growth_kib as f64 / 1024.0,
        peak as f64 / 1024.0,
        100.0 * cpu / secs
    );
    let result = json!({
        "minutes": minutes,
        "failures": tally.failures,
        "binds_ok": tally.binds_ok,
        "connections": tally.connections,
        "reported": reported,
        "lost": lost,
        "unaccounted": unaccounted,
        "log_files": logged.files,
        "log_failures": logged.failures,
        "log_malformed": logged.malformed,
        "rss_kib_after_warmup": early,
        "rss_kib_end": late,
        "peak_rss_kib": peak,
        "cpu_s": cpu,
        "rss_samples": samples.iter().map(|(t, k)| json!([t, k])).collect::<Vec<Value>>(),
    });
    std::fs::write(
        crate::util::root().join("target/soak.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let wrong = problems(&tally, unaccounted, reported, &logged, flat, growth_kib);
    if wrong.is_empty() {
        println!("soak: pass (results in target/soak.json)");
        Ok(())
    } else {
        bail!("soak failed: {}", wrong.join("; "))
    }
}

/// What went wrong in a soak, in words; empty when it passed.
fn problems(
    tally: &Tally,
    unaccounted: i64,
    reported: u64,
    logged: &Logged,
    flat: bool,
    growth_kib: u64,
) -> Vec<String> {
    let mut wrong = Vec::new();
    if unaccounted != 0 {
        wrong.push(format!(
            "{unaccounted} failure(s) neither reported nor counted lost"
        ));
    }
    if logged.failures != reported || logged.malformed != 0 {
        wrong.push(format!(
            "the log holds {} failure line(s) and {} malformed for {reported} reported",
            logged.failures, logged.malformed
        ));
    }
    if !flat {
        wrong.push(format!(
            "memory grew {:.1} MiB after warm-up",
            growth_kib as f64 / 1024.0
        ));
    }
    if tally.failures == 0 {
        wrong.push("the workload produced no failures".into());
    }
    wrong
}

/// Samples the collector's RSS every 5 s until `done`: (seconds since start, KiB).
fn sample_rss(pid: u32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let start = Instant::now();
        while !done.load(Ordering::Relaxed) {
            samples.push((start.elapsed().as_secs(), status_kib(pid, "VmRSS:")));
            for _ in 0..50 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        samples
    })
}

/// Every 100 ms: bind(0)s that succeed and loopback connections (each leaves a TIME-WAIT behind,
/// so the history and the kernel's socket tables churn); every second, a burst of failures:
/// TCP binds on a held port, UDP binds on a held port, and a listen() that loses to another.
fn workload(length: Duration) -> Result<Tally> {
    let mut t = Tally::default();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let target = listener.local_addr()?;
    let held = SocketAddr::from((Ipv4Addr::LOCALHOST, 7100));
    let _tcp_holder = bound(Type::STREAM, held, false)?;
    let _udp_holder = bound(Type::DGRAM, held, false)?;
    let end = Instant::now() + length;
    let mut tick = 0u64;
    while Instant::now() < end {
        for _ in 0..20 {
            drop(bound(
                Type::STREAM,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                true,
            )?);
            t.binds_ok += 1;
            let c = TcpStream::connect(target)?;
            let (a, _) = listener.accept()?;
            drop(c); // the client closes first: its side goes TIME-WAIT
            drop(a);
            t.connections += 1;
        }
        if tick.is_multiple_of(10) {
            for _ in 0..200 {
                t.failures += u64::from(bound(Type::STREAM, held, false).is_err());
            }
            for _ in 0..20 {
                t.failures += u64::from(bound(Type::DGRAM, held, false).is_err());
            }
            t.failures += u64::from(losing_listen(7101 + (tick / 10 % 50) as u16)?);
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(t)
}

fn bound(ty: Type, addr: SocketAddr, reuseaddr: bool) -> std::io::Result<Socket> {
    let proto = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    s.set_reuse_address(reuseaddr)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Two SO_REUSEADDR sockets bound to one port: the first listen() wins, the second fails.
/// Returns whether it failed (it does on every Linux kernel).
fn losing_listen(port: u16) -> Result<bool> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let a = bound(Type::STREAM, addr, true)?;
    let b = bound(Type::STREAM, addr, true)?;
    a.listen(1)?;
    Ok(b.listen(1).is_err())
}

/// Mean RSS of the samples in the second fifth of the run (after warm-up) and in the last fifth.
fn rss_trend(samples: &[(u64, u64)]) -> (u64, u64) {
    let n = samples.len();
    let mean = |s: &[(u64, u64)]| {
        if s.is_empty() {
            0
        } else {
            s.iter().map(|(_, k)| k).sum::<u64>() / s.len() as u64
        }
    };
    (
        mean(&samples[n / 5..2 * n / 5]),
        mean(&samples[4 * n / 5..]),
    )
}

#[derive(Default)]
struct Logged {
    files: usize,
    failures: u64,
    lost: u64,
    malformed: u64,
}

/// Reads `path` and its rotations (`path.1`, `path.2`, ...).
fn read_logs(path: &Path) -> Result<Logged> {
    let mut out = Logged::default();
    let mut files: Vec<PathBuf> = vec![path.to_path_buf()];
    for i in 1.. {
        let p = PathBuf::from(format!("{}.{i}", path.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    for f in &files {
        let r = BufReader::new(std::fs::File::open(f).with_context(|| f.display().to_string())?);
        out.files += 1;
        for line in r.lines() {
            match serde_json::from_str::<Value>(&line?) {
                Ok(v) if v["event"] == "bind_failure" => out.failures += 1,
                Ok(v) if v["event"] == "events_lost" => out.lost += 1,
                Ok(_) => {}
                Err(_) => out.malformed += 1,
            }
        }
    }
    Ok(out)
}

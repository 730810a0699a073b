//! `storm`: one core fails binds as fast as it can while bindtrace runs on the other; every
//! failure must be accounted for — reported, or counted as lost by the kernel — and the
//! collector's CPU and peak memory are recorded. `idle`: the collector's CPU when nothing fails.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Attached, bindtrace_cmd, in_netns};

/// The numbers of bindtrace's summary line ("N failure(s) reported, M event(s) lost, ...").
pub(super) fn summary(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("failure(s) reported"))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?))
}

pub fn storm(seconds: u64) -> Result<Value> {
    let ready = std::env::temp_dir().join(format!("bindtrace-storm-{}", std::process::id()));
    let mut cmd = bindtrace_cmd();
    cmd.args(["watch", "--output", "json", "--pid"])
        .arg(std::process::id().to_string())
        .arg("--ready-file")
        .arg(&ready);
    let tool = Attached::start(cmd, Some(&ready), None)?;
    let started = Instant::now();
    let generated = in_netns(move || {
        let holder = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7010)).into();
        holder.bind(&addr).unwrap();
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..256 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                if s.bind(&addr).is_err() {
                    n += 1;
                }
            }
        }
        n
    })?;
    let storm_secs = started.elapsed().as_secs_f64();
    // Let the collector drain what is queued.
    let mut last = tool.lines.load(Ordering::Relaxed);
    let drain = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = tool.lines.load(Ordering::Relaxed);
        if now == last || drain.elapsed() > Duration::from_mins(2) {
            break;
        }
        last = now;
    }
    let (cpu, peak_kib) = tool.usage();
    let lines = tool.lines.load(Ordering::Relaxed);
    let stderr = tool.stop();
    let (reported, dropped) = summary(&stderr).context("bindtrace printed no summary")?;
    let unaccounted = generated as i64 - reported as i64 - dropped as i64;
    println!("\nfailure storm, {seconds} s, workload on CPU 0, bindtrace on CPU 1:");
    println!(
        "  generated {generated} failures ({:.0}/s); reported {reported}; counted lost {dropped}; unaccounted {unaccounted}",
        generated as f64 / storm_secs
    );
    println!(
        "  collector CPU {cpu:.2} s ({:.0} % of one core over the storm and drain); peak RSS {:.1} MiB",
        100.0 * cpu / (storm_secs + drain.elapsed().as_secs_f64()),
        peak_kib as f64 / 1024.0
    );
    Ok(json!({
        "seconds": seconds,
        "generated": generated,
        "generated_per_s": generated as f64 / storm_secs,
        "reported": reported,
        "output_lines": lines,
        "lost": dropped,
        "unaccounted": unaccounted,
        "collector_cpu_s": cpu,
        "peak_rss_mib": peak_kib as f64 / 1024.0,
    }))
}

pub fn idle(seconds: u64) -> Result<Value> {
    let ready = std::env::temp_dir().join(format!("bindtrace-idle-{}", std::process::id()));
    let mut cmd = bindtrace_cmd();
    cmd.args(["watch", "--output", "json", "--ready-file"])
        .arg(&ready);
    let tool = Attached::start(cmd, Some(&ready), None)?;
    // Start-up work (the /proc scan) is not idle time.
    std::thread::sleep(Duration::from_secs(3));
    let (before, _) = tool.usage();
    std::thread::sleep(Duration::from_secs(seconds));
    let (after, peak) = tool.usage();
    let rss = tool.rss_kib();
    drop(tool);
    let pct = 100.0 * (after - before) / seconds as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nidle: collector CPU {:.3} s over {seconds} s ({pct:.2} % of one core); RSS {:.1} MiB (peak {:.1} MiB, at start-up)",
        after - before,
        mib(rss),
        mib(peak)
    );
    Ok(json!({
        "seconds": seconds,
        "cpu_s": after - before,
        "cpu_percent": pct,
        "rss_mib": mib(rss),
        "peak_rss_mib": mib(peak),
    }))
}

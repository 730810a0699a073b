//! `verdict`: time from a failing bind()'s return (measured by the failing process itself) to
//! bindtrace's report of it — with its verdict — being written, while `--sockets` unrelated
//! sockets are open. The holder is started before bindtrace, so the kernel history cannot point at
//! it and every lookup pays a full /proc scan; probes are spaced beyond the scan cache.

use std::{
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::util;

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Children and a namespace, cleaned up however the bench ends.
struct Scene {
    netns: String,
    children: Vec<Child>,
}

impl Scene {
    fn new() -> Result<Self> {
        let netns = format!("bt-bench-{}", std::process::id());
        util::run(Command::new("ip").args(["netns", "add", &netns]))?;
        util::run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
        Ok(Self {
            netns,
            children: Vec::new(),
        })
    }

    fn workload(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "python3"])
            .arg(util::root().join("xtask/bench/workload.py"));
        c
    }

    /// Starts a holding workload and waits for its ready line.
    fn hold(&mut self, args: &[&str]) -> Result<Value> {
        let mut child = self
            .workload()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        self.children.push(child);
        serde_json::from_str(&line).with_context(|| format!("workload said {line:?}"))
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A running `bindtrace watch --output json` whose lines are timestamped on arrival.
struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<(u128, Value)>>>,
}

impl Tracer {
    fn start() -> Result<Self> {
        let ready = std::env::temp_dir().join(format!("bindtrace-bench-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(util::root().join("target/release/bindtrace"))
            .args(["watch", "--output", "json", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().context("stdout")?);
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let t = now_ns();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push((t, v));
                }
            }
        });
        let start = Instant::now();
        while !ready.exists() {
            if start.elapsed() > Duration::from_mins(1) {
                bail!("bindtrace did not attach");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&ready);
        Ok(Self { child, lines })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(sockets: u32, probes: u32, json_out: Option<&Path>) -> Result<()> {
    const PORT: &str = "8080";
    let mut scene = Scene::new()?;
    // Before bindtrace: the history cannot name it, so each lookup scans /proc.
    let holder = scene.hold(&["holder", PORT])?;
    let noise = scene.hold(&["noise", &sockets.to_string()])?;
    eprintln!("    {} unrelated sockets open", noise["sockets"]);
    let tracer = Tracer::start()?;
    let out = scene
        .workload()
        .args(["probe", PORT, &probes.to_string(), "150"])
        .output()?;
    let returned: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let pid = returned
        .first()
        .map(|v| v["pid"].clone())
        .context("no probe ran")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let evs: Vec<(u128, Value)> = tracer
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["pid"] == pid)
            .cloned()
            .collect();
        if evs.len() >= returned.len() || Instant::now() > deadline {
            break evs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut lat: Vec<f64> = Vec::new();
    let mut right = 0;
    for ((arrived, ev), probe) in events.iter().zip(&returned) {
        let returned_ns = probe["returned_ns"].as_u64().unwrap_or(0) as u128;
        lat.push(arrived.saturating_sub(returned_ns) as f64 / 1e6);
        if ev["cause"] == "listener_conflict" && ev["holders"][0]["pid"] == holder["pid"] {
            right += 1;
        }
    }
    lat.sort_by(f64::total_cmp);
    let result = json!({
        "bench": "verdict",
        "unrelated_sockets": noise["sockets"],
        "probes": returned.len(),
        "reported": events.len(),
        "correct_verdicts": right,
        "latency_ms": {
            "min": percentile(&lat, 0.0),
            "median": percentile(&lat, 0.5),
            "p90": percentile(&lat, 0.9),
            "p99": percentile(&lat, 0.99),
            "max": percentile(&lat, 1.0),
        },
    });
    println!(
        "verdict latency (failing bind() returned -> report with verdict written), {} unrelated \
         sockets, {} probes:",
        noise["sockets"],
        returned.len()
    );
    println!(
        "  reported {}/{}, correct verdicts {right}",
        events.len(),
        returned.len()
    );
    println!(
        "  min {:.2} ms  median {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&lat, 0.0),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    if let Some(p) = json_out {
        let mut f = std::fs::File::create(p)?;
        writeln!(f, "{}", serde_json::to_string_pretty(&result)?)?;
    }
    drop(tracer);
    drop(scene);
    Ok(())
}

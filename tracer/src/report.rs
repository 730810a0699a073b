//! `bindtrace report FILE...`: what a post-mortem log (current and rotated files, or stdin) says —
//! failures by port, by cause, by failing process or container, by holder; first and last seen;
//! a per-minute timeline. Lines that are corrupt or truncated are counted and skipped.

use std::{
    collections::BTreeMap,
    fs::File,
    hash::{Hash as _, Hasher as _},
    io::{self, BufRead, BufReader, Read},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    event::{Event, SyscallName, bracketed, endpoint},
    output::sanitize,
};

/// A port conflict's errno (holders are looked for).
const EADDRINUSE: i32 = 98;

/// Distinct incidents kept; past that, new kinds are counted under one entry (a log of random
/// ports must not make `report` grow without bound).
const MAX_INCIDENTS: usize = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Log files written by `watch --log-file` (rotated ones too); `-` or none: standard input.
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub output: ReportFormat,
}

#[derive(Default, Serialize)]
struct Count {
    failures: u64,
    first: String,
    last: String,
}

impl Count {
    fn add(&mut self, time: &str) {
        self.failures += 1;
        if self.first.is_empty() || time < self.first.as_str() {
            self.first = time.to_string();
        }
        if time > self.last.as_str() {
            self.last = time.to_string();
        }
    }
}

/// Failures of one kind: the same call on the same address (or, for a call that wanted any
/// port, towards the same destination), with the same cause and the same kind of holder — the
/// TIME-WAITs of many clients' connections on a listen port are one incident, their programs
/// listed.
#[derive(Default, Serialize)]
struct Incident {
    #[serde(flatten)]
    count: Count,
    call: String,
    cause: String,
    /// The holders' programs and state ("curl,java TIME_WAIT"), or why there is none.
    holder: String,
    /// The programs that held the port, by name.
    holder_processes: std::collections::BTreeSet<String>,
    /// The latest failure's hint.
    hint: String,
    /// Which process that failure was of (hints name a program's own way to set an option).
    hint_for: String,
    /// The processes that failed, by name.
    failing: std::collections::BTreeSet<String>,
}

#[derive(Default, Serialize)]
pub struct Summary {
    failures: u64,
    successes: u64,
    /// Records the kernel dropped while the log was written (`events_lost` lines).
    events_lost: u64,
    /// Lines that did not parse (corrupt, truncated, or not bindtrace's).
    corrupt_lines: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<String>,
    by_port: BTreeMap<String, Count>,
    by_cause: BTreeMap<String, Count>,
    by_process: BTreeMap<String, Count>,
    by_container: BTreeMap<String, Count>,
    by_holder: BTreeMap<String, Count>,
    by_netns: BTreeMap<String, Count>,
    /// One entry per call, cause and holder: what an operator reads first.
    incidents: BTreeMap<String, Incident>,
    /// `YYYY-MM-DDTHH:MM` → failures in that minute (UTC).
    timeline: BTreeMap<String, u64>,
    /// When `watch` was logging: failures outside these spans went unseen.
    sessions: Vec<Session>,
    /// Event lines met twice (the same file given twice, or a copy of it): counted once.
    duplicate_lines: u64,
    #[serde(skip)]
    seen: std::collections::HashSet<u64>,
    /// (time, whether a start, the run's pid) of each start and stop record.
    #[serde(skip)]
    /// (time, whether a start, pid, the start's scope).
    marks: Vec<(String, bool, u64, String)>,
}

/// A span of time a `watch` was writing the log: from its `watch_started` record to its
/// `watch_stopped`, or, when it has none (killed, or the log ends), `stopped` is None.
#[derive(Serialize)]
struct Session {
    started: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
    /// The filters it ran with (`--port 8080`): failures outside them were not watched.
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
}

impl Summary {
    /// Adds one log line.
    pub fn line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if let Ok(ev) = serde_json::from_str::<Event>(line) {
            // The same failure twice is the same log read twice.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&ev.time, ev.pid, ev.tid, ev.port, ev.errno, &ev.addr).hash(&mut h);
            if self.seen.insert(h.finish()) {
                self.event(&ev);
            } else {
                self.duplicate_lines += 1;
            }
            return;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["event"] == "events_lost" => {
                self.events_lost += v["lost"].as_u64().unwrap_or(0);
            }
            Ok(v) if v["event"] == "watch_started" || v["event"] == "watch_stopped" => {
                let time = v["time"].as_str().unwrap_or_default().to_string();
                let pid = v["pid"].as_u64().unwrap_or(0);
                let scope = v["scope"].as_str().unwrap_or_default().to_string();
                self.marks
                    .push((time, v["event"] == "watch_started", pid, scope));
            }
            _ => self.corrupt_lines += 1,
        }
    }

    /// Pairs each run's start and stop records (by the run's pid, the stop the first after the
    /// start), in time order whatever order the files came in, into sessions. Call once every
    /// line is in.
    pub fn finish(&mut self) {
        let mut marks = std::mem::take(&mut self.marks);
        marks.sort();
        marks.dedup();
        let mut used = vec![false; marks.len()];
        let mut sessions: Vec<Session> = Vec::new();
        for (i, (time, start, pid, scope)) in marks.iter().enumerate() {
            if !*start {
                continue;
            }
            let stop =
                (i + 1..marks.len()).find(|&j| !used[j] && !marks[j].1 && marks[j].2 == *pid);
            // A later start of the same pid ends the search: pids are reused.
            let next_start = (i + 1..marks.len()).find(|&j| marks[j].1 && marks[j].2 == *pid);
            let stop = stop.filter(|&j| next_start.is_none_or(|n| j < n));
            if let Some(j) = stop {
                used[j] = true;
            }
            sessions.push(Session {
                started: time.clone(),
                stopped: stop.map(|j| marks[j].0.clone()),
                scope: scope.clone(),
            });
        }
        // A stop whose start is in a file not given.
        for (j, (time, start, ..)) in marks.iter().enumerate() {
            if !start && !used[j] {
                sessions.push(Session {
                    started: String::new(),
                    stopped: Some(time.clone()),
                    scope: String::new(),
                });
            }
        }
        // By the first time each is known at.
        sessions.sort_by(|a, b| {
            let key = |s: &Session| {
                if s.started.is_empty() {
                    s.stopped.clone().unwrap_or_default()
                } else {
                    s.started.clone()
                }
            };
            key(a).cmp(&key(b))
        });
        self.sessions = sessions;
    }

    fn print_sessions(&self) {
        if self.sessions.is_empty() {
            if self.failures + self.successes > 0 {
                // A log whose oldest part has been rotated away (`--log-keep`) keeps no run's
                // start, and a run still going has written no stop.
                println!(
                    "\nwhen bindtrace was watching: not in these files (no run's start or stop \
                     record: older files rotated away, or given without them); what came before \
                     the first line here is not covered"
                );
            }
            return;
        }
        println!(
            "
when bindtrace was watching ({} run(s)):",
            self.sessions.len()
        );
        for s in &self.sessions {
            let from = if s.started.is_empty() {
                "(start not in these files)"
            } else {
                s.started.as_str()
            };
            let to = s
                .stopped
                .as_deref()
                .unwrap_or("(no stop record: killed, or still running)");
            if s.scope.is_empty() {
                println!("  {from} to {to}");
            } else {
                println!("  {from} to {to}, only {}", s.scope);
            }
        }
        println!("  (failures outside these spans were not seen)");
    }

    fn event(&mut self, ev: &Event) {
        if !ev.is_failure() {
            self.successes += 1;
            return;
        }
        self.failures += 1;
        let t = ev.time.as_str();
        if self.first.as_deref().is_none_or(|f| t < f) {
            self.first = Some(t.to_string());
        }
        if self.last.as_deref().is_none_or(|l| t > l) {
            self.last = Some(t.to_string());
        }
        // A call that wanted any port (bind(0), a connect() from an unbound socket) ran out of
        // ephemeral ports: grouped as that, not as "port 0".
        let port = if ev.port == 0 {
            "any".to_string()
        } else {
            ev.port.to_string()
        };
        self.by_port
            .entry(format!("{port}/{}", ev.protocol))
            .or_default()
            .add(t);
        // Not looked into (a storm's backlog at a stop): said so, not counted by its errno.
        let cause = match (&ev.diagnosis, &ev.undiagnosed) {
            (Some(d), _) => d.cause.as_str().to_string(),
            (None, Some(why)) => format!("(not diagnosed: {why})"),
            (None, None) => ev.error.clone(),
        };
        self.by_cause.entry(cause.clone()).or_default().add(t);
        self.by_process.entry(ev.comm.clone()).or_default().add(t);
        let container = ev
            .container
            .container_id
            .as_deref()
            .map_or("(host)".to_string(), |c| {
                let short = &c[..c.len().min(12)];
                match (&ev.container.pod_namespace, &ev.container.pod_name) {
                    (Some(ns), Some(p)) => format!("{ns}/{p} ({short})"),
                    _ => short.to_string(),
                }
            });
        self.by_container.entry(container).or_default().add(t);
        let (holder_comm, holder_kind) = holder_parts(ev);
        let holder = holder_comm
            .as_ref()
            .map_or_else(|| holder_kind.clone(), |c| format!("{c} {holder_kind}"));
        self.by_holder.entry(holder).or_default().add(t);
        self.by_netns
            .entry(ev.netns.to_string())
            .or_default()
            .add(t);
        let call = call_label(ev);
        let call = format!("{call} netns={}", ev.netns);
        let mut key = format!("{call}|{cause}|{holder_kind}");
        let (mut call, mut cause, mut holder_kind) = (call, cause, holder_kind);
        if self.incidents.len() >= MAX_INCIDENTS && !self.incidents.contains_key(&key) {
            key = "(other)".to_string();
            (call, cause, holder_kind) = (
                format!("(more kinds than {MAX_INCIDENTS})"),
                "various".to_string(),
                "various".to_string(),
            );
        }
        let incident = self.incidents.entry(key).or_default();
        if t >= incident.count.last.as_str() {
            incident.hint = ev
                .diagnosis
                .as_ref()
                .map(|d| d.hint.clone())
                .unwrap_or_default();
            incident.hint_for.clone_from(&ev.comm);
        }
        incident.count.add(t);
        incident.call = call;
        incident.cause = cause;
        if let Some(c) = holder_comm {
            incident.holder_processes.insert(c);
        }
        incident.holder = if incident.holder_processes.is_empty() {
            holder_kind
        } else {
            // A Job's pods each have their own name: the first few, and how many.
            let n = incident.holder_processes.len();
            let names: Vec<&str> = incident
                .holder_processes
                .iter()
                .take(HOLDERS_NAMED)
                .map(String::as_str)
                .collect();
            let more = if n > HOLDERS_NAMED {
                format!(",... ({n} in all)")
            } else {
                String::new()
            };
            format!("{}{more} {holder_kind}", names.join(","))
        };
        incident.failing.insert(ev.comm.clone());
        if t.len() >= 16 {
            *self.timeline.entry(t[..16].to_string()).or_default() += 1;
        }
    }

    /// Adds every line of `reader`; a last line cut short counts as corrupt.
    pub fn read(&mut self, reader: impl Read) -> io::Result<()> {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            match std::str::from_utf8(&buf) {
                Ok(s) => self.line(s),
                Err(_) => self.corrupt_lines += 1,
            }
        }
    }

    fn print_table(title: &str, rows: &BTreeMap<String, Count>) {
        if rows.is_empty() {
            return;
        }
        println!("\n{title}:");
        let mut v: Vec<(&String, &Count)> = rows.iter().collect();
        v.sort_by(|a, b| b.1.failures.cmp(&a.1.failures).then(a.0.cmp(b.0)));
        for (k, c) in v {
            println!(
                "  {:>7}  {:<40} first {}  last {}",
                c.failures,
                sanitize(k),
                c.first,
                c.last
            );
        }
    }

    /// One paragraph per incident, most failures first: the call, the cause and holder, how
    /// often and when, and the latest hint.
    fn print_incidents(&self) {
        if self.incidents.is_empty() {
            return;
        }
        println!("\nwhat failed (per call, cause and kind of holder; the latest hint):");
        let mut v: Vec<&Incident> = self.incidents.values().collect();
        v.sort_by(|a, b| {
            b.count
                .failures
                .cmp(&a.count.failures)
                .then(b.count.last.cmp(&a.count.last))
        });
        for i in v {
            let failing: Vec<&str> = i.failing.iter().map(String::as_str).collect();
            let held = if i.holder.starts_with("(no holder") {
                String::new()
            } else {
                format!(", held by {}", sanitize(&i.holder))
            };
            println!(
                "  {:>7}  {} by {}: {}{held}; first {} last {}",
                i.count.failures,
                sanitize(&i.call),
                sanitize(&failing.join(",")),
                i.cause,
                i.count.first,
                i.count.last
            );
            let hint = hint_as_of_then(&i.hint);
            if !hint.is_empty() && failing.len() > 1 {
                println!("           (latest, for {}) {hint}", sanitize(&i.hint_for));
            } else if !hint.is_empty() {
                println!("           {hint}");
            }
        }
    }

    pub fn print_text(&self) {
        println!(
            "{} failure(s), {} success(es) logged; {} event(s) lost in the kernel; {} corrupt line(s) skipped",
            self.failures, self.successes, self.events_lost, self.corrupt_lines
        );
        if self.duplicate_lines > 0 {
            println!(
                "{} duplicate line(s) counted once (a file given twice?)",
                self.duplicate_lines
            );
        }
        self.print_sessions();
        if let (Some(f), Some(l)) = (&self.first, &self.last) {
            println!("first failure {f}, last {l}");
        }
        self.print_incidents();
        Self::print_table("by port", &self.by_port);
        Self::print_table("by cause", &self.by_cause);
        Self::print_table("by failing process", &self.by_process);
        Self::print_table("by container", &self.by_container);
        Self::print_table("by holder", &self.by_holder);
        if self.by_netns.len() > 1 {
            Self::print_table("by network namespace", &self.by_netns);
        }
        if !self.timeline.is_empty() {
            println!("\nper minute (UTC):");
            let max = self.timeline.values().copied().max().unwrap_or(1);
            for (m, n) in &self.timeline {
                let bar = "#".repeat(((n * 40).div_ceil(max)) as usize);
                println!("  {m}  {n:>6} {bar}");
            }
        }
    }
}

/// An incident names at most this many holders' programs (or pods) in its text.
const HOLDERS_NAMED: usize = 5;

/// The holder a failure is tallied under — the conflicting one, else the first — as its
/// program's name ("?" if unknown) and state; or no name, and why there is none.
fn holder_parts(ev: &Event) -> (Option<String>, String) {
    let found = ev
        .diagnosis
        .as_ref()
        .and_then(|d| d.holders.iter().find(|h| h.conflicts).or(d.holders.first()));
    if let Some(h) = found {
        // With its pod on a node: which pod keeps taking the port is the question there.
        let comm = h.comm.clone().unwrap_or_else(|| "?".to_string());
        let name = match h.container.label() {
            Some(pod) => format!("{comm} ({pod})"),
            None => comm,
        };
        return (Some(name), h.state.as_str().to_string());
    }
    // A port conflict has a holder to find (one not found is worth seeing); the other failures
    // are the caller's own (its address, its privileges, the range).
    let conflict = ev.errno == EADDRINUSE && ev.port != 0
        || ev.diagnosis.as_ref().is_some_and(|d| d.cause.is_conflict());
    let why = if ev.diagnosis.is_none() {
        "(not diagnosed)"
    } else if conflict {
        "(none found)"
    } else {
        "(no holder: not a conflict)"
    };
    (None, why.to_string())
}

/// The call an incident is about: the address and port asked for, or for a call that wanted any
/// port, its destination (a TCP connect()'s) or its address.
fn call_label(ev: &Event) -> String {
    match (ev.syscall, &ev.remote_addr) {
        // A UDP socket's port is not per destination: its exhaustion is one incident.
        (SyscallName::Connect, Some(_)) if ev.port == 0 && ev.protocol == "udp" => {
            format!("connect udp (any port) from {}", bracketed(&ev.addr))
        }
        (SyscallName::Connect, Some(r)) => format!(
            "connect {} to {}",
            ev.protocol,
            endpoint(r, ev.remote_port.unwrap_or(0))
        ),
        (s, _) if ev.port == 0 => format!(
            "{} {} {} (any port)",
            s.as_str(),
            ev.protocol,
            bracketed(&ev.addr)
        ),
        (s, _) => format!("{} {} {}", s.as_str(), ev.protocol, ev.local()),
    }
}

/// Whether `file` starts with gzip's magic (a rotated log logrotate compressed); leaves it at
/// its start.
fn is_gzip(file: &mut File) -> bool {
    use std::io::{Read as _, Seek as _};
    let mut magic = [0u8; 2];
    let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let _ = file.rewind();
    gz
}

/// Reads a gzip-compressed log through `gzip -dc` (on every host that has logrotate).
fn read_gzip(s: &mut Summary, f: &std::path::Path) -> Result<()> {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(f)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "{} is gzip-compressed, and gzip could not be run to read it: give it \
                 decompressed (zcat {} | bindtrace report -)",
                f.display(),
                f.display()
            )
        })?;
    let out = child.stdout.take().expect("piped");
    let read = s.read(out);
    let status = child.wait()?;
    read.with_context(|| format!("reading {}", f.display()))?;
    anyhow::ensure!(status.success(), "gzip -dc {}: {status}", f.display());
    Ok(())
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let mut s = Summary::default();
    let stdin = args.files.is_empty() || args.files.iter().any(|f| f.as_os_str() == "-");
    for f in args.files.iter().filter(|f| f.as_os_str() != "-") {
        let mut file = File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
        if is_gzip(&mut file) {
            read_gzip(&mut s, f)?;
            continue;
        }
        s.read(file)
            .with_context(|| format!("reading {}", f.display()))?;
    }
    if stdin {
        s.read(io::stdin().lock())
            .context("reading standard input")?;
    }
    s.finish();
    match args.output {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        ReportFormat::Text => s.print_text(),
    }
    Ok(())
}

/// A hint as it was given at its failure, for a report read later: its waits ("42 s left")
/// counted from then, not from when the report is read.
fn hint_as_of_then(hint: &str) -> String {
    sanitize(hint).replace(" s left)", " s left at the time)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::event;

    #[test]
    fn summarizes_and_skips_corrupt_lines() {
        let mut a = event();
        a.time = "2026-11-25T15:41:07.1Z".into();
        let mut b = event();
        b.time = "2026-11-25T15:42:09.9Z".into();
        b.port = 9090;
        // The same failure again, a moment later (another thread's).
        let mut again = a.clone();
        again.time = "2026-11-25T15:41:07.2Z".into();
        again.tid += 1;
        let mut log = String::new();
        for e in [&a, &b, &again] {
            log.push_str(&serde_json::to_string(e).unwrap());
            log.push('\n');
        }
        log.push_str("{\"time\":\"x\",\"event\":\"events_lost\",\"lost\":3,\"lost_total\":3}\n");
        log.push_str("not json at all\n");
        log.push_str(&serde_json::to_string(&a).unwrap()[..40]); // truncated last line
        let mut s = Summary::default();
        s.read(log.as_bytes()).unwrap();
        assert_eq!(s.failures, 3);
        assert_eq!(s.events_lost, 3);
        assert_eq!(s.corrupt_lines, 2);
        assert_eq!(s.by_port["8080/tcp"].failures, 2);
        assert_eq!(s.by_port["9090/tcp"].failures, 1);
        assert_eq!(s.by_process["java"].failures, 3);
        assert_eq!(s.first.as_deref(), Some("2026-11-25T15:41:07.1Z"));
        assert_eq!(s.last.as_deref(), Some("2026-11-25T15:42:09.9Z"));
        assert_eq!(s.timeline["2026-11-25T15:41"], 2);
        assert_eq!(s.timeline["2026-11-25T15:42"], 1);
        assert_eq!(s.by_container["(host)"].failures, 3);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["by_cause"]["EADDRINUSE"]["failures"], 3);
        // One incident per call, cause and holder, carrying the latest hint.
        assert_eq!(s.incidents.len(), 2, "{:?}", s.incidents.keys());
        let i = s
            .incidents
            .values()
            .find(|i| i.call.starts_with("bind tcp [::]:8080"))
            .expect("the 8080 incident");
        assert_eq!(i.count.failures, 2);
        assert_eq!(i.count.last, "2026-11-25T15:41:07.2Z");
        assert!(i.failing.contains("java"));
        // A failure written without its lookup at a stop is not counted by its errno.
        let mut late = b.clone();
        late.undiagnosed = Some("stopping".into());
        let mut s = Summary::default();
        s.read(format!("{}\n", serde_json::to_string(&late).unwrap()).as_bytes())
            .unwrap();
        assert_eq!(s.by_cause["(not diagnosed: stopping)"].failures, 1);
        assert!(crate::output::text_line(&late).contains("holders not looked up"));
    }

    /// A rotated log that logrotate compressed is read as it was written.
    #[test]
    fn a_gzip_compressed_log_is_read() {
        let dir = std::env::temp_dir().join(format!("bindtrace-gz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json.1");
        let line = serde_json::to_string(&event()).unwrap();
        std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
        let Ok(status) = std::process::Command::new("gzip").arg(&path).status() else {
            eprintln!("SKIP gzip: no gzip on this machine");
            return;
        };
        assert!(status.success());
        let gz = dir.join("events.json.1.gz");
        assert!(is_gzip(&mut File::open(&gz).unwrap()));
        let mut s = Summary::default();
        read_gzip(&mut s, &gz).unwrap();
        assert_eq!(
            (s.failures, s.corrupt_lines),
            (1, 0),
            "the same failure twice is one"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The start and stop records of each `watch` give the spans the log covers, whatever the
    /// order the files come in; a run killed leaves a span without an end. A log read twice
    /// counts its failures once.
    #[test]
    fn sessions_and_duplicates() {
        let mark = |t: &str, e: &str, pid: u32| {
            format!("{{\"time\":\"{t}\",\"event\":\"{e}\",\"pid\":{pid}}}\n")
        };
        let mut a = event();
        a.time = "2026-11-25T10:05:00Z".into();
        let line = format!("{}\n", serde_json::to_string(&a).unwrap());
        let mut s = Summary::default();
        // The later file first, as a shell glob may give them.
        s.read(mark("2026-11-25T11:00:00Z", "watch_started", 200).as_bytes())
            .unwrap();
        let first = [
            mark("2026-11-25T10:00:00Z", "watch_started", 100),
            line.clone(),
            // Another run's stop in between (one that failed to start wrote none; an older
            // build's): it does not end run 100.
            mark("2026-11-25T10:10:00Z", "watch_stopped", 150),
            mark("2026-11-25T10:30:00Z", "watch_stopped", 100),
        ]
        .concat();
        s.read(first.as_bytes()).unwrap();
        s.read(line.as_bytes()).unwrap();
        s.finish();
        assert_eq!((s.failures, s.duplicate_lines, s.corrupt_lines), (1, 1, 0));
        let spans: Vec<(&str, Option<&str>)> = s
            .sessions
            .iter()
            .map(|x| (x.started.as_str(), x.stopped.as_deref()))
            .collect();
        assert_eq!(
            spans,
            [
                ("2026-11-25T10:00:00Z", Some("2026-11-25T10:30:00Z")),
                ("", Some("2026-11-25T10:10:00Z")),
                ("2026-11-25T11:00:00Z", None)
            ]
        );
        // A run's filters are what it did not watch.
        let mut s = Summary::default();
        s.read(
            "{\"time\":\"t\",\"event\":\"watch_started\",\"pid\":1,\"scope\":\"--port 8080\"}\n"
                .as_bytes(),
        )
        .unwrap();
        s.finish();
        assert_eq!(s.sessions[0].scope, "--port 8080");
    }

    /// A failure that wanted any port is grouped with the others towards its destination, not
    /// under "port 0".
    #[test]
    fn exhaustion_is_grouped_by_destination() {
        let mut s = Summary::default();
        for dest in ["10.0.0.5", "10.0.0.5", "10.0.0.6"] {
            let mut e = event();
            e.syscall = SyscallName::Connect;
            e.port = 0;
            e.remote_addr = Some(dest.into());
            e.remote_port = Some(443);
            s.event(&e);
        }
        assert_eq!(s.by_port["any/tcp"].failures, 3);
        let calls: Vec<(&str, u64)> = s
            .incidents
            .values()
            .map(|i| (i.call.as_str(), i.count.failures))
            .collect();
        assert!(
            calls
                .iter()
                .any(|(c, n)| c.starts_with("connect tcp to 10.0.0.5:443") && *n == 2),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|(c, n)| c.starts_with("connect tcp to 10.0.0.6:443") && *n == 1),
            "{calls:?}"
        );
    }

    /// A hint read later says its wait counted from its failure.
    #[test]
    fn a_hints_wait_is_said_to_count_from_its_failure() {
        assert_eq!(
            hint_as_of_then("now: wait for the TIME-WAIT to end (42 s left); for good: x"),
            "now: wait for the TIME-WAIT to end (42 s left at the time); for good: x"
        );
        assert_eq!(hint_as_of_then("stop it"), "stop it");
    }

    /// A listen port taken by the TIME-WAITs of many clients' connections, one after another, is
    /// one incident that names their programs — not one per program.
    #[test]
    fn one_call_held_by_many_programs_time_waits_is_one_incident() {
        use crate::diagnose::{Holder, PortContext, Request, Source, State, verdict};
        let mut s = Summary::default();
        for (client, comm) in [("curl", "java"), ("java", "java"), ("curl", "python3")] {
            let mut e = event();
            e.comm = comm.into();
            let mut h = Holder::new(
                State::TimeWait,
                false,
                "127.0.0.1:8080".parse().unwrap(),
                Source::History,
            );
            h.remote = Some("127.0.0.1:9000".parse().unwrap());
            h.comm = Some(client.into());
            e.diagnosis = Some(verdict(
                &Request::from_event(&e),
                vec![h],
                &PortContext::default(),
            ));
            s.event(&e);
        }
        assert_eq!(s.incidents.len(), 1, "{:?}", s.incidents.keys());
        let i = s.incidents.values().next().unwrap();
        assert_eq!(i.count.failures, 3);
        assert_eq!(i.holder, "curl,java TIME_WAIT");
        assert_eq!(i.hint_for, "python3");
        assert_eq!(
            s.by_holder.len(),
            2,
            "the holder table still tells them apart"
        );
        // On a node, the holders' pods; a Job's many, the first few and how many.
        let mut s = Summary::default();
        for n in 0..7 {
            let mut e = event();
            let mut h = Holder::new(
                State::TimeWait,
                false,
                "10.0.0.10:41010".parse().unwrap(),
                Source::History,
            );
            h.remote = Some("10.0.0.10:8080".parse().unwrap());
            h.comm = Some("curl".into());
            h.container.pod_namespace = Some("batch".into());
            h.container.pod_name = Some(format!("report-job-{n}"));
            e.diagnosis = Some(verdict(
                &Request::from_event(&e),
                vec![h],
                &PortContext::default(),
            ));
            s.event(&e);
        }
        let i = s.incidents.values().next().unwrap();
        assert!(
            i.holder.starts_with("curl (pod=batch/report-job-0),"),
            "{}",
            i.holder
        );
        assert!(
            i.holder.ends_with(",... (7 in all) TIME_WAIT"),
            "{}",
            i.holder
        );
        assert_eq!(
            s.by_holder["curl (pod=batch/report-job-3) TIME_WAIT"].failures,
            1
        );
    }

    #[test]
    fn binary_garbage_is_counted_not_fatal() {
        let mut s = Summary::default();
        s.read(&[0xff, 0xfe, b'\n', 0, 0, 0, b'\n'][..]).unwrap();
        assert_eq!(s.corrupt_lines, 2);
        assert_eq!(s.failures, 0);
    }
}

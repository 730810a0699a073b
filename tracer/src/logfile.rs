//! The post-mortem log: `bindtrace watch --log-file PATH` appends every reported event as one JSON
//! line, rotating by size (`PATH` → `PATH.1` → ... → `PATH.N`, the oldest dropped).
//!
//! - Files are created with mode 0640: process names and ports are not for every local user.
//! - Each line is written with a single `write(2)` on an unbuffered file, so a line is either in
//!   the file or not, and nothing waits in a buffer when bindtrace is stopped.
//! - When a write fails (disk full), the line is counted as unwritten and tracing goes on; the
//!   count is in the summary at exit and in the metrics. What part of it was written is cut
//!   off again, so that the next line does not join it.
//! - When the path stops naming the file being written (moved or deleted by hand, or by a
//!   logrotate without `copytruncate`), the path is opened again before the next line.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};

use crate::{event::Event, pipeline::Writer};

/// `100M`, `1G`, `512K`, `4096` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100M, 1G, 4096)"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s} is too large"))?;
    if bytes < 4096 {
        return Err(format!("{s} is too small for a log file (at least 4K)"));
    }
    Ok(bytes)
}

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
    /// Lines that could not be written (shared with the summary and the metrics).
    pub unwritten: Arc<AtomicU64>,
    warned: bool,
    /// Whether this run's `watch_started` record was written: only then does it write its stop.
    started: bool,
    /// What this run logged, for its `watch_stopped` record: failures (and, with `--all`,
    /// successes) it was given to log (written, or counted in `unwritten`), and records the
    /// kernel dropped since the start.
    failures: u64,
    successes: u64,
    lost_total: u64,
}

fn open(path: &Path) -> io::Result<File> {
    // Its directory too (`/var/log/bindtrace` on a fresh host), as private as the file.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl LogFile {
    /// Opens (or creates) `path` for appending; fails early, naming the problem, if it cannot.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> Result<Self> {
        let file =
            open(path).with_context(|| format!("cannot write --log-file {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            keep,
            unwritten: Arc::default(),
            warned: false,
            started: false,
            failures: 0,
            successes: 0,
            lost_total: 0,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) {
        if !self.follow_path() {
            return;
        }
        if self.size > 0
            && self.size + line.len() as u64 > self.max_size
            && let Err(e) = self.rotate()
        {
            self.failed(&e);
        }
        match self.file.write_all(line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => {
                // A line cut short (the disk filled in the middle of it): cut back to the last
                // whole line, else end it, so that the next one starts a line of its own.
                if self.file.set_len(self.size).is_err() {
                    let _ = self.file.write_all(b"\n");
                    self.size = self.file.metadata().map_or(self.size, |m| m.len());
                }
                self.failed(&e);
            }
        }
    }

    /// Opens the path again when it no longer names the file being written (moved or deleted),
    /// and takes the file's size as it is (a logrotate `copytruncate` empties it). False when
    /// it cannot be opened again (the line is then counted as unwritten).
    fn follow_path(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(ours) = self.file.metadata() else {
            return true;
        };
        let same =
            fs::metadata(&self.path).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        if same {
            self.size = ours.len();
            return true;
        }
        match open(&self.path).and_then(|f| Ok((f.metadata()?.len(), f))) {
            Ok((size, file)) => {
                crate::output::notice(format_args!(
                    "bindtrace: {} was moved or deleted; writing to it anew",
                    self.path.display()
                ));
                self.file = file;
                self.size = size;
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, e: &io::Error) {
        self.unwritten.fetch_add(1, Ordering::Relaxed);
        if !self.warned {
            self.warned = true;
            crate::output::notice(format_args!(
                "bindtrace: cannot write {}: {e}; tracing goes on, unwritten lines are counted",
                self.path.display()
            ));
        }
    }
}

/// Now, as the log's lines give times (RFC 3339, UTC).
fn now() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    crate::event::rfc3339(ns)
}

impl LogFile {
    /// Marks the start of a `watch` in the log, so that `report` can tell when failures could
    /// have been logged and when not (bindtrace stopped, or killed).
    /// `scope`: the filters it ran with (`--port 8080 --netns 4026532177`), empty for none:
    /// what it did not watch.
    pub fn started(&mut self, backend: &str, scope: &str) {
        self.started = true;
        let mut v = serde_json::json!({
            "time": now(),
            "event": "watch_started",
            "backend": backend,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
        });
        if !scope.is_empty() {
            v["scope"] = scope.into();
        }
        self.record(&v);
    }

    fn record(&mut self, v: &serde_json::Value) {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.write_line(&line);
    }
}

/// A `watch` that ends normally (signal, end of input) says so; a killed one leaves no record,
/// and one that failed to start, none either.
impl Drop for LogFile {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        // The run's totals, so that a log read later says how much it saw without counting
        // lines across rotated files (and whether the kernel dropped any).
        self.record(&serde_json::json!({
            "time": now(),
            "event": "watch_stopped",
            "pid": std::process::id(),
            "failures": self.failures,
            "successes": self.successes,
            "events_lost": self.lost_total,
        }));
    }
}

impl Writer for LogFile {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        self.write_line(&line);
        if ev.is_failure() {
            self.failures += 1;
        } else {
            self.successes += 1;
        }
        Ok(())
    }

    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> io::Result<()> {
        self.lost_total = lost_total;
        let mut line = serde_json::to_vec(&serde_json::json!({
            "time": time,
            "event": "events_lost",
            "lost": lost,
            "lost_total": lost_total,
            "reason": "ring buffer full",
        }))?;
        line.push(b'\n');
        self.write_line(&line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::output::tests::event;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("12").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
    }

    /// A run that started writes its start and, when it ends, its stop with what it logged; one
    /// that failed to start (the log was opened first) writes neither.
    #[test]
    fn a_run_marks_its_start_and_stop_and_a_failed_start_nothing() {
        let dir = std::env::temp_dir().join(format!("bindtrace-logmarks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bind.log");
        drop(LogFile::open(&path, 1 << 20, 1).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        let mut log = LogFile::open(&path, 1 << 20, 1).unwrap();
        log.started("tracepoint", "");
        let failure = event();
        assert!(failure.is_failure());
        log.event(&failure).unwrap();
        log.event(&failure).unwrap();
        log.lost("t", 3, 3).unwrap();
        log.lost("t", 2, 5).unwrap();
        drop(log);
        let records: Vec<serde_json::Value> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "watch_started",
                "bind_failure",
                "bind_failure",
                "events_lost",
                "events_lost",
                "watch_stopped"
            ]
        );
        // The stop carries the run's totals.
        let stop = records.last().unwrap();
        assert_eq!(
            (&stop["failures"], &stop["successes"], &stop["events_lost"]),
            (&2.into(), &0.into(), &5.into())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A log moved or deleted while written to is opened again at its path; a logrotate
    /// `copytruncate` (the file emptied) is written on from its new end.
    #[test]
    fn a_moved_or_emptied_log_is_followed() {
        let dir = std::env::temp_dir().join(format!("bindtrace-logmove-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("bind.log");
        let mut log = LogFile::open(&path, 1 << 20, 1).unwrap();
        let ev = event();
        log.event(&ev).unwrap();
        fs::rename(&path, dir.join("moved")).unwrap();
        log.event(&ev).unwrap();
        let lines = |p: &Path| fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&dir.join("moved")), lines(&path)), (1, 1));
        fs::remove_file(&path).unwrap();
        log.event(&ev).unwrap();
        assert_eq!(lines(&path), 1);
        File::create(&path).unwrap();
        log.event(&ev).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with('{') && text.lines().count() == 1,
            "{text:?}"
        );
        assert_eq!(log.unwritten.load(Ordering::Relaxed), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_keeps_n_and_creates_private_files() {
        let dir = std::env::temp_dir().join(format!("bindtrace-logtest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // Its directory is made too, private (`/var/log/bindtrace` on a fresh host).
        let path = dir.join("bind.log");
        let mut log = LogFile::open(&path, 4096, 2).unwrap();
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode & 0o007, 0, "not world-readable: {dir_mode:o}");
        let ev = event();
        for _ in 0..40 {
            log.event(&ev).unwrap();
        }
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");
        assert!(dir.join("bind.log.1").exists());
        assert!(dir.join("bind.log.2").exists());
        assert!(
            !dir.join("bind.log.3").exists(),
            "only --log-keep 2 rotations kept"
        );
        for f in ["bind.log", "bind.log.1", "bind.log.2"] {
            let text = fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.len() <= 4096, "{f} stays under the size limit");
            for line in text.lines() {
                let back: Event = serde_json::from_str(line).expect("every line is a whole event");
                assert_eq!(back, ev);
            }
        }
        assert_eq!(log.unwritten.load(Ordering::Relaxed), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_is_counted_not_fatal() {
        // /dev/full: every write fails with ENOSPC.
        let mut log = LogFile::open(Path::new("/dev/full"), 1 << 20, 1).unwrap();
        log.event(&event()).unwrap();
        log.event(&event()).unwrap();
        assert_eq!(log.unwritten.load(Ordering::Relaxed), 2);
    }
}

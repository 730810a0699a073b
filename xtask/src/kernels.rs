//! The kernel test matrix: the root kernel tests (`tracer/tests/*.rs`), run on this host and, in
//! VMs, on Debian's 6.1 and 6.12 kernels once per backend each kernel offers. The VMs are booted
//! with virtme-ng under software emulation (`--disable-kvm`: nested KVM hangs on the project's
//! machines); they share this host's root filesystem, so the test binaries built here run there.
//!
//! The result is printed as a table and written to `target/kernel-matrix.md` and
//! `target/lab.md`; `cargo xtask test --update-docs` also copies them to `docs/kernels.md` and
//! `docs/lab.md`, so the documented tables always come from a real run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

pub const BACKENDS: [&str; 3] = ["fexit", "kprobe", "tracepoint"];

/// Seconds a VM may take before it is stopped and, if it died, resumed in a fresh one. The VMs run
/// side by side in ~12 min here (each ~20 % slower than alone): the tier targets under 15 min, and
/// the margin is for slower machines.
const VM_TIMEOUT: u32 = 1200;
/// Fresh VMs to try when one dies before finishing (see `run_in_vm`).
const VM_ATTEMPTS: u32 = 3;

/// Debian kernels the VM tier boots: (label, package, image prefix in /boot).
pub const VM_KERNELS: [(&str, &str, &str); 2] = [
    ("6.1", "linux-image-amd64", "vmlinuz-6.1."),
    ("6.12", "linux-image-6.12-amd64", "vmlinuz-6.12."),
];

/// Outcome of one test binary run (libtest output parsed).
#[derive(Default, Debug, Clone)]
pub struct Outcome {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// `SKIP ...` lines the tests printed.
    pub skipped: Vec<String>,
    /// The output, kept to show failures.
    pub log: String,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.passed.extend(o.passed);
        self.failed.extend(o.failed);
        self.skipped.extend(o.skipped);
        self.log.push_str(&o.log);
    }

    pub fn ok(&self) -> bool {
        self.failed.is_empty() && !self.passed.is_empty()
    }

    pub fn cell(&self) -> String {
        let total = self.passed.len() + self.failed.len();
        let skips = if self.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", self.skipped.len())
        };
        if self.failed.is_empty() {
            format!("pass ({}/{total}{skips})", self.passed.len())
        } else {
            format!(
                "**FAIL** ({} of {total}: {}{skips})",
                self.failed.len(),
                self.failed.join(", ")
            )
        }
    }
}

/// Parses libtest's `test NAME ... ok|FAILED` lines and the tests' own `SKIP` lines.
pub fn parse(output: &str) -> Outcome {
    let mut o = Outcome {
        log: output.to_string(),
        ..Outcome::default()
    };
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.rsplit_once(" ... ")
        {
            match result.trim() {
                "ok" => o.passed.push(name.to_string()),
                "FAILED" => o.failed.push(name.to_string()),
                _ => {}
            }
        } else if line.starts_with("SKIP ") {
            o.skipped.push(line.to_string());
        }
    }
    o
}

/// Builds the kernel test binaries (release) and returns their paths.
pub fn build_tests() -> Result<Vec<PathBuf>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--release",
            "--package",
            "tracer",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(util::root())
        .output()
        .context("building the kernel tests")?;
    if !out.status.success() {
        bail!(
            "building the kernel tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_integration = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if v["reason"] == "compiler-artifact"
            && is_integration
            && let Some(exe) = v["executable"].as_str()
        {
            bins.push(PathBuf::from(exe));
        }
    }
    bins.sort();
    if bins.is_empty() {
        bail!("no kernel test binaries were built");
    }
    Ok(bins)
}

/// The capabilities `packaging/bindtrace.service` grants (`CapabilityBoundingSet=`), as
/// `setpriv` names them: `net_admin,sys_admin,...`.
pub fn packaged_caps() -> Result<String> {
    let unit = std::fs::read_to_string(util::root().join("packaging/bindtrace.service"))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("packaging/bindtrace.service has no CapabilityBoundingSet=")?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(","))
}

/// Runs the test binaries here with `backend`, the tracer limited to `caps` if given.
pub fn run_here(bins: &[PathBuf], backend: &str, caps: Option<&str>) -> Result<Outcome> {
    let mut all = Outcome::default();
    for bin in bins {
        let out = util::as_root(bin)
            .args(["--test-threads", "2", "--show-output"])
            .env("BINDTRACE_TEST_BACKEND", backend)
            .env("BINDTRACE_TEST_CAPS", caps.unwrap_or(""))
            .current_dir(util::root())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let o = parse(&text);
        if !out.status.success() && o.failed.is_empty() {
            bail!("{} failed to run:\n{text}", bin.display());
        }
        all.merge(o);
    }
    Ok(all)
}

/// `bindtrace lab --check --output markdown` here.
pub fn lab_here(backend: &str) -> Result<String> {
    let out = util::as_root(util::root().join("target/release/bindtrace"))
        .args([
            "lab",
            "--check",
            "--output",
            "markdown",
            "--backend",
            backend,
        ])
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `bindtrace doctor --output json` here.
pub fn doctor_here() -> Result<Value> {
    let out = util::as_root(util::root().join("target/release/bindtrace"))
        .args(["doctor", "--output", "json"])
        .output()?;
    serde_json::from_slice(&out.stdout).context("bindtrace doctor printed no JSON")
}

/// One kernel's results.
pub struct KernelRun {
    pub label: String,
    pub release: String,
    pub doctor: Value,
    /// backend → outcome; absent: not offered by this kernel.
    pub backends: BTreeMap<String, Outcome>,
    /// backend → `bindtrace lab --check --output markdown`.
    pub labs: BTreeMap<String, String>,
    pub seconds: f64,
    /// VMs that died before finishing (with what their console said); the sections they had not
    /// finished were rerun in a fresh VM.
    pub incidents: Vec<String>,
}

/// Whether a lab run (markdown) found bindtrace right in every case.
pub fn lab_ok(markdown: &str) -> bool {
    markdown.contains("bindtrace wrong in 0,")
}

impl KernelRun {
    pub fn failed(&self) -> bool {
        self.backends.values().any(|o| !o.ok()) || self.labs.values().any(|l| !lab_ok(l))
    }

    fn not_offered_reason(&self, backend: &str) -> String {
        self.doctor["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["backend"] == backend))
            .and_then(|b| b["detail"].as_str())
            .map_or_else(|| "not probed".to_string(), shorten)
    }
}

fn shorten(s: &str) -> String {
    let first = s.lines().next().unwrap_or(s);
    if first.len() > 90 {
        format!(
            "{}…",
            &first[..first.char_indices().nth(88).map_or(first.len(), |(i, _)| i)]
        )
    } else {
        first.to_string()
    }
}

/// The kernel image in /boot whose name starts with `prefix`.
pub fn image(prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The script a VM runs: the doctor, which decides which backends this kernel offers; then, per
/// offered backend, the kernel tests and the lab. The suites that do not depend on the backend
/// (`ONCE_PER_KERNEL`) run once, with the backend `auto` picks: under software emulation every
/// minute counts.
/// `run_bin BIN ARGS...`: runs a test binary with a watchdog. A binary still running after
/// `BIN_TIMEOUT` seconds is a failure (a line the parser counts as one), and what every
/// process was waiting on is printed before it is killed: one hung test must not cost the whole
/// VM its results, and must leave a trace to debug.
const WATCHDOG: &str = r#"BIN_TIMEOUT=300
run_bin() {
  "$@" & local pid=$!
  ( sleep $BIN_TIMEOUT
    if kill -0 $pid 2>/dev/null; then
      echo "test $(basename $1) (hung for $BIN_TIMEOUT s) ... FAILED"
      ps -eo pid,stat,wchan:32,etime,cmd | grep -v '\['
      for p in $(pgrep -f 'bindtrace|bindcases'); do echo "stack of $p:"; cat /proc/$p/stack 2>/dev/null; done
      pkill -9 -P $pid; kill -9 $pid
    fi ) 2>/dev/null & local dog=$!
  wait $pid; local rc=$?; pkill -P $dog 2>/dev/null; kill $dog 2>/dev/null; wait $dog 2>/dev/null; return $rc
}
"#;

/// Test binaries whose subject is not the backend: real third-party programs (JVM, curl: slow to
/// start under emulation), the log/report/metrics/check-port suite, bad input and untrusted text,
/// and the packaging checks.
const ONCE_PER_KERNEL: [&str; 4] = ["programs-", "production-", "inputs-", "packaging-"];

fn vm_script(bins: &[PathBuf], log: &Path, done: &BTreeSet<String>) -> String {
    let bt = format!("{}/target/release/bindtrace", util::root().display());
    let log = log.display();
    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    let mut script = format!(
        "set -u\nexec > {log} 2>&1\nuname -r\n\
         {bt} doctor --output json > /tmp/doctor.json 2>/dev/null\n\
         echo @@@doctor\ncat /tmp/doctor.json\necho @@@end\n\
         offered=$(python3 -I -S -c 'import json; d=json.load(open(\"/tmp/doctor.json\")); \
         print(\" \".join(b[\"backend\"] for b in d[\"backends\"] if b[\"attached\"]))')\n\
         first=${{offered%% *}}\n{WATCHDOG}\
         DONE=\" {} \"\n\
         todo() {{ case \"$DONE\" in *\" $1 \"*) return 1;; esac; }}\n\
         for backend in $offered; do\n",
        done.join(" ")
    );
    let (once, each): (Vec<&PathBuf>, Vec<&PathBuf>) = bins.iter().partition(|b| {
        b.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| ONCE_PER_KERNEL.iter().any(|p| n.starts_with(p)))
    });
    let name = |b: &PathBuf| {
        b.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string()
    };
    for bin in each {
        let n = name(bin);
        let _ = writeln!(
            script,
            "  todo $backend:{n} && {{ echo @@@run $backend {n}; BINDTRACE_TEST_BACKEND=$backend \
             run_bin {} --test-threads 2 --show-output 2>&1; echo @@@end; }}",
            bin.display()
        );
    }
    let _ = writeln!(
        script,
        "  todo $backend:lab && {{ echo @@@lab $backend; {bt} lab --check --output markdown \
         --backend $backend 2>&1; echo @@@end; }}"
    );
    script.push_str("done\n");
    for bin in once {
        let n = name(bin);
        let _ = writeln!(
            script,
            "[ -n \"$first\" ] && todo $first:{n} && {{ echo @@@run $first {n}; \
             BINDTRACE_TEST_BACKEND=$first run_bin {} --test-threads 2 --show-output 2>&1; \
             echo @@@end; }}",
            bin.display()
        );
    }
    script.push_str("echo @@@complete\n");
    script
}

/// The sections (`backend:binary`, `backend:lab`) a VM's output shows finished.
fn finished_sections(text: &str) -> BTreeSet<String> {
    let mut done = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("@@@run ") {
            current = rest
                .split_once(' ')
                .map(|(backend, bin)| format!("{backend}:{bin}"));
        } else if let Some(backend) = line.strip_prefix("@@@lab ") {
            current = Some(format!("{backend}:lab"));
        } else if line == "@@@doctor" {
            current = None;
        } else if line == "@@@end"
            && let Some(c) = current.take()
        {
            done.insert(c);
        }
    }
    done
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the guest kernel's console said when it died (an Oops or panic), if it did.
fn guest_crash(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("Oops") || l.contains("Kernel panic") || l.contains("BUG:"))?;
    let pick: Vec<&str> = lines[at..]
        .iter()
        .filter(|l| {
            l.contains("Oops")
                || l.contains("RIP: 0010")
                || l.contains("Comm:")
                || l.contains("Kernel panic")
                || l.contains("BUG:")
        })
        .take(4)
        .map(|l| l.trim())
        .collect();
    Some(pick.join(" / "))
}

/// What a VM printed, split into the doctor's JSON, test outcomes and lab tables per backend.
fn parse_vm_output(text: &str) -> (Value, BTreeMap<String, Outcome>, BTreeMap<String, String>) {
    let mut doctor = Value::Null;
    let mut backends: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut labs: BTreeMap<String, String> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut buf = String::new();
    for line in text.lines() {
        if line == "@@@doctor" {
            section = Some("doctor".into());
            buf.clear();
        } else if let Some(b) = line.strip_prefix("@@@run ") {
            section = Some(b.split(' ').next().unwrap_or(b).to_string());
            buf.clear();
        } else if let Some(b) = line.strip_prefix("@@@lab ") {
            section = Some(format!("lab {b}"));
            buf.clear();
        } else if line == "@@@end" {
            match section.take().as_deref() {
                Some("doctor") => doctor = serde_json::from_str(&buf).unwrap_or(Value::Null),
                Some(l) if l.starts_with("lab ") => {
                    labs.insert(l["lab ".len()..].to_string(), buf.clone());
                }
                Some(b) => backends
                    .entry(b.to_string())
                    .or_default()
                    .merge(parse(&buf)),
                None => {}
            }
        } else if section.is_some() {
            buf.push_str(line);
            buf.push('\n');
        }
    }
    (doctor, backends, labs)
}

/// Boots `image` and runs the doctor, then the tests and the lab once per backend it offers.
pub fn run_in_vm(label: &str, image: &Path, bins: &[PathBuf]) -> Result<KernelRun> {
    let started = Instant::now();
    // The script and its output live in target/vm-LABEL/, writable from the guest (--rwdir):
    // the output survives a guest that hangs on the way down, and a failing run can be repeated
    // by hand with `vng -r IMAGE --disable-kvm --rwdir DIR --exec "bash DIR/run.sh"`.
    let dir = util::root().join(format!("target/vm-{label}"));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("log");
    let script = dir.join("run.sh");
    // Under qemu's multi-threaded software emulation the 6.12 guest kernel died on its own live
    // code patching (an "Oops: int3" in a static branch that attaching a tracepoint flips, while
    // the other vCPU ran through it): text_poke_bp is correct on real CPUs, so this looks like a
    // TCG artifact. The VMs now run single-threaded TCG (below), and as a safety net a VM that
    // dies anyway is replaced by a fresh one that runs only the sections it had not finished.
    let mut text = String::new();
    let mut incidents = Vec::new();
    let mut last_status = None;
    for attempt in 1..=VM_ATTEMPTS {
        let done = finished_sections(&text);
        let _ = std::fs::remove_file(&log);
        std::fs::write(&script, vm_script(bins, &log, &done))?;
        let out = Command::new("timeout")
            .arg(VM_TIMEOUT.to_string())
            .arg("vng")
            .arg("-r")
            .arg(image)
            .args([
                "--verbose",
                "--disable-kvm",
                // One host thread runs both vCPUs in turn: with qemu's default multi-threaded TCG
                // the 6.12 guest died several times a run on its own live code patching (see
                // above); single-threaded TCG never did, at about the same speed here.
                "--qemu-opts=-accel tcg,thread=single",
                "--cpus",
                "2",
                "--memory",
                "2G",
                "--rwdir",
            ])
            .arg(&dir)
            .arg("--exec")
            .arg(format!("bash {}", script.display()))
            .current_dir(util::root())
            .output()
            .context("running vng (virtme-ng)")?;
        let this = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&this);
        last_status = Some(out.status);
        if this.contains("@@@complete") {
            break;
        }
        // vng --verbose writes the guest's console to stderr.
        let console = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(dir.join(format!("console-{attempt}")), console.as_bytes());
        let why = guest_crash(&console).map_or_else(
            || format!("vng {}", out.status),
            |c| format!("the guest kernel died: {c}"),
        );
        let newly = finished_sections(&text).len() - done.len();
        eprintln!(
            "    note: the {label} VM (attempt {attempt}) did not finish its script ({why}); \
             {newly} section(s) finished; console in {}",
            dir.join(format!("console-{attempt}")).display()
        );
        incidents.push(format!("attempt {attempt}: {why}"));
        if attempt == VM_ATTEMPTS
            || started.elapsed() > Duration::from_secs(2 * u64::from(VM_TIMEOUT))
        {
            bail!(
                "the {label} VM did not finish its script in {attempt} attempt(s) ({why}; output \
                 so far in {}):\n{}\n{}",
                log.display(),
                last_lines(&this, 40),
                last_lines(&console, 30)
            );
        }
    }
    if last_status.is_some_and(|s| !s.success()) {
        eprintln!(
            "    note: the {label} VM finished its script but vng ended with {}; results kept",
            last_status.unwrap()
        );
    }
    let release = text.lines().next().unwrap_or("?").trim().to_string();
    let (doctor, mut backends, mut labs) = parse_vm_output(&text);
    if doctor.is_null() {
        bail!("the {label} VM did not run the doctor (vng exit {last_status:?}):\n{text}");
    }
    // A backend the kernel does not offer is "not offered", not a failure.
    let offered = |b: &str| {
        doctor["backends"].as_array().is_some_and(|bs| {
            bs.iter()
                .any(|x| x["backend"] == b && x["attached"] == true)
        })
    };
    backends.retain(|b, _| offered(b));
    labs.retain(|b, _| offered(b));
    Ok(KernelRun {
        label: label.to_string(),
        release,
        doctor,
        backends,
        labs,
        seconds: started.elapsed().as_secs_f64(),
        incidents,
    })
}

/// The compatibility table (markdown).
pub fn table(runs: &[KernelRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| kernel | auto picks | fexit | kprobe | tracepoint | lab --check |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in runs {
        let auto = r.doctor["auto"].as_str().unwrap_or("none");
        let cells: Vec<String> = BACKENDS
            .iter()
            .map(|b| match r.backends.get(*b) {
                Some(o) => o.cell(),
                None => format!("not offered: {}", r.not_offered_reason(b)),
            })
            .collect();
        let labs: Vec<String> = r
            .labs
            .iter()
            .map(|(b, md)| format!("{b}: {}", if lab_ok(md) { "pass" } else { "**FAIL**" }))
            .collect();
        let _ = writeln!(
            s,
            "| {} (`{}`) | {auto} | {} | {} |",
            r.label,
            r.release,
            cells.join(" | "),
            labs.join(", ")
        );
    }
    s
}

/// The whole `docs/kernels.md`.
pub fn document(runs: &[KernelRun], table: &str, skips: &[String]) -> String {
    let mut s = String::from(
        "# Kernels and backends, as measured\n\n\
         Generated by `cargo xtask test --update-docs` from a real run of the kernel test matrix \
         (do not edit by hand): the root kernel tests (`tracer/tests/*.rs`) on the host with the \
         backend `auto` picks, and in virtme-ng VMs (qemu, software emulation) booting Debian's \
         kernels, once per backend each kernel offers (the suites that do not depend on the \
         backend — third-party programs, log/report/metrics/check-port, packaging — once per \
         kernel, with the backend `auto` picks). \"Not offered\" is what `bindtrace doctor` \
         found when it tried to load and attach that backend.\n\n",
    );
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(s, "Run: {date}.\n");
    s.push_str(table);
    if !skips.is_empty() {
        s.push_str("\nTests that skipped themselves (with their reason):\n\n");
        for k in skips {
            let _ = writeln!(s, "- {k}");
        }
    }
    let incidents: Vec<String> = runs
        .iter()
        .flat_map(|r| r.incidents.iter().map(move |i| format!("{}: {i}", r.label)))
        .collect();
    if !incidents.is_empty() {
        s.push_str(
            "\nVMs that died before finishing (the sections they had not finished were rerun in \
             a fresh VM; under qemu's software emulation the guest kernel can die on its own live \
             code patching — an `Oops: int3` where attaching a tracepoint flips a static branch):\n\n",
        );
        for i in &incidents {
            let _ = writeln!(s, "- {i}");
        }
    }
    s.push_str("\n## What each kernel offered (`bindtrace doctor`)\n\n");
    for r in runs {
        let _ = writeln!(s, "### {} (`{}`), {:.0} s\n", r.label, r.release, r.seconds);
        let _ = writeln!(s, "| capability | available | detail |\n|---|---|---|");
        for c in r.doctor["capabilities"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                c["capability"].as_str().unwrap_or("?"),
                if c["available"] == true { "yes" } else { "no" },
                shorten(c["detail"].as_str().unwrap_or("")).replace('|', "\\|")
            );
        }
        let _ = writeln!(
            s,
            "\n`auto` → {}: {}\n",
            r.doctor["auto"].as_str().unwrap_or("none"),
            r.doctor["reason"].as_str().unwrap_or("")
        );
    }
    s
}

/// The whole `docs/lab.md`: each kernel's `bindtrace lab` per backend, and where kernels differ.
pub fn lab_document(runs: &[KernelRun]) -> String {
    let mut s = String::from(
        "# The lab on each kernel, as measured\n\n\
         Generated by `cargo xtask test --update-docs` (do not edit by hand): `bindtrace lab \
         --check --output markdown` on the host and in the VMs of the kernel matrix, once per \
         backend. Each row is a real experiment in a throwaway network namespace; *observed* is \
         what that kernel answered (in bold where it differs from the seed's result or the \
         documented rule); the last column is whether bindtrace reported it with the right \
         cause and holder (✓) or not (✗).\n\n",
    );
    let mut differences = Vec::new();
    for r in runs {
        for (backend, md) in &r.labs {
            let _ = writeln!(
                s,
                "## {} (`{}`), {backend} backend\n\n{}\n",
                r.label,
                r.release,
                md.trim()
            );
            for line in md.lines().filter(|l| l.contains("| **")) {
                let case = line.split('|').nth(1).unwrap_or("").trim();
                differences.push(format!("{} (`{}`): case {case}", r.label, r.release));
            }
        }
    }
    differences.sort();
    differences.dedup();
    s.push_str("## Differences between kernels\n\n");
    if differences.is_empty() {
        s.push_str(
            "None: every kernel tested answered every experiment as the seed (or the rule) says.\n",
        );
    } else {
        for d in differences {
            let _ = writeln!(s, "- {d} differs from the expected outcome");
        }
    }
    s
}

/// Skips seen anywhere, deduplicated, for the notes under the table.
pub fn skips(runs: &[KernelRun]) -> Vec<String> {
    let mut v: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.backends.iter().flat_map(move |(b, o)| {
                o.skipped
                    .iter()
                    .map(move |s| format!("{} / {b}: {}", r.label, s.trim_start_matches("SKIP ")))
            })
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM that died in its third section, then a fresh one that ran the rest: the finished
    /// sections are known, the half-done one is dropped, and the results of both are merged.
    #[test]
    fn a_dead_vm_is_resumed_where_it_stopped() {
        let first = "6.12\n@@@doctor\n{}\n@@@end\n@@@run fexit failures-1\ntest a ... ok\n@@@end\n\
                     @@@lab fexit\n| x |\n@@@end\n@@@run kprobe failures-1\ntest a ... ok\n";
        let done = finished_sections(first);
        assert_eq!(
            done.iter().map(String::as_str).collect::<Vec<_>>(),
            ["fexit:failures-1", "fexit:lab"]
        );
        let second = "6.12\n@@@doctor\n{}\n@@@end\n@@@run kprobe failures-1\ntest a ... FAILED\n\
                      @@@end\n@@@complete\n";
        let (_, backends, labs) = parse_vm_output(&format!("{first}{second}"));
        assert_eq!(backends["fexit"].passed, ["a"]);
        assert_eq!(backends["kprobe"].passed, Vec::<String>::new());
        assert_eq!(backends["kprobe"].failed, ["a"]);
        assert!(labs.contains_key("fexit"));
        assert!(
            vm_script(&[], Path::new("/l"), &done)
                .contains("DONE=\" fexit:failures-1 fexit:lab \"")
        );
    }

    #[test]
    fn names_what_killed_the_guest() {
        let console = "[ 1.0] boot\n[63.08] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                       [63.08] CPU: 0 UID: 0 PID: 376 Comm: io_uring_bind_i Not tainted\n\
                       [63.08] RIP: 0010:syscall_exit_to_user_mode_prepare+0xe1/0x170\n";
        let c = guest_crash(console).unwrap();
        assert!(
            c.contains("Oops: int3") && c.contains("syscall_exit_to_user_mode_prepare"),
            "{c}"
        );
        assert!(guest_crash("[ 1.0] all fine\n").is_none());
    }

    #[test]
    fn parses_libtest_output() {
        let o = parse(
            "running 3 tests\nSKIP io_uring: no IORING_OP_BIND\ntest a ... ok\ntest b::c ... FAILED\n\
             test d ... ok\ntest result: FAILED. 2 passed; 1 failed\n",
        );
        assert_eq!(o.passed, ["a", "d"]);
        assert_eq!(o.failed, ["b::c"]);
        assert_eq!(o.skipped.len(), 1);
        assert!(!o.ok());
        assert!(o.cell().starts_with("**FAIL** (1 of 3: b::c, 1 skipped)"));
        assert_eq!(parse("test a ... ok\n").cell(), "pass (1/1)");
    }
}

//! Shared pieces of the root-only kernel tests: run the real `bindtrace` binary, run workloads in
//! private network namespaces, and wait for the events that must follow.
//!
//! Nothing here sleeps and hopes: the tracer is known to be attached when it writes its ready
//! file, and a workload's events are awaited by predicate (with a generous deadline that only
//! bounds a failing test, not a timing claim).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long a test waits for an event that must come before declaring it missing.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// True when the kernel tests can run; otherwise prints why they are skipped.
/// A TCP port that is free on the host's loopback right now (the kernel picks it).
pub fn free_host_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root to load eBPF programs and create network namespaces");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP {test}: `ip` (iproute2) is not installed");
        return false;
    }
    true
}

/// Whether this runs in the VM tier (a virtme-ng guest under software emulation); if so, prints
/// that `test` skips it and `why`.
pub fn skips_vm_tier(test: &str, why: &str) -> bool {
    let in_vm = std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("virtme"));
    if in_vm {
        eprintln!("SKIP {test}: {why}; the host tier runs it");
    }
    in_vm
}

/// The backend the suite is asked to exercise (`BINDTRACE_TEST_BACKEND`, default `auto`).
pub fn backend() -> String {
    std::env::var("BINDTRACE_TEST_BACKEND").unwrap_or_else(|_| "auto".to_string())
}

fn python() -> &'static str {
    // The distribution's interpreter is readable by unprivileged users (a pyenv shim under /root
    // is not), which the EACCES test needs.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `python3 -I -S`: the workloads need only the standard library; skipping site-packages halves
/// the interpreter's start (3.0 s → 1.1 s under the VM tier's software emulation).
fn python_cmd(mut cmd: Command) -> Command {
    cmd.args([python(), "-I", "-S"]);
    cmd
}

/// The workload script, copied where any user can read it.
fn workload_script() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bindtrace-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("bindcases.py");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/bindcases.py");
        std::fs::copy(&src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        dst
    })
    .clone()
}

/// A named network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "bt-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self { name }
    }

    /// The namespace's inode number, as bindtrace reports it in `netns`.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    /// `bindtrace check-port ARGS` run inside this namespace.
    pub fn check_port(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                env!("CARGO_BIN_EXE_bindtrace"),
                "check-port",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    /// `check-port ARGS --output json` in this namespace: its exit status and its verdict.
    pub fn check_port_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let out = self.check_port(&[args, &["--output", "json"]].concat());
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
        (out.status.code(), v)
    }

    /// Runs a case of `workloads/bindcases.py` in this namespace and returns its JSON report.
    pub fn run_case(&self, case: &str, args: &[&str]) -> Value {
        self.run_case_as(case, args, None)
    }

    /// Same, as an unprivileged user (uid/gid 65534) when `nobody` is set.
    pub fn run_case_as(&self, case: &str, args: &[&str], nobody: Option<()>) -> Value {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if nobody.is_some() {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        cmd.arg(python())
            .arg(workload_script())
            .arg(case)
            .args(args);
        let out = cmd.output().expect("running the workload");
        assert!(
            out.status.success(),
            "workload {case} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("workload {case} printed {stdout:?}: {e}"))
    }
}

/// A workload still running: it has reported and waits for a line on stdin.
pub struct Running {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    /// Its first report.
    pub report: Value,
}

impl Running {
    pub fn pid(&self) -> u64 {
        self.report["pid"].as_u64().expect("pid")
    }

    /// Sends the go-ahead; returns its next report, if it prints one before exiting.
    pub fn release(mut self) -> Option<Value> {
        use std::io::Write as _;
        let mut stdin = self.child.stdin.take().unwrap();
        let _ = stdin.write_all(b"go\n");
        drop(stdin);
        let mut line = String::new();
        let _ = self.out.read_line(&mut line);
        let _ = self.child.wait();
        serde_json::from_str(&line).ok()
    }
}

impl Netns {
    /// Starts a case that holds its sockets after reporting (`BINDCASES_HOLD=1`), until
    /// `Running::release`.
    pub fn hold_case(&self, case: &str, args: &[&str]) -> Running {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        hold(python_cmd(cmd), case, args)
    }

    /// `case_gated`: waits before failing; optionally renamed to `comm`.
    pub fn spawn_gated(&self, port: u16, comm: &str) -> Running {
        self.hold_case("case_gated", &[&port.to_string(), comm])
    }
}

/// Like `Netns::hold_case`, in the host's own network namespace.
pub fn hold_case_on_host(case: &str, args: &[&str]) -> Running {
    hold(python_cmd(Command::new("env")), case, args)
}

/// The inode of the host's (this test's) network namespace.
pub fn host_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

fn hold(mut cmd: Command, case: &str, args: &[&str]) -> Running {
    let mut child = cmd
        .arg(workload_script())
        .arg(case)
        .args(args)
        .env("BINDCASES_HOLD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the workload");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let report = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("workload {case} printed {line:?}: {e}"));
    Running { child, out, report }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `bindtrace watch --output json`, its events collected as they arrive.
pub struct Tracer {
    child: Mutex<Child>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    pub backend: String,
}

impl Tracer {
    /// One tracer with default settings for all the tests of a test binary: the tests tell their
    /// events apart by pid, and starting a tracer costs seconds under the VM tier's emulation.
    /// It is started from a thread that lives as long as the process, so its parent-death signal
    /// (below) fires when the test binary exits, not when the first test's thread does.
    pub fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<Tracer> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Tracer::start(&[]));
                loop {
                    std::thread::park();
                }
            });
            rx.recv()
                .expect("the shared tracer failed to start (see the panic above)")
        })
    }

    /// Starts a tracer of its own with extra `args` and waits until every probe is attached.
    ///
    /// With `BINDTRACE_TEST_CAPS=bpf,perfmon,...` the tracer runs with only those capabilities
    /// (`setpriv` bounding set): how `cargo xtask test` proves the packaged set is enough.
    pub fn start(args: &[&str]) -> Self {
        use std::os::unix::process::CommandExt as _;
        let dir = tempdir();
        let ready = dir.join("ready");
        let mut cmd = match std::env::var("BINDTRACE_TEST_CAPS") {
            Ok(caps) if !caps.is_empty() => {
                let keep: Vec<String> = caps.split(',').map(|c| format!("+{}", c.trim())).collect();
                let mut c = Command::new("setpriv");
                c.arg(format!("--bounding-set=-all,{}", keep.join(",")))
                    .args(["--no-new-privs", "--"])
                    .arg(env!("CARGO_BIN_EXE_bindtrace"));
                c
            }
            _ => Command::new(env!("CARGO_BIN_EXE_bindtrace")),
        };
        cmd.args(["watch", "--output", "json", "--backend", &backend()])
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. The tracer dies with the thread that started it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting bindtrace");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let ev = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bindtrace printed a non-JSON line {line:?}: {e}"));
                ev.lock().unwrap().push(v);
            }
        });
        let err = BufReader::new(child.stderr.take().unwrap());
        let er = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut e = er.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let start = Instant::now();
        loop {
            if let Ok(b) = std::fs::read_to_string(&ready) {
                let _ = std::fs::remove_dir_all(&dir);
                return Self {
                    child: Mutex::new(child),
                    events,
                    stderr,
                    backend: b.trim().to_string(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "bindtrace exited ({status}) before attaching:\n{}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "bindtrace did not attach within a minute:\n{}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the first event matching `pred`; panics with everything seen if none comes.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                start.elapsed() <= DEADLINE,
                "no event for {what} within {DEADLINE:?}.\nevents: {:#?}\nstderr:\n{}",
                self.events(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The failure event of process `pid` on `port`.
    pub fn failure(&self, pid: u64, port: u64) -> Value {
        self.wait_for(&format!("a failure of pid {pid} on port {port}"), |v| {
            v["event"] == "bind_failure" && v["pid"] == pid && v["port"] == port
        })
    }

    /// Stops the tracer (SIGSTOP) until `resume`: meanwhile its kernel programs go on recording
    /// into its maps and ring buffer, and nothing is looked up.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.lock().unwrap();
        // SAFETY: kill(2) on our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    /// Kills the tracer with SIGKILL (no clean-up of its own).
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let start = std::time::Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            // A process the kernel cannot finish tearing down is a finding, not a hang: say
            // where it is stuck.
            if start.elapsed() > Duration::from_mins(1) {
                let pid = child.id();
                let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}"));
                panic!(
                    "bindtrace (pid {pid}) has not exited 60 s after SIGKILL; wchan {:?}, stack:\n{}",
                    read("wchan").unwrap_or_default(),
                    read("stack").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the tracer (SIGINT) and returns its stderr.
    pub fn stop(self) -> String {
        self.interrupt();
        self.stderr()
    }

    fn interrupt(&self) {
        let mut child = self.child.lock().unwrap();
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
        drop(child);
        // The stderr reader thread finishes with the child's last lines.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // A test that failed while it had the tracer paused: a stopped process would not act on
        // the interrupt, and the suite would wait on it for ever.
        if let Ok(child) = self.child.lock() {
            // SAFETY: kill(2) on our own child; an error (it was reaped) is of no matter.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.interrupt();
    }
}

fn tempdir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bindtrace-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts the fields every failure event must carry, against the workload's ground truth.
pub fn assert_failure(ev: &Value, truth: &Value, ns: &Netns, syscall: &str) {
    let ctx = format!("event {ev:#}\nworkload {truth:#}");
    assert_eq!(ev["pid"], truth["pid"], "pid: {ctx}");
    assert_eq!(ev["comm"], truth["comm"], "comm: {ctx}");
    assert_eq!(ev["port"], truth["port"], "requested port: {ctx}");
    assert_eq!(ev["errno"], truth["errno"], "errno: {ctx}");
    assert_eq!(ev["syscall"], syscall, "syscall: {ctx}");
    assert_eq!(ev["netns"], ns.inode(), "netns: {ctx}");
    if let Some(addr) = truth.get("addr") {
        assert_eq!(&ev["addr"], addr, "requested address: {ctx}");
    }
    assert_eq!(ev["options_known"], true, "reuse options read: {ctx}");
    assert_eq!(ev["reuseaddr"], truth["reuseaddr"], "SO_REUSEADDR: {ctx}");
    assert_eq!(ev["reuseport"], truth["reuseport"], "SO_REUSEPORT: {ctx}");
    let b = backend();
    if b != "auto" {
        assert_eq!(ev["backend"], b, "backend: {ctx}");
    }
}

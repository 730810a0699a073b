//! Root-only kernel tests of bindtrace never harming the host and never lying by omission: binds
//! that should succeed succeed with bindtrace attached and after it is killed with SIGKILL in the
//! middle of a failure storm (and nothing of it stays attached); hostile process names cannot
//! forge output; bad arguments and missing privileges get clear messages; the no-BTF path works.
//!
//! The tests of this file run one at a time (`SERIAL`): one of them counts the programs attached
//! to the cgroup root.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, can_run};

static SERIAL: Mutex<()> = Mutex::new(());

fn bindtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bindtrace"))
}

/// Ids of the programs bindtrace's backends load for bind(), loaded in the kernel right now.
fn loaded() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            matches!(
                p.name_as_str(),
                Some("sys_exit_bind" | "fexit_inet_bind" | "kp_inet_bind")
            )
        })
        .map(|p| p.id())
        .collect()
}

#[test]
fn binds_succeed_with_bindtrace_attached_and_after_sigkill_mid_storm() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run("sigkill") {
        return;
    }
    // Other tracers (of earlier test binaries, still being torn down) may come and go: follow the
    // program this test's tracer loads by its id.
    let before = loaded();
    let tracer = Tracer::start(&[]);
    let ours: Vec<u32> = loaded().difference(&before).copied().collect();
    assert_eq!(
        ours.len(),
        1,
        "bindtrace's bind program is loaded: {ours:?}"
    );
    let ns = Netns::new();
    let ok = ns.run_case("case_successes", &["9200"]);
    assert_eq!(
        ok["ok"], 50,
        "binds that should succeed succeed with bindtrace attached"
    );

    // A storm of failing binds; SIGKILL the tracer in the middle of it.
    let storm = ns.hold_case("case_storm", &["9300", "3"]);
    std::thread::sleep(Duration::from_millis(300));
    tracer.kill();
    let report = storm.release().expect("the storm's report");
    assert!(
        report["failures"].as_u64().unwrap() > 100,
        "a storm: {report}"
    );

    // Everything it attached goes away with the process.
    let start = Instant::now();
    loop {
        if !loaded().contains(&ours[0]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bindtrace's program {} is still loaded after SIGKILL",
            ours[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = ns.run_case("case_successes", &["9400"]);
    assert_eq!(ok["ok"], 50, "binds succeed after bindtrace died");
}

#[test]
fn hostile_process_names_cannot_forge_text_output() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run("hostile_comm") {
        return;
    }
    let ready = std::env::temp_dir().join(format!("bindtrace-hostile-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut child = bindtrace()
        .args(["watch", "--port", "8650", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !ready.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ns = Netns::new();
    // A newline, an escape sequence and a fake event inside the 15 bytes the kernel keeps of a
    // command name.
    let evil = "x\nEADDRINUSE\x1b[2";
    let gated = ns.spawn_gated(8650, evil);
    let pid = gated.pid();
    let done = gated.release().expect("final report");
    assert_eq!(done["errno"], 98);
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let start = Instant::now();
    while !lines.iter().any(|l: &String| l.contains("cause:")) {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 || start.elapsed() > Duration::from_secs(15) {
            break;
        }
        lines.push(l);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&ready);
    let text = lines.concat();
    assert!(
        !text.contains('\x1b'),
        "no raw escape byte reaches the terminal: {text:?}"
    );
    let event_lines: Vec<&String> = lines.iter().filter(|l| l.contains("by ")).collect();
    assert_eq!(
        event_lines.len(),
        1,
        "one event line, not a forged second: {text:?}"
    );
    assert!(event_lines[0].contains(&format!("[{pid}]")), "{text:?}");
    assert!(
        event_lines[0].contains("by x\\x0aEADDRINUSE\\x1b[2["),
        "shown escaped: {text:?}"
    );
}

#[test]
fn clear_messages_for_bad_arguments_and_missing_privileges() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fails = |args: &[&str], needle: &str| {
        let out = bindtrace().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    };
    fails(&["watch", "--port", "0"], "1 to 65535");
    fails(&["watch", "--port", "70000"], "out of range");
    fails(&["watch", "--backend", "magic"], "invalid value 'magic'");
    fails(&["watch", "--metrics-addr", "nowhere"], "not PORT");
    fails(&["watch", "--log-max-size", "1T"], "unknown size unit");
    fails(
        &["watch", "--log-file", "/proc/no/such/dir/log"],
        "cannot write --log-file",
    );
    fails(&["watch", "--kernel-btf", "/no/such/btf"], "no such file");
    fails(&["watch", "--netns", "/no/such/ns"], "/no/such/ns");
    fails(&["check-port", "http"], "not a port");
    if !can_run("privileges") {
        return;
    }
    fails(&["watch", "--kernel-btf", "/etc/hostname"], "not BTF");
    fails(&["watch", "--cgroup", "/tmp"], "not a cgroup-v2 directory");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    fails(&["watch", "--metrics-addr", &port], "cannot listen");
    // Not root: the message names the missing capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_bindtrace"))
        .arg("watch")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && err.contains("exec") {
        eprintln!("SKIP privileges: uid 65534 cannot execute the test binary here");
        return;
    }
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}

#[test]
fn without_btf_failures_are_still_reported_with_their_request() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run("no_btf") {
        return;
    }
    if common::backend() == "fexit" {
        // Forced to fexit, which cannot work without BTF: it must refuse, saying why.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindtrace"))
            .args(["watch", "--backend", "fexit", "--kernel-btf", "none"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("needs kernel BTF"), "{stderr}");
        return;
    }
    let tracer = Tracer::start(&["--kernel-btf", "none"]);
    let ns = Netns::new();
    let held = ns.hold_case("case_3_4", &["8660"]);
    let ev = tracer.failure(held.pid(), 8660);
    assert_eq!(ev["addr"], "127.0.0.1");
    assert_eq!(ev["reuseaddr"], true);
    assert_eq!(ev["error"], "EADDRINUSE");
    assert!(
        ["tracepoint", "kprobe"].contains(&ev["backend"].as_str().unwrap()),
        "fexit needs BTF: {ev:#}"
    );
    // The namespace inode cannot be read without BTF, but the failing process's own namespace
    // is still found for the holder lookup.
    assert_eq!(ev["cause"], "listener_conflict", "{ev:#}");
    held.release();
    assert!(tracer.stderr().contains("no kernel BTF"));
}

//! bindtrace's own input, whichever backend runs: process names are other users' text and must not
//! forge lines or colours in text output; every bad argument and a missing privilege get a clear
//! message, never a panic. (Root for the parts that attach; they use the backend `auto` picks.)

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Netns, can_run};

fn bindtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bindtrace"))
}

#[test]
fn hostile_process_names_cannot_forge_text_output() {
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
    // An event's own further lines are indented; a forged event would start a line.
    let event_lines: Vec<&String> = lines.iter().filter(|l| !l.starts_with(' ')).collect();
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
    fails(
        &["watch", "--netns", "/etc/hostname"],
        "not a network namespace file",
    );
    fails(
        &["watch", "--netns", "/proc/self/ns/mnt"],
        "not a network namespace file",
    );
    fails(&["check-port", "http"], "not a port");
    if !can_run("privileges") {
        return;
    }
    fails(&["watch", "--kernel-btf", "/etc/hostname"], "not BTF");
    fails(&["watch", "--cgroup", "/tmp"], "not a cgroup-v2 directory");
    fails(
        &["lab", "--check", "--case", "1B"],
        "--case 1B: no such case",
    );
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

//! Root-only kernel tests of bindtrace never harming the host and never lying by omission, with the
//! backend under test: binds that should succeed succeed with bindtrace attached and after it is
//! killed with SIGKILL in the middle of a failure storm (and nothing of it stays attached); the
//! no-BTF path works. (Untrusted text and bad arguments, which do not depend on the backend, are in
//! `inputs.rs`.)
//!
//! The tests of this file run one at a time (`SERIAL`): one of them counts the programs attached
//! to the cgroup root.

mod common;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, can_run};

static SERIAL: Mutex<()> = Mutex::new(());

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

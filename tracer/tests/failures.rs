//! Root-only kernel tests: the real programs, loaded into this kernel, must report real failures
//! provoked in private network namespaces — with the pid, command, requested address and port,
//! errno and reuse options the workload itself observed.
//!
//! Run with `cargo xtask test` (as root). Without root every test prints why it is skipped.

mod common;

use common::{Netns, Tracer, assert_failure, can_run};
use serde_json::Value;

fn case(name: &str, port: u16) -> (&'static Tracer, Netns, Value) {
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let truth = ns.run_case(name, &[&port.to_string()]);
    (tracer, ns, truth)
}

fn check(test: &str, name: &str, port: u16, syscall: &str) -> Value {
    let (tracer, ns, truth) = case(name, port);
    assert_eq!(
        truth["errno"], 98,
        "{test}: the kernel must refuse: {truth}"
    );
    let ev = tracer.failure(truth["pid"].as_u64().unwrap(), u64::from(port));
    assert_failure(&ev, &truth, &ns, syscall);
    assert_eq!(ev["error"], "EADDRINUSE");
    ev
}

#[test]
fn seed_3_1_source_port_bind_against_a_listener() {
    if !can_run("seed_3_1") {
        return;
    }
    let ev = check("3.1", "case_3_1", 8081, "bind");
    assert_eq!(ev["protocol"], "tcp");
    assert_eq!(ev["family"], "ipv4");
}

#[test]
fn seed_3_2a_listener_bind_against_an_outgoing_connection() {
    if !can_run("seed_3_2a") {
        return;
    }
    check("3.2a", "case_3_2a", 8082, "bind");
}

#[test]
fn seed_3_3_same_process_connect_then_bind() {
    if !can_run("seed_3_3") {
        return;
    }
    check("3.3", "case_3_3", 8083, "bind");
}

#[test]
fn seed_3_4_same_process_listen_then_source_port_bind() {
    if !can_run("seed_3_4") {
        return;
    }
    check("3.4", "case_3_4", 8084, "bind");
}

#[test]
fn ipv6_bind_conflict() {
    if !can_run("ipv6") {
        return;
    }
    let ev = check("ipv6", "case_ipv6", 8085, "bind");
    assert_eq!(ev["family"], "ipv6");
    assert_eq!(ev["v6only"], false);
}

#[test]
fn udp_bind_conflict() {
    if !can_run("udp") {
        return;
    }
    let ev = check("udp", "case_udp", 5353, "bind");
    assert_eq!(ev["protocol"], "udp");
}

#[test]
fn listen_fails_after_a_shared_reuseaddr_bind() {
    if !can_run("listen") {
        return;
    }
    let ev = check("listen", "case_listen", 8086, "listen");
    assert_eq!(ev["protocol"], "tcp");
}

/// Failures 1 ms apart, then silence: records within `WAKEUP_INTERVAL_NS` of a CPU's last waking
/// one do not wake the collector; its follow-up read must still deliver them while it runs, not
/// only when it stops. Its own tracer, filtered to the port, so no other test's events wake it.
#[test]
fn a_burst_followed_by_silence_is_reported_whole() {
    if !can_run("burst") {
        return;
    }
    let port = 9480;
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let ns = Netns::new();
    let truth = ns.run_case("case_burst", &[&port.to_string(), "20"]);
    assert_eq!(truth["failures"], 21, "every bind must fail: {truth}");
    let pid = truth["pid"].as_u64().unwrap();
    let burst = |v: &Value| v["pid"] == pid && v["port"] == port && v["error"] == "EADDRINUSE";
    let start = std::time::Instant::now();
    while tracer.events().iter().filter(|v| burst(v)).count() < 21
        && start.elapsed() < common::DEADLINE
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let seen = tracer.events().iter().filter(|v| burst(v)).count();
    assert_eq!(
        seen,
        21,
        "all 21 failures while bindtrace runs (it read {seen} within {:?});\nstderr:\n{}",
        common::DEADLINE,
        tracer.stderr()
    );
}

/// A process that moved to another network namespace after making its socket binds in the
/// socket's namespace: that is where the port is held, and the namespace to report.
#[test]
fn a_failure_carries_the_sockets_namespace_not_the_processs() {
    if !can_run("other netns") {
        return;
    }
    let tracer = Tracer::shared();
    let home = Netns::new();
    let elsewhere = Netns::new();
    let port: u16 = 9490;
    let truth = home.run_case(
        "case_other_netns",
        &[&port.to_string(), &format!("/run/netns/{}", elsewhere.name)],
    );
    assert_eq!(truth["errno"], 98, "the bind must fail at home: {truth}");
    assert_eq!(truth["socket_netns"], home.inode());
    assert_eq!(truth["process_netns"], elsewhere.inode());
    let ev = tracer.failure(truth["pid"].as_u64().unwrap(), u64::from(port));
    assert_failure(&ev, &truth, &home, "bind");
}

#[test]
fn successful_binds_report_no_failure() {
    if !can_run("successes") {
        return;
    }
    let (tracer, _ns, truth) = case("case_successes", 9000);
    let pid = truth["pid"].as_u64().unwrap();
    assert_eq!(truth["marker_errno"], 99, "marker bind must fail: {truth}");
    // The marker is this process's last call; once it is in, everything before it is too.
    let marker = tracer.wait_for("the marker failure", |v| {
        v["pid"] == pid && v["error"] == "EADDRNOTAVAIL"
    });
    assert_eq!(marker["addr"], "192.0.2.1");
    let failures: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == pid && v != &marker)
        .collect();
    assert!(
        failures.is_empty(),
        "50 successful binds produced events: {failures:#?}"
    );
}

#[test]
fn all_flag_reports_successes_too() {
    if !can_run("all") {
        return;
    }
    let tracer = Tracer::start(&["--all"]);
    let ns = Netns::new();
    let truth = ns.run_case("case_successes", &["9100"]);
    let pid = truth["pid"].as_u64().unwrap();
    tracer.wait_for("the marker failure", |v| {
        v["pid"] == pid && v["error"] == "EADDRNOTAVAIL"
    });
    let ok: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == pid && v["event"] == "bind_success")
        .collect();
    // A bind to port 0 is shown with the port the kernel chose.
    let any: Vec<&Value> = ok.iter().filter(|v| v["port"] == 0).collect();
    assert_eq!(any.len(), 1, "{ok:#?}");
    assert_eq!(any[0]["chosen_port"], truth["any_port"], "{:#}", any[0]);
    let ok: Vec<Value> = ok.into_iter().filter(|v| v["port"] != 0).collect();
    let binds = ok.iter().filter(|v| v["syscall"] == "bind").count();
    let listens = ok.iter().filter(|v| v["syscall"] == "listen").count();
    assert_eq!(
        binds, 50,
        "every successful bind is reported with --all: {ok:#?}"
    );
    assert_eq!(
        listens, 17,
        "every successful listen is reported with --all"
    );
    assert!(ok.iter().all(|v| v["errno"] == 0 && v["error"] == "OK"));
    let ports: Vec<u64> = ok
        .iter()
        .filter(|v| v["syscall"] == "bind")
        .map(|v| v["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        (9100..9150).collect::<Vec<u64>>(),
        "in order, with their ports"
    );
}

#[test]
fn other_bind_errors_are_named() {
    if !can_run("errnos") {
        return;
    }
    let (tracer, _ns, truth) = case("case_errnos", 8087);
    let pid = truth["pid"].as_u64().unwrap();
    assert_eq!(truth["eaddrnotavail"], 99);
    assert_eq!(truth["einval"], 22);
    let ev = tracer.wait_for("EADDRNOTAVAIL", |v| {
        v["pid"] == pid && v["error"] == "EADDRNOTAVAIL"
    });
    assert_eq!(
        (&ev["addr"], &ev["port"]),
        (&"192.0.2.7".into(), &8087.into())
    );
    let ev = tracer.wait_for("EINVAL", |v| v["pid"] == pid && v["error"] == "EINVAL");
    assert_eq!(
        (&ev["addr"], &ev["port"]),
        (&"127.0.0.1".into(), &8088.into())
    );
    assert_eq!(ev["errno"], 22);
}

#[test]
fn unprivileged_low_port_is_eacces() {
    if !can_run("eacces") {
        return;
    }
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let truth = ns.run_case_as("case_eacces", &["80"], Some(()));
    assert_eq!(
        truth["errno"], 13,
        "an unprivileged bind to port 80 fails: {truth}"
    );
    let ev = tracer.failure(truth["pid"].as_u64().unwrap(), 80);
    assert_eq!(ev["error"], "EACCES");
    assert_eq!(ev["uid"], 65534);
}

#[test]
fn port_filter_drops_other_ports_in_the_kernel() {
    if !can_run("port_filter") {
        return;
    }
    let tracer = Tracer::start(&["--port", "8090"]);
    let ns = Netns::new();
    let truth = ns.run_case("case_filters", &["8090"]);
    assert_eq!(truth["errnos"], serde_json::json!([98, 98, 98]));
    let pid = truth["pid"].as_u64().unwrap();
    tracer.failure(pid, 8090);
    let mine: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == pid)
        .collect();
    assert_eq!(mine.len(), 1, "only the failure on 8090 passes: {mine:#?}");
    let stderr = tracer.stop();
    assert!(stderr.contains("1 failure(s) reported"), "{stderr}");
}

#[test]
fn pid_filter_keeps_only_that_process() {
    if !can_run("pid_filter") {
        return;
    }
    let ns = Netns::new();
    let wanted = ns.spawn_gated(8095, "");
    let tracer = Tracer::start(&["--pid", &wanted.pid().to_string()]);
    let other = ns.run_case("case_3_4", &["8096"]);
    let done = wanted.release().expect("the gated workload's final report");
    assert_eq!(done["errno"], 98);
    tracer.failure(done["pid"].as_u64().unwrap(), 8095);
    let others: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == other["pid"])
        .collect();
    assert!(
        others.is_empty(),
        "--pid let another process through: {others:#?}"
    );
}

#[test]
fn comm_filter_keeps_only_that_command() {
    if !can_run("comm_filter") {
        return;
    }
    let ns = Netns::new();
    let wanted = ns.spawn_gated(8097, "bt-wanted");
    // The same name, failing from a thread with a name of its own (a JVM's acceptor): `--comm`
    // matches the process's name too, and the event names both.
    let threaded = ns.hold_case("case_gated", &["8099", "bt-wanted", "bt-acceptor"]);
    let tracer = Tracer::start(&["--comm", "bt-wanted"]);
    let other = ns.run_case("case_3_4", &["8098"]);
    let done = wanted.release().expect("the gated workload's final report");
    let ev = tracer.failure(done["pid"].as_u64().unwrap(), 8097);
    assert_eq!(ev["comm"], "bt-wanted");
    assert!(ev.get("thread").is_none(), "{ev:#}");
    let done = threaded
        .release()
        .expect("the threaded workload's final report");
    let ev = tracer.failure(done["pid"].as_u64().unwrap(), 8099);
    assert_eq!(ev["tid"], done["tid"], "{ev:#}");
    assert_ne!(ev["tid"], ev["pid"], "{ev:#}");
    assert_eq!(ev["comm"], "bt-wanted", "{ev:#}");
    assert_eq!(ev["thread"], "bt-acceptor", "{ev:#}");
    let others: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == other["pid"])
        .collect();
    assert!(others.is_empty(), "--comm let python3 through: {others:#?}");
}

/// A bind() refused its address before any port rule applies is told which check refused it:
/// the event carries the requested address, and the cause names the check (the kernel's order in
/// `__inet6_bind()`), and for a tentative IPv6 address, that duplicate address detection is
/// still running — found by looking at the namespace's addresses after the failure.
#[test]
fn address_checks_name_what_refused_the_address() {
    if !can_run("address_checks") {
        return;
    }
    let (tracer, _ns, truth) = case("case_address_checks", 7040);
    let pid = truth["pid"].as_u64().unwrap();
    let mut cases = vec![
        (
            "link_local",
            7040,
            "fe80::1",
            22,
            "link_local_without_interface",
        ),
        (
            "mapped",
            7041,
            "::ffff:127.0.0.1",
            22,
            "mapped_address_on_v6only",
        ),
        ("multicast", 7042, "ff05::1", 22, "multicast_address"),
        ("no_device", 7043, "fe80::1", 19, "no_such_device"),
    ];
    if let Some(why) = truth["tentative_setup"].as_str() {
        println!("SKIP part of address_checks: no veth for a tentative address: {why}");
    } else {
        cases.push(("tentative", 7044, "2001:db8::7", 99, "address_not_local"));
    }
    // Bound already: the kernel checks that before the address, so the scope does not matter.
    cases.push(("rebound", 7046, "fe80::1", 22, "already_bound"));
    cases.push(("marker", 7049, "192.0.2.1", 99, "address_not_local"));
    for (what, port, addr, errno, cause) in cases {
        assert_eq!(truth[what], errno, "{what}: the kernel's answer: {truth}");
        let ev = tracer.failure(pid, port);
        assert_eq!(
            (&ev["addr"], &ev["errno"]),
            (&addr.into(), &errno.into()),
            "{ev:#}"
        );
        assert_eq!(ev["cause"], cause, "{what}: {ev:#}");
        if what == "tentative" {
            let hint = ev["hint"].as_str().unwrap();
            assert!(hint.contains("is on bt0 but still tentative"), "{ev:#}");
        }
    }
    assert_eq!(truth["short"], 22, "a short address is EINVAL: {truth}");
    let short: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|v| v["pid"] == pid && v["port"] == 7047)
        .collect();
    assert!(
        short.is_empty(),
        "a malformed call is reported by no backend: {short:#?}"
    );
}

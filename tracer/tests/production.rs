//! Root-only kernel tests of production use: the post-mortem log (rotation, mode, nothing lost at
//! SIGINT) and `report` on it, Prometheus metrics scraped over HTTP after real failures,
//! `check-port` against real holders, the `--cgroup` and `--netns` filters, and container/pod
//! context read from real cgroup paths.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Netns, Tracer, can_run};
use serde_json::{Value, json};

fn bindtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bindtrace"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bindtrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn log_file_rotates_loses_nothing_and_report_reads_it_back() {
    if !can_run("log_file") {
        return;
    }
    let dir = tempdir("log");
    let log = dir.join("events.json");
    let ns = Netns::new();
    // Only this test's namespace: the other tests' failures stay out of its log.
    let tracer = Tracer::start(&[
        "--log-file",
        log.to_str().unwrap(),
        "--log-max-size",
        "8K",
        "--log-keep",
        "10",
        "--netns",
        &format!("/run/netns/{}", ns.name),
    ]);
    let mut pids = Vec::new();
    for _ in 0..6 {
        // Three failures each: 8601, 8601, 8600.
        let truth = ns.run_case("case_filters", &["8600"]);
        pids.push(truth["pid"].clone());
    }
    let last = pids.last().unwrap().as_u64().unwrap();
    tracer.failure(last, 8600);
    let reported = tracer
        .events()
        .iter()
        .filter(|v| pids.contains(&v["pid"]))
        .count();
    assert_eq!(reported, 18);
    // SIGINT: everything reported must be in the log.
    let _ = tracer.stop();

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "8K of events rotated at least once: {files:?}"
    );
    check_log_files(&files, &pids);

    let out = bindtrace()
        .args(["report", "--output", "json"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failures"], 18, "{r:#}");
    // The run's start and its stop (SIGINT) are in the log: the span it covered.
    let sessions = r["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{r:#}");
    assert!(
        sessions[0]["started"].as_str().unwrap().starts_with("20"),
        "{r:#}"
    );
    assert!(sessions[0]["stopped"].is_string(), "{r:#}");
    assert_eq!(r["by_port"]["8600/tcp"]["failures"], 6);
    assert_eq!(r["by_port"]["8601/tcp"]["failures"], 12);
    // Causes depend on what was still there at lookup (the workloads exit at once): all 18 are
    // counted under some cause.
    let by_cause: u64 = r["by_cause"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["failures"].as_u64().unwrap())
        .sum();
    assert_eq!(by_cause, 18, "{r:#}");
    assert_eq!(r["corrupt_lines"], 0);

    // A damaged log on stdin: the garbage is counted, the rest still read.
    let mut damaged = std::fs::read(&files[0]).unwrap();
    damaged.extend_from_slice(b"\x00\x01 not json\n{\"truncated\":");
    let mut child = bindtrace()
        .args(["report", "--output", "json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&damaged).unwrap();
    let out = child.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["corrupt_lines"], 2, "{r:#}");
    assert!(r["failures"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_are_served_on_loopback() {
    if !can_run("metrics") {
        return;
    }
    let port = common::free_host_port();
    let tracer = Tracer::start(&["--metrics-addr", &port.to_string()]);
    let ns = Netns::new();
    let held = ns.hold_case("case_3_4", &["8610"]);
    tracer.failure(held.pid(), 8610);
    let body = http_get(port, "/metrics");
    held.release();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains(
            r#"bindtrace_failures_total{port="8610",cause="listener_conflict",errno="EADDRINUSE",container=""} 1"#
        ),
        "{body}"
    );
    assert!(body.contains(&format!(
        r#"bindtrace_backend{{backend="{}"}} 1"#,
        tracer.backend
    )));
    assert!(body.contains("bindtrace_events_lost_total 0"), "{body}");
    assert!(http_get(port, "/").starts_with("HTTP/1.1 404"));
    // A bare port binds loopback only.
    let host_ip = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap();
    if let Some(ip) = String::from_utf8_lossy(&host_ip.stdout)
        .split_whitespace()
        .next()
    {
        assert!(
            TcpStream::connect((ip, port)).is_err(),
            "metrics must not be reachable on {ip}"
        );
    }
}

#[test]
fn check_port_names_real_holders_and_protects_listeners() {
    if !can_run("check_port") {
        return;
    }
    let ns = Netns::new();
    let holder = ns.hold_case("helper_listen", &["8620", "0"]);
    let check = |args: &[&str]| ns.check_port(args);
    let busy = check(&["8620"]);
    let text = String::from_utf8_lossy(&busy.stdout);
    assert_eq!(
        busy.status.code(),
        Some(1),
        "a blocked port exits 1: {text}"
    );
    assert!(text.contains("would FAIL"), "{text}");
    assert!(
        text.contains(&format!("[{}]", holder.report["pid"])),
        "names the holder: {text}"
    );

    let free = check(&["8621"]);
    assert_eq!(
        free.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&free.stdout)
    );

    let j = check(&["8620", "--output", "json"]);
    let v: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["would_fail"], true);
    assert_eq!(v["cause"], "listener_conflict");
    assert_eq!(v["holders"][0]["pid"], holder.report["pid"]);
    assert_eq!(
        v["holders"][0]["host_network"], false,
        "run inside a private namespace, whose holders are not the host's: {v:#}"
    );

    // From outside the namespace, through a process in it.
    let out = bindtrace()
        .args(["check-port", "8620", "--pid-netns"])
        .arg(holder.report["pid"].to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A listener inside the ephemeral range, unreserved: warned about, and protected.
    let sysctl = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
        .arg("net.ipv4.ip_local_port_range=8000 9000")
        .status()
        .unwrap();
    assert!(sysctl.success());
    let warn = String::from_utf8_lossy(&check(&["8621"]).stdout).into_owned();
    assert!(
        warn.contains("lies in the ephemeral range 8000-9000"),
        "{warn}"
    );
    // The same warning, with the command, for a pre-start hook that reads JSON.
    let free: Value = serde_json::from_slice(&check(&["8621", "--output", "json"]).stdout).unwrap();
    let w = free["warning"].as_str().unwrap_or_default();
    assert!(
        w.contains("ip_local_reserved_ports=8621") && free["would_fail"] == false,
        "{free:#}"
    );
    // A UDP receiver's port is taken by clients' ephemeral sockets alike: listed too. A UDP
    // client's port (given at its first send) is listed, but said to be perhaps a client's
    // when a running watch saw no bind() of it.
    let tracer = Tracer::start(&["--netns", &format!("/run/netns/{}", ns.name)]);
    let udp = ns.hold_case("helper_udp_bound", &["8622"]);
    let client = ns.hold_case("helper_udp_sendto", &["8622"]);
    let l: Value =
        serde_json::from_slice(&check(&["--listening", "--output", "json"]).stdout).unwrap();
    let listed = l["unprotected"].as_array().unwrap();
    let entry = |port: &Value| listed.iter().find(|u| &u["port"] == port);
    let tcp = entry(&8620.into()).unwrap_or_else(|| panic!("{l:#}"));
    assert_eq!(
        (&tcp["protocol"], &tcp["pid"], &tcp["comm"]),
        (&"tcp".into(), &holder.report["pid"], &"python3".into()),
        "{l:#}"
    );
    let server = entry(&8622.into()).unwrap_or_else(|| panic!("{l:#}"));
    assert_eq!(server["protocol"], "udp", "{l:#}");
    assert_eq!(
        server.get("maybe_client"),
        None,
        "its bind() was seen: {l:#}"
    );
    let sent_from = entry(&client.report["local"]).unwrap_or_else(|| panic!("{l:#}"));
    assert_eq!(sent_from["maybe_client"], true, "{l:#}");
    let text = String::from_utf8_lossy(&check(&["--listening"]).stdout).into_owned();
    assert!(text.contains("perhaps a client's port"), "{text}");
    client.release();
    drop(tracer);
    let l: Value =
        serde_json::from_slice(&check(&["--listening", "--output", "json"]).stdout).unwrap();
    assert_eq!(l["proposed_reserved_ports"], "8620,8622", "{l:#}");
    let l: Value = serde_json::from_slice(
        &check(&["--listening", "--protocol", "tcp", "--output", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(l["proposed_reserved_ports"], "8620", "{l:#}");
    udp.release();
    holder.release();
}

/// A TIME-WAIT's SO_REUSEADDR cannot be read from outside the kernel: a SO_REUSEADDR bind over
/// one MAY fail (exit 0, `may_fail`), which is what the kernel then decides by that unreadable
/// option (here set: the bind succeeds); without SO_REUSEADDR it certainly fails (exit 1).
#[test]
fn check_port_says_may_fail_when_it_hangs_on_a_time_waits_options() {
    if !can_run("check_port_time_wait") {
        return;
    }
    let ns = Netns::new();
    ns.run_case("helper_time_wait", &["8630", "1"]);
    // Without a watch's history (another test's watch may be running and have seen it made).
    let check = |args: &[&str]| {
        ns.check_port(&[&["8630", "--addr", "127.0.0.1", "--no-history"], args].concat())
    };
    let maybe = check(&["--reuseaddr"]);
    let text = String::from_utf8_lossy(&maybe.stdout);
    assert_eq!(maybe.status.code(), Some(0), "{text}");
    assert!(text.contains("MAY FAIL"), "{text}");
    assert!(text.contains("TIME_WAIT"), "{text}");
    let v: Value =
        serde_json::from_slice(&check(&["--reuseaddr", "--output", "json"]).stdout).unwrap();
    assert_eq!(v["would_fail"], false, "{v:#}");
    assert_eq!(v["may_fail"], true, "{v:#}");
    let blocked = check(&[]);
    let text = String::from_utf8_lossy(&blocked.stdout);
    assert_eq!(blocked.status.code(), Some(1), "{text}");
    assert!(text.contains("would FAIL"), "{text}");
    // What the kernel says: the TIME-WAIT had SO_REUSEADDR, so a SO_REUSEADDR bind succeeds.
    let truth = ns.run_case("case_bind_reuseaddr", &["8630"]);
    assert_eq!(truth["errno"], 0, "{truth}");
}

/// A service that binds its socket to a device (`--addr 0.0.0.0%IFACE`): a listener bound to
/// another device leaves it the port, one bound to the same device does not, and an unbound bind
/// meets both — each verdict against the kernel's own answer to the same bind.
#[test]
fn check_port_answers_for_a_socket_bound_to_a_device() {
    if !can_run("check_port_device") {
        return;
    }
    let ns = Netns::new();
    let listener = ns.hold_case("helper_listen_on_device", &["8644", "lo"]);
    for (addr, dev, fails) in [
        ("0.0.0.0%bt0", Some("bt0"), false),
        ("0.0.0.0%lo", Some("lo"), true),
        ("0.0.0.0", None, true),
    ] {
        let (code, v) = ns.check_port_json(&["8644", "--addr", addr]);
        assert_eq!(v["would_fail"], fails, "{addr}: {v:#}");
        assert_eq!(code, Some(i32::from(fails)), "{addr}: {v:#}");
        if let Some(dev) = dev {
            let truth = ns.run_case("case_bind_on_device", &["8644", dev]);
            assert_eq!(
                truth["errno"],
                if fails { 98 } else { 0 },
                "{addr}: {truth}"
            );
        }
    }
    let (code, v) = ns.check_port_json(&["8644", "--addr", "0.0.0.0%nosuchdev"]);
    assert_eq!((code, &v["error"]), (Some(1), &"ENODEV".into()), "{v:#}");
    listener.release();
}

/// SO_REUSEPORT shares a port within one user only: check-port answers for the user the service
/// runs as (`--user`), not for the one running it.
#[test]
fn check_port_answers_a_reuseport_group_for_the_services_user() {
    if !can_run("check_port_user") {
        return;
    }
    let ns = Netns::new();
    let group = ns.hold_case("helper_listen", &["8623", "0", "1"]);
    let check = |args: &[&str]| ns.check_port_json(&[&["8623", "--reuseport"], args].concat());
    let (code, v) = check(&[]);
    assert_eq!(code, Some(0), "root joins root's group: {v:#}");
    let (code, v) = check(&["--user", "65534"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["cause"], "reuseport_mismatch", "{v:#}");
    group.release();
}

/// With a watch running, check-port takes a TIME-WAIT socket's SO_REUSEADDR from its history
/// and answers for certain where it would say MAY FAIL (the seed's JVM, which sets SO_REUSEADDR,
/// against a client's TIME-WAIT): each verdict against the kernel's answer to the same bind.
#[test]
fn check_port_takes_a_time_waits_options_from_a_running_watch() {
    if !can_run("check_port_watch_history") {
        return;
    }
    let ns = Netns::new();
    let tracer = Tracer::start(&["--netns", &format!("/run/netns/{}", ns.name)]);
    let without = ns.run_case("helper_time_wait", &["8632", "0"]);
    ns.run_case("helper_time_wait", &["8634", "1"]);
    let verdict = |port: &str| ns.check_port_json(&[port, "--addr", "127.0.0.1", "--reuseaddr"]);
    let (code, v) = verdict("8632");
    assert_eq!(code, Some(1), "the client had no SO_REUSEADDR: {v:#}");
    assert_eq!(v["would_fail"], true, "{v:#}");
    assert_eq!(v["may_fail"], false, "{v:#}");
    assert_eq!(v["cause"], "time_wait_conflict", "{v:#}");
    let h = &v["holders"][0];
    assert_eq!(h["state"], "TIME_WAIT", "{v:#}");
    assert_eq!(h["reuseaddr"], false, "{v:#}");
    assert_eq!(h["pid"], without["pid"], "names who opened it: {v:#}");
    let (code, v) = verdict("8634");
    assert_eq!(code, Some(0), "the client had SO_REUSEADDR: {v:#}");
    assert_eq!(v["would_fail"], false, "{v:#}");
    assert_eq!(v["may_fail"], false, "{v:#}");
    // What the kernel says of the same binds.
    let truth = ns.run_case("case_bind_reuseaddr", &["8632"]);
    assert_eq!(truth["errno"], 98, "{truth}");
    let truth = ns.run_case("case_bind_reuseaddr", &["8634"]);
    assert_eq!(truth["errno"], 0, "{truth}");
    tracer.stop();
}

/// Refusals before any port rule: check-port's answer for each address matches the kernel's own
/// answer to the same bind (the workload's), and an IPv6 wildcard's IPV6_V6ONLY decides whether
/// an IPv4 listener blocks it. A port below the threshold fails for a process without
/// CAP_NET_BIND_SERVICE, and only gets a note for one with it.
#[test]
fn check_port_answers_address_and_privilege_refusals_as_the_kernel_does() {
    if !can_run("check_port_refusals") {
        return;
    }
    let ns = Netns::new();
    // A watch of the namespace: the workload's refusals are reported, check-port's probes not.
    let tracer = Tracer::start(&["--netns", &format!("/run/netns/{}", ns.name)]);
    let truth = ns.run_case("case_address_checks", &["8640"]);
    let verdict = |args: &[&str]| ns.check_port_json(args);
    for (kind, args, error, cause) in [
        (
            "link_local",
            &["8640", "--addr", "fe80::1"][..],
            "EINVAL",
            "link_local_without_interface",
        ),
        (
            "mapped",
            &["8641", "--addr", "::ffff:127.0.0.1", "--v6only"],
            "EINVAL",
            "mapped_address_on_v6only",
        ),
        (
            "multicast",
            &["8642", "--addr", "ff05::1"],
            "EINVAL",
            "multicast_address",
        ),
    ] {
        assert_eq!(
            truth[kind], 22,
            "the kernel refuses {kind} with EINVAL: {truth}"
        );
        let (code, v) = verdict(args);
        assert_eq!(code, Some(1), "{kind}: {v:#}");
        assert_eq!(v["would_fail"], true, "{kind}: {v:#}");
        assert_eq!(v["error"], error, "{kind}: {v:#}");
        assert_eq!(v["cause"], cause, "{kind}: {v:#}");
    }
    let (code, v) = verdict(&["8643", "--addr", "fe80::1%bt-nosuch"]);
    assert_eq!((code, &v["error"]), (Some(1), &json!("ENODEV")), "{v:#}");
    let (code, v) = verdict(&["8644", "--addr", "192.0.2.77"]);
    assert_eq!(
        (code, &v["error"]),
        (Some(1), &json!("EADDRNOTAVAIL")),
        "{v:#}"
    );
    assert_eq!(v["cause"], "address_not_local", "{v:#}");
    // Addresses the namespace has, and the loopback net's others, are free.
    for addr in ["127.0.0.1", "127.0.0.2", "::1"] {
        let (code, v) = verdict(&["8645", "--addr", addr]);
        assert_eq!(code, Some(0), "{addr}: {v:#}");
    }

    // [::] over an IPv4 listener: blocked without IPV6_V6ONLY, free with it.
    let holder = ns.hold_case("helper_listen", &["8646", "0"]);
    let (code, v) = verdict(&["8646", "--addr", "::"]);
    assert_eq!(
        (code, &v["cause"]),
        (Some(1), &json!("dual_stack_conflict")),
        "{v:#}"
    );
    let (code, v) = verdict(&["8646", "--addr", "::", "--v6only"]);
    assert_eq!(code, Some(0), "{v:#}");
    holder.release();

    assert_privileged_port_answers(&ns);
    // No answer (a namespace that cannot be entered) is not "blocked": exit 2, not 1.
    let out = ns.check_port(&["8649", "--netns", "4026539999"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A namespace given by its `ip netns` name.
    let out = ns.check_port(&["8649", "--netns", &ns.name]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    assert_probes_unreported(&tracer, &ns, &truth);
    tracer.stop();
}

/// Port 80 as the kernel answers it: refused without CAP_NET_BIND_SERVICE, to check-port itself
/// or to the user given with --user.
fn assert_privileged_port_answers(ns: &Netns) {
    let verdict = |args: &[&str]| ns.check_port_json(args);
    // Port 80 without CAP_NET_BIND_SERVICE (dropped from the bounding set, so root's exec of
    // check-port does not get it) is refused; with it, free.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "setpriv",
            "--bounding-set=-net_bind_service",
        ])
        .args([
            env!("CARGO_BIN_EXE_bindtrace"),
            "check-port",
            "80",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["error"], "EACCES", "{v:#}");
    assert_eq!(v["cause"], "privileged_port", "{v:#}");
    let (code, v) = verdict(&["80"]);
    assert_eq!(code, Some(0), "{v:#}");
    // For the service's user (--user): nobody is refused port 80, as the kernel refuses it;
    // given CAP_NET_BIND_SERVICE (which check-port cannot see), it may bind it.
    let real = ns.run_case_as("case_eacces", &["80"], Some(()));
    assert_eq!(
        (&real["errno"], &real["uid"]),
        (&json!(13), &json!(65534)),
        "{real}"
    );
    let (code, v) = verdict(&["80", "--user", "65534"]);
    assert_eq!((code, &v["error"]), (Some(1), &json!("EACCES")), "{v:#}");
    assert!(
        v["note"]
            .as_str()
            .is_some_and(|n| n.contains("--cap-net-bind-service")),
        "{v:#}"
    );
    let (code, v) = verdict(&["80", "--user", "65534", "--cap-net-bind-service"]);
    assert_eq!(code, Some(0), "{v:#}");
    let (code, v) = verdict(&["80", "--user", "root"]);
    assert_eq!(code, Some(0), "{v:#}");
}

/// The workload's refusals (`truth`) were reported, and a failure after every check-port run
/// before this, but none of check-port's probes.
fn assert_probes_unreported(tracer: &Tracer, ns: &Netns, truth: &Value) {
    tracer.wait_for("the workload's refusals", |e| {
        e["pid"] == truth["pid"] && e["event"] == "bind_failure" && e["errno"] == 22
    });
    let holder = ns.hold_case("helper_listen", &["8648", "0"]);
    let last = ns.run_case("case_bind_reuseaddr", &["8648"]);
    assert_eq!(last["errno"], 98, "{last}");
    tracer.wait_for("the last failure", |e| {
        e["pid"] == last["pid"] && e["event"] == "bind_failure"
    });
    holder.release();
    // ...and none of check-port's probes.
    let probes: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|e| e["comm"] == "bindtrace" || e["thread"] == "bindtrace-probe")
        .collect();
    assert!(
        probes.is_empty(),
        "check-port's probes reported: {probes:#?}"
    );
}

/// The cgroup-v2 root (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            (right.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
        })
        .min_by_key(|p| p.as_os_str().len())
        .expect("a cgroup2 mount")
}

/// A cgroup tree removed (after its processes exited) on drop.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn make(root: &Path, rel: &str) -> (Self, PathBuf) {
        let mut made = Vec::new();
        let mut p = root.to_path_buf();
        for part in rel.split('/') {
            p.push(part);
            if std::fs::create_dir(&p).is_ok() {
                made.push(p.clone());
            }
        }
        (Self(made), p)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// A fake Kubernetes pod `bt-test-ns/NAME`: its directory in `/var/log/pods` (the kubelet's
/// layout, `NAMESPACE_NAME_UID`) and container `id`'s cgroup under a besteffort pod slice, in a
/// cgroup tree of its own (`TAG-PID`).
struct Pod {
    uid: String,
    dir: PathBuf,
    cgroups: Cgroups,
    leaf: PathBuf,
}

impl Pod {
    fn make(tag: &str, uid_prefix: &str, name: &str, id: &str) -> Self {
        let uid = format!("{uid_prefix}-{:012x}", std::process::id());
        let dir = PathBuf::from(format!("/var/log/pods/bt-test-ns_{name}_{uid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let rel = format!(
            "{tag}-{}/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            std::process::id(),
            uid.replace('-', "_")
        );
        let (cgroups, leaf) = Cgroups::make(&cgroup2_root(), &rel);
        Self {
            uid,
            dir,
            cgroups,
            leaf,
        }
    }

    /// Removes the cgroups (once their processes have exited) and the pod's directory.
    fn remove(self) {
        drop(self.cgroups);
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

#[test]
fn cgroup_filter_and_kubernetes_context() {
    const ID: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
    if !can_run("cgroup") {
        return;
    }
    let pod = Pod::make(
        "bindtrace-test",
        "7a8b9c0d-1e2f-4a3b-8c4d",
        "bt-test-pod",
        ID,
    );
    let (uid, leaf) = (pod.uid.clone(), pod.leaf.clone());
    let pod_cgroup = leaf.parent().unwrap().to_path_buf();

    let ns = Netns::new();
    let wanted = ns.spawn_gated(8630, "");
    std::fs::write(leaf.join("cgroup.procs"), wanted.pid().to_string())
        .expect("joining the cgroup");
    // The pod's cgroup: its subtree (the container) counts.
    let tracer = Tracer::start(&["--cgroup", pod_cgroup.to_str().unwrap()]);
    let other = ns.run_case("case_3_4", &["8631"]);
    let done = wanted.release().expect("the gated workload's final report");
    let ev = tracer.failure(done["pid"].as_u64().unwrap(), 8630);
    assert_eq!(ev["container_id"], ID, "{ev:#}");
    assert_eq!(ev["pod_uid"], uid.as_str());
    assert_eq!(ev["pod_name"], "bt-test-pod");
    assert_eq!(ev["pod_namespace"], "bt-test-ns");
    assert_eq!(ev["host_network"], false, "a private network namespace");
    assert!(
        tracer.events().iter().all(|v| v["pid"] != other["pid"]),
        "--cgroup let a process outside the pod through"
    );
    drop(tracer);
    pod.remove();
}

/// A pod's process connected out from a port, closed first and exited; its TIME-WAIT then
/// blocks a bind by another process of the pod, which also exits at once. Both still carry the
/// pod: the holder's context comes from the cgroup id remembered with it, the failing process's
/// from the one its event carries — not from `/proc`, where neither is any more.
#[test]
fn exited_processes_keep_their_pod_context() {
    const ID: &str = "6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f70";
    if !can_run("cgroup_of_exited_processes") {
        return;
    }
    let pod = Pod::make(
        "bindtrace-test-gone",
        "8b9c0d1e-2f3a-4b5c-8d6e",
        "bt-gone-pod",
        ID,
    );
    let (uid, leaf) = (pod.uid.clone(), pod.leaf.clone());
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let run = ns.hold_case("case_1a_gated", &["8650"]);
    std::fs::write(leaf.join("cgroup.procs"), run.pid().to_string()).expect("joining the cgroup");
    let done = run.release().expect("the workload's report");
    assert_eq!(done["errno"], 98, "{done}");
    let ev = tracer.failure(done["pid"].as_u64().unwrap(), 8650);
    assert_eq!(ev["container_id"], ID, "{ev:#}");
    assert_eq!(ev["pod_name"], "bt-gone-pod", "{ev:#}");
    let h = ev["holders"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["pid"] == done["holder_pid"]))
        .unwrap_or_else(|| panic!("the exited helper is not named: {ev:#}"));
    assert_eq!(h["state"], "TIME_WAIT", "{ev:#}");
    assert_eq!(h["owner_alive"], false, "{ev:#}");
    assert_eq!(h["container_id"], ID, "{ev:#}");
    assert_eq!(h["pod_uid"], uid.as_str(), "{ev:#}");
    assert_eq!(h["pod_namespace"], "bt-test-ns", "{ev:#}");
    pod.remove();
}

#[test]
fn netns_filter_keeps_only_that_namespace() {
    if !can_run("netns_filter") {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    let tracer = Tracer::start(&["--netns", &format!("/run/netns/{}", a.name)]);
    let in_b = b.run_case("case_3_4", &["8640"]);
    let in_a = a.run_case("case_3_4", &["8641"]);
    let ev = tracer.failure(in_a["pid"].as_u64().unwrap(), 8641);
    assert_eq!(ev["netns"], a.inode());
    assert!(
        tracer.events().iter().all(|v| v["pid"] != in_b["pid"]),
        "--netns let another namespace through"
    );
}

/// The rotated log files of the rotation test: private, within their size, whole JSON lines,
/// every failure of `pids` (18) in them, and the run's stop with its totals.
fn check_log_files(files: &[PathBuf], pids: &[Value]) {
    let mut logged = 0;
    let mut stops = Vec::new();
    for f in files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{} is created mode 0640", f.display());
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.len() <= 8192,
            "{} stays under --log-max-size",
            f.display()
        );
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("whole JSON lines");
            if pids.contains(&v["pid"]) {
                logged += 1;
            }
            if v["event"] == "watch_stopped" {
                stops.push(v);
            }
        }
    }
    assert_eq!(logged, 18, "every reported event is in the log");
    // The run's stop says what it logged, across the rotated files.
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["failures"], 18, "{stops:?}");
}

/// Starts `bindtrace watch` limited to `ns`, stdout piped, and returns once it is attached.
fn watch_in(ns: &Netns, dir: &Path) -> std::process::Child {
    watch_in_with(ns, dir, false, &[])
}

/// `watch_in` with `extra` arguments, started with SIGHUP ignored (as `nohup` starts it) if
/// `nohup`.
fn watch_in_with(ns: &Netns, dir: &Path, nohup: bool, extra: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    let ready = dir.join("ready");
    let mut cmd = bindtrace();
    cmd.args(["watch", "--backend", &common::backend(), "--netns"])
        .arg(format!("/run/netns/{}", ns.name))
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if nohup {
        // SAFETY: signal(2) between fork and exec, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    for _ in 0..3000 {
        if ready.exists() {
            return child;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "bindtrace exited before attaching"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("bindtrace did not attach");
}

/// SIGHUP (the terminal of a dropped ssh session) stops a watch as SIGTERM does, with its
/// summary; ignored, as `nohup` leaves it, it is kept ignored and the watch goes on.
#[test]
fn sighup_stops_watch_cleanly_unless_ignored() {
    if !can_run("sighup") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("sighup");
    let mut child = watch_in_with(&ns, &dir, false, &[]);
    signal(&child, libc::SIGHUP);
    let status = exited(&mut child, "after SIGHUP");
    let err = stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("failure(s) reported"), "no summary: {err}");

    let dir = tempdir("sighup-ignored");
    let mut child = watch_in_with(&ns, &dir, true, &[]);
    signal(&child, libc::SIGHUP);
    // Not a timing claim: a watch that took the signal would be gone well within this.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let running = child.try_wait().unwrap().is_none();
    signal(&child, libc::SIGTERM);
    let status = exited(&mut child, "after SIGTERM");
    assert!(
        running,
        "a watch started under nohup stopped on SIGHUP: {status}"
    );
    assert!(status.success(), "{status}");
}

/// A second SIGINT while the watch stops ends it at once, saying which step it was in: an
/// operator whose stop hangs needs no `kill -9`. A repeat within a second of the first (a wrapper
/// forwarding it while the whole group is signalled) is the same request. The stop here hangs as
/// it would on a stalled output (a terminal paused with Ctrl-S, a hung logger): a storm's
/// failures fill stdout, which nobody reads.
#[test]
fn a_second_sigint_ends_a_stop_at_once() {
    if !can_run("second_sigint") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("second-sigint");
    let mut child = watch_in(&ns, &dir);
    let unread = child.stdout.take().unwrap();
    let mut storm = storm_in(&ns, 8651);
    std::thread::sleep(std::time::Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    // Apart, or the kernel merges the two into one pending signal; within the second.
    std::thread::sleep(std::time::Duration::from_millis(20));
    signal(&child, libc::SIGINT);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let stopping = child.try_wait().unwrap().is_none();
    // Then again, a second apart, until it ends: a busy collector may take the first signal
    // late (seen on an emulated VM), and the repeat is measured from when it took it. Well
    // before the 60 s deadline, which would end it with 1.
    for _ in 0..20 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        signal(&child, libc::SIGINT);
        std::thread::sleep(std::time::Duration::from_millis(1200));
    }
    let status = exited(&mut child, "after repeated SIGINTs");
    drop(unread);
    let _ = storm.kill();
    let _ = storm.wait();
    let err = stderr_of(&mut child);
    if !stopping {
        assert!(
            status.success(),
            "the repeat within a second ended it: {status}: {err}"
        );
        eprintln!("second_sigint: the stop ended within 1.2 s: the later signal not exercised");
        return;
    }
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("a second stop signal (the stop was ") && err.contains("exiting without"),
        "{err}"
    );
}

/// A failure storm that does not end (a crash-looping service): failing binds of `port` as fast
/// as one process can, in `ns`; returns once it has begun.
fn storm_in(ns: &Netns, port: u16) -> std::process::Child {
    let mut storm = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg(format!(
            "import socket\n\
             h = socket.socket(); h.bind(('127.0.0.1', {port})); h.listen()\n\
             s = socket.socket()\n\
             print('storming', flush=True)\n\
             while True:\n\
             \x20   try: s.bind(('127.0.0.1', {port}))\n\
             \x20   except OSError: pass\n"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 9];
    storm
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    storm
}

/// Sends `sig` to `child` (bindtrace, or a shell that exec'd it: the same pid).
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// All `child` wrote to its stderr (piped), once it has exited.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Waits for `child` to exit; panics if it has not after a minute (a hang, not a timing claim).
fn exited(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    for _ in 0..3000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("bindtrace did not exit {what}");
}

/// `bindtrace watch | head -1` on a quiet host: once the reader has gone, the tracer stops by
/// itself (nothing is written that could fail) and exits 0.
#[test]
fn watch_stops_when_its_reader_goes_away() {
    if !can_run("reader_gone") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("reader-gone");
    let mut child = watch_in(&ns, &dir);
    drop(child.stdout.take());
    let status = exited(&mut child, "after its reader went away");
    let err = stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
}

/// With a log file the terminal is not the only output: a daemon whose stdout's reader died (a
/// logger) goes on logging every failure, and stops, with its totals, only when told to.
#[test]
fn watch_with_a_log_file_outlives_its_readers_departure() {
    if !can_run("reader_gone_log") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("reader-gone-log");
    let log = dir.join("events.json");
    let mut child = watch_in_with(&ns, &dir, false, &["--log-file", log.to_str().unwrap()]);
    drop(child.stdout.take());
    // A failure after the reader left: written to the log (and, by trying stdout, noticed).
    let truth = ns.run_case("case_filters", &["8600"]);
    let pid = truth["pid"].as_u64().unwrap();
    let logged = |text: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["pid"] == pid)
            .count()
    };
    let mut text = String::new();
    for _ in 0..3000 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if logged(&text) == 3 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(logged(&text), 3, "the failures are logged: {text}");
    // Still running: the reader's departure ended only the terminal's output.
    assert!(child.try_wait().unwrap().is_none(), "watch stopped");
    signal(&child, libc::SIGTERM);
    let status = exited(&mut child, "after SIGTERM");
    let err = stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("reader went away; still writing to the log file"),
        "{err}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let stop: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(stop["event"], "watch_stopped", "{text}");
    assert_eq!(stop["failures"], 3, "{stop}");
    assert_eq!(stop["events_lost"], 0, "{stop}");
}

/// SIGTERM in a failure storm that does not end (a crash-looping service): the tracer stops
/// reading, accounts for what it saw and exits while the storm still runs, rather than once it
/// ends (`systemctl stop` would otherwise wait for its timeout and SIGKILL).
#[test]
fn sigterm_stops_watch_during_a_failure_storm() {
    if !can_run("sigterm_storm") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("sigterm-storm");
    let mut child = watch_in(&ns, &dir);
    let mut out = child.stdout.take().unwrap();
    // Keep reading, as a terminal or journald would.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let mut storm = storm_in(&ns, 8650);
    // Failures queued for their lookup share one handle on their namespace: thousands of them
    // (the queue holds 4 096) stay within a service's file limit (systemd's soft 1 024).
    let mut most_fds = 0;
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id())).map_or(0, Iterator::count);
        most_fds = most_fds.max(fds);
    }
    signal(&child, libc::SIGTERM);
    let status = exited(&mut child, "after SIGTERM while the storm went on");
    let storm_running = storm.try_wait().unwrap().is_none();
    let _ = storm.kill();
    let _ = storm.wait();
    let err = stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(storm_running, "the storm ended by itself");
    assert!(most_fds < 256, "{most_fds} descriptors open in the storm");
    let summary = err
        .lines()
        .find(|l| l.contains("failure(s) reported"))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    let count = |label: &str| -> u64 {
        summary
            .split(", ")
            .find_map(|p| p.trim_start_matches("bindtrace: ").strip_suffix(label))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {summary:?}"))
    };
    assert!(
        count("failure(s) reported") + count("event(s) lost") > 0,
        "saw the storm: {summary}"
    );
}

/// `--netns` keeps the namespace it watches: once its last process has gone the namespace stays
/// (the watch holds it open), so its inode, which the kernel filter matches, is not handed to
/// a new namespace whose calls would then be reported as the watched one's.
#[test]
fn a_watched_namespace_is_held_after_its_last_process_exits() {
    use std::os::unix::fs::MetadataExt as _;
    if !can_run("netns_held") {
        return;
    }
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .unwrap();
    let path = format!("/proc/{}/ns/net", holder.id());
    let mut inode = 0;
    for _ in 0..500 {
        // unshare has moved into the new namespace once its inode differs from ours.
        let own = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        inode = std::fs::metadata(&path).map_or(0, |m| m.ino());
        if inode != 0 && inode != own {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let tracer = Tracer::start(&["--netns", &path]);
    let _ = holder.kill();
    let _ = holder.wait();
    let pid = tracer.pid();
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| l.to_string_lossy() == format!("net:[{inode}]"));
    assert!(held, "the watch does not hold namespace {inode} open");
    tracer.stop();
}

/// A SIGINT sent the moment the ready file appears stops the watch, even when SIGINT came in
/// ignored (a background job of a script): the handler is in place before the file is written.
/// (It once was not, and a watch in the VM tier ran on for nobody.)
#[test]
fn a_sigint_at_once_after_ready_stops_watch_even_if_it_came_in_ignored() {
    if !can_run("sigint_after_ready") {
        return;
    }
    let ns = Netns::new();
    let dir = tempdir("sigint-after-ready");
    let ready = dir.join("ready");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' INT; exec {} watch --backend {} --netns /run/netns/{} --ready-file {}",
            env!("CARGO_BIN_EXE_bindtrace"),
            common::backend(),
            ns.name,
            ready.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..60_000 {
        if ready.exists() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(ready.exists(), "bindtrace did not attach");
    signal(&child, libc::SIGINT);
    let status = exited(&mut child, "after SIGINT sent as it became ready");
    assert!(status.success(), "{status}");
}

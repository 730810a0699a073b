//! The packaging files agree with each other and parse: the systemd unit and the DaemonSet grant
//! the same capabilities (the set `cargo xtask test` proves sufficient by running the kernel
//! tests with only the unit's), the DaemonSet is valid YAML with the mounts bindtrace reads, and
//! the container build copies the binary. No root needed.

use std::{collections::BTreeSet, path::Path};

use yaml_rust2::{Yaml, YamlLoader};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn unit_caps() -> BTreeSet<String> {
    let unit = read("packaging/bindtrace.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit names its capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect()
}

fn daemonset() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml is valid YAML");
    docs.into_iter().next().expect("one document")
}

#[test]
fn unit_and_daemonset_grant_the_same_capabilities() {
    let ds = daemonset();
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let sc = &c["securityContext"];
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_vec()
        .expect("capabilities.add")
        .iter()
        .map(|y| y.as_str().expect("a capability name").to_string())
        .collect();
    let dropped: Vec<&str> = sc["capabilities"]["drop"]
        .as_vec()
        .expect("capabilities.drop")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "everything else is dropped");
    assert_eq!(
        added,
        unit_caps(),
        "the DaemonSet and the systemd unit must grant the same set"
    );
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
}

#[test]
fn daemonset_mounts_what_bindtrace_reads() {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "owners of sockets live in the host's pids"
    );
    let mounts: BTreeSet<&str> = spec["containers"][0]["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for needed in [
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/sys/kernel/tracing",
        "/var/log/bindtrace",
    ] {
        assert!(mounts.contains(needed), "{needed} is mounted: {mounts:?}");
    }
    let args: Vec<&str> = spec["containers"][0]["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[0], "watch");
    assert!(args.iter().any(|a| a.starts_with("--log-file=")));
}

#[test]
fn unit_runs_watch_with_a_log_and_local_metrics() {
    let unit = read("packaging/bindtrace.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains(" watch "), "{exec}");
    assert!(exec.contains("--log-file /var/log/bindtrace/"), "{exec}");
    assert!(
        exec.contains("--metrics-addr 127.0.0.1:"),
        "metrics stay on loopback: {exec}"
    );
    assert!(unit.contains("NoNewPrivileges=yes"));
    assert!(
        unit.contains("UMask=0027"),
        "log files are not world-readable"
    );
}

#[test]
fn container_build_copies_the_binary() {
    let docker = read("packaging/Dockerfile");
    assert!(docker.lines().any(|l| l.starts_with("FROM ")));
    assert!(docker.contains("COPY bindtrace /usr/local/bin/bindtrace"));
}

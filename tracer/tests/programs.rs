//! Root-only kernel tests with real programs bindtrace knows nothing about: a JVM server (which
//! binds dual-stack `[::]` sockets) and curl (`--local-port`). Skipped, with the reason, where the
//! program is not installed.

mod common;

use std::process::Command;

use common::{Netns, Tracer, can_run};

fn have(program: &str, test: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP {test}: `{program}` is not installed");
    }
    ok
}

const JAVA_SERVER: &str = r#"
import java.net.*;
public class Srv {
  public static void main(String[] a) throws Exception {
    try (ServerSocket s = new ServerSocket()) {
      s.setReuseAddress(true);
      s.bind(new InetSocketAddress(Integer.parseInt(a[0])));
      System.out.println("bound");
    } catch (BindException e) { System.out.println("BindException"); }
  }
}
"#;

#[test]
fn jvm_server_blocked_by_an_ipv4_listener() {
    if !can_run("jvm") || !have("javac", "jvm") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bindtrace-jvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Srv.java"), JAVA_SERVER).unwrap();
    let javac = Command::new("javac")
        .arg(dir.join("Srv.java"))
        .output()
        .unwrap();
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );

    let tracer = Tracer::shared();
    let ns = Netns::new();
    let holder = ns.hold_case("helper_listen", &["8280", "0"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "java", "-cp"])
        .arg(&dir)
        .args(["Srv", "8280"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "BindException");
    let ev = tracer.wait_for("java's failure", |v| {
        v["comm"] == "java" && v["port"] == 8280
    });
    // The JVM binds an IPv6 wildcard socket that also covers IPv4.
    assert_eq!(ev["family"], "ipv6", "{ev:#}");
    assert_eq!(ev["addr"], "::");
    assert_eq!(ev["reuseaddr"], true, "setReuseAddress(true): {ev:#}");
    assert_eq!(ev["cause"], "dual_stack_conflict", "{ev:#}");
    let h = &ev["holders"][0];
    assert_eq!(h["pid"], holder.report["pid"], "{ev:#}");
    assert_eq!(h["state"], "LISTEN");
    assert_eq!(h["local"], "0.0.0.0:8280");
    holder.release();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn curl_local_port_taken_by_a_listener() {
    if !can_run("curl") || !have("curl", "curl") {
        return;
    }
    let tracer = Tracer::shared();
    let ns = Netns::new();
    let holder = ns.hold_case("helper_listen", &["8282", "1"]);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-s",
            "--local-port",
            "8282",
        ])
        .arg("http://127.0.0.1:8282/")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(45),
        "curl: couldn't bind the local port"
    );
    let ev = tracer.wait_for("curl's failure", |v| {
        v["comm"] == "curl" && v["port"] == 8282
    });
    assert_eq!(ev["cause"], "listener_conflict", "{ev:#}");
    assert_eq!(ev["holders"][0]["pid"], holder.report["pid"], "{ev:#}");
    assert_eq!(ev["holders"][0]["reuseaddr"], true);
    holder.release();
}

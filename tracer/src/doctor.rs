//! `bindtrace doctor`: what this kernel offers, and which backend `auto` would choose and why.
//!
//! Every answer comes from asking the kernel, not from its version number: each backend is
//! really loaded and attached (then detached), and each one that attaches is given a live
//! self-test — a bind() with SO_REUSEADDR and SO_REUSEPORT set, by this process, which the backend
//! must report with those options.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tracer_common::{Config, EventKind, flags, names};

use crate::{
    backend::{self, Kernel, kprobes_available},
    event::{self, BackendName},
    host,
    output::OutputFormat,
};

#[derive(Serialize)]
struct Row {
    capability: &'static str,
    available: bool,
    detail: String,
}

#[derive(Serialize)]
struct BackendProbe {
    backend: BackendName,
    attached: bool,
    /// Why not, or what works in a degraded way.
    detail: String,
    /// The live bind() self-test: seen with the right options.
    self_test: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    capabilities: Vec<Row>,
    backends: Vec<BackendProbe>,
    /// What `--backend auto` picks (the first backend that attached and passed its self-test).
    auto: Option<BackendName>,
    reason: String,
}

fn uname() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn lockdown() -> (bool, String) {
    match host::lockdown_mode() {
        Some(mode) => {
            let ok = !host::lockdown_refuses_reads(&mode);
            let note = if ok {
                "bpf_probe_read_kernel allowed"
            } else {
                "kernel memory reads are refused: no backend can read sockets"
            };
            (ok, format!("{mode} ({note})"))
        }
        None => (
            true,
            "mode not readable (securityfs is not mounted: mount -t securityfs none \
             /sys/kernel/security); assumed not to refuse kernel reads, which the backends' \
             self-tests below confirm or not"
                .to_string(),
        ),
    }
}

/// Binds a socket with both reuse options and looks for the backend's report of it.
fn self_test(ring: &mut RingBuf<MapData>) -> Result<bool> {
    let sock = bind_with_reuse_options()?;
    let mut seen = false;
    while let Some(item) = ring.next() {
        if let Ok((EventKind::Success, raw)) = event::decode(&item) {
            let want = flags::SOCKOPTS_KNOWN | flags::REUSEADDR | flags::REUSEPORT;
            seen |= raw.pid == std::process::id()
                && raw.flags & want == want
                && raw.addr[..4] == [127, 0, 0, 1];
        }
    }
    drop(sock);
    Ok(seen)
}

/// A TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to 127.0.0.1 on any port.
fn bind_with_reuse_options() -> Result<TcpListener> {
    // SAFETY: plain socket calls on a descriptor owned by the returned listener.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let l = <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            );
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            l.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(l)
    }
}

fn capabilities(kernel: &Kernel, kernel_btf: Option<&std::path::Path>) -> Vec<Row> {
    let detail = |r: &Result<std::path::PathBuf, String>| match r {
        Ok(p) => p.display().to_string(),
        Err(e) => e.clone(),
    };
    let tp_btf = backend::probe_tp_btf(kernel);
    let (lock_ok, lock) = lockdown();
    vec![
        Row {
            capability: "BTF",
            available: kernel.btf.is_some(),
            detail: kernel.btf_error.clone().unwrap_or_else(|| {
                kernel_btf.map_or_else(
                    || crate::btf::SYSFS_VMLINUX.to_string(),
                    |p| p.display().to_string(),
                )
            }),
        },
        Row {
            capability: "tracefs",
            available: kernel.tracefs.is_ok(),
            detail: detail(&kernel.tracefs),
        },
        Row {
            capability: "kprobes",
            available: kprobes_available(kernel).is_ok(),
            detail: kprobes_available(kernel)
                .err()
                .unwrap_or_else(|| "kprobe PMU".into()),
        },
        Row {
            capability: "syscall tracepoints",
            available: kernel.tp.sys_ret.known(),
            detail: "syscalls:sys_{enter,exit}_{bind,listen,connect}".into(),
        },
        Row {
            capability: "sock:inet_sock_set_state",
            available: kernel.tp.ss_skaddr.known(),
            detail: "owners of outgoing connections (TIME-WAIT holders)".into(),
        },
        Row {
            capability: "cgroup v2",
            available: kernel.cgroup2.is_ok(),
            detail: detail(&kernel.cgroup2),
        },
        Row {
            capability: "tp_btf",
            available: tp_btf.is_ok(),
            detail: tp_btf
                .err()
                .map_or_else(|| "loads".into(), |e| format!("{e:#}")),
        },
        Row {
            capability: "lockdown",
            available: lock_ok,
            detail: lock,
        },
    ]
}

/// Loads and attaches each backend for real, and self-tests the ones that attach. Returns the
/// probes, whether the object (with its ring buffer) loaded, and whether the tracepoint
/// backend's cgroup hooks read the reuse options.
fn probe_backends(kernel: &Kernel) -> (Vec<BackendProbe>, Option<bool>, Option<bool>) {
    let mut backends = Vec::new();
    let mut ringbuf = None;
    let mut getsockopt = None;
    let config = Config {
        kernel: kernel.offsets,
        tp: kernel.tp,
        tp_direct: u8::from(crate::tracefs::matches_fixed_layout(&kernel.tp)),
        filter_pid: std::process::id(),
        report_success: 1,
        ..Config::default()
    };
    for &b in backend::BackendChoice::Auto.candidates() {
        match backend::attach(b, kernel, &config, 1024, None) {
            Ok((mut ebpf, notes)) => {
                ringbuf = Some(true);
                let test = ebpf
                    .take_map(names::EVENTS)
                    .and_then(|m| RingBuf::try_from(m).ok())
                    .map(|mut r| self_test(&mut r).unwrap_or(false));
                if b == BackendName::Tracepoint {
                    getsockopt = test;
                }
                backends.push(BackendProbe {
                    backend: b,
                    attached: true,
                    detail: if notes.is_empty() {
                        "attached".into()
                    } else {
                        notes.join("; ")
                    },
                    self_test: test,
                });
            }
            Err(e) => {
                let e = format!("{e:#}");
                if ringbuf.is_none() && e.contains("loading bindtrace's eBPF object") {
                    ringbuf = Some(false);
                }
                backends.push(BackendProbe {
                    backend: b,
                    attached: false,
                    detail: e,
                    self_test: None,
                });
            }
        }
    }
    (backends, ringbuf, getsockopt)
}

pub fn run(kernel_btf: Option<&std::path::Path>, output: OutputFormat) -> Result<bool> {
    host::require_privileges(false)?;
    let kernel = Kernel::probe(kernel_btf)?;
    let mut caps = capabilities(&kernel, kernel_btf);
    let (backends, ringbuf, getsockopt) = probe_backends(&kernel);
    caps.push(Row {
        capability: "ring buffer",
        available: ringbuf == Some(true),
        detail: match ringbuf {
            Some(true) => "BPF_MAP_TYPE_RINGBUF created".into(),
            Some(false) => "the object did not load (ring buffers need 5.8)".into(),
            None => "not probed".into(),
        },
    });
    caps.push(Row {
        capability: "bpf_getsockopt SO_REUSEADDR/SO_REUSEPORT",
        available: getsockopt == Some(true),
        detail: match getsockopt {
            Some(true) => "read in cgroup bind hooks (self-test)".into(),
            Some(false) => "not readable in cgroup bind hooks (needs 6.1): the tracepoint \
                            backend reports options as unknown"
                .into(),
            None => "not probed (the tracepoint backend did not attach)".into(),
        },
    });
    let chosen = backends
        .iter()
        .find(|b| b.attached && b.self_test != Some(false))
        .map(|b| b.backend);
    let reason = backends
        .iter()
        .take_while(|b| Some(b.backend) != chosen)
        .map(|b| format!("{} skipped: {}", b.backend, b.detail))
        .chain(chosen.map(|c| format!("{c} attached and passed its self-test")))
        .collect::<Vec<_>>()
        .join("; ");
    let report = Report {
        kernel: uname(),
        capabilities: caps,
        backends,
        auto: chosen,
        reason,
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    Ok(chosen.is_some())
}

fn print_text(r: &Report) {
    println!("kernel {}", r.kernel);
    println!();
    for c in &r.capabilities {
        println!(
            "  {:<42} {:<4} {}",
            c.capability,
            if c.available { "yes" } else { "no" },
            c.detail
        );
    }
    println!();
    for b in &r.backends {
        let test = match b.self_test {
            Some(true) => ", self-test passed",
            Some(false) => ", SELF-TEST FAILED",
            None => "",
        };
        println!(
            "  backend {:<11} {}{test}: {}",
            b.backend.as_str(),
            if b.attached {
                "attaches"
            } else {
                "unavailable"
            },
            b.detail
        );
    }
    println!();
    match r.auto {
        Some(b) => println!("--backend auto chooses {b}: {}", r.reason),
        None => println!("no backend works on this kernel: {}", r.reason),
    }
}

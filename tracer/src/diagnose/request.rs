//! What the failing caller asked for: from a traced event, or a bind about to be made
//! (`check-port`).

use std::net::{IpAddr, SocketAddr};

use super::EADDRINUSE;
use crate::event::{Event, SyscallName};

/// What the failing caller asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub syscall: SyscallName,
    pub errno: i32,
    pub udp: bool,
    pub addr: IpAddr,
    pub port: u16,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: Option<bool>,
    pub uid: u32,
    pub pid: u32,
    pub bound_dev_if: u32,
    pub remote: Option<SocketAddr>,
    /// When the call failed (the kernel's CLOCK_MONOTONIC), for matching bindtrace's history;
    /// None for a call not yet made (`check-port`).
    pub at_ns: Option<u64>,
    /// The socket was already bound, connected or listening (None: not known).
    pub in_use: Option<bool>,
    /// The calling thread's command ("" for a call not yet made).
    pub comm: String,
}

impl Request {
    /// A bind of `addr`:`port` as a service about to start would make it (for `check-port`):
    /// the call is assumed to fail so that every holder is weighed.
    pub fn bind(addr: IpAddr, port: u16, udp: bool, reuseaddr: bool, reuseport: bool) -> Self {
        Self {
            syscall: SyscallName::Bind,
            errno: EADDRINUSE,
            udp,
            addr,
            port,
            reuseaddr,
            reuseport,
            // Linux's default (net.ipv6.bindv6only = 0).
            v6only: addr.is_ipv6().then_some(false),
            // SAFETY: geteuid has no preconditions.
            uid: unsafe { libc::geteuid() },
            pid: 0,
            bound_dev_if: 0,
            remote: None,
            at_ns: None,
            in_use: None,
            comm: String::new(),
        }
    }

    pub fn from_event(ev: &Event) -> Self {
        let addr = ev.addr.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Self {
            syscall: ev.syscall,
            errno: ev.errno,
            udp: ev.protocol == "udp",
            addr,
            port: ev.port,
            reuseaddr: ev.reuseaddr,
            reuseport: ev.reuseport,
            v6only: ev.v6only,
            uid: ev.uid,
            pid: ev.pid,
            bound_dev_if: ev.bound_dev_if,
            remote: ev
                .remote_addr
                .as_deref()
                .and_then(|a| a.parse().ok())
                .map(|ip| SocketAddr::new(ip, ev.remote_port.unwrap_or(0))),
            at_ns: (ev.ts_ns != 0).then_some(ev.ts_ns),
            in_use: ev.in_use,
            comm: ev.comm.clone(),
        }
    }
}

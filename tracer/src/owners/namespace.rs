//! What a lookup reads in the failing namespace (run there): its port settings, the sockets on a
//! port or range (sock_diag, else `/proc/thread-self/net`), and the names of devices.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tracer_common::{IPPROTO_UDP, tcp_state};

use super::{EADDRNOTAVAIL, EINVAL};
use crate::{
    diagnose::{self, PortContext, Request},
    event::SyscallName,
    sockdiag::{self, DiagSocket},
};

/// What a failure's lookup reads in the failing namespace (run there): its port settings, the
/// sockets on the port (or, for exhaustion, on the whole ephemeral range), and the names of the
/// devices those sockets are bound to.
pub(super) fn look_in_namespace(
    req: &Request,
    protocol: u8,
    exhaustion: bool,
    port_conflict: bool,
) -> (Vec<DiagSocket>, PortContext, Vec<(u32, String)>) {
    let mut ctx = port_context();
    if req.bound_dev_if != 0 {
        ctx.device = if_name(req.bound_dev_if);
    }
    // A bind() refused its address; or a link-local one given no interface, which the interface
    // that has it (if one does) names for the hint.
    let unscoped = req.errno == EINVAL && diagnose::needs_scope_addr(req.addr);
    if (req.errno == EADDRNOTAVAIL || unscoped) && req.syscall == SyscallName::Bind {
        ctx.address = crate::addresses::state_of(req.addr);
    }
    let (lo, hi) = if exhaustion {
        ctx.range.unwrap_or((32768, 60999))
    } else {
        (req.port, req.port)
    };
    let socks = if port_conflict || exhaustion {
        sockets(protocol, lo, hi)
    } else {
        Vec::new()
    };
    let devices: Vec<(u32, String)> = socks
        .iter()
        .map(|s| s.bound_dev_if)
        .filter(|&i| i != 0)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .filter_map(|i| if_name(i).map(|n| (i, n)))
        .collect();
    (socks, ctx, devices)
}

/// The port settings of the calling thread's namespace: `ip_local_port_range`,
/// `ip_local_reserved_ports`, `ip_unprivileged_port_start`, `tcp_tw_reuse`.
pub(super) fn port_context() -> PortContext {
    let read = |name: &str| fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    PortContext {
        range: read("ip_local_port_range").and_then(|s| diagnose::parse_range(&s)),
        reserved: read("ip_local_reserved_ports")
            .map(|s| diagnose::parse_reserved(&s))
            .unwrap_or_default(),
        ports_in_use: None,
        device: None,
        address: None,
        unprivileged_start: unprivileged_port_start(),
        tw_reuse: read("tcp_tw_reuse").and_then(|s| s.trim().parse().ok()),
        users: None,
    }
}

/// The calling thread's namespace's `net.ipv4.ip_unprivileged_port_start`.
pub fn unprivileged_port_start() -> Option<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The name of interface `index` in the calling thread's namespace.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the name is NUL-terminated within `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Sockets of `protocol` on ports `lo..=hi` in the calling thread's namespace, both families.
/// Falls back to `/proc/thread-self/net/*` when sock_diag is unavailable (e.g. no `udp_diag`).
pub(super) fn sockets(protocol: u8, lo: u16, hi: u16) -> Vec<DiagSocket> {
    let mut out = Vec::new();
    for (family, file) in [(libc::AF_INET, ""), (libc::AF_INET6, "6")] {
        match sockdiag::dump(protocol, family as u8, lo, hi) {
            Ok(v) => out.extend(v),
            Err(e) => {
                log::debug!("sock_diag {protocol}/{family}: {e}; reading /proc instead");
                let name = if protocol == IPPROTO_UDP as u8 {
                    "udp"
                } else {
                    "tcp"
                };
                let path = format!("/proc/thread-self/net/{name}{file}");
                if let Ok(text) = fs::read_to_string(path) {
                    out.extend(
                        parse_proc_net(&text, protocol)
                            .into_iter()
                            .filter(|s| (lo..=hi).contains(&s.local.port())),
                    );
                }
            }
        }
    }
    out
}

fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/{tcp,udp}{,6}` (`sl local rem st ... uid timeout inode`).
pub fn parse_proc_net(text: &str, protocol: u8) -> Vec<DiagSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            Some(DiagSocket {
                protocol,
                state: u8::from_str_radix(f[3], 16).unwrap_or(tcp_state::CLOSE),
                local: hex_addr(f[1])?,
                remote: hex_addr(f[2])?,
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
                bound_dev_if: 0,
                v6only: None,
                expires_ms: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_and_tcp6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:18EB 06 00000000:00000000 03:00001771 00000000     0        0 0 3 0000000000000000";
        let s = parse_proc_net(v4, 6);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((s[0].state, s[0].inode), (tcp_state::LISTEN, 31337));
        assert_eq!(s[1].remote, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(s[1].state, tcp_state::TIME_WAIT);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1 0000000000000000 100 0 0 10 0";
        let s = parse_proc_net(v6, 6);
        assert_eq!(s[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(s[0].uid, 1000);
        assert!(parse_proc_net("header\ngarbage line\n", 6).is_empty());
    }
}

//! The hint when no socket holds the port: an exhausted ephemeral range, a privileged or
//! refused port, an address the namespace lacks or the kernel's checks refuse, a missing device.

use std::{fmt::Write as _, net::IpAddr};

use super::{
    AddressNow, Cause, EADDRINUSE, PortContext, PortUsers, Request, State, canonical,
    needs_scope_addr,
    phrases::{TUPLE_FIX, reserve_fix},
};
use crate::event::SyscallName;

pub(super) fn hint_without_holder(cause: Cause, req: &Request, ctx: &PortContext) -> String {
    let port = req.port;
    match cause {
        Cause::EphemeralExhausted => exhausted_hint(req, ctx),
        Cause::RefusedBySecurityModule => format!(
            "port {port} is not below net.ipv4.ip_unprivileged_port_start ({} in this namespace), \
             so a security module refused the bind: SELinux (`ausearch -m avc -ts recent`; allow \
             the port for the service's type with `semanage port -a -t <type> -p tcp {port}`) or \
             AppArmor (its denial is in the audit log)",
            ctx.unprivileged_start.unwrap_or(1024)
        ),
        Cause::PrivilegedPort => {
            let start = ctx.unprivileged_start.map_or_else(
                || "net.ipv4.ip_unprivileged_port_start".to_string(),
                |n| format!("net.ipv4.ip_unprivileged_port_start ({n} in this namespace)"),
            );
            format!(
                "port {port} is below {start}: run with CAP_NET_BIND_SERVICE (systemd: \
                 AmbientCapabilities=CAP_NET_BIND_SERVICE; setcap cap_net_bind_service=+ep on \
                 the binary), use a port of {} or more, or lower the sysctl (a container's own \
                 namespace often sets it to 0)",
                ctx.unprivileged_start.unwrap_or(1024)
            )
        }
        Cause::AddressNotLocal => {
            address_hint(req.addr, ctx.address.as_ref(), ctx.device.as_deref())
        }
        Cause::FourTupleInUse => format!(
            "a connection from {}:{port} to {} already exists (bindtrace found none when it \
             looked: it may have closed since); {TUPLE_FIX}",
            req.addr,
            req.remote
                .map_or_else(|| "?".to_string(), |r| r.to_string())
        ),
        Cause::AlreadyBound => "the socket is already bound, connected or listening: bind() is \
                                called once per socket, before connect() or listen(); use a new \
                                socket for another address"
            .to_string(),
        Cause::LinkLocalWithoutInterface => {
            // The interface that has the address, if one of the namespace's does.
            let dev = match &ctx.address {
                Some(AddressNow::Present(d) | AddressNow::Tentative(d)) => d.as_str(),
                _ => "eth0",
            };
            format!(
                "{} is link-local: it exists once per interface, so the call must name one: give \
                 a scope id ({}%{dev} in most tools, sin6_scope_id in the sockaddr) or bind the \
                 socket to a device first (SO_BINDTODEVICE)",
                req.addr, req.addr
            )
        }
        Cause::MappedAddressOnV6Only => format!(
            "{} is an IPv4-mapped address, and this socket has IPV6_V6ONLY, so it cannot carry \
             IPv4: bind an AF_INET socket to {}, or clear IPV6_V6ONLY (net.ipv6.bindv6only sets \
             its default)",
            req.addr,
            canonical(req.addr)
        ),
        Cause::MulticastAddress => format!(
            "{} is a multicast address, which a TCP socket cannot bind: bind a unicast address \
             (or [::]); multicast is received on UDP sockets",
            req.addr
        ),
        Cause::WrongFamily => "the address's family field is not the socket's (an AF_INET \
                               sockaddr on an AF_INET6 socket, the reverse, or sa_family left \
                               unset): create the socket with the address's family, or fill \
                               in the family"
            .to_string(),
        Cause::RefusedByBpf => "a cgroup BPF program (a bind or post_bind hook) on the \
                                caller's cgroup or one above it refused this bind: in bind() \
                                only they return EPERM, and the port rules were not the matter; \
                                list them with `bpftool cgroup tree`"
            .to_string(),
        Cause::NoSuchDevice => {
            let which = if req.bound_dev_if != 0 {
                format!("interface index {}", req.bound_dev_if)
            } else {
                "the interface".to_string()
            };
            format!(
                "{which} named by the address's scope id (%IFNAME, sin6_scope_id) or by \
                 SO_BINDTODEVICE does not exist in this network namespace: not created yet, \
                 removed, or in another namespace; name an interface `ip link` shows there"
            )
        }
        _ if req.errno != EADDRINUSE => format!(
            "{} from {}() is not a port conflict: bindtrace has no rule for it; see the \
             call's manual page",
            crate::errno::name(req.errno),
            req.syscall.as_str()
        ),
        _ => format!(
            "no socket holding port {port} was found in the failing process's network namespace \
             when it was looked up (it may have closed already; a cgroup post_bind BPF program \
             can also refuse a bind with this error: `bpftool cgroup tree` lists them); {}",
            if ctx.in_ephemeral_range(port) {
                reserve_fix(port, ctx)
            } else {
                "retry, or watch with `--all` to see who binds it".to_string()
            }
        ),
    }
}

/// No ephemeral port was free for `req`: the fix depends on what asked for one.
fn exhausted_hint(req: &Request, ctx: &PortContext) -> String {
    // A TCP connect() needs a port free towards its destination; a UDP socket's port is its own.
    let dest = req
        .remote
        .filter(|_| !req.udp)
        .map(|r| format!(" towards {r}"))
        .unwrap_or_default();
    let all_reserved = reserved_of_range(ctx).is_some_and(|(r, total)| r == total);
    let fix = match req.syscall {
        // Nothing in use explains it: the kernel has no port it may choose.
        _ if all_reserved => {
            "every port of the range is reserved (net.ipv4.ip_local_reserved_ports), so the \
             kernel has none to choose: reserve fewer of them, or widen the range"
        }
        SyscallName::Listen => {
            "listen() on a socket never bound takes an ephemeral port: bind() the port \
             the service should listen on first, or widen the range"
        }
        SyscallName::Connect if req.udp => {
            "a UDP socket that was never bound takes an ephemeral port at its first connect() \
             or send, and every open UDP socket keeps its own: close sockets that are done with \
             (a resolver or client that opens one per request and keeps it), or widen the range"
        }
        SyscallName::Bind if req.udp => {
            "bind() to port 0 takes an ephemeral port, and every open UDP socket keeps its own: \
             close sockets that are done with (a resolver or client that opens one per request \
             and keeps it), or widen the range"
        }
        SyscallName::Bind => {
            "bind() to port 0 takes an ephemeral port: if the socket is bound only to choose \
             its source address before connect(), set IP_BIND_ADDRESS_NO_PORT so that the port \
             is chosen at connect() (and may be shared by connections to other destinations); \
             else widen the range, or reuse connections (pooling, keep-alive)"
        }
        _ => {
            "widen the range, reuse connections (pooling, keep-alive), or spread them \
             over more source addresses"
        }
    };
    let mut in_use = match ctx.ports_in_use {
        None => "? in use".to_string(),
        // The sockets holding them closed before bindtrace looked (a short-lived process), or
        // hold them in ways sock_diag does not list.
        Some(0) => "none found when bindtrace looked".to_string(),
        Some(n) => format!("{n} in use"),
    };
    if let Some(u) = ctx.users.as_ref().filter(|u| !u.by_state.is_empty()) {
        in_use.push_str(": ");
        in_use.push_str(&users_text(u, req.pid));
    }
    let tw = ctx
        .users
        .as_ref()
        .and_then(|u| u.by_state.get(State::TimeWait.as_str()).copied())
        .unwrap_or(0);
    // tcp_tw_reuse 2 (the default) already lets connections to loopback reuse TIME-WAITs.
    let loopback = req.remote.is_some_and(|r| canonical(r.ip()).is_loopback());
    let reuse_on = ctx.tw_reuse == Some(1) || (ctx.tw_reuse == Some(2) && loopback);
    let tw_fix = if tw > 0 && !req.udp && req.syscall == SyscallName::Connect && !reuse_on {
        format!(
            "{tw} of them are TIME-WAIT: `sysctl -w net.ipv4.tcp_tw_reuse=1` lets new outgoing \
             connections take a TIME-WAIT's port once it is a second old, where both ends use \
             TCP timestamps (the default) (this namespace has {}); or ",
            ctx.tw_reuse
                .map_or_else(|| "?".to_string(), |v| v.to_string())
        )
    } else {
        String::new()
    };
    format!(
        "no free local port in ip_local_port_range {}{}{dest} ({in_use}): {tw_fix}{fix}",
        ctx.range_text(),
        reserved_in_range(ctx)
    )
}

/// How many ports of the range `ip_local_reserved_ports` takes, and the range's size.
fn reserved_of_range(ctx: &PortContext) -> Option<(u32, u32)> {
    let (lo, hi) = ctx.range?;
    let mut taken = vec![false; usize::from(hi - lo) + 1];
    for &(a, b) in &ctx.reserved {
        for port in a.max(lo)..=b.min(hi) {
            taken[usize::from(port - lo)] = true;
        }
    }
    let reserved = taken.iter().filter(|&&t| t).count() as u32;
    Some((reserved, taken.len() as u32))
}

/// `" (1 of its 2 ports reserved)"` when `ip_local_reserved_ports` takes ports of the range.
fn reserved_in_range(ctx: &PortContext) -> String {
    match reserved_of_range(ctx) {
        Some((reserved, total)) if reserved > 0 => {
            format!(" ({reserved} of its {total} ports reserved)")
        }
        _ => String::new(),
    }
}

/// `"3 ESTABLISHED, 3 TIME_WAIT; by python3 (pid 42) 2, curl (3 processes, e.g. pid 7, all
/// exited) 3"`.
fn users_text(u: &PortUsers, caller: u32) -> String {
    let states: Vec<String> = u.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut text = states.join(", ");
    if !u.top.is_empty() {
        let who: Vec<String> = u
            .top
            .iter()
            .map(|p| {
                if p.processes > 1 {
                    let gone = match p.exited {
                        0 => String::new(),
                        n if n == p.processes => ", all exited".to_string(),
                        n => format!(", {n} exited"),
                    };
                    return format!(
                        "{} ({} processes, e.g. pid {}{gone}) {}",
                        p.comm, p.processes, p.pid, p.sockets
                    );
                }
                if p.pid == caller {
                    return format!("this process ({}, pid {}) {}", p.comm, p.pid, p.sockets);
                }
                let gone = if p.alive { "" } else { ", exited" };
                format!("{} (pid {}{gone}) {}", p.comm, p.pid, p.sockets)
            })
            .collect();
        let of = if u.sampled < u.by_state.values().sum::<u32>() {
            format!(" (of {} looked up)", u.sampled)
        } else {
            String::new()
        };
        let _ = write!(text, "; by {}{of}", who.join(", "));
    }
    if u.unattributed > 0 {
        let _ = write!(text, "; {} with no process found", u.unattributed);
    }
    text
}

/// EADDRNOTAVAIL on bind(): what the namespace has of the address now tells why it had not
/// then.
fn address_hint(addr: IpAddr, now: Option<&AddressNow>, named: Option<&str>) -> String {
    // An IPv4-mapped address is checked as IPv4 (`net.ipv4.ip_nonlocal_bind`), on a socket whose
    // wildcard and option are IPv6's.
    let (wildcard, freebind) = if addr.is_ipv6() {
        ("[::]", "IPV6_FREEBIND")
    } else {
        ("0.0.0.0", "IP_FREEBIND")
    };
    let sysctl = if canonical(addr).is_ipv6() {
        "net.ipv6.ip_nonlocal_bind=1"
    } else {
        "net.ipv4.ip_nonlocal_bind=1"
    };
    let early = format!("or set {freebind} / {sysctl} to bind before it is usable");
    // A link-local address exists per interface: on another one than the call named, it is not
    // this one's.
    if let (Some(AddressNow::Present(dev)), Some(named)) = (now, named)
        && dev != named
        && (needs_scope_addr(addr) || addr.is_loopback())
    {
        return format!(
            "{addr} is on {dev}, not on {named}, the interface the call named (its scope id or \
             SO_BINDTODEVICE): name {dev}, or bind an address {named} has"
        );
    }
    match now {
        Some(AddressNow::Present(dev)) => format!(
            "{addr} is on {dev} now, but was not usable when bind() ran: the service started \
             before its address was up{}; start it once the address is configured (systemd: \
             After=network-online.target, or after whatever adds it: DHCP, keepalived), {early}",
            if needs_scope_addr(addr) {
                format!(" (or the call named another interface than {dev})")
            } else {
                String::new()
            }
        ),
        Some(AddressNow::Tentative(dev)) => format!(
            "{addr} is on {dev} but still tentative: IPv6 duplicate address detection has not \
             finished (it starts once the link has carrier and takes a second or more), and \
             bind() refuses a tentative address; start the service after it (systemd: \
             After=network-online.target), \
             {early}, or add the address without detection (`ip addr add ... nodad`, or \
             net.ipv6.conf.{dev}.accept_dad=0 before adding it)"
        ),
        Some(AddressNow::DadFailed(dev)) => format!(
            "{addr} on {dev} failed duplicate address detection: another node on the link uses \
             it, and the kernel will not use it: remove the duplicate, then re-add the address"
        ),
        Some(AddressNow::Absent) | None => format!(
            "{addr} is not an address of this network namespace{}: bind to an address it has \
             (or {wildcard}), {early}",
            if now.is_some() {
                " (none of its interfaces has it now either)"
            } else {
                ""
            }
        ),
    }
}

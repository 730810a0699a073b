//! The kernel's rules: whether a socket on the port blocks a request (local addresses,
//! IPV6_V6ONLY, devices, SO_REUSEADDR and SO_REUSEPORT), and which address check refused a
//! bind() with EINVAL.

use std::net::{IpAddr, SocketAddr};

use super::{Cause, Holder, Request, State};
use crate::event::SyscallName;

/// IPv4-mapped IPv6 addresses count as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Whether the local addresses of a new socket (`a`) and one on the port (`b`) overlap, with
/// IPV6_V6ONLY deciding whether an IPv6 socket meets IPv4 ones (`inet_rcv_saddr_equal()`).
///
/// An IPv6 socket without IPV6_V6ONLY meets an IPv4 bind through its IPv4 face: the mapped
/// address, 0.0.0.0 for `[::]`; with any other IPv6 address, only the IPv4 wildcard. A bind() to
/// such an address sets IPV6_V6ONLY itself, so this is a socket that got its address from
/// connect(): a dual-stack client's connection over IPv6 blocks an IPv4 wildcard bind of its
/// source port (checked on 6.18, TCP and UDP). Kernels before 6.1 also compared IPv4 binds with
/// its `LOOPBACK4_IPV6`, 127.0.0.6, an address nobody binds; with 6.1's per-address bind buckets
/// (`bhash2`) that went (on 6.18 a bind of 127.0.0.6 succeeds).
pub fn addresses_overlap(
    a: IpAddr,
    a_v6only: Option<bool>,
    b: IpAddr,
    b_v6only: Option<bool>,
) -> bool {
    let (a, b) = (canonical(a), canonical(b));
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified() || x == y,
        (IpAddr::V6(x), IpAddr::V6(y)) => x.is_unspecified() || y.is_unspecified() || x == y,
        (IpAddr::V4(_), IpAddr::V6(y)) if y.is_unspecified() => b_v6only != Some(true),
        (IpAddr::V4(x), IpAddr::V6(_)) => b_v6only == Some(false) && x.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V4(_)) => x.is_unspecified() && a_v6only != Some(true),
    }
}

/// The same address and port, IPv4-mapped addresses counting as IPv4.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// Why a bind() got EINVAL, by the checks `__inet6_bind()` and `__inet_bind()` make, in their
/// order (checked on 6.1, 6.12, 6.18): a multicast address on a TCP socket; the socket's state
/// (already bound, connected or listening: the only EINVAL an IPv4 bind() reports past its length
/// check, which no backend reports); an IPv4-mapped address on an IPV6_V6ONLY socket; an address
/// that needs a scope (link-local) with no interface. The state comes from the socket as the
/// kernel programs read it (`in_use`); when it could not be read, an address failing a later
/// check names that check. A fresh socket whose address passes every check got its EINVAL from
/// elsewhere (a cgroup BPF program can set any error): unknown.
pub(super) fn invalid_address(req: &Request) -> Cause {
    let v6 = match req.addr {
        IpAddr::V6(a) if a.is_multicast() && !req.udp => return Cause::MulticastAddress,
        _ if req.in_use == Some(true) => return Cause::AlreadyBound,
        IpAddr::V6(a) => a,
        IpAddr::V4(_) if req.in_use == Some(false) => return Cause::Unknown,
        IpAddr::V4(_) => return Cause::AlreadyBound,
    };
    if v6.to_ipv4_mapped().is_some() && req.v6only == Some(true) {
        Cause::MappedAddressOnV6Only
    } else if needs_scope(v6) && req.bound_dev_if == 0 {
        Cause::LinkLocalWithoutInterface
    } else if req.in_use == Some(false) {
        Cause::Unknown
    } else {
        Cause::AlreadyBound
    }
}

/// `__ipv6_addr_needs_scope_id()`: link-local unicast (fe80::/10), and interface- or link-local
/// multicast (ff01::/16, ff02::/16 and their flag variants).
fn needs_scope(a: std::net::Ipv6Addr) -> bool {
    let first = a.segments()[0];
    let link_local = first & 0xffc0 == 0xfe80;
    let scoped_multicast = a.is_multicast() && matches!(first & 0x000f, 1 | 2);
    link_local || scoped_multicast
}

/// Whether the kernel takes a scope id (an interface) for `addr`: IPv6 link-local and
/// link-scoped multicast.
pub fn needs_scope_addr(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if needs_scope(a))
}

pub(super) fn cross_family(a: IpAddr, b: IpAddr) -> bool {
    canonical(a).is_ipv4() != canonical(b).is_ipv4()
}

/// The IPv6 wildcard through which `req` and `h` of different families overlap: whichever of
/// them is `[::]` without IPV6_V6ONLY.
pub(super) fn dual_stack_wildcard(req: &Request, h: &Holder) -> Option<IpAddr> {
    if !cross_family(req.addr, h.local.ip()) {
        return None;
    }
    [(req.addr, req.v6only), (h.local.ip(), h.v6only)]
        .into_iter()
        .find(|&(ip, v6only)| {
            let ip = canonical(ip);
            ip.is_ipv6() && ip.is_unspecified() && v6only != Some(true)
        })
        .map(|(ip, _)| ip)
}

/// IPV6_V6ONLY of `h`, or where unknown, what the kernel leaves on a connection's socket: off. The
/// option is unknown for a TIME-WAIT (sock_diag does not tell it) whose owner the history has no
/// record of. A connection's socket got its address from connect(), which leaves the option as
/// the socket was made — off unless the program set it (or `net.ipv6.bindv6only` is 1) — while a
/// bind() to a specific IPv6 address sets it; so an IPv6 client's TIME-WAIT blocks an IPv4
/// wildcard bind of its port (checked on 6.18: `curl -6`, a JVM's client).
fn holder_v6only(h: &Holder) -> Option<bool> {
    let connection = !matches!(h.state, State::Listen | State::Bound);
    h.v6only
        .or_else(|| (connection && h.remote.is_some()).then_some(false))
}

/// Whether `h` blocks `req` by the kernel's rules (unknown options count as "not shared").
pub fn conflicts(req: &Request, h: &Holder) -> bool {
    if req.syscall == SyscallName::Connect {
        // A connect() from a bound port meets only a connection to the same destination from
        // the same address (`__inet_check_established()`).
        return h
            .remote
            .zip(req.remote)
            .is_some_and(|(a, b)| same_endpoint(a, b))
            && (req.addr.is_unspecified() || canonical(req.addr) == canonical(h.local.ip()));
    }
    if req.bound_dev_if != 0 && h.bound_dev_if != 0 && req.bound_dev_if != h.bound_dev_if {
        return false;
    }
    if !addresses_overlap(req.addr, req.v6only, h.local.ip(), holder_v6only(h)) {
        return false;
    }
    let both_reuseaddr = req.reuseaddr && h.reuseaddr == Some(true);
    let both_reuseport = req.reuseport && h.reuseport == Some(true);
    let same_user = h.sharing_uid().is_some_and(|u| u == req.uid);
    if req.udp {
        return !(both_reuseaddr || (both_reuseport && same_user));
    }
    if req.syscall == SyscallName::Listen {
        // listen() re-checks the port with the socket already LISTEN: only listeners (and
        // SO_REUSEPORT groups) decide.
        return h.state == State::Listen && !(both_reuseport && same_user);
    }
    match h.state {
        State::Listen => !(both_reuseport && same_user),
        State::TimeWait => !(both_reuseaddr || both_reuseport),
        _ => !(both_reuseaddr || (both_reuseport && same_user)),
    }
}

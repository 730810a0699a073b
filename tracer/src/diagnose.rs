//! Why a bind/listen/connect failed: which of the sockets on the port blocked it, the cause in one
//! word, and one sentence that names the fix. Pure rules over plain data; the lookups that feed
//! them live in `owners`.
//!
//! The conflict rules are the kernel's (`inet_csk_bind_conflict()`, `udp_lib_lport_inuse()`,
//! 4.19 … 6.18; see docs/kernel.md): a listener never shares a port by SO_REUSEADDR alone; other
//! TCP sockets share when both set SO_REUSEADDR; SO_REUSEPORT shares when both set it and have the
//! same owner uid (TIME-WAIT: any uid); IPv6 `[::]` without IPV6_V6ONLY covers IPv4; devices
//! conflict only if either is unbound or both are the same. The kernel's verdict is the fact — when
//! these rules find no culprit among the sockets present, the closest one is still named.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::event::{Event, SyscallName};

const EPERM: i32 = 1;
const EAFNOSUPPORT: i32 = 97;
const ENODEV: i32 = 19;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const EAGAIN: i32 = 11;

/// The cause of a failure (JSON `cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A listening socket holds the port.
    ListenerConflict,
    /// A TIME-WAIT connection holds the port.
    TimeWaitConflict,
    /// A connection (ESTABLISHED, SYN-SENT, ...) uses the port as its local port.
    OutgoingConnectionConflict,
    /// A connection accepted on the port (by a listener since closed) is still open.
    AcceptedConnectionConflict,
    /// A socket is bound to the port but neither listens nor connects.
    BoundSocketConflict,
    /// A UDP socket holds the port.
    UdpConflict,
    /// Both sides set SO_REUSEPORT but belong to different users.
    ReuseportMismatch,
    /// An IPv6 wildcard covers a listening or bound IPv4 socket (or the reverse). Against a
    /// connection or a TIME-WAIT that cause is given instead, the overlap in its hint.
    DualStackConflict,
    /// No free port in `ip_local_port_range` (TCP connect EADDRNOTAVAIL, bind(0) EADDRINUSE, a UDP
    /// socket's connect EAGAIN).
    EphemeralExhausted,
    /// connect() from a bound port (EADDRNOTAVAIL): a connection with the same source and
    /// destination address and port exists.
    FourTupleInUse,
    /// EACCES: a port below `ip_unprivileged_port_start` without CAP_NET_BIND_SERVICE.
    PrivilegedPort,
    /// EACCES on a port at or above `ip_unprivileged_port_start`: not the kernel's port check but
    /// a security module's (SELinux name_bind, AppArmor).
    RefusedBySecurityModule,
    /// EADDRNOTAVAIL on bind: the address is not on any interface of the namespace.
    AddressNotLocal,
    /// EINVAL: the socket is already bound, connected or listening.
    AlreadyBound,
    /// EINVAL: an IPv6 link-local address (or link-scope multicast) with no interface: neither a
    /// scope id nor SO_BINDTODEVICE.
    LinkLocalWithoutInterface,
    /// EINVAL: an IPv4-mapped address on an IPv6 socket with IPV6_V6ONLY.
    #[serde(rename = "mapped_address_on_v6only")]
    MappedAddressOnV6Only,
    /// EINVAL: a TCP socket asked for a multicast address.
    MulticastAddress,
    /// EAFNOSUPPORT: an address whose family field is not the socket's.
    WrongFamily,
    /// EPERM: a cgroup BPF program refused the bind (nothing else in the bind path says EPERM).
    RefusedByBpf,
    /// ENODEV: the interface named by the scope id or SO_BINDTODEVICE is not in the namespace.
    NoSuchDevice,
    /// Nothing found that explains it.
    Unknown,
}

impl Cause {
    /// Whether another socket holding the port is what this cause is about (so a holder is
    /// looked for), rather than the caller's own address, privileges or range.
    pub fn is_conflict(self) -> bool {
        matches!(
            self,
            Self::ListenerConflict
                | Self::TimeWaitConflict
                | Self::OutgoingConnectionConflict
                | Self::AcceptedConnectionConflict
                | Self::BoundSocketConflict
                | Self::UdpConflict
                | Self::ReuseportMismatch
                | Self::DualStackConflict
                | Self::FourTupleInUse
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerConflict => "listener_conflict",
            Self::TimeWaitConflict => "time_wait_conflict",
            Self::OutgoingConnectionConflict => "outgoing_connection_conflict",
            Self::AcceptedConnectionConflict => "accepted_connection_conflict",
            Self::BoundSocketConflict => "bound_socket_conflict",
            Self::UdpConflict => "udp_conflict",
            Self::ReuseportMismatch => "reuseport_mismatch",
            Self::DualStackConflict => "dual_stack_conflict",
            Self::EphemeralExhausted => "ephemeral_exhausted",
            Self::FourTupleInUse => "four_tuple_in_use",
            Self::PrivilegedPort => "privileged_port",
            Self::RefusedBySecurityModule => "refused_by_security_module",
            Self::AddressNotLocal => "address_not_local",
            Self::AlreadyBound => "already_bound",
            Self::LinkLocalWithoutInterface => "link_local_without_interface",
            Self::MappedAddressOnV6Only => "mapped_address_on_v6only",
            Self::MulticastAddress => "multicast_address",
            Self::NoSuchDevice => "no_such_device",
            Self::RefusedByBpf => "refused_by_bpf",
            Self::WrongFamily => "wrong_family",
            Self::Unknown => "unknown",
        }
    }
}

/// A holder's socket state (JSON `holders[].state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Listen,
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    CloseWait,
    LastAck,
    Closing,
    /// Bound, neither listening nor connected (TCP_BOUND_INACTIVE, an unconnected UDP socket).
    Bound,
}

impl State {
    /// From the kernel's state number (`tracer_common::tcp_state`).
    pub fn from_kernel(state: u8, udp: bool) -> Self {
        use tracer_common::tcp_state as s;
        match state {
            s::ESTABLISHED => Self::Established,
            s::SYN_SENT => Self::SynSent,
            s::SYN_RECV | s::NEW_SYN_RECV => Self::SynRecv,
            s::FIN_WAIT1 => Self::FinWait1,
            s::FIN_WAIT2 => Self::FinWait2,
            s::TIME_WAIT => Self::TimeWait,
            s::CLOSE_WAIT => Self::CloseWait,
            s::LAST_ACK => Self::LastAck,
            s::LISTEN if !udp => Self::Listen,
            s::CLOSING => Self::Closing,
            _ => Self::Bound,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "LISTEN",
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Closing => "CLOSING",
            Self::Bound => "BOUND",
        }
    }

    fn is_connection(self) -> bool {
        !matches!(self, Self::Listen | Self::TimeWait | Self::Bound)
    }

    /// Which holder explains a failure best, first.
    fn rank(self) -> u8 {
        match self {
            Self::Listen => 0,
            Self::TimeWait => 2,
            Self::Bound => 3,
            _ => 1,
        }
    }
}

/// Where a holder's owner (pid, command) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Looked up now: the process has the socket open.
    Live,
    /// Remembered by bindtrace's kernel programs (the socket has no owner now, e.g. TIME-WAIT).
    History,
    /// A connection that was open in this process when bindtrace started (its start-up scan),
    /// since closed into TIME-WAIT: made before bindtrace could see it made.
    Startup,
    /// Neither: the socket is there but nothing names its process.
    Unknown,
}

/// A socket that holds (or held) the port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one socket, each its own JSON field"
)]
pub struct Holder {
    pub state: State,
    pub protocol: String,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// From history, of a process still running: the name of the thread that took the port,
    /// where it differs from the process's (`comm`; a JVM's "http-nio-8080-e" in "java").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub uid: Option<u32>,
    pub source: Source,
    pub reuseaddr: Option<bool>,
    pub reuseport: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6only: Option<bool>,
    pub bound_dev_if: u32,
    /// The name of `bound_dev_if` in the namespace (SO_BINDTODEVICE), when bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How long ago the owner took the port (from history).
    pub age_ms: Option<u64>,
    /// A TIME-WAIT's time left when it was looked up (the kernel's timer, via sock_diag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Whether the owner process still runs (history owners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_alive: Option<bool>,
    /// Other processes sharing the same socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<u32>,
    /// For a live listening or bound socket none of whose holders bindtrace saw take the port:
    /// the process it saw take it, which the holders inherited the socket from (fork/exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<Opener>,
    /// Socket inode (0: TIME-WAIT or orphaned).
    pub inode: u64,
    /// Container and Kubernetes context of the owner (keys absent when unknown).
    #[serde(flatten, default)]
    pub container: crate::container::Context,
    /// The remembered owner's cgroup id (0: unknown), for its context once it has exited.
    #[serde(skip)]
    pub owner_cgroup: u64,
    /// The socket was gone when bindtrace looked (its owner closed it or exited just after the
    /// failure): it is known from bindtrace's history as the last socket seen to take the port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub socket_closed: bool,
    /// A connection on the port accepted by a listener there (a server's side of it, not one it
    /// opened): its owner is that listener's, as bindtrace's history saw it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepted: bool,
    /// A TIME-WAIT of unknown owner that began while bindtrace was watching: the history saw
    /// the connection, or the start-up scan found it open, and no longer has it — evicted by
    /// newer connections (`--history-size`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_forgotten: bool,
    /// Whether the kernel's rules say this socket blocks the request.
    pub conflicts: bool,
}

impl Holder {
    /// A socket in `state` on `local`, nothing else known yet.
    pub fn new(state: State, udp: bool, local: SocketAddr, source: Source) -> Self {
        Self {
            state,
            protocol: if udp { "udp" } else { "tcp" }.to_string(),
            local,
            remote: None,
            pid: None,
            comm: None,
            thread: None,
            uid: None,
            source,
            reuseaddr: None,
            reuseport: None,
            v6only: None,
            bound_dev_if: 0,
            device: None,
            age_ms: None,
            expires_ms: None,
            owner_alive: None,
            shared_with: Vec::new(),
            opened_by: None,
            inode: 0,
            container: crate::container::Context::default(),
            owner_cgroup: 0,
            socket_closed: false,
            accepted: false,
            owner_forgotten: false,
            conflicts: false,
        }
    }
}

/// The process that took the port with a socket others hold now (JSON `holders[].opened_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opener {
    pub pid: u32,
    pub comm: String,
    /// Whether it still runs.
    pub alive: bool,
}

impl Opener {
    fn text(&self) -> String {
        let gone = if self.alive { "" } else { ", since exited" };
        format!("{} (pid {}{gone})", self.comm, self.pid)
    }
}

/// The `ip_local_port_range` / `ip_local_reserved_ports` of the failing namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortContext {
    pub range: Option<(u16, u16)>,
    pub reserved: Vec<(u16, u16)>,
    /// For exhaustion: sockets using a port of the range (towards the destination, for connect).
    pub ports_in_use: Option<u32>,
    /// The name of the device the call's socket is bound to (SO_BINDTODEVICE) in its namespace.
    pub device: Option<String>,
    /// For a bind() refused its address (EADDRNOTAVAIL): what the namespace has of it now.
    pub address: Option<AddressNow>,
    /// `net.ipv4.ip_unprivileged_port_start` of the namespace (ports below need
    /// CAP_NET_BIND_SERVICE).
    pub unprivileged_start: Option<u16>,
    /// `net.ipv4.tcp_tw_reuse` of the namespace (1: outgoing connections may take a TIME-WAIT's
    /// port; 2, the default: only on loopback).
    pub tw_reuse: Option<u8>,
    /// For exhaustion: who holds the range's ports.
    pub users: Option<PortUsers>,
}

/// Who holds the ports of an exhausted range (JSON `port_users`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortUsers {
    /// Sockets on a port of the range, by state (`ESTABLISHED`, `TIME_WAIT`, ...).
    pub by_state: std::collections::BTreeMap<String, u32>,
    /// The processes behind the `sampled` sockets looked up, most sockets first (at most five).
    pub top: Vec<PortUser>,
    pub sampled: u32,
    /// Of the `sampled` sockets, those no process was found for (closed or exiting as they were
    /// looked up, and made before bindtrace saw them).
    #[serde(default)]
    pub unattributed: u32,
}

/// A process holding ports of an exhausted range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortUser {
    pub pid: u32,
    pub comm: String,
    /// False for the remembered owner of a TIME-WAIT whose process has exited.
    pub alive: bool,
    /// Of the sampled sockets, how many are its.
    pub sockets: u32,
}

/// What a namespace has of an address, looked up after a bind() was refused it (EADDRNOTAVAIL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressNow {
    /// No interface has it.
    Absent,
    /// On this interface, usable: it came after the call.
    Present(String),
    /// On this interface, IPv6 duplicate address detection not finished (IFA_F_TENTATIVE).
    Tentative(String),
    /// On this interface, duplicate address detection failed (IFA_F_DADFAILED).
    DadFailed(String),
}

/// `"32768\t60999\n"` → (32768, 60999).
pub fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// `"8080,9000-9010\n"` → [(8080, 8080), (9000, 9010)].
pub fn parse_reserved(s: &str) -> Vec<(u16, u16)> {
    s.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.trim().parse().ok().map(|v| (v, v)),
        })
        .collect()
}

impl PortContext {
    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// Inside the ephemeral range and not reserved: outgoing connections may take it.
    pub fn in_ephemeral_range(&self, port: u16) -> bool {
        self.range
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&port) && !self.is_reserved(port))
    }

    fn range_text(&self) -> String {
        self.range
            .map_or_else(|| "?".to_string(), |(lo, hi)| format!("{lo}-{hi}"))
    }
}

/// The verdict added to a failure event (flattened into its JSON object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub cause: Cause,
    pub same_process: bool,
    pub in_ephemeral_range: bool,
    /// `ip_local_port_range` of the failing namespace, `"lo-hi"`.
    pub port_range: Option<String>,
    /// `ip_local_reserved_ports` of the failing namespace, as the kernel prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_ports: Option<String>,
    /// For `ephemeral_exhausted`: how many sockets held a port of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_in_use: Option<u32>,
    /// For `ephemeral_exhausted`: who holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_users: Option<PortUsers>,
    /// The interface name of `bound_dev_if`, looked up in the failing namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The sockets on the port, the one that explains the failure first.
    pub holders: Vec<Holder>,
    pub hint: String,
}

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

/// IPv4-mapped IPv6 addresses count as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// `LOOPBACK4_IPV6`, 127.0.0.6: the IPv4 address the kernel gives an IPv6 socket with an IPv6
/// address of its own (`inet_rcv_saddr`), which IPv4 binds are compared with.
const LOOPBACK4_IPV6: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// Whether the local addresses of a new socket (`a`) and one on the port (`b`) overlap, with
/// IPV6_V6ONLY deciding whether an IPv6 socket meets IPv4 ones (`inet_rcv_saddr_equal()`).
///
/// An IPv6 socket without IPV6_V6ONLY meets an IPv4 bind through its IPv4 face: the mapped
/// address, 0.0.0.0 for `[::]`, and for any other IPv6 address 127.0.0.6 — which an IPv4
/// wildcard covers. A bind() to such an address sets IPV6_V6ONLY itself, so this is a socket
/// that got its address from connect(): a dual-stack client's connection over IPv6 blocks an
/// IPv4 wildcard bind of its source port (checked on 6.18, TCP and UDP).
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
        (IpAddr::V4(x), IpAddr::V6(_)) => {
            b_v6only == Some(false) && (x.is_unspecified() || x == LOOPBACK4_IPV6)
        }
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
fn invalid_address(req: &Request) -> Cause {
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

fn cross_family(a: IpAddr, b: IpAddr) -> bool {
    canonical(a).is_ipv4() != canonical(b).is_ipv4()
}

/// The IPv6 wildcard through which `req` and `h` of different families overlap: whichever of
/// them is `[::]` without IPV6_V6ONLY.
fn dual_stack_wildcard(req: &Request, h: &Holder) -> Option<IpAddr> {
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
    if !addresses_overlap(req.addr, req.v6only, h.local.ip(), h.v6only) {
        return false;
    }
    let both_reuseaddr = req.reuseaddr && h.reuseaddr == Some(true);
    let both_reuseport = req.reuseport && h.reuseport == Some(true);
    let same_user = h.uid.is_some_and(|u| u == req.uid);
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

/// The first way out of a conflict with `h`: stop its process — all of them when several share
/// the socket, since the port stays taken until the last one closes it.
fn stop(h: &Holder) -> &'static str {
    if h.shared_with.is_empty() {
        "stop it"
    } else {
        "stop all of them"
    }
}

fn who(h: &Holder) -> String {
    match (&h.comm, h.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p})"),
        (None, Some(p)) => format!("pid {p}"),
        _ => "an unknown process".to_string(),
    }
}

/// `" 12 s ago"` / `" 340 ms ago"` (empty when unknown).
pub fn age(h: &Holder) -> String {
    h.age_ms.map_or_else(String::new, |ms| {
        if ms >= 1000 {
            format!(" {} s ago", (ms + 500) / 1000)
        } else {
            format!(" {ms} ms ago")
        }
    })
}

fn reserve_fix(port: u16, ctx: &PortContext) -> String {
    format!(
        "port {port} lies in the ephemeral range {} (net.ipv4.ip_local_port_range) and is not \
         reserved: reserve it with `sysctl -w net.ipv4.ip_local_reserved_ports={port}` (add to \
         any existing list) or move the range above your listen ports",
        ctx.range_text()
    )
}

/// What lets a new server bind over its predecessor's connections (TIME-WAIT or still open):
/// `inet_bind_conflict()` lets them be only if both sockets set SO_REUSEADDR, and an accepted
/// connection has its listener's setting.
const SERVER_FIX: &str = "set SO_REUSEADDR on the listening socket before bind() (on the \
                          previous server's too: its connections keep its setting)";

/// Why a new server with SO_REUSEADDR is still refused by its predecessor's connections.
const OLD_SERVER_LACKED: &str = "this socket has SO_REUSEADDR already, but the previous \
                                 server's listening socket had not, and its connections keep \
                                 that";

/// SO_REUSEADDR on both sockets lifts a conflict with a socket that does not listen: the fix names
/// the side that lacks it. `theirs`: the holder's socket, as the sentence names it.
fn reuseaddr_fix(req: &Request, h: &Holder, theirs: &str) -> String {
    match (req.reuseaddr, h.reuseaddr) {
        (true, Some(false)) => {
            format!("this socket has SO_REUSEADDR already but {theirs} has not: set it there too")
        }
        // Unknown (a TIME-WAIT bindtrace did not see made), but this side is not what lacks it.
        (true, None) => format!("this socket has SO_REUSEADDR already: set it on {theirs} too"),
        (false, Some(true)) => {
            format!("set SO_REUSEADDR on this socket ({theirs} has it already)")
        }
        _ => "set SO_REUSEADDR on both sockets".to_string(),
    }
}

/// A TIME-WAIT holder: who left it (from history) and, if the port is ephemeral, how to reserve it.
fn time_wait_hint(req: &Request, h: &Holder, w: &str, ctx: &PortContext) -> String {
    let port = req.port;
    let local = h.local;
    let remote = h.remote.map(|r| format!(" to {r}")).unwrap_or_default();
    let gone = if h.owner_alive == Some(false) {
        " (since exited)"
    } else {
        ""
    };
    let owner = if h.source == Source::Startup {
        format!(", open in {w} when bindtrace started{gone}")
    } else if h.source == Source::History {
        if h.accepted {
            format!(", accepted by the listener {w} opened{}{gone}", age(h))
        } else {
            format!(", opened{} by {w}{gone}", age(h))
        }
    } else {
        String::new()
    };
    let opt = if h.reuseaddr == Some(false) {
        " without SO_REUSEADDR"
    } else {
        ""
    };
    let left = time_left(h);
    let fix = if h.accepted && req.reuseaddr {
        // This listener has the option: the previous server's lacked it, and its connections
        // keep that.
        format!(
            "now: wait for the TIME-WAIT to end ({left}): {OLD_SERVER_LACKED}; for good: set \
             SO_REUSEADDR on that server's listening socket too"
        )
    } else if h.accepted {
        // The server side closed first: the port is the server's own, the range is beside the
        // point.
        format!("{SERVER_FIX}, or wait for the TIME-WAIT to end ({left})")
    } else {
        // What lets this bind through now, then what keeps the port from being taken again.
        let now = match (req.reuseaddr, h.reuseaddr) {
            (false, Some(true)) => format!(
                "set SO_REUSEADDR on this socket (that connection had it), or wait for the \
                 TIME-WAIT to end ({left})"
            ),
            (true | false, Some(false)) => format!(
                "wait for the TIME-WAIT to end ({left}): its socket had no SO_REUSEADDR, so no \
                 socket can share the port with it"
            ),
            // Refused with SO_REUSEADDR set: the connection's socket cannot have had it.
            (true, _) => format!(
                "wait for the TIME-WAIT to end ({left}): this socket's SO_REUSEADDR does not let \
                 it share the port, so the connection's socket was made without it"
            ),
            (false, None) => format!(
                "set SO_REUSEADDR on this socket (enough if the connection's socket had it too), \
                 or wait for the TIME-WAIT to end ({left})"
            ),
        };
        if ctx.in_ephemeral_range(port) {
            format!("now: {now}; for good: {}", reserve_fix(port, ctx))
        } else {
            format!(
                "now: {now}; for good: {}",
                reuseaddr_fix(req, h, "the connection's socket")
            )
        }
    };
    // "from A to B, opened by X, holds the port": the comma only around what the owner adds.
    let comma = if owner.is_empty() { "" } else { "," };
    format!("a TIME-WAIT connection from {local}{remote}{owner}{opt}{comma} holds the port; {fix}")
}

/// A TCP connection its process has closed (or exited with) while the close is still under
/// way: no process holds it (sock_diag lists it without an inode), so no option can be set on
/// it and nobody can stop it.
fn orphaned(h: &Holder) -> bool {
    h.protocol == "tcp"
        && h.inode == 0
        && matches!(
            h.state,
            State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck
        )
}

/// An orphaned connection on the port (`orphaned`): how long the kernel keeps it, and what
/// works meanwhile.
fn orphan_hint(req: &Request, h: &Holder, w: &str, ctx: &PortContext) -> String {
    let (port, local) = (req.port, h.local);
    let remote = h
        .remote
        .map_or_else(|| "its peer".to_string(), |r| r.to_string());
    let made = if w == "an unknown process" {
        String::new()
    } else {
        format!(", made by {w},")
    };
    let until = if h.state == State::FinWait2 {
        format!(
            "until {remote}, which holds its end in CLOSE_WAIT, closes it too, or for at most \
             net.ipv4.tcp_fin_timeout (60 s by default)"
        )
    } else {
        format!(
            "until {remote} acknowledges the close (retransmitted for up to minutes: \
             net.ipv4.tcp_orphan_retries)"
        )
    };
    let now = if !req.reuseaddr && h.reuseaddr == Some(true) {
        "set SO_REUSEADDR on this socket (that connection had it), or wait for it to end".into()
    } else {
        "wait for it to end: no process holds it, so none can be stopped or changed".to_string()
    };
    let fix = if ctx.in_ephemeral_range(port) {
        format!("now: {now}; for good: {}", reserve_fix(port, ctx))
    } else {
        format!(
            "now: {now}; for good: {}",
            reuseaddr_fix(req, h, "the connection's socket")
        )
    };
    format!(
        "a connection from {local} to {remote} ({}){made} uses port {port} as its source port; \
         its process has closed it, and the kernel keeps it {until}; {fix}",
        h.state.as_str()
    )
}

/// A server's own accepted connection, still open, on the port no socket listens on now.
fn accepted_hint(req: &Request, h: &Holder, w: &str) -> String {
    let local = h.local;
    format!(
        "{w} still has a connection it accepted on {local} (from {}, {}), though no socket \
         listens there now: a server being replaced still serving its clients; {}",
        h.remote.map_or_else(|| "?".to_string(), |r| r.to_string()),
        h.state.as_str(),
        if req.reuseaddr {
            format!(
                "now: wait for those connections to end: {OLD_SERVER_LACKED}; for good: set \
                 SO_REUSEADDR on that server's listening socket too"
            )
        } else {
            format!("{SERVER_FIX}, or wait for those connections to end")
        }
    )
}

/// A TIME-WAIT's time left, as the kernel's timer said at the lookup, else its most.
fn time_left(h: &Holder) -> String {
    h.expires_ms.map_or_else(
        || "up to 60 s".to_string(),
        |ms| format!("{} s left", ms.div_ceil(1000)),
    )
}

/// Builds the one-sentence fix.
fn hint(
    cause: Cause,
    req: &Request,
    primary: Option<&Holder>,
    same: bool,
    ctx: &PortContext,
) -> String {
    match primary {
        Some(h) => hint_for_holder(cause, req, h, same, ctx),
        None => hint_without_holder(cause, req, ctx),
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
    let fix = match req.syscall {
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
        in_use.push_str(&users_text(u));
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

/// `" (1 of its 2 ports reserved)"` when `ip_local_reserved_ports` takes ports of the range.
fn reserved_in_range(ctx: &PortContext) -> String {
    let Some((lo, hi)) = ctx.range else {
        return String::new();
    };
    let reserved: u32 = ctx
        .reserved
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (a.max(lo), b.min(hi));
            if a <= b { u32::from(b - a) + 1 } else { 0 }
        })
        .sum();
    if reserved == 0 {
        return String::new();
    }
    format!(
        " ({reserved} of its {} ports reserved)",
        u32::from(hi - lo) + 1
    )
}

/// `"2 ESTABLISHED, 1 TIME_WAIT; python3 (pid 42) 2, curl (pid 7, exited) 1"`.
fn users_text(u: &PortUsers) -> String {
    let states: Vec<String> = u.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut text = states.join(", ");
    if !u.top.is_empty() {
        let who: Vec<String> = u
            .top
            .iter()
            .map(|p| {
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

fn hint_without_holder(cause: Cause, req: &Request, ctx: &PortContext) -> String {
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
        Cause::LinkLocalWithoutInterface => format!(
            "{} is link-local: it exists once per interface, so the call must name one: give a \
             scope id ({}%eth0 in most tools, sin6_scope_id in the sockaddr) or bind the socket \
             to a device first (SO_BINDTODEVICE)",
            req.addr, req.addr
        ),
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

/// Whether the kernel takes a scope id (an interface) for `addr`: IPv6 link-local and
/// link-scoped multicast.
pub fn needs_scope_addr(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if needs_scope(a))
}

fn hint_for_holder(
    cause: Cause,
    req: &Request,
    h: &Holder,
    same: bool,
    ctx: &PortContext,
) -> String {
    let port = req.port;
    let ephemeral = ctx.in_ephemeral_range(port);
    let w = if same {
        "this process".to_string()
    } else {
        who(h)
    };
    let local = h.local;
    if let Some(o) = &h.opened_by
        && matches!(
            cause,
            Cause::ListenerConflict | Cause::UdpConflict | Cause::BoundSocketConflict
        )
    {
        return inherited_hint(h, o, &w, same, req.pid);
    }
    // Processes sharing the socket (a pre-fork server's workers): each keeps the port.
    let w = if same || h.shared_with.is_empty() {
        w
    } else {
        let others: Vec<String> = h.shared_with.iter().map(u32::to_string).collect();
        format!(
            "{w} (with pids {}, which share its socket)",
            others.join(", ")
        )
    };
    match cause {
        Cause::ListenerConflict => listener_hint(req, h, &w, same),
        Cause::TimeWaitConflict => time_wait_hint(req, h, &w, ctx),
        Cause::OutgoingConnectionConflict if same => format!(
            "this process itself has a connection from port {port} ({local} to {}): bind the \
             listener before connecting, or {}",
            h.remote.map_or_else(|| "?".to_string(), |r| r.to_string()),
            reuseaddr_fix(req, h, "the connection's socket")
        ),
        Cause::OutgoingConnectionConflict if orphaned(h) => orphan_hint(req, h, &w, ctx),
        Cause::OutgoingConnectionConflict => {
            let remote = h.remote.map(|r| format!(" to {r}")).unwrap_or_default();
            let now = format!(
                "{}, or stop that connection",
                reuseaddr_fix(req, h, "the connection's socket")
            );
            let fix = if ephemeral {
                format!("now: {now}; for good: {}", reserve_fix(port, ctx))
            } else {
                now
            };
            let what = if h.protocol == "udp" {
                "a UDP socket connected".to_string()
            } else {
                format!("a connection ({})", h.state.as_str())
            };
            format!(
                "{w} has {what} from {local}{remote} that uses port {port} as its source port; \
                 {fix}"
            )
        }
        Cause::AcceptedConnectionConflict => accepted_hint(req, h, &w),
        Cause::BoundSocketConflict => {
            let reuse = reuseaddr_fix(req, h, "that socket");
            let ways = [Some("close it"), narrower(req, h), Some(reuse.as_str())];
            format!(
                "{w} has a socket bound to {local} that neither listens nor connects{}: {}",
                if h.source == Source::History {
                    age(h)
                } else {
                    String::new()
                },
                either(&ways)
            )
        }
        Cause::UdpConflict => udp_hint(req, h, &w, ctx),
        Cause::ReuseportMismatch => format!(
            "both sockets set SO_REUSEPORT but belong to different users (uid {} here, uid {} for \
             {w}); the kernel shares a port only within one user: run both as the same user",
            req.uid,
            h.uid.map_or_else(|| "?".to_string(), |u| u.to_string())
        ),
        Cause::DualStackConflict => dual_stack_hint(req, h, &w),
        Cause::FourTupleInUse => {
            let lasts = if h.state == State::TimeWait {
                ", which lasts up to 60 s"
            } else {
                ""
            };
            format!(
                "{w} already has a connection from {local} to {} ({}{lasts}); {TUPLE_FIX}",
                h.remote.map_or_else(|| "?".to_string(), |r| r.to_string()),
                h.state.as_str()
            )
        }
        _ => format!("{w} holds {local}"),
    }
}

/// Another UDP socket, not connected, holds the port: a receiver, or a client that sent without
/// bind() and got an ephemeral port.
fn udp_hint(req: &Request, h: &Holder, w: &str, ctx: &PortContext) -> String {
    let (port, local) = (req.port, h.local);
    // UDP sockets share a port when both set SO_REUSEADDR (multicast receivers: each
    // gets every datagram) or both SO_REUSEPORT as one user (unicast spread over them).
    let share = udp_share(req, h);
    let ways = [
        Some(stop(h)),
        Some("choose another port"),
        narrower(req, h),
        Some(share.as_str()),
    ];
    let client = if ctx.in_ephemeral_range(port) {
        format!(
            "; if that socket is a client's that sent without bind() (its port then came \
                 from the ephemeral range), {}",
            reserve_fix(port, ctx)
        )
    } else {
        String::new()
    };
    format!(
        "{w} already has a UDP socket on {local}: {}{client}",
        either(&ways)
    )
}

/// How two UDP receivers share a port: both with SO_REUSEADDR (each gets every multicast or
/// broadcast datagram), or both with SO_REUSEPORT as one user (unicast datagrams spread over
/// them). Names the side that lacks SO_REUSEADDR when one has it.
fn udp_share(req: &Request, h: &Holder) -> String {
    let why = "if both are meant to receive its datagrams";
    match (req.reuseaddr, h.reuseaddr) {
        (false, Some(true)) => format!(
            "{why}, set SO_REUSEADDR on this socket (that one has it already; each then gets \
             every multicast and broadcast datagram)"
        ),
        (true, Some(false)) => format!(
            "{why}, set SO_REUSEADDR on that socket too (this one has it already; each then gets \
             every multicast and broadcast datagram)"
        ),
        _ => format!(
            "{why}, set SO_REUSEADDR on both sockets (each gets every multicast and broadcast \
             datagram) or SO_REUSEPORT on both (same user; the kernel spreads unicast datagrams \
             between them)"
        ),
    }
}

/// A listener holds the port: the caller's own (`same`), or `w`'s.
fn listener_hint(req: &Request, h: &Holder, w: &str, same: bool) -> String {
    let local = h.local;
    if same && req.syscall == SyscallName::Listen {
        return format!(
            "this process already listens on {local} with another socket: two sockets listen on \
             one port only if both set SO_REUSEPORT; close one of them or set SO_REUSEPORT on both"
        );
    }
    if same {
        return format!(
            "this process already listens on {local}: a second socket cannot bind that port (a \
             listener never shares it by SO_REUSEADDR); reuse the listening socket, or give the \
             new one another port (port 0 if it only connects out: the kernel then chooses)"
        );
    }
    let reuseport = match (req.reuseport, h.reuseport) {
        (true, Some(false)) => " (SO_REUSEPORT must be set on both sockets to share it)",
        // A server group sharing the port (nginx, envoy) meets an instance started without.
        (false, Some(true)) => {
            " with SO_REUSEPORT (set it on this socket too, as the same user, to share the port)"
        }
        _ => "",
    };
    let ways = [Some(stop(h)), Some("choose another port"), narrower(req, h)];
    format!(
        "{w} is already listening on {local}{reuseport}: {}",
        either(&ways)
    )
}

/// When the request is a wildcard and the holder has one address only: the way out that keeps
/// both (a DNS server's 0.0.0.0:53 against systemd-resolved's 127.0.0.53:53).
fn narrower(req: &Request, h: &Holder) -> Option<&'static str> {
    (req.addr.is_unspecified() && !canonical(h.local.ip()).is_unspecified()).then_some(
        "bind only the addresses this service needs instead of the wildcard (that socket holds \
         one address)",
    )
}

/// "a, b, or c" of the ways given.
fn either(ways: &[Option<&str>]) -> String {
    let ways: Vec<&str> = ways.iter().flatten().copied().collect();
    match ways.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, [only])) => format!("{only} or {last}"),
        Some((last, rest)) => format!("{}, or {last}", rest.join(", ")),
    }
}

/// `h`, held by `w` (perhaps the caller itself: `same`), was opened by another process
/// (`o`, its `opened_by`) and inherited: by fork() (a worker), or across exec (a program started
/// without closing the server's descriptors) — which of them, the history cannot tell.
fn inherited_hint(h: &Holder, o: &Opener, w: &str, same: bool, caller: u32) -> String {
    let opener = if o.pid == caller {
        "this process".to_string()
    } else {
        o.text()
    };
    let what = if h.state == State::Listen {
        "the listening socket"
    } else {
        "the socket"
    };
    let local = h.local;
    if same {
        return format!(
            "this process holds {what} on {local}, which {opener} opened: it inherited it (by \
             fork, or across exec without close-on-exec); use that socket, or close it before \
             binding a new one"
        );
    }
    let all = if h.shared_with.is_empty() {
        w.to_string()
    } else {
        let others: Vec<String> = h.shared_with.iter().map(u32::to_string).collect();
        format!("{w} and pids {}", others.join(", "))
    };
    format!(
        "{w} holds {what} on {local}, which {opener} opened: {w} inherited it (forked from it, \
         or a program it started without closing its descriptors), and the port stays taken \
         until every process holding the socket has closed it or exited; stop {all}, and if it \
         is a program the server started, have the server open its sockets close-on-exec \
         (SOCK_CLOEXEC / FD_CLOEXEC; close_fds when it starts programs)"
    )
}

/// A listening or bound socket `h` of `w` and the request overlap through an IPv6 wildcard
/// without IPV6_V6ONLY: whichever side it is gets the fix.
fn dual_stack_hint(req: &Request, h: &Holder, w: &str) -> String {
    let (local, port) = (h.local, req.port);
    let what = if h.state == State::Listen {
        "is listening on"
    } else {
        "holds"
    };
    // UDP receivers may share the port instead (a JVM's MulticastSocket sets SO_REUSEADDR).
    // `[::ffff:0.0.0.0]` is an IPv4 wildcard however the holder's socket is made: the IPv6
    // wildcard is then the request's.
    let (side, how) = if canonical(h.local.ip()).is_ipv6() {
        ("that", v6only_how(h.comm.as_deref().unwrap_or_default()))
    } else {
        ("this", v6only_how(&req.comm))
    };
    let v6only = format!("set IPV6_V6ONLY on {side} socket{how}");
    let share = req.udp.then(|| udp_share(req, h));
    let ways = either(&[
        Some(stop(h)),
        Some("choose another port"),
        Some(v6only.as_str()),
        share.as_deref(),
    ]);
    if side == "that" {
        return format!(
            "{w} {what} {local}, an IPv6 wildcard without IPV6_V6ONLY that also covers IPv4 port \
             {port}: {ways}"
        );
    }
    format!(
        "{w} {what} {local}, and this IPv6 wildcard bind without IPV6_V6ONLY also covers IPv4 \
         port {port}: {ways}"
    )
}

/// How the program `comm` sets IPV6_V6ONLY, where it is not a plain setsockopt().
fn v6only_how(comm: &str) -> &'static str {
    match comm {
        // -Djava.net.preferIPv4Stack=true would bind 0.0.0.0 instead: the same IPv4 port.
        "java" => {
            " (a JVM cannot set it, and binds its wildcard as [::] even when given 0.0.0.0: if \
             the service is to serve IPv4 too, this is a plain clash over the port; to serve \
             IPv6 only, bind the JVM to a specific IPv6 address)"
        }
        "node" => " (Node: `ipv6Only: true` in listen() or dgram.createSocket() options)",
        _ => "",
    }
}

/// Programs that hold ports on purpose, and what that means for whoever wants the port: a
/// holder's name alone rarely says why a system daemon has a service's port.
fn known_holder(h: &Holder, port: u16) -> Option<String> {
    if !matches!(h.state, State::Listen | State::Bound) {
        return None;
    }
    let note = match h.comm.as_deref()? {
        "systemd" => format!(
            "systemd listens there for socket activation, for the .socket unit that \
             `systemctl list-sockets | grep {port}` shows: start the service through that unit, \
             which hands it the socket, or stop and disable the .socket unit"
        ),
        "docker-proxy" => format!(
            "docker-proxy publishes a container's port there, for the container that `docker ps \
             --filter publish={port}` shows: stop it, or publish another host port"
        ),
        "kube-proxy" => "kube-proxy holds the node ports of NodePort services open so that \
                         nothing else takes them: a hostNetwork service must listen outside \
                         --service-node-port-range (30000-32767 by default)"
            .to_string(),
        "rpc.statd" => "rpc.statd (the NFS status monitor) took a port at random: pin its ports \
                        (rpc.statd --port and --outgoing-port, e.g. in /etc/nfs.conf [statd]) \
                        away from your services"
            .to_string(),
        _ => return None,
    };
    Some(note)
}

/// What to do when a connect() from a bound port meets a connection to the same destination.
const TUPLE_FIX: &str = "two connections cannot have the same source and destination address \
                         and port: let the kernel choose the source port (do not bind() before \
                         connect(), or set IP_BIND_ADDRESS_NO_PORT), or connect from another \
                         port";

/// The hint, with what the holder adds to it: a daemon's purpose, a dual-stack overlap, a socket
/// gone before the lookup.
fn hint_with_notes(
    cause: Cause,
    req: &Request,
    primary: Option<&Holder>,
    same: bool,
    ctx: &PortContext,
) -> String {
    let mut hint = hint(cause, req, primary, same, ctx);
    if let Some(note) = primary
        .filter(|h| !same && h.conflicts)
        .and_then(|h| known_holder(h, req.port))
    {
        let _ = write!(hint, " ({note})");
    }
    if let Some(h) = primary.filter(|h| h.conflicts)
        && cause != Cause::DualStackConflict
        && let Some(wildcard) = dual_stack_wildcard(req, h)
    {
        let _ = write!(
            hint,
            " ([{wildcard}] without IPV6_V6ONLY covers IPv4 port {} too)",
            req.port
        );
    } else if let Some(h) = primary.filter(|h| {
        // Only a socket with an IPv6 address of its own (from connect()), not `[::]`, whose
        // overlap the dual-stack hint explains.
        cause != Cause::DualStackConflict
            && h.conflicts
            && req.addr.is_ipv4()
            && canonical(h.local.ip()).is_ipv6()
            && !h.local.ip().is_unspecified()
    }) {
        let _ = write!(
            hint,
            " (an IPv6 socket without IPV6_V6ONLY that got its address from connect() holds \
             port {} for IPv4's 0.0.0.0 too, as 127.0.0.6: binding a specific IPv4 address \
             avoids it)",
            h.local.port()
        );
    }
    if let Some(h) = primary.filter(|h| h.conflicts && h.bound_dev_if != 0 && req.bound_dev_if == 0)
    {
        // The kernel lets sockets bound to different devices share a port; an unbound one
        // meets them all.
        let _ = write!(
            hint,
            " (that socket is bound to device {} only: bound to another device with \
             SO_BINDTODEVICE, this socket could have the port beside it)",
            h.device
                .clone()
                .unwrap_or_else(|| format!("#{}", h.bound_dev_if))
        );
    }
    if let Some(h) = primary.filter(|h| h.socket_closed) {
        let _ = write!(
            hint,
            " (bindtrace saw that socket take the port{}; it had closed by the time bindtrace \
             looked)",
            age(h)
        );
    } else if primary.is_some_and(|h| {
        h.source == Source::History
            && h.owner_alive == Some(false)
            && matches!(h.state, State::Listen | State::Bound)
            && h.opened_by.is_none()
    }) {
        // Still listed, but no process has it open and its owner is gone: either it was closing
        // as bindtrace looked (a server killed just after the failure), or the kernel holds it
        // (a socket a short-lived command had the kernel open: a VXLAN or WireGuard device's,
        // nfsd's).
        let _ = write!(
            hint,
            " (that process has exited since, and no process had the socket open when bindtrace \
             looked: if `ss -anp sport = :{}` no longer lists it, the port is free again; if it \
             still does, with no process, the kernel holds it for a device or service that \
             command set up)",
            req.port
        );
    }
    hint
}

/// Decides the cause from the failing request, the sockets found on the port and the namespace's
/// port settings.
pub fn verdict(req: &Request, mut holders: Vec<Holder>, ctx: &PortContext) -> Diagnosis {
    for h in &mut holders {
        h.conflicts = conflicts(req, h);
    }
    // Culprits first, then by how well a state explains a failure.
    holders.sort_by_key(|h| (!h.conflicts, h.state.rank(), h.source != Source::Live));
    let in_range = ctx.in_ephemeral_range(req.port);
    let fixed = match req.errno {
        // From a bound port: the connection it meets is looked for among the holders.
        EADDRNOTAVAIL if req.syscall == SyscallName::Connect && req.port != 0 => None,
        // A TCP connect() found no port free towards its destination; a UDP socket's found no
        // port to take at all (`inet_autobind()`).
        // (An EAGAIN of a socket that had a port is not one: an IPsec SA being negotiated.)
        EADDRNOTAVAIL | EAGAIN if req.syscall == SyscallName::Connect && req.port == 0 => {
            Some(Cause::EphemeralExhausted)
        }
        EADDRINUSE if req.port == 0 => Some(Cause::EphemeralExhausted),
        // Not below the threshold: the kernel's own check passed, a security module refused it.
        EACCES if ctx.unprivileged_start.is_some_and(|n| req.port >= n) => {
            Some(Cause::RefusedBySecurityModule)
        }
        EACCES => Some(Cause::PrivilegedPort),
        EADDRNOTAVAIL => Some(Cause::AddressNotLocal),
        EINVAL => Some(invalid_address(req)),
        ENODEV => Some(Cause::NoSuchDevice),
        EAFNOSUPPORT if req.syscall == SyscallName::Bind => Some(Cause::WrongFamily),
        EPERM if req.syscall == SyscallName::Bind => Some(Cause::RefusedByBpf),
        EADDRINUSE => None,
        _ => Some(Cause::Unknown),
    };
    let (cause, primary) = if let Some(c) = fixed {
        (c, None)
    } else if req.syscall == SyscallName::Connect {
        (
            Cause::FourTupleInUse,
            holders.first().filter(|h| h.conflicts),
        )
    } else if let Some(h) = holders.first() {
        let both_reuseport = req.reuseport && h.reuseport == Some(true);
        let other_user = h.uid.is_some_and(|u| u != req.uid);
        let cause = if both_reuseport && other_user && h.state != State::TimeWait {
            Cause::ReuseportMismatch
        } else if cross_family(req.addr, h.local.ip())
            && matches!(h.state, State::Listen | State::Bound)
        {
            // A connection's or a TIME-WAIT's port is the matter even when an IPv6 wildcard
            // bind meets it over IPv4 (a JVM's, by default): the hint says how they overlap.
            Cause::DualStackConflict
        } else if (req.udp || h.protocol == "udp")
            && !(h.state.is_connection() && h.remote.is_some())
        {
            Cause::UdpConflict
        } else if req.udp || h.protocol == "udp" {
            // A connected UDP socket: a client's (a resolver's, a metrics agent's), whose port
            // the kernel took from the ephemeral range unless it bound one — the seed's conflict
            // in UDP.
            Cause::OutgoingConnectionConflict
        } else {
            match h.state {
                State::Listen => Cause::ListenerConflict,
                State::TimeWait => Cause::TimeWaitConflict,
                State::Bound => Cause::BoundSocketConflict,
                s if s.is_connection() && h.accepted => Cause::AcceptedConnectionConflict,
                s if s.is_connection() => Cause::OutgoingConnectionConflict,
                _ => Cause::Unknown,
            }
        };
        (cause, Some(h))
    } else {
        (Cause::Unknown, None)
    };
    let same_process =
        primary.is_some_and(|h| h.pid == Some(req.pid) || h.shared_with.contains(&req.pid));
    let mut hint = hint_with_notes(cause, req, primary, same_process, ctx);
    if let Some(p) = primary {
        hint.push_str(&others_blocking(p, &holders));
    }
    let holders = if fixed.is_some() && cause != Cause::EphemeralExhausted {
        Vec::new()
    } else {
        holders
    };
    Diagnosis {
        cause,
        same_process,
        in_ephemeral_range: in_range,
        port_range: ctx.range.map(|(lo, hi)| format!("{lo}-{hi}")),
        reserved_ports: (!ctx.reserved.is_empty()).then(|| {
            ctx.reserved
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        }),
        ports_in_use: ctx.ports_in_use,
        port_users: ctx.users.clone(),
        device: ctx.device.clone(),
        holders,
        hint,
    }
}

/// Other processes' listening or bound sockets that block the call beside `primary` (listeners
/// on other devices, a port taken twice): stopping the one the hint names would not free the
/// port. Empty when there are none.
fn others_blocking(primary: &Holder, holders: &[Holder]) -> String {
    let others: Vec<String> = holders
        .iter()
        .filter(|h| h.conflicts && !std::ptr::eq(*h, primary))
        .filter(|h| matches!(h.state, State::Listen | State::Bound))
        .filter(|h| {
            h.pid
                .is_none_or(|p| Some(p) != primary.pid && !primary.shared_with.contains(&p))
        })
        .map(|h| {
            let dev = h
                .device
                .clone()
                .or_else(|| (h.bound_dev_if != 0).then(|| format!("#{}", h.bound_dev_if)))
                .map(|d| format!(" on device {d}"))
                .unwrap_or_default();
            format!("{} at {}{dev}", who(h), h.local)
        })
        .collect();
    if others.is_empty() {
        return String::new();
    }
    format!(
        "; it is not alone: {} also hold{} the port against this bind",
        others.join(", "),
        if others.len() == 1 { "s" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(addr: &str, port: u16) -> Request {
        Request {
            syscall: SyscallName::Bind,
            errno: EADDRINUSE,
            udp: false,
            addr: addr.parse().unwrap(),
            port,
            reuseaddr: false,
            reuseport: false,
            v6only: None,
            uid: 1000,
            pid: 100,
            bound_dev_if: 0,
            remote: None,
            at_ns: None,
            in_use: None,
            comm: "python3".into(),
        }
    }

    fn holder(state: State, local: &str) -> Holder {
        Holder {
            state,
            protocol: "tcp".into(),
            local: local.parse().unwrap(),
            remote: None,
            pid: Some(200),
            comm: Some("redis-cli".into()),
            thread: None,
            uid: Some(1000),
            source: Source::Live,
            reuseaddr: Some(false),
            reuseport: Some(false),
            v6only: None,
            bound_dev_if: 0,
            device: None,
            age_ms: None,
            expires_ms: None,
            owner_alive: None,
            shared_with: vec![],
            opened_by: None,
            inode: 1,
            container: crate::container::Context::default(),
            owner_cgroup: 0,
            socket_closed: false,
            accepted: false,
            owner_forgotten: false,
            conflicts: false,
        }
    }

    fn ctx() -> PortContext {
        PortContext {
            range: Some((5000, 65535)),
            reserved: vec![],
            ports_in_use: None,
            device: None,
            address: None,
            unprivileged_start: None,
            tw_reuse: None,
            users: None,
        }
    }

    #[test]
    fn seed_1a_time_wait_from_an_exited_process_blocks_even_reuseaddr() {
        let mut r = req("0.0.0.0", 8080);
        r.reuseaddr = true;
        let mut h = holder(State::TimeWait, "127.0.0.1:8080");
        h.remote = Some("127.0.0.1:6379".parse().unwrap());
        h.source = Source::History;
        h.owner_alive = Some(false);
        h.age_ms = Some(12_000);
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::TimeWaitConflict);
        assert!(d.holders[0].conflicts);
        assert!(d.in_ephemeral_range);
        assert!(!d.same_process);
        assert!(
            d.hint.contains(
                "opened 12 s ago by redis-cli (pid 200) (since exited) without SO_REUSEADDR"
            ),
            "{}",
            d.hint
        );
        assert!(
            d.hint.contains("ip_local_reserved_ports=8080"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn time_wait_with_reuseaddr_on_both_sides_does_not_conflict() {
        let mut r = req("0.0.0.0", 8080);
        r.reuseaddr = true;
        let mut h = holder(State::TimeWait, "127.0.0.1:8080");
        h.reuseaddr = Some(true);
        assert!(!conflicts(&r, &h));
    }

    #[test]
    fn seed_1b_and_3_2a_established_outgoing_connection() {
        let mut r = req("0.0.0.0", 8080);
        r.reuseaddr = true;
        let mut h = holder(State::Established, "127.0.0.1:8080");
        h.remote = Some("127.0.0.1:3306".parse().unwrap());
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
        assert!(d.hint.contains("source port"), "{}", d.hint);
        // 3.2b: both set SO_REUSEADDR: no conflict.
        let mut h = holder(State::Established, "127.0.0.1:8080");
        h.reuseaddr = Some(true);
        assert!(!conflicts(&r, &h));
    }

    #[test]
    fn seed_3_1_listener_never_shares_by_reuseaddr() {
        let mut r = req("127.0.0.1", 8080);
        r.reuseaddr = true;
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.reuseaddr = Some(true);
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert!(
            d.hint
                .starts_with("redis-cli (pid 200) is already listening on 0.0.0.0:8080")
        );
    }

    #[test]
    fn seed_3_3_and_3_4_same_process() {
        let r = req("0.0.0.0", 8080);
        let mut h = holder(State::Established, "127.0.0.1:8080");
        h.pid = Some(100);
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
        assert!(d.same_process);
        assert!(d.hint.starts_with("this process itself"), "{}", d.hint);

        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.pid = Some(7);
        h.shared_with = vec![100];
        let d = verdict(&req("127.0.0.1", 8080), vec![h], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert!(d.same_process, "a socket shared with the caller counts");
    }

    #[test]
    fn seed_3_6_reuseport_same_user_shares_other_user_does_not() {
        let mut r = req("0.0.0.0", 8080);
        r.reuseport = true;
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.reuseport = Some(true);
        assert!(!conflicts(&r, &h), "same uid shares");
        h.uid = Some(0);
        assert!(conflicts(&r, &h));
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::ReuseportMismatch);
        assert!(d.hint.contains("uid 1000 here, uid 0"), "{}", d.hint);
    }

    #[test]
    fn listen_failure_is_decided_by_listeners_only() {
        let mut r = req("127.0.0.1", 8080);
        r.syscall = SyscallName::Listen;
        r.reuseaddr = true;
        let mut bound = holder(State::Bound, "127.0.0.1:8080");
        bound.reuseaddr = Some(true);
        let mut lst = holder(State::Listen, "127.0.0.1:8080");
        lst.reuseaddr = Some(true);
        let d = verdict(&r, vec![bound, lst], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert_eq!(d.holders[0].state, State::Listen);
        assert!(!d.holders[1].conflicts);
    }

    /// connect() from a bound port, refused with EADDRNOTAVAIL: the connection to the same
    /// destination from that address and port is named; one to another destination is not.
    #[test]
    fn four_tuple_in_use() {
        let mut r = req("127.0.0.1", 44000);
        r.syscall = SyscallName::Connect;
        r.errno = EADDRNOTAVAIL;
        r.remote = Some("127.0.0.1:6379".parse().unwrap());
        let mut other = holder(State::Established, "127.0.0.1:44000");
        other.remote = Some("127.0.0.1:5432".parse().unwrap());
        let mut tw = holder(State::TimeWait, "127.0.0.1:44000");
        tw.remote = r.remote;
        let d = verdict(&r, vec![other, tw], &ctx());
        assert_eq!(d.cause, Cause::FourTupleInUse);
        assert_eq!(d.holders[0].state, State::TimeWait);
        assert!(d.holders[0].conflicts && !d.holders[1].conflicts);
        assert!(d.hint.starts_with("redis-cli (pid 200) already has a connection from 127.0.0.1:44000 to 127.0.0.1:6379 (TIME_WAIT, which lasts up to 60 s)"), "{}", d.hint);

        // From an ephemeral port it is the range, as before.
        r.port = 0;
        assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::EphemeralExhausted);
        // Nothing left that matches: still the four-tuple, said without a holder.
        r.port = 44000;
        let d = verdict(&r, vec![], &ctx());
        assert_eq!(d.cause, Cause::FourTupleInUse);
        assert!(d.hint.contains("already exists"), "{}", d.hint);
    }

    #[test]
    fn dual_stack() {
        // [::] without V6ONLY covers 0.0.0.0
        assert!(addresses_overlap(
            "0.0.0.0".parse().unwrap(),
            None,
            "::".parse().unwrap(),
            Some(false)
        ));
        assert!(!addresses_overlap(
            "0.0.0.0".parse().unwrap(),
            None,
            "::".parse().unwrap(),
            Some(true)
        ));
        assert!(addresses_overlap(
            "::ffff:127.0.0.1".parse().unwrap(),
            None,
            "127.0.0.1".parse().unwrap(),
            None
        ));
        assert!(!addresses_overlap(
            "127.0.0.1".parse().unwrap(),
            None,
            "127.0.0.2".parse().unwrap(),
            None
        ));
        let mut h = holder(State::Listen, "[::]:8080");
        h.v6only = Some(false);
        let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
        assert_eq!(d.cause, Cause::DualStackConflict);
        assert!(d.hint.contains("IPV6_V6ONLY"));

        // The seed's JVM: its [::] bind meets an IPv4 connection's port. The connection is the
        // matter; the hint says how the two overlap.
        let mut jvm = req("::", 8080);
        jvm.reuseaddr = true;
        jvm.v6only = Some(false);
        for (state, cause, local) in [
            (State::TimeWait, Cause::TimeWaitConflict, "127.0.0.1:8080"),
            // A JVM's own connections are IPv6 sockets with IPv4-mapped addresses.
            (
                State::Established,
                Cause::OutgoingConnectionConflict,
                "[::ffff:127.0.0.1]:8080",
            ),
        ] {
            let mut h = holder(state, local);
            h.remote = Some("127.0.0.1:6379".parse().unwrap());
            let d = verdict(&jvm, vec![h], &ctx());
            assert_eq!(d.cause, cause);
            assert!(
                d.hint
                    .ends_with("([::] without IPV6_V6ONLY covers IPv4 port 8080 too)"),
                "{}",
                d.hint
            );
        }
        // An IPv4 bind refused by a `[::]` listener: the dual-stack hint, not the note about an
        // IPv6 connection's IPv4 face.
        let mut jvm_listener = holder(State::Listen, "[::]:8080");
        jvm_listener.v6only = Some(false);
        let d = verdict(&req("0.0.0.0", 8080), vec![jvm_listener], &ctx());
        assert_eq!(d.cause, Cause::DualStackConflict);
        assert!(!d.hint.contains("127.0.0.6"), "{}", d.hint);
        // No wildcard in between, or one with IPV6_V6ONLY: no such note.
        let mut h = holder(State::Established, "[2001:db8::1]:8080");
        h.remote = Some("[2001:db8::2]:6379".parse().unwrap());
        let mut specific = req("0.0.0.0", 8080);
        specific.reuseaddr = true;
        assert!(dual_stack_wildcard(&specific, &h).is_none());
        let mut v6only = jvm.clone();
        v6only.v6only = Some(true);
        let tw = holder(State::TimeWait, "127.0.0.1:8080");
        assert!(dual_stack_wildcard(&v6only, &tw).is_none());
        assert!(
            !verdict(&v6only, vec![tw], &ctx())
                .hint
                .contains("IPV6_V6ONLY covers")
        );
    }

    /// A dual-stack client's connection over IPv6 holds its source port against an IPv4
    /// wildcard (its IPv4 face is 127.0.0.6), not against another IPv4 address; a socket bound to
    /// an IPv6 address is IPV6_V6ONLY and meets no IPv4 bind.
    #[test]
    fn an_ipv6_connection_without_v6only_blocks_the_ipv4_wildcard() {
        let mut h = holder(State::Established, "[::1]:52888");
        h.remote = Some("[::1]:7777".parse().unwrap());
        h.v6only = Some(false);
        let mut r = req("0.0.0.0", 52888);
        r.reuseaddr = true;
        assert!(conflicts(&r, &h));
        let d = verdict(&r, vec![h.clone()], &ctx());
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
        assert!(d.holders[0].conflicts);
        assert!(d.hint.contains("as 127.0.0.6"), "{}", d.hint);
        assert!(!conflicts(&req("127.0.0.1", 52888), &h));
        h.v6only = Some(true);
        assert!(!conflicts(&r, &h));
        h.v6only = None;
        assert!(
            !conflicts(&r, &h),
            "unknown: as bound, which sets IPV6_V6ONLY"
        );
    }

    /// A TIME-WAIT whose owner and options are unknown (made before bindtrace started), refused
    /// a bind with SO_REUSEADDR: the hint infers what the connection lacked and asks only for
    /// what is missing; no dangling comma where no owner is named.
    #[test]
    fn an_unknown_time_wait_refusing_reuseaddr_asks_only_for_the_missing_side() {
        let mut h = holder(State::TimeWait, "127.0.0.1:9060");
        h.remote = Some("127.0.0.1:9041".parse().unwrap());
        h.pid = None;
        h.comm = None;
        h.reuseaddr = None;
        h.reuseport = None;
        let mut r = req("0.0.0.0", 9060);
        r.reuseaddr = true;
        let mut c = ctx();
        c.range = Some((32768, 60999));
        let d = verdict(&r, vec![h], &c);
        assert_eq!(d.cause, Cause::TimeWaitConflict);
        assert!(
            d.hint
                .starts_with("a TIME-WAIT connection from 127.0.0.1:9060 to 127.0.0.1:9041 holds"),
            "{}",
            d.hint
        );
        assert!(
            d.hint
                .contains("so the connection's socket was made without it"),
            "{}",
            d.hint
        );
        assert!(
            d.hint.contains(
                "for good: this socket has SO_REUSEADDR already: set it on the connection's \
                 socket too"
            ),
            "{}",
            d.hint
        );
        assert!(!d.hint.contains("on both sockets"), "{}", d.hint);
    }

    /// A connection its process closed before exiting, still in FIN_WAIT2: nothing to stop or
    /// set an option on; the hint says how long the kernel keeps it and who keeps it open.
    #[test]
    fn an_orphaned_connection_is_waited_out_not_stopped() {
        let mut h = holder(State::FinWait2, "127.0.0.1:9103");
        h.remote = Some("127.0.0.1:9102".parse().unwrap());
        h.inode = 0;
        h.owner_alive = Some(false);
        h.source = Source::History;
        let mut r = req("127.0.0.1", 9103);
        r.reuseaddr = true;
        let mut c = ctx();
        c.range = Some((32768, 60999));
        let d = verdict(&r, vec![h.clone()], &c);
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
        for part in [
            "(FIN_WAIT2), made by redis-cli (pid 200), uses port 9103",
            "its process has closed it",
            "127.0.0.1:9102, which holds its end in CLOSE_WAIT",
            "net.ipv4.tcp_fin_timeout",
            "now: wait for it to end",
        ] {
            assert!(d.hint.contains(part), "{part:?} in {}", d.hint);
        }
        assert!(!d.hint.contains("stop that connection"), "{}", d.hint);
        // One a process still holds is not orphaned.
        h.inode = 4242;
        let d = verdict(&r, vec![h], &c);
        assert!(d.hint.contains("stop that connection"), "{}", d.hint);
    }

    /// A new server with SO_REUSEADDR refused by its predecessor's server-side TIME-WAIT: the
    /// predecessor lacked it; the hint does not ask for what this socket has.
    #[test]
    fn a_predecessor_without_reuseaddr_is_what_refuses_a_server_with_it() {
        let mut h = holder(State::TimeWait, "10.77.0.1:7002");
        h.remote = Some("10.77.0.2:51000".parse().unwrap());
        h.accepted = true;
        let mut r = req("0.0.0.0", 7002);
        r.reuseaddr = true;
        let d = verdict(&r, vec![h.clone()], &ctx());
        assert_eq!(d.cause, Cause::TimeWaitConflict);
        assert!(d.hint.contains(OLD_SERVER_LACKED), "{}", d.hint);
        assert!(!d.hint.contains("before bind()"), "{}", d.hint);
        r.reuseaddr = false;
        let d = verdict(&r, vec![h], &ctx());
        assert!(d.hint.contains(SERVER_FIX), "{}", d.hint);
    }

    /// Listeners on two devices both block an unbound wildcard: the hint names both.
    #[test]
    fn every_listener_that_blocks_is_named() {
        let mut a = holder(State::Listen, "0.0.0.0:9020");
        a.bound_dev_if = 3;
        a.device = Some("vethA".into());
        let mut b = a.clone();
        b.pid = Some(201);
        b.comm = Some("python3".into());
        b.bound_dev_if = 2;
        b.device = Some("veth0".into());
        let d = verdict(&req("0.0.0.0", 9020), vec![a, b], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert!(
            d.hint.contains(
                "it is not alone: python3 (pid 201) at 0.0.0.0:9020 on device veth0 also holds"
            ),
            "{}",
            d.hint
        );
    }

    #[test]
    fn udp_and_devices() {
        let mut r = req("127.0.0.1", 5353);
        r.udp = true;
        r.reuseaddr = true;
        let mut h = holder(State::Bound, "127.0.0.1:5353");
        h.protocol = "udp".into();
        let d = verdict(&r, vec![h.clone()], &ctx());
        assert_eq!(d.cause, Cause::UdpConflict);
        h.reuseaddr = Some(true);
        assert!(!conflicts(&r, &h), "UDP shares when both set SO_REUSEADDR");
        let mut r = req("0.0.0.0", 8080);
        r.bound_dev_if = 2;
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.bound_dev_if = 3;
        assert!(!conflicts(&r, &h), "different devices do not conflict");
    }

    /// A client's TIME-WAIT on an ephemeral port: what lets the bind through now (SO_REUSEADDR
    /// when the connection had it, else waiting out the timer) and what keeps it from recurring
    /// (reserving the port).
    #[test]
    fn a_time_wait_hint_gives_the_fix_for_now_and_for_good() {
        let mut h = holder(State::TimeWait, "10.0.0.1:40000");
        h.remote = Some("10.0.0.2:443".parse().unwrap());
        h.expires_ms = Some(41_200);
        let mut c = ctx();
        c.range = Some((32768, 60999));
        let d = verdict(&req("0.0.0.0", 40000), vec![h.clone()], &c);
        assert!(
            d.hint
                .contains("now: wait for the TIME-WAIT to end (42 s left)"),
            "{}",
            d.hint
        );
        assert!(
            d.hint
                .contains("; for good: port 40000 lies in the ephemeral range"),
            "{}",
            d.hint
        );
        h.reuseaddr = Some(true);
        let d = verdict(&req("0.0.0.0", 40000), vec![h.clone()], &c);
        assert!(
            d.hint
                .contains("now: set SO_REUSEADDR on this socket (that connection had it)")
        );
        // Outside the range: sharing is the fix for good too.
        h.reuseaddr = Some(false);
        let d = verdict(&req("0.0.0.0", 8080), vec![h], &c);
        assert!(
            d.hint
                .contains("for good: set SO_REUSEADDR on both sockets"),
            "{}",
            d.hint
        );
    }

    /// A connected UDP socket on the port is a client's, its port the kernel's choice from the
    /// ephemeral range: the seed's conflict in UDP, fixed by reserving the port.
    #[test]
    fn a_connected_udp_client_on_an_ephemeral_port_gets_the_reserve_fix() {
        let mut r = req("0.0.0.0", 40000);
        r.udp = true;
        let mut h = holder(State::Established, "127.0.0.1:40000");
        h.protocol = "udp".into();
        h.remote = Some("127.0.0.1:53".parse().unwrap());
        let mut c = ctx();
        c.range = Some((32768, 60999));
        let d = verdict(&r, vec![h.clone()], &c);
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
        assert!(
            d.hint
                .contains("a UDP socket connected from 127.0.0.1:40000 to 127.0.0.1:53")
        );
        assert!(
            d.hint.contains("ip_local_reserved_ports=40000"),
            "{}",
            d.hint
        );
        // Unconnected, on an ephemeral port: a receiver, or a client that sent without bind().
        h.state = State::Bound;
        h.remote = None;
        let d = verdict(&r, vec![h], &c);
        assert_eq!(d.cause, Cause::UdpConflict);
        assert!(d.hint.contains("sent without bind()"), "{}", d.hint);
        assert!(
            d.hint.contains("ip_local_reserved_ports=40000"),
            "{}",
            d.hint
        );
    }

    /// UDP receivers share a port with SO_REUSEADDR on both: the hint names the side without it,
    /// also across families (a JVM's MulticastSocket on `[::]` has it; a plain socket has not).
    #[test]
    fn udp_sharing_names_the_side_without_so_reuseaddr() {
        let mut r = req("0.0.0.0", 5000);
        r.udp = true;
        r.reuseaddr = true;
        let mut h = holder(State::Bound, "0.0.0.0:5000");
        h.protocol = "udp".into();
        let d = verdict(&r, vec![h.clone()], &ctx());
        assert!(
            d.hint.contains("set SO_REUSEADDR on that socket too"),
            "{}",
            d.hint
        );
        let mut jvm = h.clone();
        jvm.local = "[::]:5000".parse().unwrap();
        jvm.v6only = Some(false);
        jvm.comm = Some("java".into());
        jvm.reuseaddr = Some(true);
        r.reuseaddr = false;
        let d = verdict(&r, vec![jvm], &ctx());
        assert_eq!(d.cause, Cause::DualStackConflict);
        assert!(
            d.hint.contains("set SO_REUSEADDR on this socket"),
            "{}",
            d.hint
        );
        // An IPv6 socket bound to `[::ffff:0.0.0.0]` holds the IPv4 wildcard: the IPv6 wildcard
        // asked for is this socket's.
        let mut mapped = holder(State::Listen, "[::ffff:0.0.0.0]:5000");
        mapped.v6only = Some(false);
        let mut v6 = req("::", 5000);
        v6.v6only = Some(false);
        let d = verdict(&v6, vec![mapped], &ctx());
        assert_eq!(d.cause, Cause::DualStackConflict);
        assert!(
            d.hint.contains("or set IPV6_V6ONLY on this socket"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn exhaustion_and_other_errnos() {
        let mut r = req("0.0.0.0", 0);
        r.syscall = SyscallName::Connect;
        r.errno = EADDRNOTAVAIL;
        r.remote = Some("10.0.0.5:6379".parse().unwrap());
        let c = PortContext {
            range: Some((40000, 40009)),
            reserved: vec![],
            ports_in_use: Some(10),
            device: None,
            address: None,
            unprivileged_start: None,
            tw_reuse: None,
            users: None,
        };
        let d = verdict(&r, vec![], &c);
        assert_eq!(d.cause, Cause::EphemeralExhausted);
        assert_eq!(d.port_range.as_deref(), Some("40000-40009"));
        assert!(
            d.hint.contains("towards 10.0.0.5:6379 (10 in use)"),
            "{}",
            d.hint
        );

        let mut r = req("0.0.0.0", 80);
        r.errno = EACCES;
        assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::PrivilegedPort);
        r.errno = EADDRNOTAVAIL;
        assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::AddressNotLocal);
        r.errno = EINVAL;
        assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::AlreadyBound);
    }

    #[test]
    fn einval_names_the_address_check_that_refused() {
        use Cause::{
            AlreadyBound, LinkLocalWithoutInterface, MappedAddressOnV6Only, MulticastAddress,
            Unknown,
        };
        let (fresh, bound) = (Some(false), Some(true));
        // (address, udp, IPV6_V6ONLY, device, socket in use, cause)
        let cases = [
            ("127.0.0.1", false, None, 0, bound, AlreadyBound),
            ("127.0.0.1", false, None, 0, None, AlreadyBound),
            ("127.0.0.1", false, None, 0, fresh, Unknown),
            ("::1", false, Some(false), 0, bound, AlreadyBound),
            (
                "fe80::1",
                false,
                Some(false),
                0,
                fresh,
                LinkLocalWithoutInterface,
            ),
            (
                "ff02::1",
                true,
                Some(false),
                0,
                None,
                LinkLocalWithoutInterface,
            ),
            // The kernel checks the state first: a bound socket's second bind is that, whatever
            // the address (its scope id is not in the event; binding a specific address set
            // V6ONLY).
            ("fe80::1", false, Some(false), 0, bound, AlreadyBound),
            (
                "::ffff:127.0.0.1",
                false,
                Some(true),
                0,
                bound,
                AlreadyBound,
            ),
            ("fe80::1", false, Some(false), 2, fresh, Unknown),
            // Multicast on TCP is checked before the state.
            ("ff05::1", false, None, 0, bound, MulticastAddress),
            ("ff05::1", true, None, 0, None, AlreadyBound),
            (
                "::ffff:127.0.0.1",
                false,
                Some(true),
                0,
                fresh,
                MappedAddressOnV6Only,
            ),
            (
                "::ffff:127.0.0.1",
                false,
                Some(false),
                0,
                None,
                AlreadyBound,
            ),
        ];
        for (addr, udp, v6only, dev, in_use, want) in cases {
            let mut r = req(addr, 9000);
            r.errno = EINVAL;
            r.udp = udp;
            r.v6only = v6only;
            r.bound_dev_if = dev;
            r.in_use = in_use;
            let d = verdict(&r, vec![], &ctx());
            assert!(!d.hint.is_empty());
            assert_eq!(
                d.cause, want,
                "{addr} udp={udp} dev={dev} in_use={in_use:?}"
            );
        }
    }

    #[test]
    fn other_errnos_have_their_own_causes() {
        let d = |errno: i32| {
            let mut r = req("10.1.2.3", 9000);
            r.errno = errno;
            verdict(&r, vec![], &ctx())
        };
        assert_eq!(d(ENODEV).cause, Cause::NoSuchDevice);
        assert_eq!(d(EPERM).cause, Cause::RefusedByBpf);
        assert_eq!(d(EAFNOSUPPORT).cause, Cause::WrongFamily);
        let other = d(105);
        assert_eq!(other.cause, Cause::Unknown);
        assert!(
            other
                .hint
                .contains("E105 from bind() is not a port conflict"),
            "{}",
            other.hint
        );
    }

    #[test]
    fn a_refused_address_is_judged_by_what_the_namespace_has_now() {
        let hint = |addr: &str, now: Option<AddressNow>| {
            let mut r = req(addr, 9000);
            r.errno = EADDRNOTAVAIL;
            let mut c = ctx();
            c.address = now;
            let d = verdict(&r, vec![], &c);
            assert_eq!(d.cause, Cause::AddressNotLocal);
            d.hint
        };
        let h = hint("2001:db8::7", Some(AddressNow::Tentative("eth0".into())));
        assert!(h.contains("tentative"), "{h}");
        assert!(h.contains("net.ipv6.conf.eth0.accept_dad=0"), "{h}");
        assert!(h.contains("net.ipv6.ip_nonlocal_bind=1"), "{h}");
        let h = hint("2001:db8::7", Some(AddressNow::DadFailed("eth0".into())));
        assert!(h.contains("failed duplicate address detection"), "{h}");
        let h = hint("192.0.2.5", Some(AddressNow::Present("eth0".into())));
        assert!(h.contains("is on eth0 now"), "{h}");
        assert!(
            h.contains("IP_FREEBIND / net.ipv4.ip_nonlocal_bind=1"),
            "{h}"
        );
        let h = hint("192.0.2.5", Some(AddressNow::Absent));
        assert!(
            h.contains("none of its interfaces has it now either"),
            "{h}"
        );
        assert!(h.contains("(or 0.0.0.0)"), "{h}");
        let h = hint("2001:db8::9", None);
        assert!(h.contains("(or [::])"), "{h}");
        assert!(!h.contains("now either"), "{h}");
    }

    #[test]
    fn a_servers_own_connections_are_named_as_accepted() {
        let mut tw = holder(State::TimeWait, "127.0.0.1:40000");
        tw.remote = Some("127.0.0.1:40001".parse().unwrap());
        tw.source = Source::History;
        tw.accepted = true;
        tw.age_ms = Some(5000);
        tw.owner_alive = Some(false);
        let d = verdict(&req("0.0.0.0", 40000), vec![tw.clone()], &ctx());
        assert_eq!(d.cause, Cause::TimeWaitConflict);
        assert!(
            d.hint
                .contains("accepted by the listener redis-cli (pid 200)"),
            "{}",
            d.hint
        );
        assert!(
            d.hint.contains("SO_REUSEADDR on the listening socket"),
            "{}",
            d.hint
        );
        assert!(
            !d.hint.contains("ip_local_reserved_ports"),
            "a server's own port needs no reservation: {}",
            d.hint
        );
        let mut est = tw;
        est.state = State::Established;
        est.source = Source::Live;
        let d = verdict(&req("0.0.0.0", 40000), vec![est.clone()], &ctx());
        assert_eq!(d.cause, Cause::AcceptedConnectionConflict);
        est.accepted = false;
        let d = verdict(&req("0.0.0.0", 40000), vec![est], &ctx());
        assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    }

    #[test]
    fn causes_read_the_same_in_json_and_text() {
        use Cause::*;
        for c in [
            ListenerConflict,
            TimeWaitConflict,
            OutgoingConnectionConflict,
            AcceptedConnectionConflict,
            BoundSocketConflict,
            UdpConflict,
            ReuseportMismatch,
            DualStackConflict,
            EphemeralExhausted,
            FourTupleInUse,
            PrivilegedPort,
            RefusedBySecurityModule,
            AddressNotLocal,
            AlreadyBound,
            LinkLocalWithoutInterface,
            MappedAddressOnV6Only,
            MulticastAddress,
            WrongFamily,
            RefusedByBpf,
            NoSuchDevice,
            Unknown,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn exhaustion_hints_fit_the_call_that_wanted_a_port() {
        let hint = |syscall: SyscallName| {
            let mut r = req("0.0.0.0", 0);
            r.syscall = syscall;
            let d = verdict(&r, vec![], &ctx());
            assert_eq!(d.cause, Cause::EphemeralExhausted);
            d.hint
        };
        assert!(hint(SyscallName::Listen).contains("bind() the port"));
        assert!(hint(SyscallName::Bind).contains("bind() to port 0"));
    }

    #[test]
    fn a_listener_shared_by_forked_workers_asks_to_stop_them_all() {
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.comm = Some("gunicorn".into());
        h.shared_with = vec![201, 202];
        let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert!(
            d.hint.contains(
                "gunicorn (pid 200) (with pids 201, 202, which share its socket) is already \
                 listening"
            ),
            "{}",
            d.hint
        );
        assert!(d.hint.contains("stop all of them"), "{}", d.hint);
    }

    #[test]
    fn an_inherited_socket_names_who_opened_it() {
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.comm = Some("sleep".into());
        h.opened_by = Some(Opener {
            pid: 300,
            comm: "server".into(),
            alive: false,
        });
        let d = verdict(&req("0.0.0.0", 8080), vec![h.clone()], &ctx());
        assert_eq!(d.cause, Cause::ListenerConflict);
        assert!(
            d.hint
                .contains("which server (pid 300, since exited) opened"),
            "{}",
            d.hint
        );
        assert!(d.hint.contains("close-on-exec"), "{}", d.hint);
        h.comm = Some("server".into());
        h.shared_with = vec![201, 202];
        let mut r = req("0.0.0.0", 8080);
        r.pid = 300;
        let d = verdict(&r, vec![h], &ctx());
        assert!(d.hint.contains("which this process opened"), "{}", d.hint);
        assert!(
            d.hint
                .contains("stop redis-cli (pid 200) and pids 201, 202")
                || d.hint.contains("stop server (pid 200) and pids 201, 202"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn a_wildcard_against_one_address_is_told_to_narrow() {
        let mut r = req("0.0.0.0", 53);
        r.udp = true;
        let mut h = holder(State::Bound, "127.0.0.53:53");
        h.protocol = "udp".into();
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::UdpConflict);
        assert!(
            d.hint.contains(
                "stop it, choose another port, bind only the addresses this service needs"
            ),
            "{}",
            d.hint
        );
        let d = verdict(
            &req("0.0.0.0", 80),
            vec![holder(State::Listen, "0.0.0.0:80")],
            &ctx(),
        );
        assert!(
            !d.hint.contains("addresses this service needs"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn daemons_that_hold_ports_on_purpose_are_explained() {
        let note = |comm: &str| {
            let mut h = holder(State::Listen, "0.0.0.0:8080");
            h.comm = Some(comm.into());
            verdict(&req("0.0.0.0", 8080), vec![h], &ctx()).hint
        };
        assert!(note("systemd").contains("systemctl list-sockets | grep 8080"));
        assert!(note("docker-proxy").contains("docker ps --filter publish=8080"));
        assert!(note("kube-proxy").contains("--service-node-port-range"));
        assert!(
            note("nginx").ends_with("choose another port"),
            "{}",
            note("nginx")
        );
    }

    /// SO_REUSEADDR lifts a conflict with a TIME-WAIT, a connection or a bound socket only when
    /// both sockets have it: the hint asks it of the side that lacks it.
    #[test]
    fn the_reuseaddr_fix_names_the_side_that_lacks_it() {
        let hint = |state: State, ours: bool, theirs: bool| {
            let mut r = req("127.0.0.1", 80);
            r.reuseaddr = ours;
            let mut h = holder(state, "127.0.0.1:80");
            h.remote = Some("127.0.0.1:9000".parse().unwrap());
            h.reuseaddr = Some(theirs);
            verdict(&r, vec![h], &ctx()).hint
        };
        for state in [State::TimeWait, State::Established, State::Bound] {
            let h = hint(state, true, false);
            assert!(
                h.contains("this socket has SO_REUSEADDR already but"),
                "{h}"
            );
            let h = hint(state, false, true);
            assert!(h.contains("set SO_REUSEADDR on this socket ("), "{h}");
            let h = hint(state, false, false);
            assert!(h.contains("set SO_REUSEADDR on both sockets"), "{h}");
        }
        let mut r = req("0.0.0.0", 5353);
        r.udp = true;
        let mut h = holder(State::Bound, "0.0.0.0:5353");
        h.protocol = "udp".into();
        h.reuseaddr = Some(true);
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::UdpConflict);
        assert!(
            d.hint.contains("set SO_REUSEADDR on this socket"),
            "{}",
            d.hint
        );
    }

    /// A listener still listed but open in no process, whose remembered owner has exited: it was
    /// closing as bindtrace looked, or the kernel holds it; the hint says how to tell. Not said of
    /// a live holder, nor of a TIME-WAIT or an orphaned connection (which outlive their process by
    /// design).
    #[test]
    fn a_holder_whose_owner_just_exited_is_said_to_be_going() {
        let going = |state: State, source: Source| {
            let mut h = holder(state, "0.0.0.0:8080");
            h.source = source;
            h.owner_alive = Some(false);
            verdict(&req("0.0.0.0", 8080), vec![h], &ctx())
                .hint
                .contains("the port is free again; if it still does")
        };
        assert!(going(State::Listen, Source::History));
        assert!(!going(State::Listen, Source::Live));
        assert!(!going(State::TimeWait, Source::History));
        // An orphaned connection holds the port until it ends: not said of it either.
        assert!(!going(State::FinWait2, Source::History));
    }

    /// An exhausted range's hint says who holds it, how much of it is reserved, and, when
    /// TIME-WAITs take the ports of a connect() and tcp_tw_reuse is off, how to reuse them.
    #[test]
    fn an_exhausted_range_says_who_holds_it() {
        let mut r = req("0.0.0.0", 0);
        r.syscall = SyscallName::Connect;
        r.errno = EADDRNOTAVAIL;
        r.remote = Some("10.0.0.5:443".parse().unwrap());
        let mut c = ctx();
        c.range = Some((40000, 40003));
        c.reserved = vec![(40003, 40010)];
        c.ports_in_use = Some(4);
        c.tw_reuse = Some(0);
        c.users = Some(PortUsers {
            by_state: [("ESTABLISHED".to_string(), 2), ("TIME_WAIT".to_string(), 2)].into(),
            top: vec![
                PortUser {
                    pid: 7,
                    comm: "curl".into(),
                    alive: false,
                    sockets: 2,
                },
                PortUser {
                    pid: 42,
                    comm: "python3".into(),
                    alive: true,
                    sockets: 1,
                },
            ],
            sampled: 4,
            unattributed: 1,
        });
        let d = verdict(&r, vec![], &c);
        assert_eq!(d.cause, Cause::EphemeralExhausted);
        for part in [
            "40000-40003 (1 of its 4 ports reserved) towards 10.0.0.5:443",
            "(4 in use: 2 ESTABLISHED, 2 TIME_WAIT; by curl (pid 7, exited) 2, python3 (pid 42) 1; \
             1 with no process found)",
            "2 of them are TIME-WAIT: `sysctl -w net.ipv4.tcp_tw_reuse=1`",
            "(this namespace has 0)",
        ] {
            assert!(d.hint.contains(part), "{part} in: {}", d.hint);
        }
        assert_eq!(d.port_users.as_ref().map(|u| u.sampled), Some(4));
        // With TIME-WAIT reuse on, or for a bind(0), the sysctl is not offered.
        c.tw_reuse = Some(1);
        assert!(!verdict(&r, vec![], &c).hint.contains("tcp_tw_reuse"));
        r.syscall = SyscallName::Bind;
        r.errno = EADDRINUSE;
        c.tw_reuse = Some(0);
        assert!(!verdict(&r, vec![], &c).hint.contains("tcp_tw_reuse"));
    }

    /// A holder bound to one device blocks an unbound socket; bound to another device, the new
    /// socket could share the port: the hint says so, naming the device. Not said when the
    /// request is itself bound (to the same device, since they conflict).
    #[test]
    fn a_device_bound_holder_is_named_with_its_device() {
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.bound_dev_if = 3;
        h.device = Some("eth1".into());
        let d = verdict(&req("0.0.0.0", 8080), vec![h.clone()], &ctx());
        assert!(d.hint.contains("bound to device eth1 only"), "{}", d.hint);
        let mut r = req("0.0.0.0", 8080);
        r.bound_dev_if = 3;
        assert!(
            !verdict(&r, vec![h], &ctx())
                .hint
                .contains("bound to device")
        );
    }

    /// The privileged-port hint gives the namespace's own threshold when it was read.
    #[test]
    fn a_privileged_port_hint_gives_the_namespaces_threshold() {
        let mut r = req("0.0.0.0", 443);
        r.errno = EACCES;
        let mut c = ctx();
        c.unprivileged_start = Some(500);
        let d = verdict(&r, vec![], &c);
        assert_eq!(d.cause, Cause::PrivilegedPort);
        assert!(d.hint.contains("(500 in this namespace)"), "{}", d.hint);
        assert!(d.hint.contains("a port of 500 or more"), "{}", d.hint);
        let d = verdict(&r, vec![], &ctx());
        assert!(d.hint.contains("a port of 1024 or more"), "{}", d.hint);
        // At or above the threshold, the kernel did not refuse it: a security module did.
        let mut r = req("0.0.0.0", 8081);
        r.errno = EACCES;
        let d = verdict(&r, vec![], &c);
        assert_eq!(d.cause, Cause::RefusedBySecurityModule);
        assert!(
            d.hint.contains("a security module refused the bind"),
            "{}",
            d.hint
        );
    }

    /// A JVM cannot set IPV6_V6ONLY, and -Djava.net.preferIPv4Stack=true would bind the same
    /// IPv4 port: it is told to bind a specific address; Node is told its option; others get the
    /// plain setsockopt advice. The same on whichever side the wildcard is.
    #[test]
    fn the_v6only_fix_fits_the_program() {
        let hint = |comm: &str, ours: bool| {
            let (mut r, mut h) = if ours {
                (req("::", 8080), holder(State::Listen, "0.0.0.0:8080"))
            } else {
                (req("0.0.0.0", 8080), holder(State::Listen, "[::]:8080"))
            };
            if ours {
                r.v6only = Some(false);
                r.comm = comm.into();
            } else {
                h.v6only = Some(false);
                h.comm = Some(comm.into());
            }
            let d = verdict(&r, vec![h], &ctx());
            assert_eq!(d.cause, Cause::DualStackConflict);
            d.hint
        };
        for ours in [true, false] {
            let java = hint("java", ours);
            assert!(java.contains("a JVM cannot set it"), "{java}");
            assert!(!java.contains("preferIPv4Stack"), "{java}");
            assert!(hint("node", ours).contains("ipv6Only: true"));
            let other = hint("busybox", ours);
            assert!(other.contains("set IPV6_V6ONLY on"), "{other}");
            assert!(!other.contains("JVM") && !other.contains("Node"), "{other}");
        }
    }

    #[test]
    fn a_reuseport_group_tells_a_newcomer_to_join_it() {
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.reuseport = Some(true);
        let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
        assert!(
            d.hint
                .contains("with SO_REUSEPORT (set it on this socket too"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn nothing_found_is_unknown_honestly() {
        let d = verdict(&req("0.0.0.0", 8080), vec![], &ctx());
        assert_eq!(d.cause, Cause::Unknown);
        assert!(d.holders.is_empty());
        assert!(
            d.hint.contains("no socket holding port 8080 was found"),
            "{}",
            d.hint
        );
    }

    #[test]
    fn port_settings_parse() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("9 1"), None);
        assert_eq!(
            parse_reserved("8080,9000-9010\n"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert!(parse_reserved("\n").is_empty());
        let c = PortContext {
            range: Some((5000, 65535)),
            reserved: parse_reserved("8080"),
            ports_in_use: None,
            device: None,
            address: None,
            unprivileged_start: None,
            tw_reuse: None,
            users: None,
        };
        assert!(
            !c.in_ephemeral_range(8080),
            "reserved ports are not ephemeral"
        );
        assert!(c.in_ephemeral_range(8081));
        assert!(!c.in_ephemeral_range(4999));
    }

    #[test]
    fn diagnosis_json_keys() {
        let mut h = holder(State::TimeWait, "127.0.0.1:8080");
        h.source = Source::History;
        let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["cause"], "time_wait_conflict");
        assert_eq!(v["holders"][0]["state"], "TIME_WAIT");
        assert_eq!(v["holders"][0]["source"], "history");
        assert_eq!(v["holders"][0]["local"], "127.0.0.1:8080");
        assert_eq!(v["port_range"], "5000-65535");
        let back: Diagnosis = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }
}

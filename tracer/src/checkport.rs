//! `bindtrace check-port`: before a service starts, would its bind succeed now — and if not, who
//! would block it and why (the same verdicts as `watch`)? Also warns when the port lies inside the
//! ephemeral range without being reserved, the seed's incident waiting to happen. Exit status 0
//! (free), 1 (blocked) or 2 (no answer: an error), to gate a pre-start hook
//! (`ExecStartPre=bindtrace check-port 8080`).
//!
//! `--listening` instead lists the ports services listen on inside the ephemeral range and
//! proposes the `net.ipv4.ip_local_reserved_ports` value that protects them all.
//!
//! Before the port, the address: a throwaway socket is bound to the service's address with port
//! 0 and `IP_BIND_ADDRESS_NO_PORT`, so the kernel runs its own address checks (is it local, does
//! a link-local one have its interface, may TCP bind a multicast one) without taking any port;
//! the privileged-port threshold is checked against this process's own capability. The port
//! itself is only looked at: a check cannot take it from the service. What no socket shows from
//! outside (a TIME-WAIT's SO_REUSEADDR, who opened it) comes from the history of any `bindtrace
//! watch` running on the host (`owners::History::of_running_watches`).

use std::{fs, net::IpAddr, os::unix::fs::MetadataExt};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use serde::Serialize;

use crate::{
    cli::parse_port,
    diagnose::{self, Diagnosis, Holder, PortContext, Request},
    netns,
    output::{OutputFormat, sanitize},
    owners::Investigator,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct CheckPortArgs {
    /// The port the service will bind (not with --listening).
    #[arg(value_parser = parse_port, required_unless_present = "listening")]
    pub port: Option<u16>,

    /// The address it will bind, with `%IFACE` for a service that binds its socket to a device
    /// (SO_BINDTODEVICE: `0.0.0.0%eth1`) or an IPv6 link-local address's interface
    /// (`fe80::1%eth0`).
    #[arg(long, default_value = "0.0.0.0", value_parser = parse_bind_addr)]
    pub addr: BindAddr,

    /// The service's protocol (default tcp; with --listening, both unless given).
    #[arg(long, value_enum)]
    pub protocol: Option<Proto>,

    /// Check in the network namespace of this process (default: this one).
    #[arg(long, value_name = "PID")]
    pub pid_netns: Option<u32>,

    /// Check in this network namespace: its inode number, or a path such as /run/netns/NAME
    /// or /proc/PID/ns/net.
    #[arg(long, value_name = "NETNS", value_parser = crate::cli::parse_netns, conflicts_with = "pid_netns")]
    pub netns: Option<u32>,

    #[command(flatten)]
    pub options: ServiceOptions,

    /// Answer from the sockets alone, without a running `bindtrace watch`'s history (which
    /// tells a TIME-WAIT socket's SO_REUSEADDR and who opened it).
    #[arg(long)]
    pub no_history: bool,

    /// List listening ports inside the ephemeral range and propose ip_local_reserved_ports.
    #[arg(long, conflicts_with = "port")]
    pub listening: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// The socket options the service sets, and what it runs as.
#[derive(Debug, Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each its own flag"
)]
pub struct ServiceOptions {
    /// The service sets SO_REUSEADDR.
    #[arg(long)]
    pub reuseaddr: bool,

    /// The service sets SO_REUSEPORT.
    #[arg(long)]
    pub reuseport: bool,

    /// The service sets IPV6_V6ONLY on its IPv6 socket (default: the namespace's
    /// net.ipv6.bindv6only).
    #[arg(long)]
    pub v6only: bool,

    /// The user the service runs as, a name or a uid (default: the one running check-port):
    /// SO_REUSEPORT shares a port only between sockets of one user, and a user other than root
    /// is refused ports below net.ipv4.ip_unprivileged_port_start (EACCES) unless the service
    /// has CAP_NET_BIND_SERVICE.
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub user: Option<u32>,

    /// The service has CAP_NET_BIND_SERVICE (systemd AmbientCapabilities=, or file capabilities
    /// on its binary), which check-port cannot see: with --user, the privileged-port rule then
    /// lets it through.
    #[arg(long, requires = "user")]
    pub cap_net_bind_service: bool,
}

impl ServiceOptions {
    /// Whether the service may bind a port below `ip_unprivileged_port_start`: as root or with
    /// the capability; when no user is given, as check-port itself may.
    fn may_bind_privileged(&self) -> bool {
        match self.user {
            Some(uid) => uid == 0 || self.cap_net_bind_service,
            None => can_bind_privileged(),
        }
    }
}

/// `--user`: a uid, or a name from the user database.
fn parse_user(s: &str) -> Result<u32, String> {
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(uid);
    }
    let name = std::ffi::CString::new(s).map_err(|_| format!("{s:?} is not a user name"))?;
    // SAFETY: a NUL-terminated name; the entry is read before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(format!(
            "no user {s:?} (give a name from the user database or a uid)"
        ));
    }
    // SAFETY: non-null, as returned by getpwnam.
    Ok(unsafe { (*pw).pw_uid })
}

/// `--addr`: an IP address and, for an IPv6 one, optionally `%interface` (the scope).
#[derive(Clone, Debug)]
pub struct BindAddr {
    pub ip: IpAddr,
    pub scope: Option<String>,
}

impl std::fmt::Display for BindAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.scope {
            Some(dev) => write!(f, "{}%{dev}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

fn parse_bind_addr(s: &str) -> Result<BindAddr, String> {
    let (ip, scope) = match s.split_once('%') {
        Some((ip, dev)) if !dev.is_empty() => (ip, Some(dev.to_string())),
        Some(_) => return Err("an empty interface after %".into()),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|e| format!("{ip}: {e}"))?;
    Ok(BindAddr { ip, scope })
}

/// What the kernel says of the address part of the bind (run in the service's namespace): a
/// socket of the service's kind, bound to `addr` with port 0 and `IP_BIND_ADDRESS_NO_PORT` —
/// `__inet_bind()`/`__inet6_bind()` check the address and skip `get_port()` — then closed.
/// Ok(()) if accepted, else the errno; Err(None) when the probe itself could not run.
fn address_refusal(addr: &BindAddr, udp: bool, v6only: bool) -> Result<(), Option<i32>> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let domain = if addr.ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, ty, Some(proto)).map_err(|_| None)?;
    if addr.ip.is_ipv6() {
        sock.set_only_v6(v6only).map_err(|_| None)?;
    }
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor and a c_int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(None);
    }
    // A link-local address takes the interface as its scope id; any other, as the device the
    // service binds its socket to (which fails with ENODEV if the namespace has no such one).
    let scoped = diagnose::needs_scope_addr(addr.ip);
    if let Some(dev) = addr.scope.as_deref().filter(|_| !scoped) {
        sock.bind_device(Some(dev.as_bytes()))
            .map_err(|e| e.raw_os_error())?;
    }
    let target: SockAddr = match addr.ip {
        IpAddr::V4(a) => std::net::SocketAddr::from((a, 0)).into(),
        IpAddr::V6(a) => {
            let scope = match addr.scope.as_deref().filter(|_| scoped) {
                Some(dev) => if_index(dev).ok_or(Some(libc::ENODEV))?,
                None => 0,
            };
            std::net::SocketAddrV6::new(a, 0, 0, scope).into()
        }
    };
    // From a thread of the name the kernel programs pass over: a running watch does not report
    // this check as a failure. (A thread made here shares this one's network namespace.)
    let name = String::from_utf8_lossy(&tracer_common::PROBE_THREAD_COMM)
        .trim_end_matches('\0')
        .to_string();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || sock.bind(&target).map_err(|e| e.raw_os_error()))
        .map_err(|_| None)?
        .join()
        .map_err(|_| None)?
}

/// Whether this process may bind ports below `ip_unprivileged_port_start`: it holds
/// CAP_NET_BIND_SERVICE (bit 10 of `CapEff`).
fn can_bind_privileged() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 10) != 0)
}

/// The namespace's `net.ipv6.bindv6only`: whether an IPv6 socket is IPV6_V6ONLY unless it says
/// otherwise (run in the namespace).
fn bindv6only() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|s| s.trim() == "1")
}

fn open_netns(pid: Option<u32>, inode: Option<u32>) -> Result<(netns::Netns, u32)> {
    if let Some(inode) = inode {
        let ns = netns::Finder::default()
            .open(u64::from(inode), 0, 0)
            .ok_or_else(|| anyhow!("cannot open network namespace {inode}"))?;
        return Ok((ns, inode));
    }
    let pid = pid.unwrap_or_else(std::process::id);
    let path = format!("/proc/{pid}/ns/net");
    let inode = fs::metadata(&path)
        .with_context(|| format!("no network namespace for pid {pid} ({path})"))?
        .ino();
    let ns = netns::Finder::default()
        .open(inode, pid, pid)
        .ok_or_else(|| anyhow!("cannot open the network namespace of pid {pid}"))?;
    Ok((ns, inode as u32))
}

#[derive(Serialize)]
struct PortCheck<'a> {
    port: u16,
    protocol: &'static str,
    addr: String,
    would_fail: bool,
    /// Blocked unless options that could not be read (a TIME-WAIT's SO_REUSEADDR) are set.
    may_fail: bool,
    /// The error the bind would (or may) fail with: `EADDRINUSE`, or a refusal before any port
    /// rule (`EADDRNOTAVAIL`, `EINVAL`, `ENODEV`, `EACCES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten)]
    diagnosis: &'a Diagnosis,
}

/// `ip_local_reserved_ports` (as the kernel printed it: `reserved`) with `port` added.
fn reserved_with(reserved: Option<&str>, port: u16) -> String {
    let ctx = PortContext {
        reserved: reserved.map(diagnose::parse_reserved).unwrap_or_default(),
        ..PortContext::default()
    };
    ctx.reserved_with([port])
}

/// Whether `h` blocks `req` whatever those of its options that could not be read (a TIME-WAIT's
/// SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY, which sock_diag does not report): assumed set,
/// the kindest case.
fn blocks_for_certain(req: &Request, h: &Holder) -> bool {
    let mut kindest = h.clone();
    kindest.reuseaddr = kindest.reuseaddr.or(Some(true));
    kindest.reuseport = kindest.reuseport.or(Some(true));
    if h.local.is_ipv6() {
        kindest.v6only = kindest.v6only.or(Some(true));
    }
    diagnose::conflicts(req, &kindest)
}

pub fn run(args: &CheckPortArgs) -> Result<bool> {
    let (ns, inode) = open_netns(args.pid_netns, args.netns)?;
    let udp = args.protocol == Some(Proto::Udp);
    if args.listening {
        // A running watch's history tells a UDP server's port from a client's.
        let mut inv = Investigator::one_off(!args.no_history);
        // A UDP service loses its port to a client's ephemeral socket just as a TCP one does.
        let protocols: &[bool] = match args.protocol {
            Some(p) => &[p == Proto::Udp],
            None => &[false, true],
        };
        return listening(&mut inv, &ns, inode, protocols, args.output);
    }
    let port = args.port.ok_or_else(|| anyhow!("a port is required"))?;
    let addr = &args.addr;
    let opts = &args.options;
    // A running watch's history tells what a TIME-WAIT socket's options were.
    let mut inv = Investigator::one_off(!args.no_history);
    let before = ns
        .run_in(|| before_the_port(addr, udp, opts.v6only))
        .context("entering the network namespace")?;
    let mut req = Request::bind(addr.ip, port, udp, opts.reuseaddr, opts.reuseport);
    req.uid = opts.user.unwrap_or(req.uid);
    req.v6only = addr.ip.is_ipv6().then_some(before.v6only);
    req.bound_dev_if = before.bound_dev_if;
    // Refused before any port rule: the address (the kernel's answer), else the privileged-port
    // threshold, for the service's user (`--user`), or else for this process.
    let privileged = before
        .unprivileged_start
        .is_some_and(|n| port != 0 && port < n);
    if let Err(Some(errno)) = before.address {
        req.errno = errno;
    } else if privileged && !opts.may_bind_privileged() {
        req.errno = libc::EACCES;
    }
    let d = inv.investigate(&req, inode, Some(&ns));
    let refused = req.errno != libc::EADDRINUSE;
    let blocked = refused
        || d.holders
            .iter()
            .any(|h| h.conflicts && blocks_for_certain(&req, h));
    // Blocked only if options nobody can read now (a TIME-WAIT's) are not set.
    let uncertain = !blocked && d.holders.iter().any(|h| h.conflicts);
    let error = crate::errno::name(req.errno);
    let proto = if udp { "udp" } else { "tcp" };
    let warning = range_warning(port, &d, blocked || uncertain);
    let note = privilege_note(
        privileged.then(|| before.unprivileged_start.unwrap_or(1024)),
        &req,
        opts,
    );
    match args.output {
        OutputFormat::Json => {
            let mut v = serde_json::to_value(PortCheck {
                port,
                protocol: proto,
                addr: addr.to_string(),
                would_fail: blocked,
                may_fail: uncertain,
                error: (blocked || uncertain).then_some(error.as_str()),
                diagnosis: &d,
            })?;
            // Free: no failure to explain (the holders and the range are still given).
            if !(blocked || uncertain)
                && let Some(o) = v.as_object_mut()
            {
                for key in ["cause", "hint", "same_process"] {
                    o.remove(key);
                }
            }
            if let Some(w) = &warning {
                v["warning"] = w.as_str().into();
            }
            if let Some(n) = &note {
                v["note"] = n.as_str().into();
            }
            println!("{v}");
        }
        OutputFormat::Text => {
            let what = format!(
                "{proto} {}",
                crate::event::endpoint(&addr.to_string(), port)
            );
            if refused {
                println!("{what}: a bind now would FAIL with {error}");
                println!("    cause: {}: {}", d.cause.as_str(), sanitize(&d.hint));
            } else {
                let who_knows = if args.no_history {
                    "--no-history: no running watch's history was consulted"
                } else if inv.has_history() {
                    "the running bindtrace watch did not see it made"
                } else {
                    "no bindtrace watch is running; one running when it was made would know them"
                };
                print_port_verdict(&what, &d, blocked, uncertain, who_knows);
            }
            if let Some(n) = &note {
                println!("    note: {n}");
            }
            if let Some(w) = &warning {
                println!("    warning: {w}");
            }
        }
    }
    Ok(!blocked)
}

/// What the answer for a port below `ip_unprivileged_port_start` (`start`, that threshold; None
/// for a port above it) rests on: the user it was given for, or, when none was, that the
/// service's own may be refused.
fn privilege_note(start: Option<u16>, req: &Request, opts: &ServiceOptions) -> Option<String> {
    let start = start?;
    if req.errno == libc::EACCES && opts.user.is_some() {
        return Some(
            "for the user given (--user); a service given CAP_NET_BIND_SERVICE may bind it: say \
             so with --cap-net-bind-service"
                .to_string(),
        );
    }
    (opts.user.is_none() && req.errno != libc::EACCES).then(|| {
        format!(
            "{} is below net.ipv4.ip_unprivileged_port_start ({start}): a service without \
             CAP_NET_BIND_SERVICE (not root, no AmbientCapabilities=) is refused it with EACCES \
             (--user USER answers for the service's user)",
            req.port
        )
    })
}

/// The seed's incident waiting to happen: `port` in the ephemeral range, unreserved — unless the
/// hint of a verdict that fails (`failing`) says the same already.
fn range_warning(port: u16, d: &Diagnosis, failing: bool) -> Option<String> {
    let hinted = failing && d.hint.contains("ip_local_reserved_ports");
    (d.in_ephemeral_range && !hinted).then(|| {
        format!(
            "{port} lies in the ephemeral range {} and is not reserved: an outgoing connection \
             can take it at any moment; reserve it with \
             `sysctl -w net.ipv4.ip_local_reserved_ports={}` (the list reserved now, with {port})",
            d.port_range.as_deref().unwrap_or("?"),
            reserved_with(d.reserved_ports.as_deref(), port)
        )
    })
}

/// What the service's namespace says before its port is looked at.
struct BeforeThePort {
    /// IPV6_V6ONLY as the service's socket will have it.
    v6only: bool,
    /// The kernel's answer to the address ([`address_refusal`]).
    address: Result<(), Option<i32>>,
    unprivileged_start: Option<u16>,
    /// The interface `--addr` names (`%eth0`), 0 for none.
    bound_dev_if: u32,
}

/// Run in the service's namespace.
fn before_the_port(addr: &BindAddr, udp: bool, v6only: bool) -> BeforeThePort {
    let v6only = v6only || bindv6only();
    BeforeThePort {
        v6only,
        address: if addr.ip.is_unspecified() && addr.scope.is_none() {
            Ok(())
        } else {
            address_refusal(addr, udp, v6only)
        },
        unprivileged_start: crate::owners::unprivileged_port_start(),
        // The interface: a link-local address's scope id, or the device the socket is bound to.
        bound_dev_if: addr.scope.as_deref().and_then(if_index).unwrap_or(0),
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn if_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// The text verdict on the port itself: who blocks it (certainly, or depending on options that
/// cannot be read), or free.
/// `who_knows`: why the options stay unknown (no watch, or it did not see the socket made).
fn print_port_verdict(what: &str, d: &Diagnosis, blocked: bool, uncertain: bool, who_knows: &str) {
    let holders = || {
        for h in d.holders.iter().filter(|h| h.conflicts) {
            println!("    held by: {}", sanitize(&crate::output::holder_text(h)));
        }
    };
    if blocked {
        println!("{what}: a bind now would FAIL with EADDRINUSE");
        holders();
        println!("    cause: {}: {}", d.cause.as_str(), sanitize(&d.hint));
    } else if uncertain {
        println!(
            "{what}: a bind now MAY FAIL with EADDRINUSE: it depends on options of the socket \
             below that cannot be read from outside ({who_knows})"
        );
        holders();
        println!(
            "    if it fails: {}: {}",
            d.cause.as_str(),
            sanitize(&d.hint)
        );
    } else {
        println!("{what}: free now");
    }
}

#[derive(Serialize)]
struct Listening {
    #[serde(skip_serializing_if = "Option::is_none")]
    port_range: Option<String>,
    reserved_ports: String,
    /// Listening ports inside the range and not reserved, with their owners.
    unprotected: Vec<Unprotected>,
    /// `ip_local_reserved_ports` covering the current value and those ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    proposed_reserved_ports: Option<String>,
}

/// A listening TCP socket or a bound UDP one on an unreserved port of the ephemeral range.
#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Unprotected {
    port: u16,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<String>,
    /// A UDP socket whose port a running watch never saw bound: perhaps a client's, which the
    /// kernel gave it at its first send (if the watch ran when the socket was made).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    maybe_client: bool,
}

fn listening(
    inv: &mut Investigator,
    ns: &netns::Netns,
    inode: u32,
    protocols: &[bool],
    output: OutputFormat,
) -> Result<bool> {
    let mut unprotected: Vec<Unprotected> = Vec::new();
    let mut ctx = None;
    for &udp in protocols {
        let (holders, c) = inv.listeners(ns, udp);
        for h in holders
            .iter()
            .filter(|h| c.in_ephemeral_range(h.local.port()))
        {
            let port = h.local.port();
            unprotected.push(Unprotected {
                port,
                protocol: if udp { "udp" } else { "tcp" },
                pid: h.pid,
                comm: h.comm.clone(),
                maybe_client: udp && inv.saw_bound(inode, port, udp) == Some(false),
            });
        }
        ctx = Some(c);
    }
    let ctx = ctx.unwrap_or_default();
    unprotected.sort();
    unprotected.dedup();
    let report = Listening {
        port_range: ctx.range.map(|(lo, hi)| format!("{lo}-{hi}")),
        reserved_ports: ctx.reserved_with([]),
        // With the ports perhaps a client's: "no running watch saw it bound" is also what a
        // server bound before the watch started looks like, and reserving a client's port is
        // harmless.
        proposed_reserved_ports: (!unprotected.is_empty())
            .then(|| ctx.reserved_with(unprotected.iter().map(|u| u.port))),
        unprotected,
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => {
            let range = report.port_range.as_deref().unwrap_or("?");
            if report.unprotected.is_empty() {
                println!("no listening port lies inside the ephemeral range {range} unreserved");
            } else {
                println!("listening ports inside the ephemeral range {range}, not reserved:");
                for u in &report.unprotected {
                    let who = match (&u.comm, u.pid) {
                        (Some(c), Some(p)) => format!("{}[{p}]", sanitize(c)),
                        (None, Some(p)) => format!("pid {p}"),
                        _ => "?".to_string(),
                    };
                    let note = match (u.protocol, u.maybe_client) {
                        ("udp", true) => {
                            " (udp; the running watch saw no bind() of it: perhaps a client's \
                             port, given at its first send, which would need no reserving, or a \
                             server's bound before the watch started: kept in the list below)"
                        }
                        ("udp", false) => " (udp)",
                        _ => "",
                    };
                    println!("    {:>5}  {who}{note}", u.port);
                }
                if let Some(proposed) = &report.proposed_reserved_ports {
                    println!("protect them: sysctl -w net.ipv4.ip_local_reserved_ports={proposed}");
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_an_interface_only_when_ipv6() {
        let a = parse_bind_addr("fe80::1%eth0").unwrap();
        assert_eq!(
            (a.ip.to_string(), a.scope.as_deref()),
            ("fe80::1".into(), Some("eth0"))
        );
        assert_eq!(a.to_string(), "fe80::1%eth0");
        assert!(parse_bind_addr("[::1]").unwrap().scope.is_none());
        // A socket bound to a device (SO_BINDTODEVICE).
        let a = parse_bind_addr("10.0.0.1%eth0").unwrap();
        assert_eq!(a.scope.as_deref(), Some("eth0"));
        assert_eq!(a.to_string(), "10.0.0.1%eth0");
        assert!(parse_bind_addr("fe80::1%").is_err());
        assert!(parse_bind_addr("nonsense").is_err());
    }

    #[test]
    fn port_ranges_are_compact() {
        let ctx = PortContext::default();
        assert_eq!(
            ctx.reserved_with([8080, 9000, 9001, 9002, 65535, 1]),
            "1,8080,9000-9002,65535"
        );
        assert_eq!(ctx.reserved_with([]), "");
        assert_eq!(reserved_with(Some("9000-9002"), 9003), "9000-9003");
    }
}

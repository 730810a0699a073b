//! The experiments. Each one sets up real sockets — in this process or in helper processes where
//! the seed's experiment needs "another process" — makes one call, and returns what the kernel
//! answered. Numbers follow the seed (docs: seed digest); expectations are the seed's results or
//! the documented conflict rules (`diagnose/rules.rs`).

use std::{
    any::Any,
    fs::File,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::space::{self, Helper};
use crate::diagnose::Cause;

const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;

/// What the seed (or the rules) say should happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Ok,
    Fails(i32, Cause),
}

/// What happened.
pub struct Outcome {
    /// 0 or the errno of the judged call.
    pub errno: i32,
    /// The port a failure event carries (`port`, or `remote_port` for connect()).
    pub port: u16,
    /// The process that should be named as the holder.
    pub holder_pid: Option<u32>,
    /// Extra facts worth showing (e.g. the SO_REUSEPORT spread).
    pub note: Option<String>,
    /// Kept alive until bindtrace's report of the call has been checked.
    pub keep: Vec<Box<dyn Any>>,
}

impl Outcome {
    fn new(errno: i32, port: u16) -> Self {
        Self {
            errno,
            port,
            holder_pid: None,
            note: None,
            keep: Vec::new(),
        }
    }

    fn held_by(mut self, pid: u32) -> Self {
        self.holder_pid = Some(pid);
        self
    }

    fn keep(mut self, x: impl Any) -> Self {
        self.keep.push(Box::new(x));
        self
    }
}

/// The lab's state: its namespace and a supply of fresh ports.
pub struct Ctx {
    pub netns: File,
    pub me: u32,
    next_port: u16,
}

impl Ctx {
    pub fn new(netns: File) -> Self {
        Self {
            netns,
            me: std::process::id(),
            next_port: 20_000,
        }
    }

    /// A port no earlier case used (TIME-WAIT sockets outlive their case).
    fn port(&mut self) -> u16 {
        self.next_port += 10;
        self.next_port
    }

    fn helper(&self, args: Vec<String>) -> Result<Helper> {
        Helper::spawn(&self.netns, args)
    }
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($a.to_string()),*] };
}

fn errno(r: std::io::Result<()>) -> i32 {
    r.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1))
}

fn v4(ip: Ipv4Addr, port: u16) -> SockAddr {
    SocketAddr::from((ip, port)).into()
}

fn v6(ip: Ipv6Addr, port: u16) -> SockAddr {
    SocketAddr::from((ip, port)).into()
}

/// A socket with the given options, not yet bound.
fn sock(domain: Domain, udp: bool, reuseaddr: bool, reuseport: bool) -> Result<Socket> {
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    s.set_reuse_address(reuseaddr)?;
    s.set_reuse_port(reuseport)?;
    Ok(s)
}

/// A listener on 127.0.0.1:`port` to connect to (not the port under test).
fn server(port: u16) -> Result<Socket> {
    let s = sock(Domain::IPV4, false, true, false)?;
    s.bind(&v4(Ipv4Addr::LOCALHOST, port))?;
    s.listen(128)?;
    Ok(s)
}

/// Binds a fresh TCP socket to `addr`; the errno and the socket.
fn try_bind(addr: &SockAddr, reuseaddr: bool, reuseport: bool) -> Result<(i32, Socket)> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = sock(domain, false, reuseaddr, reuseport)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    Ok((errno(s.bind(addr)), s))
}

fn flag(on: bool, name: &str) -> Option<String> {
    on.then(|| format!("--{name}"))
}

// --- the seed's experiments -------------------------------------------------------------------

fn seed_1a(ctx: &mut Ctx, reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let h = ctx.helper(args!["connect-leave", p, p + 1])?;
    let pid = h.pid();
    h.finish(); // it closed first and exited
    let (conn, _) = srv.accept()?;
    let _ = (&conn).read(&mut [0u8; 1]); // its FIN
    drop(conn); // our FIN: its side goes TIME-WAIT, with no process left
    wait_for_time_wait(p)?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), reuse, false)?;
    Ok(Outcome::new(e, p).held_by(pid).keep(s).keep(srv))
}

/// Waits until the TCP socket on port `p` of this namespace is in TIME-WAIT. Our FIN is handled
/// in softirq: on a busy machine the other side may still be in FIN-WAIT-2 right after `close()`,
/// and the case is about TIME-WAIT.
fn wait_for_time_wait(p: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let socks = crate::sockdiag::dump(libc::IPPROTO_TCP as u8, libc::AF_INET as u8, p, p)
            .context("sock_diag dump")?;
        if socks
            .iter()
            .any(|s| s.state == tracer_common::tcp_state::TIME_WAIT)
        {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the connection from port {p} did not reach TIME-WAIT in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A server restarted: the previous one (`old_reuse`: with SO_REUSEADDR) closed its connection
/// first and exited, its side in TIME-WAIT on P; the new one binds P with SO_REUSEADDR, which is
/// enough only if the previous one had it too (the connection keeps its listener's setting).
fn restart(ctx: &mut Ctx, old_reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let mut helper_args = args!["serve-leave", p];
    helper_args.extend(flag(old_reuse, "reuseaddr"));
    let h = ctx.helper(helper_args)?;
    let pid = h.pid();
    h.finish();
    wait_for_time_wait(p)?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), true, false)?;
    Ok(Outcome::new(e, p).held_by(pid).keep(s))
}

fn seed_1b(ctx: &mut Ctx, reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let h = ctx.helper(args!["connect", p, p + 1])?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), reuse, false)?;
    Ok(Outcome::new(e, p)
        .held_by(h.pid())
        .keep(s)
        .keep(h)
        .keep(srv))
}

fn seed_3_1(ctx: &mut Ctx, a_reuse: bool, b_reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let mut helper_args = args!["listen", p];
    helper_args.extend(flag(a_reuse, "reuseaddr"));
    let h = ctx.helper(helper_args)?;
    let (e, s) = try_bind(&v4(Ipv4Addr::LOCALHOST, p), b_reuse, false)?;
    Ok(Outcome::new(e, p).held_by(h.pid()).keep(s).keep(h))
}

fn seed_3_2(ctx: &mut Ctx, b_reuse: bool, a_reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let mut helper_args = args!["connect", p, p + 1];
    helper_args.extend(flag(b_reuse, "reuseaddr"));
    let h = ctx.helper(helper_args)?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), a_reuse, false)?;
    Ok(Outcome::new(e, p)
        .held_by(h.pid())
        .keep(s)
        .keep(h)
        .keep(srv))
}

/// 3.2b, then A connects to B's destination too (`curl --local-port` twice): the bind is allowed,
/// the connect() is refused, as the four-tuple is taken.
fn seed_3_2b_connect(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let mut helper_args = args!["connect", p, p + 1];
    helper_args.extend(flag(true, "reuseaddr"));
    let h = ctx.helper(helper_args)?;
    let (mut e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), true, false)?;
    if e == 0 {
        e = errno(s.connect(&v4(Ipv4Addr::LOCALHOST, p + 1)));
    }
    Ok(Outcome::new(e, p)
        .held_by(h.pid())
        .keep(s)
        .keep(h)
        .keep(srv))
}

fn seed_3_3(ctx: &mut Ctx, reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let c = sock(Domain::IPV4, false, reuse, false)?;
    c.bind(&v4(Ipv4Addr::LOCALHOST, p))?;
    c.connect(&v4(Ipv4Addr::LOCALHOST, p + 1))?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), reuse, false)?;
    Ok(Outcome::new(e, p).held_by(ctx.me).keep(s).keep(c).keep(srv))
}

fn seed_3_4(ctx: &mut Ctx, reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let l = sock(Domain::IPV4, false, reuse, false)?;
    l.bind(&v4(Ipv4Addr::UNSPECIFIED, p))?;
    l.listen(16)?;
    let (e, s) = try_bind(&v4(Ipv4Addr::LOCALHOST, p), reuse, false)?;
    Ok(Outcome::new(e, p).held_by(ctx.me).keep(s).keep(l))
}

fn seed_3_5(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let other = space::new_netns_elsewhere()?;
    let h = Helper::spawn(&other, args!["listen", p])?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), false, false)?;
    Ok(Outcome::new(e, p).keep(s).keep(h).keep(other))
}

fn seed_3_6_listener(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let h = ctx.helper(args!["listen", p, "--reuseport"])?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), false, true)?;
    Ok(Outcome::new(e, p).keep(s).keep(h))
}

fn seed_3_6_connection(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p + 1)?;
    let h = ctx.helper(args!["connect", p, p + 1, "--reuseport"])?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), false, true)?;
    Ok(Outcome::new(e, p).keep(s).keep(h).keep(srv))
}

// --- beyond the seed ----------------------------------------------------------------------------

fn listen_after_shared_bind(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let a = sock(Domain::IPV4, false, true, false)?;
    let b = sock(Domain::IPV4, false, true, false)?;
    a.bind(&v4(Ipv4Addr::LOCALHOST, p))?;
    b.bind(&v4(Ipv4Addr::LOCALHOST, p))?;
    a.listen(16)?;
    let e = errno(b.listen(16));
    Ok(Outcome::new(e, p).held_by(ctx.me).keep(a).keep(b))
}

fn reuseport_other_user(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let h = ctx.helper(args!["listen", p, "--reuseport", "--uid", 65534])?;
    let (e, s) = try_bind(&v4(Ipv4Addr::UNSPECIFIED, p), false, true)?;
    Ok(Outcome::new(e, p).held_by(h.pid()).keep(s).keep(h))
}

/// `[::]:P` (IPV6_V6ONLY = `v6only`) listening, then a bind of `addr`:P.
fn dual_stack(ctx: &mut Ctx, v6only: bool, addr: Ipv4Addr) -> Result<Outcome> {
    let p = ctx.port();
    let l = sock(Domain::IPV6, false, false, false)?;
    l.set_only_v6(v6only)?;
    l.bind(&v6(Ipv6Addr::UNSPECIFIED, p))?;
    l.listen(16)?;
    let (e, s) = try_bind(&v4(addr, p), false, false)?;
    Ok(Outcome::new(e, p).held_by(ctx.me).keep(s).keep(l))
}

/// 0.0.0.0:P listening, then `[::]`:P without IPV6_V6ONLY (what a JVM server binds).
fn dual_stack_reverse(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let h = ctx.helper(args!["listen", p])?;
    let (e, s) = try_bind(&v6(Ipv6Addr::UNSPECIFIED, p), true, false)?;
    Ok(Outcome::new(e, p).held_by(h.pid()).keep(s).keep(h))
}

fn udp(ctx: &mut Ctx, reuse: bool) -> Result<Outcome> {
    let p = ctx.port();
    let mut helper_args = args!["listen", p, "--udp"];
    helper_args.extend(flag(reuse, "reuseaddr"));
    let h = ctx.helper(helper_args)?;
    let s = sock(Domain::IPV4, true, reuse, false)?;
    let e = errno(s.bind(&v4(Ipv4Addr::LOCALHOST, p)));
    Ok(Outcome::new(e, p).held_by(h.pid()).keep(s).keep(h))
}

/// Narrows this namespace's `ip_local_port_range` for the closure, then restores it.
fn with_range<T>(lo: u16, hi: u16, f: impl FnOnce() -> Result<T>) -> Result<T> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let old = std::fs::read_to_string(PATH).context("reading ip_local_port_range")?;
    std::fs::write(PATH, format!("{lo} {hi}")).context("narrowing ip_local_port_range")?;
    let r = f();
    let _ = std::fs::write(PATH, old.split_whitespace().collect::<Vec<_>>().join(" "));
    r
}

fn bind0_exhaustion(_ctx: &mut Ctx) -> Result<Outcome> {
    with_range(40_000, 40_003, || {
        let mut held = Vec::new();
        loop {
            let s = sock(Domain::IPV4, false, false, false)?;
            let e = errno(s.bind(&v4(Ipv4Addr::LOCALHOST, 0)));
            if e != 0 || held.len() > 8 {
                let note = format!("{} bind(0) calls succeeded first", held.len());
                let mut o = Outcome::new(e, 0).keep(held);
                o.note = Some(note);
                return Ok(o);
            }
            held.push(s);
        }
    })
}

fn connect_exhaustion(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let srv = server(p)?;
    with_range(40_010, 40_013, || {
        let mut held = Vec::new();
        loop {
            let s = sock(Domain::IPV4, false, false, false)?;
            let e = errno(s.connect(&v4(Ipv4Addr::LOCALHOST, p)));
            if e != 0 || held.len() > 8 {
                let note = format!("{} connections succeeded first", held.len());
                let mut o = Outcome::new(e, p).keep(held).keep(srv);
                o.note = Some(note);
                return Ok(o);
            }
            held.push(s);
        }
    })
}

/// Two SO_REUSEPORT listeners, 100 connections: how the kernel spread them.
fn reuseport_spread(ctx: &mut Ctx) -> Result<Outcome> {
    let p = ctx.port();
    let mut ls = Vec::new();
    for _ in 0..2 {
        let l = sock(Domain::IPV4, false, false, true)?;
        l.bind(&v4(Ipv4Addr::LOCALHOST, p))?;
        l.listen(256)?;
        l.set_nonblocking(true)?;
        ls.push(l);
    }
    let mut clients = Vec::new();
    for _ in 0..100 {
        let c = sock(Domain::IPV4, false, false, false)?;
        c.connect(&v4(Ipv4Addr::LOCALHOST, p))?;
        clients.push(c);
    }
    let counts: Vec<usize> = ls
        .iter()
        .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
        .collect();
    let mut o = Outcome::new(0, p).keep(clients).keep(ls);
    o.note = Some(format!(
        "100 connections spread {} / {} over the two listeners",
        counts[0], counts[1]
    ));
    Ok(o)
}

/// One experiment.
pub struct Case {
    pub id: &'static str,
    pub setup: &'static str,
    pub expect: Expect,
    pub run: fn(&mut Ctx) -> Result<Outcome>,
}

const fn fails(cause: Cause) -> Expect {
    Expect::Fails(EADDRINUSE, cause)
}

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one per line before formatting"
)]
pub fn all() -> Vec<Case> {
    use Cause::{
        DualStackConflict, EphemeralExhausted, FourTupleInUse, ListenerConflict,
        OutgoingConnectionConflict, ReuseportMismatch, TimeWaitConflict, UdpConflict,
    };
    vec![
        Case {
            id: "1a",
            setup: "another process connected from P (no SO_REUSEADDR), closed first and exited: its TIME-WAIT holds P; bind P",
            expect: fails(TimeWaitConflict),
            run: |c| seed_1a(c, false),
        },
        Case {
            id: "1a+reuse",
            setup: "as 1a; bind P with SO_REUSEADDR",
            expect: fails(TimeWaitConflict),
            run: |c| seed_1a(c, true),
        },
        Case {
            id: "restart",
            setup: "a server on P without SO_REUSEADDR closed its connection first and exited (its side in TIME-WAIT); a new server binds P with SO_REUSEADDR",
            expect: fails(TimeWaitConflict),
            run: |c| restart(c, false),
        },
        Case {
            id: "restart+reuse",
            setup: "as restart, the previous server with SO_REUSEADDR too",
            expect: Expect::Ok,
            run: |c| restart(c, true),
        },
        Case {
            id: "1b",
            setup: "another process has an ESTABLISHED connection from P (no SO_REUSEADDR); bind P",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_1b(c, false),
        },
        Case {
            id: "1b+reuse",
            setup: "as 1b; bind P with SO_REUSEADDR",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_1b(c, true),
        },
        Case {
            id: "3.1",
            setup: "A listens on *:P; B binds 127.0.0.1:P as a source port",
            expect: fails(ListenerConflict),
            run: |c| seed_3_1(c, false, false),
        },
        Case {
            id: "3.1+reuse",
            setup: "as 3.1, both with SO_REUSEADDR",
            expect: fails(ListenerConflict),
            run: |c| seed_3_1(c, true, true),
        },
        Case {
            id: "3.2a",
            setup: "B connected from P (no SO_REUSEADDR); A binds *:P",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_3_2(c, false, false),
        },
        Case {
            id: "3.2a+reuse",
            setup: "B connected from P (no SO_REUSEADDR); A binds *:P with SO_REUSEADDR",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_3_2(c, false, true),
        },
        Case {
            id: "3.2b",
            setup: "B connected from P with SO_REUSEADDR; A binds *:P with SO_REUSEADDR",
            expect: Expect::Ok,
            run: |c| seed_3_2(c, true, true),
        },
        Case {
            id: "3.2b-connect",
            setup: "3.2b, then A connects to B's destination as well",
            expect: Expect::Fails(EADDRNOTAVAIL, FourTupleInUse),
            run: seed_3_2b_connect,
        },
        Case {
            id: "3.2b-noreuse",
            setup: "B connected from P with SO_REUSEADDR; A binds *:P without",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_3_2(c, true, false),
        },
        Case {
            id: "3.3",
            setup: "one process connects from P, then binds *:P (no SO_REUSEADDR)",
            expect: fails(OutgoingConnectionConflict),
            run: |c| seed_3_3(c, false),
        },
        Case {
            id: "3.3+reuse",
            setup: "as 3.3, both sockets with SO_REUSEADDR",
            expect: Expect::Ok,
            run: |c| seed_3_3(c, true),
        },
        Case {
            id: "3.4",
            setup: "one process listens on *:P, then binds 127.0.0.1:P as a source port",
            expect: fails(ListenerConflict),
            run: |c| seed_3_4(c, false),
        },
        Case {
            id: "3.4+reuse",
            setup: "as 3.4, both with SO_REUSEADDR",
            expect: fails(ListenerConflict),
            run: |c| seed_3_4(c, true),
        },
        Case {
            id: "3.5",
            setup: "a process in another network namespace listens on P; bind *:P here",
            expect: Expect::Ok,
            run: seed_3_5,
        },
        Case {
            id: "3.6-listener",
            setup: "A listens on *:P with SO_REUSEPORT; B (same user) binds *:P with SO_REUSEPORT",
            expect: Expect::Ok,
            run: seed_3_6_listener,
        },
        Case {
            id: "3.6-connection",
            setup: "B connected from P with SO_REUSEPORT; A (same user) binds *:P with SO_REUSEPORT",
            expect: Expect::Ok,
            run: seed_3_6_connection,
        },
        Case {
            id: "listen-shared",
            setup: "two SO_REUSEADDR sockets bound to 127.0.0.1:P; one listens; the other's listen()",
            expect: fails(ListenerConflict),
            run: listen_after_shared_bind,
        },
        Case {
            id: "reuseport-uid",
            setup: "uid 65534 listens on *:P with SO_REUSEPORT; root binds *:P with SO_REUSEPORT",
            expect: fails(ReuseportMismatch),
            run: reuseport_other_user,
        },
        Case {
            id: "dual-stack",
            setup: "[::]:P (IPV6_V6ONLY off) listens; bind 0.0.0.0:P",
            expect: fails(DualStackConflict),
            run: |c| dual_stack(c, false, Ipv4Addr::UNSPECIFIED),
        },
        Case {
            id: "dual-stack-specific",
            setup: "[::]:P (IPV6_V6ONLY off) listens; bind 127.0.0.1:P",
            expect: fails(DualStackConflict),
            run: |c| dual_stack(c, false, Ipv4Addr::LOCALHOST),
        },
        Case {
            id: "dual-stack-v6only",
            setup: "[::]:P with IPV6_V6ONLY listens; bind 0.0.0.0:P",
            expect: Expect::Ok,
            run: |c| dual_stack(c, true, Ipv4Addr::UNSPECIFIED),
        },
        Case {
            id: "dual-stack-reverse",
            setup: "0.0.0.0:P listens; bind [::]:P (IPV6_V6ONLY off, as a JVM does)",
            expect: fails(DualStackConflict),
            run: dual_stack_reverse,
        },
        Case {
            id: "udp",
            setup: "UDP: another process has 0.0.0.0:P; bind 127.0.0.1:P",
            expect: fails(UdpConflict),
            run: |c| udp(c, false),
        },
        Case {
            id: "udp+reuse",
            setup: "UDP: both with SO_REUSEADDR",
            expect: Expect::Ok,
            run: |c| udp(c, true),
        },
        Case {
            id: "bind0-exhausted",
            setup: "ip_local_port_range narrowed to 4 ports; bind(0) until it fails",
            expect: fails(EphemeralExhausted),
            run: bind0_exhaustion,
        },
        Case {
            id: "connect-exhausted",
            setup: "ip_local_port_range narrowed to 4 ports; connect() to one server until it fails",
            expect: Expect::Fails(EADDRNOTAVAIL, EphemeralExhausted),
            run: connect_exhaustion,
        },
        Case {
            id: "reuseport-spread",
            setup: "two SO_REUSEPORT listeners on P, 100 connections",
            expect: Expect::Ok,
            run: reuseport_spread,
        },
    ]
}

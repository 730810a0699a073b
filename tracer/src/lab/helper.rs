//! `bindtrace __lab-helper`: the "other process" of the lab's experiments. It sets up one socket
//! as asked, prints `{"pid":..,"errno":..}` and holds the socket until a line (or EOF) arrives on
//! stdin — except `connect-leave` and `serve-leave`, which close first and exit, leaving a
//! TIME-WAIT behind.

use std::{
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use clap::{Args, Subcommand};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Args)]
pub struct HelperArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Listen (TCP) or bind (UDP) on PORT.
    Listen {
        port: u16,
        #[arg(long)]
        reuseaddr: bool,
        #[arg(long)]
        reuseport: bool,
        /// An IPv6 wildcard socket instead of 0.0.0.0.
        #[arg(long)]
        v6: bool,
        #[arg(long)]
        v6only: bool,
        #[arg(long)]
        udp: bool,
        /// Drop to this uid (and gid) first.
        #[arg(long)]
        uid: Option<u32>,
    },
    /// Connect from 127.0.0.1:FROM to 127.0.0.1:TO and hold the connection.
    Connect {
        from: u16,
        to: u16,
        #[arg(long)]
        reuseaddr: bool,
        #[arg(long)]
        reuseport: bool,
    },
    /// Connect from FROM to TO without SO_REUSEADDR, close first and exit (seed 1a).
    ConnectLeave { from: u16, to: u16 },
    /// A server on PORT that accepts one connection (from a client of its own), closes it first
    /// and exits: its side, on PORT, is left in TIME-WAIT (a restarted server's case).
    ServeLeave {
        port: u16,
        #[arg(long)]
        reuseaddr: bool,
    },
}

fn report(errno: i32) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{{\"pid\":{},\"errno\":{errno}}}", std::process::id());
    let _ = out.flush();
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn local(port: u16) -> SockAddr {
    SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

fn hold() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn drop_privileges(uid: u32) -> std::io::Result<()> {
    // SAFETY: plain credential syscalls; group first, while still allowed.
    if unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn listen(
    port: u16,
    (reuseaddr, reuseport): (bool, bool),
    (v6, v6only, udp): (bool, bool, bool),
) -> std::io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    s.set_reuse_address(reuseaddr)?;
    s.set_reuse_port(reuseport)?;
    let addr: SocketAddr = if v6 {
        s.set_only_v6(v6only)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    s.bind(&addr.into())?;
    if !udp {
        s.listen(128)?;
    }
    Ok(s)
}

/// One connection to a listener on `port`, accepted; the server's side is closed first, then the
/// client's once the server's FIN has arrived.
fn serve_and_close_first(port: u16, reuseaddr: bool) -> std::io::Result<()> {
    let lst = listen(port, (reuseaddr, false), (false, false, false))?;
    let client = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    client.connect(&local(port))?;
    let (conn, _) = lst.accept()?;
    drop(lst);
    drop(conn);
    let _ = std::io::Read::read(&mut &client, &mut [0u8; 1]);
    Ok(())
}

fn connect(from: u16, to: u16, reuseaddr: bool, reuseport: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(reuseaddr)?;
    s.set_reuse_port(reuseport)?;
    s.bind(&local(from))?;
    s.connect(&local(to))?;
    Ok(s)
}

pub fn run(args: &HelperArgs) {
    match args.action {
        Action::Listen {
            port,
            reuseaddr,
            reuseport,
            v6,
            v6only,
            udp,
            uid,
        } => {
            if let Some(uid) = uid
                && let Err(e) = drop_privileges(uid)
            {
                report(errno(&e));
                return;
            }
            match listen(port, (reuseaddr, reuseport), (v6, v6only, udp)) {
                Ok(_s) => {
                    report(0);
                    hold();
                }
                Err(e) => report(errno(&e)),
            }
        }
        Action::Connect {
            from,
            to,
            reuseaddr,
            reuseport,
        } => match connect(from, to, reuseaddr, reuseport) {
            Ok(_s) => {
                report(0);
                hold();
            }
            Err(e) => report(errno(&e)),
        },
        Action::ServeLeave { port, reuseaddr } => {
            report(serve_and_close_first(port, reuseaddr).map_or_else(|e| errno(&e), |()| 0));
        }
        Action::ConnectLeave { from, to } => match connect(from, to, false, false) {
            Ok(s) => {
                // Close first: this side goes FIN-WAIT, then TIME-WAIT once the peer closes.
                drop(s);
                report(0);
            }
            Err(e) => report(errno(&e)),
        },
    }
}

//! The hint when a socket holds the port, by cause and by what that socket is: a listener, a
//! TIME-WAIT, an orphaned or an accepted connection, a UDP socket, an inherited socket, an IPv6
//! wildcard over IPv4.

use super::{
    Cause, Holder, Opener, PortContext, Request, Source, State, canonical,
    phrases::{
        OLD_SERVER_LACKED, SERVER_FIX, TUPLE_FIX, age, connection_fix, either, reserve_fix,
        reuseaddr_fix, reuseaddr_way, stop, who,
    },
};
use crate::event::SyscallName;

/// The fix when `h` holds the port, by `cause`; `same`: `h` is the caller's own.
pub(super) fn hint_for_holder(
    cause: Cause,
    req: &Request,
    h: &Holder,
    same: bool,
    ctx: &PortContext,
) -> String {
    let port = req.port;
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
            let fix = match connection_fix(port, h, ctx) {
                Some(good) => format!("now: {now}; for good: {good}"),
                None => now,
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
            let reuse = reuseaddr_way(req, h, "that socket");
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
        Cause::UdpConflict => udp_hint(req, h, &w, same, ctx),
        Cause::ReuseportMismatch => reuseport_hint(req, h, &w),
        Cause::DualStackConflict => dual_stack_hint(req, h, &w, same),
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
    let ways = [
        Some(stop(h, same)),
        Some("choose another port"),
        narrower(req, h),
    ];
    format!(
        "{w} is already listening on {local}{reuseport}: {}",
        either(&ways)
    )
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
        let good = connection_fix(port, h, ctx)
            .unwrap_or_else(|| reuseaddr_fix(req, h, "the connection's socket"));
        format!("now: {now}; for good: {good}")
    };
    // "from A to B, opened by X, holds the port": the comma only around what the owner adds.
    let comma = if owner.is_empty() { "" } else { "," };
    format!("a TIME-WAIT connection from {local}{remote}{owner}{opt}{comma} holds the port; {fix}")
}

/// A TIME-WAIT's time left, as the kernel's timer said at the lookup, else its most.
fn time_left(h: &Holder) -> String {
    h.expires_ms.map_or_else(
        || "up to 60 s".to_string(),
        |ms| format!("{} s left", ms.div_ceil(1000)),
    )
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
        // The kernel's timer, when it keeps the connection as a TIME-WAIT socket (it does for
        // `tcp_fin_timeout` up to 60 s), says how long.
        let most = h.expires_ms.map_or_else(
            || "at most net.ipv4.tcp_fin_timeout (60 s by default)".to_string(),
            |ms| format!("{} s more (net.ipv4.tcp_fin_timeout)", ms.div_ceil(1000)),
        );
        // A peer that closes first does not free the port: the connection then waits out a
        // TIME-WAIT (60 s) from that moment. Restarting the peer is no way out.
        let peer = h
            .remote
            .filter(|r| r.ip().is_loopback())
            .map(|r| {
                format!(" (a process on this host: `ss -tnp state close-wait src {r}` names it)")
            })
            .unwrap_or_default();
        format!(
            "for {most}, unless {remote}, which holds its end in CLOSE_WAIT{peer}, closes it \
             first: the connection then waits as a TIME-WAIT for 60 s from that moment"
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
    let good = connection_fix(port, h, ctx)
        .unwrap_or_else(|| reuseaddr_fix(req, h, "the connection's socket"));
    let fix = format!("now: {now}; for good: {good}");
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

/// Another UDP socket, not connected, holds the port: a receiver, or a client that sent without
/// bind() and got an ephemeral port.
fn udp_hint(req: &Request, h: &Holder, w: &str, same: bool, ctx: &PortContext) -> String {
    let (port, local) = (req.port, h.local);
    // UDP sockets share a port when both set SO_REUSEADDR (multicast receivers: each
    // gets every datagram) or both SO_REUSEPORT as one user (unicast spread over them).
    let share = udp_share(req, h);
    let ways = [
        Some(stop(h, same)),
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
/// them). Names, for each option, the side that lacks it when the other has it.
fn udp_share(req: &Request, h: &Holder) -> String {
    let on = |opt: &str, this: bool, that: Option<bool>| match (this, that) {
        (false, Some(true)) => format!("{opt} on this socket (that one has it already)"),
        (true, Some(false)) => format!("{opt} on that socket too (this one has it already)"),
        _ => format!("{opt} on both sockets"),
    };
    format!(
        "if both are meant to receive its datagrams, set {} (each then gets every multicast and \
         broadcast datagram) or {} (same user; the kernel then spreads unicast datagrams \
         between them)",
        on("SO_REUSEADDR", req.reuseaddr, h.reuseaddr),
        on("SO_REUSEPORT", req.reuseport, h.reuseport),
    )
}

/// A listening or bound socket `h` of `w` and the request overlap through an IPv6 wildcard
/// without IPV6_V6ONLY: whichever side it is gets the fix.
fn dual_stack_hint(req: &Request, h: &Holder, w: &str, same: bool) -> String {
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
        Some(stop(h, same)),
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
    let call = if req.syscall == SyscallName::Listen {
        "listen() on an IPv6 wildcard"
    } else {
        "IPv6 wildcard bind"
    };
    format!(
        "{w} {what} {local}, and this {call} without IPV6_V6ONLY also covers IPv4 port {port}: \
         {ways}"
    )
}

/// Both sockets set SO_REUSEPORT, of different users: the holder's socket's uid, and how it came
/// to differ from its process's.
fn reuseport_hint(req: &Request, h: &Holder, w: &str) -> String {
    let theirs = match (h.socket_uid, h.uid) {
        (Some(s), Some(p)) if s != p => format!(
            "uid {s} for the socket {w} holds: it was made by uid {s}, before the process became \
             uid {p}"
        ),
        _ => format!(
            "uid {} for {w}",
            h.sharing_uid()
                .map_or_else(|| "?".to_string(), |u| u.to_string())
        ),
    };
    format!(
        "both sockets set SO_REUSEPORT but belong to different users (uid {} here, {theirs}); \
         the kernel shares a port only between sockets of one user (the uid that made each \
         socket): run both as the same user",
        req.uid,
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
    let all = match h.shared_with.as_slice() {
        [] => w.to_string(),
        [one] => format!("{w} and pid {one}"),
        more => {
            let others: Vec<String> = more.iter().map(u32::to_string).collect();
            format!("{w} and pids {}", others.join(", "))
        }
    };
    let stays = "the port stays taken until every process holding the socket has closed it or \
                 exited";
    // The same program: the server's own worker, or the server itself after daemonizing (a
    // double fork) — sharing it meant to happen, not a descriptor leaked.
    if h.comm.as_deref() == Some(o.comm.as_str()) {
        return format!(
            "{w} holds {what} on {local}, which {opener} opened: {w} runs the same program, a \
             worker it forked, the server itself after daemonizing, or a sibling it passed the \
             socket to over a unix socket, and {stays}; stop {all} \
             (the server's process group, or through its service manager), or choose another \
             port"
        );
    }
    format!(
        "{w} holds {what} on {local}, which {opener} opened: {w} inherited it or was handed it \
         (forked from it, a program it started without closing its descriptors, or passed over \
         a unix socket, as socket activation does), and {stays}; stop {all}, and if it is a \
         program the server started by mistake, have the server open its sockets close-on-exec \
         (SOCK_CLOEXEC / FD_CLOEXEC; close_fds when it starts programs)"
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

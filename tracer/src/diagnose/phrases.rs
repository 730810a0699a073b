//! Pieces of hint text that several hints share: who holds a socket and since when, "a, b, or
//! c", and the fixes that recur (stop it, reserve the port, SO_REUSEADDR on the side that lacks
//! it, the server's and the four-tuple's fixes).

use super::{Holder, PortContext, Request};

/// The first way out of a conflict with `h`: stop its process — all of them when several share
/// the socket, since the port stays taken until the last one closes it.
/// How to end `h`'s hold; `same`: it is the caller's own socket.
pub(super) fn stop(h: &Holder, same: bool) -> &'static str {
    if same {
        "close that socket"
    } else if h.shared_with.is_empty() {
        "stop it"
    } else {
        "stop all of them"
    }
}

pub(super) fn who(h: &Holder) -> String {
    // The pod (on a Kubernetes node, what the process is known by), when it runs in one.
    let pod = match (&h.container.pod_namespace, &h.container.pod_name) {
        (Some(ns), Some(name)) => format!(", pod {ns}/{name}"),
        _ => String::new(),
    };
    match (&h.comm, h.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p}{pod})"),
        (None, Some(p)) => format!("pid {p}{pod}"),
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

/// "a, b, or c" of the ways given.
pub(super) fn either(ways: &[Option<&str>]) -> String {
    let ways: Vec<&str> = ways.iter().flatten().copied().collect();
    match ways.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, [only])) => format!("{only} or {last}"),
        Some((last, rest)) => format!("{}, or {last}", rest.join(", ")),
    }
}

pub(super) fn reserve_fix(port: u16, ctx: &PortContext) -> String {
    // The range's last free port: reserving it would leave outgoing connections none.
    let last = ctx
        .range
        .is_some_and(|(lo, hi)| (lo..=hi).all(|p| p == port || ctx.is_reserved(p)));
    if last {
        return format!(
            "port {port} is the only unreserved port of the ephemeral range {} \
             (net.ipv4.ip_local_port_range): reserving it would leave outgoing connections no \
             port at all: move the range away from your listen ports",
            ctx.range_text()
        );
    }
    format!(
        "port {port} lies in the ephemeral range {} (net.ipv4.ip_local_port_range) and is not \
         reserved: reserve it with `sysctl -w net.ipv4.ip_local_reserved_ports={}` (the list \
         reserved now, with {port}; in the host's namespace for a hostNetwork pod, and in \
         /etc/sysctl.d to keep it) or move the range above your listen ports",
        ctx.range_text(),
        ctx.reserved_with([port])
    )
}

/// What keeps outgoing connections off `port` for good, for a connection that holds it: reserve
/// it if it lies in the ephemeral range unreserved; if it is reserved already, that it was so
/// (the connection came before the reservation, or chose the port itself), so that waiting is
/// all that is left. None outside the range.
pub(super) fn range_fix(port: u16, ctx: &PortContext) -> Option<String> {
    if ctx.in_ephemeral_range(port) {
        return Some(reserve_fix(port, ctx));
    }
    let in_range = ctx.range.is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
    (in_range && ctx.is_reserved(port)).then(|| {
        format!(
            "port {port} is reserved now (net.ipv4.ip_local_reserved_ports), so no new \
             outgoing connection takes it by chance: that connection was made before the port \
             was reserved, or bound the port itself"
        )
    })
}

/// What keeps a connection's process off `port` for good, when the port lies in the ephemeral
/// range: reserving it (`range_fix`) — unless that process bound it itself before connecting,
/// which no reservation stops: then the client's own choice of port is what to change. None
/// outside the range.
pub(super) fn connection_fix(port: u16, h: &Holder, ctx: &PortContext) -> Option<String> {
    let in_range = ctx.range.is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
    if h.bound_before_connect && in_range {
        return Some(format!(
            "the connection's process bound port {port} itself before connecting (bindtrace saw \
             its bind()), which no reservation of the port stops: have that client let the \
             kernel choose its source port (no bind() before connect(), or bind() to port 0)"
        ));
    }
    range_fix(port, ctx)
}

/// What lets a new server bind over its predecessor's connections (TIME-WAIT or still open):
/// `inet_bind_conflict()` lets them be only if both sockets set SO_REUSEADDR, and an accepted
/// connection has its listener's setting.
pub(super) const SERVER_FIX: &str = "set SO_REUSEADDR on the listening socket before bind() (on \
                                    the previous server's too: its connections keep its setting)";

/// Why a new server with SO_REUSEADDR is still refused by its predecessor's connections.
pub(super) const OLD_SERVER_LACKED: &str = "this socket has SO_REUSEADDR already, but the previous \
                                           server's listening socket had not, and its connections \
                                           keep that";

/// SO_REUSEADDR on both sockets lifts a conflict with a socket that does not listen: the fix names
/// the side that lacks it. `theirs`: the holder's socket, as the sentence names it.
pub(super) fn reuseaddr_fix(req: &Request, h: &Holder, theirs: &str) -> String {
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

/// `reuseaddr_fix` as one way among others ("close it, ..., or set SO_REUSEADDR on that socket
/// too (this one has it)").
pub(super) fn reuseaddr_way(req: &Request, h: &Holder, theirs: &str) -> String {
    match (req.reuseaddr, h.reuseaddr) {
        (true, Some(false) | None) => {
            format!("set SO_REUSEADDR on {theirs} too (this socket has it)")
        }
        (false, Some(true)) => {
            format!("set SO_REUSEADDR on this socket ({theirs} has it already)")
        }
        _ => "set SO_REUSEADDR on both sockets".to_string(),
    }
}

/// What to do when a connect() from a bound port meets a connection to the same destination.
pub(super) const TUPLE_FIX: &str = "two connections cannot have the same source and destination \
                                   address and port: let the kernel choose the source port (do not \
                                   bind() before connect(), or set IP_BIND_ADDRESS_NO_PORT), or \
                                   connect from another port";

//! The hint as given: the fix (`hints` with a holder, `no_holder` without), and the notes the
//! holder adds to it (a daemon's purpose, a dual-stack overlap, a device, a socket gone since).

use std::fmt::Write as _;

use super::{
    Cause, Holder, PortContext, Request, Source, State, canonical, hints::hint_for_holder,
    no_holder::hint_without_holder, phrases::age, rules::dual_stack_wildcard,
};

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

/// The devices the sockets that refuse the call are bound to (SO_BINDTODEVICE), when every one of
/// them is bound to one: then a socket bound to another device could share the port.
fn devices_only(holders: &[Holder]) -> Option<Vec<String>> {
    let mut devices = Vec::new();
    for h in holders.iter().filter(|h| h.conflicts) {
        let d = h.device_name()?;
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    (!devices.is_empty()).then_some(devices)
}

/// The hint, with what the holder adds to it: a daemon's purpose, a dual-stack overlap, a socket
/// gone before the lookup.
pub(super) fn hint_with_notes(
    cause: Cause,
    req: &Request,
    (primary, holders): (Option<&Holder>, &[Holder]),
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
             port {} for IPv4's 0.0.0.0 too: binding a specific IPv4 address \
             avoids it)",
            h.local.port()
        );
    }
    if primary.is_some_and(|h| h.conflicts)
        && req.bound_dev_if == 0
        && let Some(devices) = devices_only(holders)
    {
        // The kernel lets sockets bound to different devices share a port; an unbound one
        // meets them all.
        let (those, are, them) = if holders.iter().filter(|h| h.conflicts).count() == 1 {
            ("that socket", "is", "it")
        } else {
            ("those sockets", "are", "them")
        };
        let _ = write!(
            hint,
            " ({those} {are} bound to device {} only: bound to another device with \
             SO_BINDTODEVICE, this socket could have the port beside {them})",
            devices.join(" and ")
        );
    }
    if let Some(h) = primary.filter(|h| !h.conflicts) {
        // The kernel refused the call, yet by its rules, as far as bindtrace could read this
        // socket, it would not have: the nearest socket is named, and said to be that.
        let _ = write!(
            hint,
            " (by the kernel's rules, as far as bindtrace could read that socket's options, it \
             would not refuse this {}(): it is the nearest match on the port, not a certain \
             culprit; `ss -{}anpe sport = :{}` lists the port's sockets now)",
            req.syscall.as_str(),
            if req.udp { "u" } else { "t" },
            h.local.port()
        );
    }
    if let Some(h) = primary.filter(|h| h.socket_closed) {
        // Its opener gone too: perhaps before the failure, the socket then held by a process it
        // handed it to (a pre-fork server's worker, a daemonized child), which closed it since.
        let heir = if h.owner_alive == Some(false)
            && matches!(h.state, State::Listen | State::Bound)
        {
            "; its opener has exited: if before this failure, a process that had the socket from \
             it (a forked worker, a daemonized child) held the port then"
        } else {
            ""
        };
        let _ = write!(
            hint,
            " (bindtrace saw that socket take the port{}; it had closed by the time bindtrace \
             looked{heir})",
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

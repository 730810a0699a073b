//! Why a bind/listen/connect failed: which of the sockets on the port blocked it, the cause in one
//! word, and one sentence that names the fix. Pure rules over plain data; the lookups that feed
//! them live in `owners`.
//!
//! The conflict rules are the kernel's (`inet_csk_bind_conflict()`, `udp_lib_lport_inuse()`,
//! 4.19 … 6.18; `bindtrace lab` puts them to the running kernel, see docs/lab.md): a listener never
//! shares a port by SO_REUSEADDR alone; other TCP sockets share when both set SO_REUSEADDR;
//! SO_REUSEPORT shares when both set it and have the same owner uid (TIME-WAIT: any uid); IPv6
//! `[::]` without IPV6_V6ONLY covers IPv4; devices conflict only if either is unbound or both are
//! the same. The kernel's verdict is the fact — when these rules find no culprit among the sockets
//! present, the closest one is still named.
//!
//! Here: the verdict (`verdict()`, `Diagnosis`). Its parts: the data it weighs (`request`,
//! `holder`, `context`) and decides (`cause`); the kernel's rules (`rules`); the hint when a
//! socket holds the port (`hints`) or none does (`no_holder`), the text they share (`phrases`),
//! and the notes a holder adds to either (`notes`).

mod cause;
mod context;
mod hints;
mod holder;
mod no_holder;
mod notes;
mod phrases;
mod request;
mod rules;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt::Write as _};

pub use self::{
    cause::Cause,
    context::{AddressNow, PortContext, PortUser, PortUsers, parse_range, parse_reserved},
    holder::{Holder, Opener, Source, State},
    phrases::age,
    request::Request,
    rules::{addresses_overlap, canonical, conflicts, needs_scope_addr, same_endpoint},
};
use self::{
    notes::hint_with_notes,
    phrases::who,
    rules::{cross_family, invalid_address},
};
use crate::event::SyscallName;

const EPERM: i32 = 1;
const EAFNOSUPPORT: i32 = 97;
const ENODEV: i32 = 19;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const EAGAIN: i32 = 11;

/// The verdict added to a failure event (flattened into its JSON object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub cause: Cause,
    pub same_process: bool,
    pub in_ephemeral_range: bool,
    /// `ip_local_port_range` of the failing namespace, `"lo-hi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Sockets on the port left out of `holders` (see `keep_holders`), by state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holders_omitted: BTreeMap<String, u32>,
    pub hint: String,
}

impl Diagnosis {
    /// Keeps the first `n` holders (the culprits first) and counts the rest by state: a server
    /// that crashed with 10 000 connections leaves as many TIME-WAITs, which would make each of
    /// its restarts' failures a line of megabytes.
    pub fn keep_holders(&mut self, n: usize) {
        for h in self.holders.drain(n.min(self.holders.len())..) {
            *self
                .holders_omitted
                .entry(h.state.as_str().to_string())
                .or_default() += 1;
        }
    }

    /// How many holders `keep_holders` left out.
    pub fn omitted(&self) -> usize {
        self.holders_omitted.values().map(|&n| n as usize).sum()
    }
}

/// Which holders the kernel's rules say refuse `req`. A socket of the caller's own that took the
/// port after the call failed (its record says when: a script that binds again at once) cannot
/// have refused it — unless it is all there is. Only the caller's: another process's record,
/// stamped at its call's exit, may come after a failure it caused (a racing winner preempted
/// before its exit), and a process's record may be its newer socket's.
fn mark_conflicts(req: &Request, holders: &mut [Holder]) {
    for h in holders.iter_mut() {
        h.conflicts = conflicts(req, h);
    }
    if let Some(at) = req.at_ns {
        let later = |h: &Holder| h.pid == Some(req.pid) && h.took_port_ns.is_some_and(|t| t > at);
        if holders.iter().any(|h| h.conflicts && !later(h)) {
            for h in holders.iter_mut().filter(|h| later(h)) {
                h.conflicts = false;
            }
        }
    }
}

/// Decides the cause from the failing request, the sockets found on the port and the namespace's
/// port settings.
pub fn verdict(req: &Request, mut holders: Vec<Holder>, ctx: &PortContext) -> Diagnosis {
    mark_conflicts(req, &mut holders);
    // Culprits first, then by how well a state explains a failure; of several TIME-WAITs, the
    // one that lasts longest: the wait the hint gives is for the last of them.
    holders.sort_by_key(|h| {
        (
            !h.conflicts,
            h.state.rank(),
            h.source != Source::Live,
            std::cmp::Reverse(h.expires_ms),
        )
    });
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
        let other_user = h.sharing_uid().is_some_and(|u| u != req.uid);
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
    let mut hint = hint_with_notes(cause, req, (primary, &holders), same_process, ctx);
    if let Some(p) = primary {
        hint.push_str(&others_blocking(p, &holders, req.pid));
        let time_waits = holders
            .iter()
            .filter(|h| h.conflicts && h.state == State::TimeWait)
            .count();
        if cause == Cause::TimeWaitConflict && time_waits > 1 {
            let _ = write!(
                hint,
                " ({time_waits} TIME-WAITs hold the port; this one ends last)"
            );
        }
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
        reserved_ports: (!ctx.reserved.is_empty()).then(|| ctx.reserved_with([])),
        ports_in_use: ctx.ports_in_use,
        port_users: ctx.users.clone(),
        device: ctx.device.clone(),
        holders,
        holders_omitted: BTreeMap::new(),
        hint,
    }
}

/// Other processes' listening or bound sockets that block the call beside `primary` (listeners
/// on other devices, a port taken twice): stopping the one the hint names would not free the
/// port. Empty when there are none.
fn others_blocking(primary: &Holder, holders: &[Holder], caller: u32) -> String {
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
                .device_name()
                .map(|d| format!(" on device {d}"))
                .unwrap_or_default();
            // The caller's own other socket (one it bound before this one) is its own doing.
            let whose = if h.pid == Some(caller) {
                "this process".to_string()
            } else {
                who(h)
            };
            format!("{whose} at {}{dev}", h.local)
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

//! What the failing namespace says about its ports and addresses: `ip_local_port_range`,
//! `ip_local_reserved_ports` and the other sysctls read, who holds an exhausted range, and what
//! it has of a refused address.

use serde::{Deserialize, Serialize};

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

/// A program holding ports of an exhausted range: one process, or several of the same name (a
/// client run once per request, workers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortUser {
    /// The process, or of several the one with most sockets.
    pub pid: u32,
    pub comm: String,
    /// False for the remembered owner of a TIME-WAIT whose process has exited; of several,
    /// whether any is alive.
    pub alive: bool,
    /// Of the sampled sockets, how many are its.
    pub sockets: u32,
    /// How many processes of this name hold them.
    #[serde(default = "one")]
    pub processes: u32,
    /// Of those, how many have exited.
    #[serde(default)]
    pub exited: u32,
}

fn one() -> u32 {
    1
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

    /// `ip_local_reserved_ports` as it would be with `ports` added to the current list: what to
    /// set (setting only a new port would drop the ports reserved before: a node's NodePort
    /// range, other services').
    pub fn reserved_with(&self, ports: impl IntoIterator<Item = u16>) -> String {
        let mut all: Vec<(u16, u16)> = self.reserved.clone();
        all.extend(ports.into_iter().map(|p| (p, p)));
        all.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, b) in all {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let runs: Vec<String> = merged
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        runs.join(",")
    }

    pub(super) fn range_text(&self) -> String {
        self.range
            .map_or_else(|| "?".to_string(), |(lo, hi)| format!("{lo}-{hi}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_keeps_the_list_it_adds_to() {
        let c = PortContext {
            reserved: parse_reserved("30000-32767,41010,41015-41016\n"),
            ..PortContext::default()
        };
        assert_eq!(
            c.reserved_with([41012]),
            "30000-32767,41010,41012,41015-41016"
        );
        assert_eq!(
            c.reserved_with([41011, 41014]),
            "30000-32767,41010-41011,41014-41016"
        );
        assert_eq!(c.reserved_with([31000]), "30000-32767,41010,41015-41016");
        assert_eq!(PortContext::default().reserved_with([8080]), "8080");
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
}

//! TCP connections that were open when bindtrace started, and the processes that had them.
//!
//! The kernel history names a connection's owner only if bindtrace saw the connection made. One
//! made before it started (a keep-alive pool, a long-lived client: every connection on the host
//! after a bindtrace upgrade or restart) has no record, and once it closes into TIME-WAIT no
//! process has it open either — the seed's incident, unexplained. So the start-up scan of
//! `/proc/*/fd` (`procfs::SocketTable::prefilled`) also lists each namespace's TCP connections
//! (`/proc/PID/net/tcp{,6}` of one process per namespace) and keeps, for each open in a process,
//! who had it: a TIME-WAIT found later on the same addresses is that connection's.

use std::{collections::HashMap, fs, net::SocketAddr, os::unix::fs::MetadataExt as _};

use tracer_common::tcp_state;

use crate::{event, owners, procfs::Holders};

/// Connections kept at most (about 150 bytes each).
const MAX_CONNECTIONS: usize = 200_000;

/// (network namespace inode, local address, remote address).
pub type Key = (u32, SocketAddr, SocketAddr);

/// The process that had a connection open at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOwner {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// When the scan saw it (CLOCK_MONOTONIC, ns): the process still runs if it had started by
    /// then (`procfs::alive_since`).
    pub seen_ns: u64,
    /// A server's side: its local port had a listener in its namespace then.
    pub accepted: bool,
}

impl StartOwner {
    /// Whether that process still runs (the pid not recycled since the scan).
    pub fn alive(&self) -> bool {
        crate::procfs::alive_since(self.pid, self.seen_ns)
    }
}

/// The TCP connections of every network namespace a process is in, by addresses, with the
/// process holding each (from `open`, inode → holders, a full fd scan).
pub fn snapshot(open: &HashMap<u64, Holders>) -> HashMap<Key, StartOwner> {
    let seen_ns = event::monotonic_now();
    let mut out = HashMap::new();
    let mut names: HashMap<u32, Option<(String, u32)>> = HashMap::new();
    for (netns, pid) in one_process_per_netns() {
        let sockets: Vec<_> = ["tcp", "tcp6"]
            .iter()
            .filter_map(|f| fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
            .flat_map(|text| owners::parse_proc_net(&text, 6))
            .collect();
        let listening: std::collections::HashSet<u16> = sockets
            .iter()
            .filter(|s| s.state == tcp_state::LISTEN)
            .map(|s| s.local.port())
            .collect();
        for s in sockets {
            if s.state == tcp_state::LISTEN || s.state == tcp_state::CLOSE || s.inode == 0 {
                continue;
            }
            let Some(&(owner, _)) = open.get(&s.inode).and_then(|h| h.first()) else {
                continue;
            };
            let Some((comm, uid)) = names
                .entry(owner)
                .or_insert_with(|| crate::procfs::process(owner).map(|p| (p.comm, p.uid)))
                .clone()
            else {
                continue;
            };
            if out.len() >= MAX_CONNECTIONS {
                return out;
            }
            out.insert(
                (netns, s.local, s.remote),
                StartOwner {
                    pid: owner,
                    comm,
                    uid,
                    seen_ns,
                    accepted: listening.contains(&s.local.port()),
                },
            );
        }
    }
    out
}

/// (namespace inode, a pid in it) for each network namespace some process is in.
fn one_process_per_netns() -> Vec<(u32, u32)> {
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            seen.entry(m.ino() as u32).or_insert(pid);
        }
    }
    seen.into_iter().collect()
}

//! The kernel's owner history (`History`), its entries as a lookup reads them (`Remembered`), and
//! the matching of those entries to the sockets found on a port: the owner of a socket no process
//! has open, who opened a socket others hold now, whether a connection was accepted, and the
//! options a live socket took its port with.

use std::net::SocketAddr;

use aya::maps::{Array, MapData};
use tracer_common::{
    HistoryKey, Owner, Role, flags,
    history::{self, HistorySet},
};

use crate::{
    diagnose::{self, Holder, Request, Source, State},
    event, procfs,
    sockdiag::DiagSocket,
};

/// Read access to the kernel's owner history (`tracer_common::history`): this watch's, or, for a
/// one-off lookup, those of the watches running on the host.
pub struct History {
    maps: Vec<Array<MapData, HistorySet>>,
}

impl History {
    /// The `HISTORY` map, if it is the array of sets this build writes.
    pub fn open(map: aya::maps::Map) -> Option<Self> {
        Array::try_from(map)
            .ok()
            .map(|map| Self { maps: vec![map] })
    }

    /// The histories of the `bindtrace watch` instances running now, found among the kernel's
    /// maps by name (`HISTORY`) and shape (an array of this build's sets, so a watch of another
    /// version is passed over); None if there is none or this process may not read them (it
    /// needs CAP_SYS_ADMIN). A watch knows what no socket shows from outside: the options of the
    /// socket behind a TIME-WAIT, and who opened it.
    pub fn of_running_watches() -> Option<Self> {
        let mut maps = Vec::new();
        for info in aya::maps::loaded_maps().flatten() {
            if info.name_as_str() != Some(tracer_common::names::HISTORY)
                || info.key_size() as usize != std::mem::size_of::<u32>()
                || info.value_size() as usize != std::mem::size_of::<HistorySet>()
                || !info.max_entries().is_power_of_two()
            {
                continue;
            }
            let map = MapData::from_id(info.id())
                .ok()
                .and_then(|m| Array::try_from(aya::maps::Map::Array(m)).ok());
            if let Some(map) = map {
                maps.push(map);
            }
        }
        (!maps.is_empty()).then_some(Self { maps })
    }

    /// The owners remembered for the port in this role, newest first: one per peer for outgoing
    /// connections (they may share a source port), else one.
    pub(super) fn get(&self, netns: u32, port: u16, protocol: u8, role: Role) -> Vec<Owner> {
        let key = HistoryKey {
            netns,
            port,
            protocol,
            role: role as u8,
        };
        let mut owners: Vec<Owner> = self
            .maps
            .iter()
            .flat_map(|map| Self::find(map, key))
            .collect();
        owners.sort_by_key(|o| std::cmp::Reverse(o.ts_ns));
        // Two watches remember the same call alike.
        owners.dedup_by(|a, b| {
            a.ts_ns == b.ts_ns && a.pid == b.pid && a.remote_port == b.remote_port
        });
        owners
    }

    /// Whether a record of the key could have been evicted: its set is full in some watch's
    /// history. A set with a slot never written has never evicted anything (a write takes an
    /// empty slot before the oldest), so a record the key never had there was never made.
    pub(super) fn could_have_evicted(
        &self,
        netns: u32,
        port: u16,
        protocol: u8,
        role: Role,
    ) -> bool {
        let key = HistoryKey {
            netns,
            port,
            protocol,
            role: role as u8,
        };
        self.maps.iter().any(|map| {
            let Some(mask) = map.len().checked_sub(1) else {
                return false;
            };
            map.get(&history::set_of(&key, mask), 0)
                .is_ok_and(|set| set.slots.iter().all(|s| s.check != 0))
        })
    }

    fn find(map: &Array<MapData, HistorySet>, key: HistoryKey) -> Vec<Owner> {
        let Some(mask) = map.len().checked_sub(1) else {
            return Vec::new();
        };
        let set = history::set_of(&key, mask);
        // A slot copied while a kernel program was writing it fails its check: read it again.
        // The write takes well under a microsecond; a slot still torn after three reads was left
        // so by two writers racing, and holds nothing.
        let mut found = None;
        for _ in 0..3 {
            let Ok(value) = map.get(&set, 0) else {
                break;
            };
            let f = value.find(&key);
            found = Some(f);
            if !f.torn {
                break;
            }
        }
        found
            .map(|f| f.owners.into_iter().flatten().collect())
            .unwrap_or_default()
    }
}

/// A history entry with what it says.
pub(super) struct Remembered {
    pub(super) owner: Owner,
    pub(super) role: Role,
    pub(super) age_ms: u64,
    pub(super) alive: bool,
    pub(super) comm: String,
}

impl Remembered {
    fn port_flags(&self) -> (Option<bool>, Option<bool>) {
        if self.owner.flags & flags::SOCKOPTS_KNOWN == 0 {
            return (None, None);
        }
        (
            Some(self.owner.flags & flags::REUSEADDR != 0),
            Some(self.owner.flags & flags::REUSEPORT != 0),
        )
    }

    /// The address it took the port on.
    pub(super) fn local_ip(&self) -> std::net::IpAddr {
        event::ip(self.owner.family, &self.owner.local_addr)
    }

    /// Whether it is the record of the connection `s` made: an outgoing connection's, to the
    /// same peer.
    pub(super) fn made(&self, s: &DiagSocket) -> bool {
        self.role == Role::Connected && diagnose::same_endpoint(self.remote(), s.remote)
    }

    /// Whether it took the port on `ip` (IPv4-mapped addresses counting as IPv4).
    pub(super) fn on_address(&self, ip: std::net::IpAddr) -> bool {
        diagnose::canonical(self.local_ip()) == diagnose::canonical(ip)
    }

    /// IPV6_V6ONLY of an IPv6 socket, when read.
    fn v6only(&self) -> Option<bool> {
        let known = |bit| self.owner.flags & bit != 0;
        (self.owner.family == tracer_common::AF_INET6 && known(flags::V6ONLY_KNOWN))
            .then(|| known(flags::V6ONLY))
    }

    pub(super) fn remote(&self) -> SocketAddr {
        SocketAddr::new(
            event::ip(self.owner.family, &self.owner.remote_addr),
            self.owner.remote_port,
        )
    }

    /// The owner's name: the kernel programs record the process's (`kernel::owner_comm`); one
    /// that still runs may have been renamed since.
    pub(super) fn process_name(&self) -> String {
        self.alive
            .then(|| procfs::process(self.owner.pid))
            .flatten()
            .map_or_else(|| self.comm.clone(), |p| p.comm)
    }

    /// The socket this entry describes, on `req`'s port, as it was when it took the port (a
    /// connection as ESTABLISHED); `closed`: gone when looked up.
    pub(super) fn holder(&self, req: &Request, closed: bool) -> Holder {
        let state = match self.role {
            Role::Listening => State::Listen,
            Role::Bound => State::Bound,
            Role::Connected => State::Established,
        };
        let local = SocketAddr::new(self.local_ip(), req.port);
        let mut h = Holder::new(state, req.udp, local, Source::History);
        h.remote = (self.role == Role::Connected).then(|| self.remote());
        h.v6only = self.v6only();
        h.socket_closed = closed;
        self.apply(&mut h);
        h
    }

    /// Fills `h`'s owner from this entry.
    pub(super) fn apply(&self, h: &mut Holder) {
        h.pid = Some(self.owner.pid);
        h.comm = Some(self.comm.clone());
        let name = self.process_name();
        if name != self.comm {
            h.thread = h.comm.replace(name);
        }
        h.uid = Some(self.owner.uid);
        h.source = Source::History;
        h.age_ms = Some(self.age_ms);
        h.owner_alive = Some(self.alive);
        h.owner_cgroup = self.owner.cgroup_id;
        let (a, p) = self.port_flags();
        h.reuseaddr = h.reuseaddr.or(a);
        h.reuseport = h.reuseport.or(p);
        // A connection's own record, or the listener's it was accepted from (an accepted socket
        // inherits the listener's IPV6_V6ONLY): of the same family, it tells a TIME-WAIT's.
        if self.local_ip().is_ipv6() == h.local.ip().is_ipv6() {
            h.v6only = h.v6only.or_else(|| self.v6only());
        }
    }
}

/// The remembered owner of a socket no process has open: a listening or bound socket's own
/// record (on its address, if one is), the connection's creator (matched by its peer), or for a
/// connection accepted by a listener, that listener — one that covers the connection's address and
/// took the port before a TIME-WAIT began: a new server's listener, on another address or since,
/// did not accept its predecessor's connections.
pub(super) fn history_owner<'a>(
    remembered: &'a [Remembered],
    s: &DiagSocket,
    state: State,
) -> Option<&'a Remembered> {
    let same_address = |r: &&Remembered| r.on_address(s.local.ip());
    if matches!(state, State::Listen | State::Bound) {
        let own = || remembered.iter().filter(|r| r.role != Role::Connected);
        return own().find(same_address).or_else(|| own().next());
    }
    let began = (state == State::TimeWait)
        .then_some(s.expires_ms)
        .flatten()
        .map(|left| time_wait_began(u64::from(left)));
    remembered.iter().find(|r| r.made(s)).or_else(|| {
        remembered.iter().find(|r| {
            r.role == Role::Listening
                && diagnose::addresses_overlap(r.local_ip(), r.v6only(), s.local.ip(), None)
                && began.is_none_or(|b| r.owner.ts_ns <= b + TIME_WAIT_TIMER_SLACK_NS)
        })
    })
}

/// How far a TIME-WAIT's start, worked out from its timer (kept in jiffies: 10 ms at the lowest
/// `CONFIG_HZ`, and reported in whole milliseconds), may be off.
const TIME_WAIT_TIMER_SLACK_NS: u64 = 20_000_000;

/// When a TIME-WAIT with `left_ms` to go began (CLOCK_MONOTONIC ns): it lasts 60 s
/// (`TCP_TIMEWAIT_LEN`).
pub(super) fn time_wait_began(left_ms: u64) -> u64 {
    event::monotonic_now()
        .saturating_sub(60_000_000_000u64.saturating_sub(left_ms.saturating_mul(1_000_000)))
}

/// The process bindtrace saw take the port with the live listening or bound socket `s`, when
/// none of the processes that hold it now (`open_in`) is seen to have: they inherited it (a child
/// started without closing the server's descriptors keeps its port after the server exits). The
/// newest such entry on the socket's address; none if a holder took the port itself, or ran
/// before the port was taken, or if the history has nothing on it (taken before bindtrace
/// started).
pub(super) fn opener(
    remembered: &[Remembered],
    open_in: &[(u32, u32)],
    s: &DiagSocket,
    state: State,
) -> Option<diagnose::Opener> {
    if !matches!(state, State::Listen | State::Bound) {
        return None;
    }
    let role = own_role(state);
    let fits = |r: &&Remembered| r.role == role && r.on_address(s.local.ip());
    if remembered
        .iter()
        .filter(fits)
        .any(|r| open_in.iter().any(|&(pid, _)| pid == r.owner.pid))
    {
        return None;
    }
    let r = remembered
        .iter()
        .filter(fits)
        .max_by_key(|r| r.owner.ts_ns)?;
    // A process that ran before that one took the port cannot have inherited the socket from it
    // (forked or started by it): it opened its own, sharing the port (SO_REUSEPORT workers, UDP
    // receivers with SO_REUSEADDR) with the one the history saw, which has since gone.
    if open_in
        .iter()
        .any(|&(pid, _)| procfs::started_before(pid, r.owner.ts_ns))
    {
        return None;
    }
    Some(diagnose::Opener {
        pid: r.owner.pid,
        comm: r.comm.clone(),
        alive: r.alive,
    })
}

/// Whether the connection `s` is a server's side, accepted on its port: no connection from the
/// port to its peer was seen made, a listener covering its address was seen on the port, and
/// either its peer's port is an ephemeral one (a client's; `range`, the namespace's, when known)
/// or its own port is not (no connect() here chose it). Misjudged as accepted: an outgoing
/// connection made before bindtrace started, explicitly bound to a port outside the range that
/// was once listened on, towards a peer's port outside it too. Accepts themselves are not recorded: that would cost every server's
/// every connection.
pub(super) fn accepted(
    remembered: &[Remembered],
    s: &DiagSocket,
    range: Option<(u16, u16)>,
) -> bool {
    let made_here = remembered.iter().any(|r| r.made(s));
    let listened = remembered.iter().any(|r| {
        r.role == Role::Listening
            && diagnose::addresses_overlap(r.local_ip(), r.v6only(), s.local.ip(), None)
    });
    // A client's port is ephemeral: in this namespace's range — or, when the clients use
    // another range (other hosts, or this one after its range was moved above the listen
    // ports), at least the local port is outside it, so no connect() here chose it.
    let in_range = |port: u16| range.is_none_or(|(lo, hi)| (lo..=hi).contains(&port));
    let from_client_port = in_range(s.remote.port()) || !in_range(s.local.port());
    !made_here && listened && from_client_port
}

/// Whether the connection `s`, of process `pid`, took its port by its own bind() before
/// connecting: its remembered connection, and that process's remembered bind of the port, on
/// the connection's address or the wildcard, made within [`BIND_THEN_CONNECT_NS`] before it and
/// not followed by a listen() of that process (which makes it a server's bind, not this
/// client's). Said only when both records are there: nothing else ties a bind to a connection,
/// and a false "bound it itself" would take the seed's fix (reserve the port) away. A bind() to
/// port 0 is not remembered: its port came from the ephemeral range, as a connect()'s does.
pub(super) fn bound_before_connect(remembered: &[Remembered], s: &DiagSocket, pid: u32) -> bool {
    let Some(made) = remembered
        .iter()
        .find(|r| r.made(s) && r.owner.pid == pid)
        .map(|r| r.owner.ts_ns)
    else {
        return false;
    };
    let listened_after = |t: u64| {
        remembered
            .iter()
            .any(|r| r.role == Role::Listening && r.owner.pid == pid && r.owner.ts_ns >= t)
    };
    remembered.iter().any(|r| {
        r.role == Role::Bound
            && r.owner.pid == pid
            && (r.on_address(s.local.ip()) || r.local_ip().is_unspecified())
            && r.owner.ts_ns <= made
            && made - r.owner.ts_ns <= BIND_THEN_CONNECT_NS
            && !listened_after(r.owner.ts_ns)
    })
}

/// How long before its connect() a client's bind() of the port may come: a client binds, then
/// connects at once; a bind longer ago by the same process is another socket's (a probe, a
/// server's), whose port a connect() may have been given by chance since.
const BIND_THEN_CONNECT_NS: u64 = 10_000_000_000;

/// Fills in the options of the live socket `s`, open in the processes and descriptors `open_in`
/// (a socket shared by a master and its workers is open in each, in no particular order): as the
/// kernel programs saw them when it took the port, whichever of those processes did; only for a
/// socket they never saw (bound before bindtrace started) from the socket itself; failing that (no
/// ptrace access), from what the history says of the process.
pub(super) fn live_options(
    h: &mut Holder,
    remembered: &[Remembered],
    open_in: &[(u32, u32)],
    s: &DiagSocket,
    state: State,
) {
    let Some(&(pid, fd)) = open_in.first() else {
        return;
    };
    if let Some(r) = open_in
        .iter()
        .find_map(|&(pid, _)| remembered_socket(remembered, pid, s, state))
    {
        (h.reuseaddr, h.reuseport) = r.port_flags();
        // sock_diag tells IPV6_V6ONLY of listening and bound sockets only.
        h.v6only = h.v6only.or_else(|| r.v6only());
        // The socket's own entry (not the listener a connection was accepted from): when it
        // took the port — a holder that took it a moment before the failure raced the caller.
        if r.role == own_role(state) {
            h.age_ms = Some(r.age_ms);
            h.took_port_ns = Some(r.owner.ts_ns);
        }
    } else if let Some(o) = procfs::socket_options(pid, fd, s.inode) {
        h.reuseaddr = Some(o.reuseaddr);
        h.reuseport = Some(o.reuseport);
        h.v6only = o.v6only.or(h.v6only);
    } else if let Some(r) = remembered.iter().find(|r| r.owner.pid == pid) {
        (h.reuseaddr, h.reuseport) = r.port_flags();
    }
}

/// The history entry that describes the live socket `s` of `pid`, with its options known: same
/// process and local address, and a role that fits the socket's state (a listener's or a bound
/// socket's own; a connection's by its peer, or the listener it was accepted from, whose options
/// it inherits). Reading the options from here rather than from the socket matters: a duplicate
/// of the owner's descriptor (`procfs::socket_options`) keeps the socket alive if its owner closes
/// it meanwhile, and a re-bind of the port in that instant would fail because of bindtrace. The
/// price: should the live socket have taken the port unseen (an io_uring bind or listen under the
/// tracepoint backend) after an earlier socket of the same process did on the same address, or
/// changed its options after taking it, the options reported are the earlier ones.
fn remembered_socket<'a>(
    remembered: &'a [Remembered],
    pid: u32,
    s: &DiagSocket,
    state: State,
) -> Option<&'a Remembered> {
    let fits = |r: &&Remembered| {
        r.owner.pid == pid
            && r.owner.flags & flags::SOCKOPTS_KNOWN != 0
            && r.on_address(s.local.ip())
    };
    let candidates = || remembered.iter().filter(fits);
    match state {
        State::Listen | State::Bound => candidates().find(|r| r.role == own_role(state)),
        _ => candidates()
            .find(|r| r.made(s))
            .or_else(|| candidates().find(|r| r.role == Role::Listening)),
    }
}

/// The role in which a socket in `state` took its port itself (a connection: made by connect()).
fn own_role(state: State) -> Role {
    match state {
        State::Listen => Role::Listening,
        State::Bound => Role::Bound,
        _ => Role::Connected,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tracer_common::{IPPROTO_TCP, tcp_state};

    use super::*;

    pub(in crate::owners) fn remembered(
        pid: u32,
        role: Role,
        local: [u8; 4],
        flags: u16,
    ) -> Remembered {
        let mut owner = Owner::ZERO;
        owner.pid = pid;
        owner.family = tracer_common::AF_INET;
        owner.local_addr[..4].copy_from_slice(&local);
        owner.flags = flags;
        owner.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        owner.remote_port = 6379;
        Remembered {
            owner,
            role,
            age_ms: 0,
            alive: true,
            comm: String::new(),
        }
    }

    fn socket(state: u8, local: &str, remote: &str) -> DiagSocket {
        DiagSocket {
            protocol: IPPROTO_TCP as u8,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            inode: 1,
            bound_dev_if: 0,
            v6only: None,
            expires_ms: None,
        }
    }

    /// A live holder's options come from the history when it describes that very socket, so
    /// that its owner's descriptor is not duplicated; never from another process's entry, one
    /// whose options were not known, or one for another address or role.
    #[test]
    fn a_live_socket_takes_its_options_from_its_own_history_entry() {
        let known = flags::SOCKOPTS_KNOWN | flags::REUSEADDR;
        let listener = socket(tcp_state::LISTEN, "0.0.0.0:8080", "0.0.0.0:0");
        let list = [
            remembered(7, Role::Listening, [0; 4], known),
            remembered(8, Role::Listening, [0; 4], flags::SOCKOPTS_KNOWN),
        ];
        let r = remembered_socket(&list, 8, &listener, State::Listen).unwrap();
        assert_eq!(
            r.port_flags(),
            (Some(false), Some(false)),
            "pid 8's own entry"
        );
        assert!(remembered_socket(&list, 9, &listener, State::Listen).is_none());
        let unknown = [remembered(7, Role::Listening, [0; 4], flags::REUSEADDR)];
        assert!(
            remembered_socket(&unknown, 7, &listener, State::Listen).is_none(),
            "options not known: ask the socket"
        );
        let bound = [remembered(7, Role::Bound, [0; 4], known)];
        assert!(remembered_socket(&bound, 7, &listener, State::Listen).is_none());
        let elsewhere = [remembered(7, Role::Listening, [127, 0, 0, 1], known)];
        assert!(remembered_socket(&elsewhere, 7, &listener, State::Listen).is_none());

        // A connection: its own entry (by peer), else the listener it was accepted from.
        let conn = socket(tcp_state::ESTABLISHED, "127.0.0.1:8080", "127.0.0.1:6379");
        let list = [
            remembered(7, Role::Connected, [127, 0, 0, 1], known),
            remembered(7, Role::Listening, [127, 0, 0, 1], flags::SOCKOPTS_KNOWN),
        ];
        let r = remembered_socket(&list, 7, &conn, State::from_kernel(conn.state, false));
        assert_eq!(r.map(|r| r.role), Some(Role::Connected));
        let other_peer = socket(tcp_state::ESTABLISHED, "127.0.0.1:8080", "127.0.0.1:6380");
        let r = remembered_socket(
            &list,
            7,
            &other_peer,
            State::from_kernel(other_peer.state, false),
        );
        assert_eq!(r.map(|r| r.role), Some(Role::Listening));
    }

    /// A client's own bind shortly before its connection is told apart from the kernel's choice;
    /// nothing is claimed without the connection's record, or for a bind long before it, another
    /// process's, or one followed by a listen().
    #[test]
    fn a_connection_bound_by_its_client_needs_both_records_close_together() {
        let conn = socket(tcp_state::TIME_WAIT, "127.0.0.1:35001", "127.0.0.1:6379");
        let at = |ts: u64, mut r: Remembered| {
            r.owner.ts_ns = ts;
            r
        };
        let second = 1_000_000_000;
        let bound = |ts| at(ts, remembered(7, Role::Bound, [127, 0, 0, 1], 0));
        let connected = || {
            at(
                20 * second,
                remembered(7, Role::Connected, [127, 0, 0, 1], 0),
            )
        };
        assert!(bound_before_connect(
            &[bound(19 * second), connected()],
            &conn,
            7
        ));
        assert!(
            !bound_before_connect(&[bound(19 * second)], &conn, 7),
            "no connection record"
        );
        assert!(
            !bound_before_connect(&[bound(5 * second), connected()], &conn, 7),
            "long before"
        );
        assert!(
            !bound_before_connect(&[bound(21 * second), connected()], &conn, 7),
            "after"
        );
        let other = at(19 * second, remembered(8, Role::Bound, [127, 0, 0, 1], 0));
        assert!(
            !bound_before_connect(&[other, connected()], &conn, 7),
            "another process"
        );
        let listened = at(19 * second + 1, remembered(7, Role::Listening, [0; 4], 0));
        assert!(!bound_before_connect(
            &[bound(19 * second), listened, connected()],
            &conn,
            7
        ));
    }
}

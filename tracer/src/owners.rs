//! Who holds a port: the sockets the kernel lists on it in the failing process's network
//! namespace (`sockdiag`), joined to the processes that have them open (`procfs`), and — for
//! sockets no process owns, like TIME-WAIT — to the owners bindtrace's kernel programs remembered
//! in the `HISTORY` map. Then `diagnose::verdict` decides.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::maps::{Array, MapData};
use tracer_common::{
    HistoryKey, IPPROTO_TCP, IPPROTO_UDP, Owner, Role, flags,
    history::{self, HistorySet},
    tcp_state,
};

use crate::{
    diagnose::{self, Diagnosis, Holder, PortContext, PortUser, PortUsers, Request, Source, State},
    event::{self, Event, SyscallName},
    netns::Netns,
    procfs,
    sockdiag::{self, DiagSocket},
};

const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const EINVAL: i32 = 22;
const EAGAIN: i32 = 11;

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
    fn get(&self, netns: u32, port: u16, protocol: u8, role: Role) -> Vec<Owner> {
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
struct Remembered {
    owner: Owner,
    role: Role,
    age_ms: u64,
    alive: bool,
    comm: String,
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
    fn local_ip(&self) -> std::net::IpAddr {
        event::ip(self.owner.family, &self.owner.local_addr)
    }

    /// IPV6_V6ONLY of an IPv6 socket, when read.
    fn v6only(&self) -> Option<bool> {
        let known = |bit| self.owner.flags & bit != 0;
        (self.owner.family == tracer_common::AF_INET6 && known(flags::V6ONLY_KNOWN))
            .then(|| known(flags::V6ONLY))
    }

    fn remote(&self) -> SocketAddr {
        SocketAddr::new(
            event::ip(self.owner.family, &self.owner.remote_addr),
            self.owner.remote_port,
        )
    }

    /// The owner's name: the kernel programs record the process's (`kernel::owner_comm`); one
    /// that still runs may have been renamed since.
    fn process_name(&self) -> String {
        self.alive
            .then(|| procfs::process(self.owner.pid))
            .flatten()
            .map_or_else(|| self.comm.clone(), |p| p.comm)
    }

    /// The socket this entry describes, on `req`'s port, as it was when it took the port (a
    /// connection as ESTABLISHED); `closed`: gone when looked up.
    fn holder(&self, req: &Request, closed: bool) -> Holder {
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
    fn apply(&self, h: &mut Holder) {
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

/// How long before a failure a socket whose process has exited since may have taken the port and
/// still be named as its closed holder (`Investigator::unlisted`): TIME-WAIT's length, the
/// longest a port commonly stays held once its owner is gone.
const CLOSED_HOLDER_MAX_AGE_NS: u64 = 60_000_000_000;

/// At most this many sockets of an exhausted range have their process looked up: enough to
/// name the main users, without a /proc walk per socket of a range of 28 000.
const USERS_SAMPLE: usize = 256;

/// How long a port's holders, once looked up, answer for further failures on the same port: in a
/// failure storm (a service retrying in a tight loop) one lookup serves them all. Short, so that
/// a failure after a holder changed is judged on a fresh lookup (a retry every 100 ms or slower
/// always gets one).
const LOOKUP_REUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// A lookup kept for reuse: (netns, port, protocol) → when, holders, port settings.
type Lookups =
    std::collections::HashMap<(u32, u16, u8), (std::time::Instant, Vec<Holder>, PortContext)>;

/// Looks up holders and decides; owns the caches that make repeated lookups cheap.
pub struct Investigator {
    recent: Lookups,
    /// Exhaustion lookups (a whole range's sockets and their users), by namespace, protocol and
    /// destination (TCP), reused like `recent`: a storm of failing connects is one lookup per
    /// [`LOOKUP_REUSE`].
    recent_exhaustion:
        std::collections::HashMap<(u32, u8, Option<SocketAddr>), (std::time::Instant, PortContext)>,
    containers: crate::container::Resolver,
    sockets: procfs::SocketTable,
    history: Option<History>,
    /// When this watch's history began (CLOCK_MONOTONIC ns); None for a one-off lookup.
    watching_since: Option<u64>,
    /// Interface names by (netns, index), for a lookup reused from `recent`.
    devices: std::collections::HashMap<(u32, u32), String>,
    /// Kernels before 6.8 do not list bound-only sockets (TCP_BOUND_INACTIVE).
    lists_bound_sockets: bool,
}

impl Investigator {
    /// For a watch: `history` is its own, begun at its start, which the start-up scan of the
    /// connections open then complements.
    pub fn new(history: Option<History>) -> Self {
        let prefill = history.is_some();
        let mut inv = Self::with(history, prefill);
        inv.watching_since = prefill.then(event::monotonic_now);
        inv
    }

    /// For a one-off lookup (check-port): the running watches' histories, if any and asked for,
    /// and no start-up scan of connections to wait for.
    pub fn one_off(with_history: bool) -> Self {
        Self::with(
            with_history.then(History::of_running_watches).flatten(),
            false,
        )
    }

    /// Whether it has a history of owners to consult.
    pub fn has_history(&self) -> bool {
        self.history.is_some()
    }

    fn with(history: Option<History>, connections_at_start: bool) -> Self {
        let lists_bound_sockets = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 8, 0));
        Self {
            recent: Lookups::new(),
            recent_exhaustion: std::collections::HashMap::new(),
            containers: crate::container::Resolver::default(),
            sockets: procfs::SocketTable::prefilled(connections_at_start),
            history,
            watching_since: None,
            devices: std::collections::HashMap::new(),
            lists_bound_sockets,
        }
    }

    fn remembered(&self, netns: u32, port: u16, protocol: u8) -> Vec<Remembered> {
        let Some(history) = &self.history else {
            return Vec::new();
        };
        let now = event::monotonic_now();
        [Role::Listening, Role::Bound, Role::Connected]
            .into_iter()
            .flat_map(|role| {
                history
                    .get(netns, port, protocol, role)
                    .into_iter()
                    .map(move |owner| (role, owner))
            })
            .map(|(role, owner)| {
                let comm = event::cstr(&owner.comm);
                Remembered {
                    role,
                    age_ms: now.saturating_sub(owner.ts_ns) / 1_000_000,
                    alive: procfs::alive_since(owner.pid, owner.ts_ns),
                    comm,
                    owner,
                }
            })
            .collect()
    }

    /// Returns once the start-up scan of the processes' sockets is done (see
    /// `procfs::SocketTable::wait_for_start_scan`).
    pub fn wait_for_start_scan(&self) {
        self.sockets.wait_for_start_scan();
    }

    /// Works out why `ev` failed. `ns` is the failing namespace (None if it could not be opened).
    pub fn diagnose(&mut self, ev: &Event, ns: Option<&Netns>) -> Diagnosis {
        // The event names the process (`Event::name_process`), whose name the advice fits.
        self.investigate(&Request::from_event(ev), ev.netns, ns)
    }

    /// Who holds (or would block) `req`'s port in namespace `netns`, and the verdict.
    pub fn investigate(&mut self, req: &Request, netns: u32, ns: Option<&Netns>) -> Diagnosis {
        let started = std::time::Instant::now();
        let protocol = if req.udp { IPPROTO_UDP } else { IPPROTO_TCP } as u8;
        let connect_refused = req.syscall == SyscallName::Connect && req.errno == EADDRNOTAVAIL;
        // A datagram socket's connect() that found no port to autobind.
        let autobind_failed = req.syscall == SyscallName::Connect && req.errno == EAGAIN;
        let exhaustion =
            req.port == 0 && (connect_refused || autobind_failed || req.errno == EADDRINUSE);
        // A connect() from a bound port is refused the same way when a connection from that
        // port to the same destination exists: the port's sockets are looked up as for a bind.
        let port_conflict =
            (req.errno == EADDRINUSE && !exhaustion) || (connect_refused && req.port != 0);
        let exhaustion_key = (netns, protocol, req.remote.filter(|_| !req.udp));
        if exhaustion
            && let Some((at, ctx)) = self.recent_exhaustion.get(&exhaustion_key)
            && at.elapsed() < LOOKUP_REUSE
        {
            let mut ctx = ctx.clone();
            ctx.device = self.devices.get(&(netns, req.bound_dev_if)).cloned();
            return diagnose::verdict(req, Vec::new(), &ctx);
        }
        let key = (netns, req.port, protocol);
        if port_conflict
            && let Some((at, listed, ctx)) = self.recent.get(&key)
            && at.elapsed() < LOOKUP_REUSE
        {
            let (mut listed, mut ctx) = (listed.clone(), ctx.clone());
            // Ages were taken at that lookup: this failure comes later.
            let since = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            for h in &mut listed {
                h.age_ms = h.age_ms.map(|a| a.saturating_add(since));
                h.expires_ms = h.expires_ms.map(|e| e.saturating_sub(since));
            }
            // The reused lookup was another call's: this one's device may differ.
            ctx.device = self.devices.get(&(netns, req.bound_dev_if)).cloned();
            let holders = self.settle(listed, None, netns, protocol, req);
            return diagnose::verdict(req, holders, &ctx);
        }

        let looked = ns.and_then(|ns| {
            ns.run_in(|| look_in_namespace(req, protocol, exhaustion, port_conflict))
                .ok()
        });
        let looked_ok = looked.is_some();
        let (socks, mut ctx, devices) = looked.unwrap_or_default();
        if self.devices.len() > 4096 {
            self.devices.clear();
        }
        for (index, name) in devices {
            self.devices.insert((netns, index), name);
        }
        if let Some(name) = &ctx.device {
            self.devices.insert((netns, req.bound_dev_if), name.clone());
        }
        let listed = started.elapsed();
        if exhaustion && looked_ok {
            // A TCP port is shared by connections to different destinations, but not with a
            // socket bound by bind() — a listener, or a client bound before connecting
            // (`__inet_hash_connect()` skips a port whose bind bucket has fastreuse >= 0); a UDP
            // socket's port is its own, whatever it sends to.
            let towards = req.remote.filter(|_| !req.udp);
            let using: Vec<&DiagSocket> = socks
                .iter()
                .filter(|s| {
                    towards.is_none_or(|r| {
                        s.remote == r || s.state == tcp_state::LISTEN || s.state == tcp_state::CLOSE
                    })
                })
                .collect();
            ctx.ports_in_use = Some(using.len() as u32);
            ctx.users = Some(self.port_users(&using, netns, protocol));
            if self.recent_exhaustion.len() > 4096 {
                self.recent_exhaustion
                    .retain(|_, (at, _)| at.elapsed() < LOOKUP_REUSE);
            }
            self.recent_exhaustion
                .insert(exhaustion_key, (std::time::Instant::now(), ctx.clone()));
        }
        if !port_conflict {
            return diagnose::verdict(req, Vec::new(), &ctx);
        }
        let remembered = self.remembered(netns, req.port, protocol);
        let mut listed_holders = self.holders(&socks, &remembered, req.udp, ctx.range, netns);
        self.resolve_containers(&mut listed_holders, netns);
        for h in listed_holders.iter_mut().filter(|h| h.bound_dev_if != 0) {
            h.device = self.devices.get(&(netns, h.bound_dev_if)).cloned();
        }
        log::debug!(
            "lookup for pid {} port {}: {} socket(s) listed in {listed:?}, owners found in {:?}",
            req.pid,
            req.port,
            socks.len(),
            started.elapsed().saturating_sub(listed)
        );
        if self.recent.len() > 4096 {
            self.recent
                .retain(|_, (at, ..)| at.elapsed() < LOOKUP_REUSE);
        }
        // What the kernel listed is kept for reuse; what this call makes of it is not.
        self.recent.insert(
            key,
            (
                std::time::Instant::now(),
                listed_holders.clone(),
                ctx.clone(),
            ),
        );
        let holders = self.settle(listed_holders, Some(remembered), netns, protocol, req);
        diagnose::verdict(req, holders, &ctx)
    }

    /// Who holds the ports of an exhausted range (`using`: its sockets): a count by state, and
    /// the processes behind at most [`USERS_SAMPLE`] of them — a live socket's from /proc, a
    /// TIME-WAIT's from history (its process may be gone).
    fn port_users(&mut self, using: &[&DiagSocket], netns: u32, protocol: u8) -> PortUsers {
        let udp = protocol == IPPROTO_UDP as u8;
        let mut users = PortUsers::default();
        for s in using {
            let state = State::from_kernel(s.state, udp).as_str().to_string();
            *users.by_state.entry(state).or_default() += 1;
        }
        let sample = &using[..using.len().min(USERS_SAMPLE)];
        users.sampled = sample.len() as u32;
        let mut who: std::collections::HashMap<u32, PortUser> = std::collections::HashMap::new();
        let mut count = |pid: u32, comm: &str, alive: bool| {
            who.entry(pid)
                .or_insert_with(|| PortUser {
                    pid,
                    comm: comm.to_string(),
                    alive,
                    sockets: 0,
                })
                .sockets += 1;
        };
        let inodes: Vec<u64> = sample.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
        let owners = self.sockets.owners(&inodes, &[]);
        let mut unattributed = 0;
        for s in sample {
            // The process that has it open; else (a TIME-WAIT, or a socket of a process exiting
            // as it was looked up: a failing client that gives up at once) the one that made it,
            // as the history or the start-up scan saw it.
            if let Some(&(pid, _)) = owners.get(&s.inode).and_then(|h| h.first()) {
                let comm = procfs::process(pid).map(|p| p.comm).unwrap_or_default();
                count(pid, &comm, true);
            } else if let Some(r) = self
                .remembered(netns, s.local.port(), protocol)
                .into_iter()
                .find(|r| {
                    r.role == Role::Connected && diagnose::same_endpoint(r.remote(), s.remote)
                })
            {
                count(r.owner.pid, &r.process_name(), r.alive);
            } else if let Some(o) = self.sockets.owner_at_start(netns, s.local, s.remote) {
                count(o.pid, &o.comm, o.alive());
            } else {
                unattributed += 1;
            }
        }
        users.unattributed = unattributed;
        users.top = who.into_values().collect();
        users
            .top
            .sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
        users.top.truncate(5);
        users
    }

    /// The holders for `req` among those listed on its port: without the caller's own socket,
    /// and, when none of them would have refused the call, with the socket history names
    /// (`unlisted`). `remembered`: the port's history, if already read for this call.
    fn settle(
        &mut self,
        mut holders: Vec<Holder>,
        remembered: Option<Vec<Remembered>>,
        netns: u32,
        protocol: u8,
        req: &Request,
    ) -> Vec<Holder> {
        // A failed listen() leaves its socket bound, a connect() refused from a bound port too:
        // it is the caller, not a holder.
        holders.retain(|h| !is_callers_socket(h, req));
        if !holders.iter().any(|h| diagnose::conflicts(req, h)) {
            let remembered =
                remembered.unwrap_or_else(|| self.remembered(netns, req.port, protocol));
            let mut more = self.unlisted(&remembered, req);
            self.resolve_containers(&mut more, netns);
            holders.extend(more);
        }
        holders
    }

    fn resolve_containers(&mut self, holders: &mut [Holder], netns: u32) {
        for h in holders {
            // An owner that has exited is known by its remembered cgroup only: its pid may name
            // another process by now.
            let pid = h.pid.filter(|_| h.owner_alive != Some(false));
            if pid.is_some() || h.owner_cgroup != 0 {
                h.container = self
                    .containers
                    .resolve(pid.unwrap_or(0), h.owner_cgroup, netns);
            }
        }
    }

    /// Every socket of `protocol` listening (TCP) or bound (UDP) in `ns`, with its owner, and the
    /// namespace's port settings.
    pub fn listeners(&mut self, ns: &Netns, udp: bool) -> (Vec<Holder>, PortContext) {
        let protocol = if udp { IPPROTO_UDP } else { IPPROTO_TCP } as u8;
        let (socks, ctx) = ns
            .run_in(|| (sockets(protocol, 1, u16::MAX), port_context()))
            .unwrap_or_default();
        let waiting: Vec<DiagSocket> = socks
            .into_iter()
            .filter(|s| {
                let state = State::from_kernel(s.state, udp);
                state == State::Listen || (udp && state == State::Bound)
            })
            .collect();
        (self.holders(&waiting, &[], udp, ctx.range, 0), ctx)
    }

    /// The sockets the kernel listed, each with its owner: the process that has it open, else
    /// the one history remembers.
    fn holders(
        &mut self,
        socks: &[DiagSocket],
        remembered: &[Remembered],
        udp: bool,
        range: Option<(u16, u16)>,
        netns: u32,
    ) -> Vec<Holder> {
        let inodes: Vec<u64> = socks.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
        let candidates: Vec<u32> = remembered
            .iter()
            .filter(|r| r.alive)
            .map(|r| r.owner.pid)
            .collect();
        let owners = self.sockets.owners(&inodes, &candidates);
        let mut holders = Vec::new();
        for s in socks {
            let state = State::from_kernel(s.state, udp);
            let connected = !matches!(state, State::Listen | State::Bound);
            let mut h = Holder::new(state, udp, s.local, Source::Unknown);
            h.remote = (connected && !s.remote.ip().is_unspecified()).then_some(s.remote);
            h.uid = (s.inode != 0).then_some(s.uid);
            h.v6only = s.v6only;
            h.expires_ms = s.expires_ms.map(u64::from);
            h.bound_dev_if = s.bound_dev_if;
            h.inode = s.inode;
            h.accepted = connected && accepted(remembered, s, range);
            if let Some(list) = owners.get(&s.inode).filter(|l| !l.is_empty()) {
                let (pid, _) = list[0];
                if let Some(p) = procfs::process(pid) {
                    h.comm = Some(p.comm);
                    h.uid = Some(p.uid);
                }
                h.pid = Some(pid);
                h.source = Source::Live;
                h.shared_with = list.iter().map(|&(p, _)| p).filter(|&p| p != pid).collect();
                h.shared_with.dedup();
                live_options(&mut h, remembered, list, s, state);
                // Several sockets on one address and state (a SO_REUSEPORT group, UDP sockets
                // sharing by SO_REUSEADDR) each took the port: the history's one entry is
                // another's, not this one's opener.
                let alike = socks
                    .iter()
                    .filter(|o| o.local == s.local && o.state == s.state)
                    .count();
                if alike == 1 {
                    h.opened_by = opener(remembered, list, s, state);
                }
            } else if let Some(r) = history_owner(remembered, s, state) {
                r.apply(&mut h);
            } else if connected
                && let Some(o) = self.sockets.owner_at_start(netns, s.local, s.remote)
            {
                h.owner_alive = Some(o.alive());
                h.pid = Some(o.pid);
                h.comm = Some(o.comm);
                h.uid = Some(o.uid);
                h.source = Source::Startup;
                h.accepted = h.accepted || o.accepted;
            } else {
                h.owner_forgotten = self.forgot(&h);
            }
            holders.push(h);
        }
        holders
    }

    /// Whether `h`, a TIME-WAIT no record names, began while this watch ran: its connection was
    /// then made under the history's eyes or open at the start-up scan, and its record has been
    /// evicted since (a TIME-WAIT lasts 60 s; `expires_ms` says how much of it is left).
    fn forgot(&self, h: &Holder) -> bool {
        let (Some(since), Some(left)) = (self.watching_since, h.expires_ms) else {
            return false;
        };
        h.state == State::TimeWait && time_wait_began(left) > since
    }

    /// Holders known from history alone, when the kernel lists no socket on the port that would
    /// have refused the call.
    fn unlisted(&self, remembered: &[Remembered], req: &Request) -> Vec<Holder> {
        let not_callers = |h: &Holder| !is_callers_socket(h, req);
        // Before 6.8 the kernel lists no bound-only socket: a live process that bound the port
        // and still runs is the best explanation left.
        if !self.lists_bound_sockets {
            let bound: Vec<Holder> = remembered
                .iter()
                .filter(|r| r.role == Role::Bound && r.alive)
                .map(|r| r.holder(req, false))
                .filter(not_callers)
                .collect();
            if !bound.is_empty() {
                return bound;
            }
        }
        // Otherwise the socket that refused the call was gone by the time it was looked up: its
        // owner closed it or exited in the few milliseconds between (a script that fails and
        // exits, a crash-looping service, a connection reset). The last socket seen to take the
        // port before the failure that would block the call is named, marked as closed. Not one
        // whose process has exited and that took the port long before: it most likely closed
        // long before too, and the real holder went unseen.
        let Some(at) = req.at_ns else {
            return Vec::new();
        };
        let mut seen: Vec<&Remembered> = remembered
            .iter()
            .filter(|r| r.owner.ts_ns <= at)
            .filter(|r| r.alive || at - r.owner.ts_ns <= CLOSED_HOLDER_MAX_AGE_NS)
            .collect();
        seen.sort_by_key(|r| std::cmp::Reverse(r.owner.ts_ns));
        seen.into_iter()
            .map(|r| r.holder(req, true))
            .filter(not_callers)
            .find(|h| diagnose::conflicts(req, h))
            .into_iter()
            .collect()
    }
}

/// Whether `h` is the bound socket a failed listen() or connect() of `req` leaves behind: the
/// caller's own, not a holder. (A refused connect() may have reported the source address it was
/// given, which the kernel takes back from a socket bound to the wildcard.)
fn is_callers_socket(h: &Holder, req: &Request) -> bool {
    matches!(req.syscall, SyscallName::Listen | SyscallName::Connect)
        && h.state == State::Bound
        && h.pid == Some(req.pid)
        && h.local.port() == req.port
        && (h.local.ip() == req.addr || h.local.ip().is_unspecified())
}

/// The remembered owner of a socket no process has open: a listening or bound socket's own
/// record (on its address, if one is), the connection's creator (matched by its peer), or for a
/// connection accepted by a listener, that listener — one that covers the connection's address and
/// took the port before a TIME-WAIT began: a new server's listener, on another address or since,
/// did not accept its predecessor's connections.
fn history_owner<'a>(
    remembered: &'a [Remembered],
    s: &DiagSocket,
    state: State,
) -> Option<&'a Remembered> {
    let same_address =
        |r: &&Remembered| diagnose::canonical(r.local_ip()) == diagnose::canonical(s.local.ip());
    if matches!(state, State::Listen | State::Bound) {
        let own = || remembered.iter().filter(|r| r.role != Role::Connected);
        return own().find(same_address).or_else(|| own().next());
    }
    let began = (state == State::TimeWait)
        .then_some(s.expires_ms)
        .flatten()
        .map(|left| time_wait_began(u64::from(left)));
    remembered
        .iter()
        .find(|r| r.role == Role::Connected && diagnose::same_endpoint(r.remote(), s.remote))
        .or_else(|| {
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
fn time_wait_began(left_ms: u64) -> u64 {
    event::monotonic_now()
        .saturating_sub(60_000_000_000u64.saturating_sub(left_ms.saturating_mul(1_000_000)))
}

/// The process bindtrace saw take the port with the live listening or bound socket `s`, when
/// none of the processes that hold it now (`open_in`) is seen to have: they inherited it (a child
/// started without closing the server's descriptors keeps its port after the server exits). The
/// newest such entry on the socket's address; none if a holder took the port itself, or ran
/// before the port was taken, or if the history has nothing on it (taken before bindtrace
/// started).
fn opener(
    remembered: &[Remembered],
    open_in: &[(u32, u32)],
    s: &DiagSocket,
    state: State,
) -> Option<diagnose::Opener> {
    if !matches!(state, State::Listen | State::Bound) {
        return None;
    }
    let role = own_role(state);
    let fits = |r: &&Remembered| {
        r.role == role && diagnose::canonical(r.local_ip()) == diagnose::canonical(s.local.ip())
    };
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
fn accepted(remembered: &[Remembered], s: &DiagSocket, range: Option<(u16, u16)>) -> bool {
    let made_here = remembered
        .iter()
        .any(|r| r.role == Role::Connected && diagnose::same_endpoint(r.remote(), s.remote));
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

/// Fills in the options of the live socket `s`, open in the processes and descriptors `open_in`
/// (a socket shared by a master and its workers is open in each, in no particular order): as the
/// kernel programs saw them when it took the port, whichever of those processes did; only for a
/// socket they never saw (bound before bindtrace started) from the socket itself; failing that (no
/// ptrace access), from what the history says of the process.
fn live_options(
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
            && diagnose::canonical(r.local_ip()) == diagnose::canonical(s.local.ip())
    };
    let candidates = || remembered.iter().filter(fits);
    match state {
        State::Listen | State::Bound => candidates().find(|r| r.role == own_role(state)),
        _ => candidates()
            .find(|r| r.role == Role::Connected && diagnose::same_endpoint(r.remote(), s.remote))
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

/// What a failure's lookup reads in the failing namespace (run there): its port settings, the
/// sockets on the port (or, for exhaustion, on the whole ephemeral range), and the names of the
/// devices those sockets are bound to.
fn look_in_namespace(
    req: &Request,
    protocol: u8,
    exhaustion: bool,
    port_conflict: bool,
) -> (Vec<DiagSocket>, PortContext, Vec<(u32, String)>) {
    let mut ctx = port_context();
    if req.bound_dev_if != 0 {
        ctx.device = if_name(req.bound_dev_if);
    }
    // A bind() refused its address; or a link-local one given no interface, which the interface
    // that has it (if one does) names for the hint.
    let unscoped = req.errno == EINVAL && diagnose::needs_scope_addr(req.addr);
    if (req.errno == EADDRNOTAVAIL || unscoped) && req.syscall == SyscallName::Bind {
        ctx.address = crate::addresses::state_of(req.addr);
    }
    let (lo, hi) = if exhaustion {
        ctx.range.unwrap_or((32768, 60999))
    } else {
        (req.port, req.port)
    };
    let socks = if port_conflict || exhaustion {
        sockets(protocol, lo, hi)
    } else {
        Vec::new()
    };
    let devices: Vec<(u32, String)> = socks
        .iter()
        .map(|s| s.bound_dev_if)
        .filter(|&i| i != 0)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .filter_map(|i| if_name(i).map(|n| (i, n)))
        .collect();
    (socks, ctx, devices)
}

/// The port settings of the calling thread's namespace: `ip_local_port_range`,
/// `ip_local_reserved_ports`, `ip_unprivileged_port_start`, `tcp_tw_reuse`.
fn port_context() -> PortContext {
    let read = |name: &str| fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    PortContext {
        range: read("ip_local_port_range").and_then(|s| diagnose::parse_range(&s)),
        reserved: read("ip_local_reserved_ports")
            .map(|s| diagnose::parse_reserved(&s))
            .unwrap_or_default(),
        ports_in_use: None,
        device: None,
        address: None,
        unprivileged_start: unprivileged_port_start(),
        tw_reuse: read("tcp_tw_reuse").and_then(|s| s.trim().parse().ok()),
        users: None,
    }
}

/// The calling thread's namespace's `net.ipv4.ip_unprivileged_port_start`.
pub fn unprivileged_port_start() -> Option<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The name of interface `index` in the calling thread's namespace.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the name is NUL-terminated within `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Sockets of `protocol` on ports `lo..=hi` in the calling thread's namespace, both families.
/// Falls back to `/proc/thread-self/net/*` when sock_diag is unavailable (e.g. no `udp_diag`).
fn sockets(protocol: u8, lo: u16, hi: u16) -> Vec<DiagSocket> {
    let mut out = Vec::new();
    for (family, file) in [(libc::AF_INET, ""), (libc::AF_INET6, "6")] {
        match sockdiag::dump(protocol, family as u8, lo, hi) {
            Ok(v) => out.extend(v),
            Err(e) => {
                log::debug!("sock_diag {protocol}/{family}: {e}; reading /proc instead");
                let name = if protocol == IPPROTO_UDP as u8 {
                    "udp"
                } else {
                    "tcp"
                };
                let path = format!("/proc/thread-self/net/{name}{file}");
                if let Ok(text) = fs::read_to_string(path) {
                    out.extend(
                        parse_proc_net(&text, protocol)
                            .into_iter()
                            .filter(|s| (lo..=hi).contains(&s.local.port())),
                    );
                }
            }
        }
    }
    out
}

fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/{tcp,udp}{,6}` (`sl local rem st ... uid timeout inode`).
pub fn parse_proc_net(text: &str, protocol: u8) -> Vec<DiagSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            Some(DiagSocket {
                protocol,
                state: u8::from_str_radix(f[3], 16).unwrap_or(tcp_state::CLOSE),
                local: hex_addr(f[1])?,
                remote: hex_addr(f[2])?,
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
                bound_dev_if: 0,
                v6only: None,
                expires_ms: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_and_tcp6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:18EB 06 00000000:00000000 03:00001771 00000000     0        0 0 3 0000000000000000";
        let s = parse_proc_net(v4, 6);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((s[0].state, s[0].inode), (tcp_state::LISTEN, 31337));
        assert_eq!(s[1].remote, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(s[1].state, tcp_state::TIME_WAIT);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1 0000000000000000 100 0 0 10 0";
        let s = parse_proc_net(v6, 6);
        assert_eq!(s[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(s[0].uid, 1000);
        assert!(parse_proc_net("header\ngarbage line\n", 6).is_empty());
    }

    fn remembered(pid: u32, role: Role, local: [u8; 4], flags: u16) -> Remembered {
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

    /// A TIME-WAIT no record names is said forgotten only if it began after the watch did.
    #[test]
    fn a_time_wait_begun_while_watching_was_forgotten() {
        if event::monotonic_now() < 70_000_000_000 {
            eprintln!("SKIP forgotten: the clock has not run 70 s since boot");
            return;
        }
        let mut inv = Investigator::new(None);
        let mut h = Holder::new(
            State::TimeWait,
            false,
            "127.0.0.1:40000".parse().unwrap(),
            Source::Unknown,
        );
        assert!(!inv.forgot(&h), "a one-off lookup watched nothing");
        inv.watching_since = Some(event::monotonic_now().saturating_sub(10_000_000_000));
        h.expires_ms = Some(59_000);
        assert!(inv.forgot(&h), "began about 1 s ago, 10 s into the watch");
        h.expires_ms = Some(30_000);
        assert!(!inv.forgot(&h), "began 30 s ago, before the watch");
    }

    /// With no socket left on the port, the last one seen to take it before the failure that
    /// would have refused the call is named, as closed: not one taken after the failure, not a
    /// failed listen()'s own socket, and none for a call not made yet (`check-port`).
    #[test]
    fn a_holder_gone_before_the_lookup_is_the_last_seen_before_the_failure() {
        let mut inv = Investigator::new(None);
        inv.lists_bound_sockets = true;
        let stamped = |ts, mut r: Remembered| {
            r.owner.ts_ns = ts;
            r
        };
        let known = flags::SOCKOPTS_KNOWN;
        let list = [
            stamped(100, remembered(7, Role::Listening, [0; 4], known)),
            stamped(
                200,
                remembered(8, Role::Bound, [0; 4], known | flags::REUSEADDR),
            ),
            stamped(400, remembered(9, Role::Listening, [0; 4], known)),
        ];
        let mut req = Request::bind(IpAddr::from([0, 0, 0, 0]), 8080, false, false, false);
        req.pid = 1;
        req.at_ns = Some(300);
        let pids = |inv: &Investigator, req: &Request| -> Vec<(Option<u32>, State, bool)> {
            inv.unlisted(&list, req)
                .iter()
                .map(|h| (h.pid, h.state, h.socket_closed))
                .collect()
        };
        assert_eq!(pids(&inv, &req), [(Some(8), State::Bound, true)]);

        req.reuseaddr = true;
        assert_eq!(
            pids(&inv, &req),
            [(Some(7), State::Listen, true)],
            "both set SO_REUSEADDR: the bound socket let it through, the listener did not"
        );

        req.syscall = SyscallName::Listen;
        req.pid = 8;
        assert_eq!(pids(&inv, &req), [(Some(7), State::Listen, true)]);

        req.at_ns = None;
        assert!(pids(&inv, &req).is_empty());

        // A connection (reset, so no TIME-WAIT is left) is named as it was made; an entry whose
        // process has exited is not trusted a minute after it took the port.
        let minute = CLOSED_HOLDER_MAX_AGE_NS;
        let mut gone = stamped(100, remembered(7, Role::Listening, [0; 4], known));
        gone.alive = false;
        let list = [
            gone,
            stamped(200, remembered(9, Role::Connected, [127, 0, 0, 1], known)),
        ];
        let mut req = Request::bind(IpAddr::from([0, 0, 0, 0]), 8080, false, false, false);
        req.pid = 1;
        req.at_ns = Some(300);
        let found = inv.unlisted(&list, &req);
        assert_eq!(found[0].state, State::Established);
        assert_eq!(found[0].remote, Some("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(found[0].pid, Some(9));
        req.at_ns = Some(100 + minute);
        let pids = |req: &Request| -> Vec<Option<u32>> {
            inv.unlisted(&list[..1], req)
                .iter()
                .map(|h| h.pid)
                .collect()
        };
        assert_eq!(pids(&req), [Some(7)], "within the minute");
        req.at_ns = Some(101 + minute);
        assert!(
            pids(&req).is_empty(),
            "exited, and took the port over a minute before"
        );
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
}

//! Who holds a port: the sockets the kernel lists on it in the failing process's network
//! namespace (`sockdiag`), joined to the processes that have them open (`procfs`), and — for
//! sockets no process owns, like TIME-WAIT — to the owners bindtrace's kernel programs remembered
//! in the `HISTORY` map. Then `diagnose::verdict` decides.
//!
//! Here: the `Investigator`, which looks up the holders of a failure's port and has them judged,
//! with the caches that make a storm of failures cheap. Its parts: what it reads in the failing
//! namespace (`namespace`: port settings, the sockets on the port, device names) and the kernel's
//! owner history with the matching of its entries to those sockets (`history`).

mod history;
mod namespace;

use std::net::SocketAddr;

use tracer_common::{IPPROTO_TCP, IPPROTO_UDP, Role, tcp_state};

pub use self::{
    history::History,
    namespace::{parse_proc_net, unprivileged_port_start},
};
use self::{
    history::{
        Remembered, accepted, bound_before_connect, history_owner, live_options, opener,
        time_wait_began,
    },
    namespace::{look_in_namespace, port_context, sockets},
};
use crate::{
    diagnose::{self, Diagnosis, Holder, PortContext, PortUser, PortUsers, Request, Source, State},
    event::{self, Event, SyscallName},
    netns::Netns,
    procfs,
    sockdiag::DiagSocket,
};

const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const EINVAL: i32 = 22;
const EAGAIN: i32 = 11;

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

    /// Its resolver of cgroups to containers and pods (for the failing process's too: one cache).
    pub fn containers(&mut self) -> &mut crate::container::Resolver {
        &mut self.containers
    }

    /// Whether it has a history of owners to consult.
    pub fn has_history(&self) -> bool {
        self.history.is_some()
    }

    /// Whether a running watch saw a bind() (or listen()) take `port` in `netns`: None with no
    /// history to ask. A UDP socket's port it did not see bound may be a client's, given by the
    /// kernel at its first send.
    pub fn saw_bound(&self, netns: u32, port: u16, udp: bool) -> Option<bool> {
        let protocol = if udp { IPPROTO_UDP } else { IPPROTO_TCP } as u8;
        self.has_history().then(|| {
            self.remembered(netns, port, protocol)
                .iter()
                .any(|r| matches!(r.role, Role::Bound | Role::Listening))
        })
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
                    processes: 1,
                    exited: u32::from(!alive),
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
                .find(|r| r.made(s))
            {
                count(r.owner.pid, &r.process_name(), r.alive);
            } else if let Some(o) = self.sockets.owner_at_start(netns, s.local, s.remote) {
                count(o.pid, &o.comm, o.alive());
            } else {
                unattributed += 1;
            }
        }
        users.unattributed = unattributed;
        users.top = by_program(who.into_values());
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
            h.socket_uid = h.uid;
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
                h.owner_forgotten = self.forgot(&h, netns);
            }
            if connected && !h.accepted {
                h.bound_before_connect = h
                    .pid
                    .is_some_and(|pid| bound_before_connect(remembered, s, pid));
            }
            // Said only where the process's differs (it changed user after making the socket).
            if h.socket_uid == h.uid {
                h.socket_uid = None;
            }
            holders.push(h);
        }
        holders
    }

    /// Whether `h`, a TIME-WAIT no record names, began while this watch ran: its connection was
    /// then made under the history's eyes or open at the start-up scan, and its record has been
    /// evicted since (a TIME-WAIT lasts 60 s; `expires_ms` says how much of it is left).
    ///
    /// Not when no record could have been evicted (its sets never filled): then the connection
    /// was never seen made — opened before the watch started, or accepted by a listener it never
    /// saw — and a larger history would not have named it.
    fn forgot(&self, h: &Holder, netns: u32) -> bool {
        let (Some(since), Some(left)) = (self.watching_since, h.expires_ms) else {
            return false;
        };
        let evictable = |hist: &History| {
            [Role::Connected, Role::Listening]
                .into_iter()
                .any(|role| hist.could_have_evicted(netns, h.local.port(), IPPROTO_TCP as u8, role))
        };
        h.state == State::TimeWait
            && time_wait_began(left) > since
            && self.history.as_ref().is_none_or(evictable)
    }

    /// Holders known from history alone, when the kernel lists no socket on the port that would
    /// have refused the call.
    fn unlisted(&self, remembered: &[Remembered], req: &Request) -> Vec<Holder> {
        let not_callers = |h: &Holder| !is_callers_socket(h, req);
        // Before 6.8 the kernel lists no bound-only socket: a live process that bound the port
        // and still runs is the best explanation left — unless it went on to listen on that
        // address (its listener, listed, was judged already).
        if !self.lists_bound_sockets {
            let listened_since = |b: &Remembered| {
                remembered.iter().any(|l| {
                    l.role == Role::Listening
                        && l.owner.pid == b.owner.pid
                        && l.owner.ts_ns >= b.owner.ts_ns
                        && l.on_address(b.local_ip())
                })
            };
            let bound: Vec<Holder> = remembered
                .iter()
                .filter(|r| r.role == Role::Bound && r.alive && !listened_since(r))
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
///
/// A failed listen()'s caller that exits at once (as a server does) may be gone before its
/// socket is looked up: the socket, still listed, has no process, and history names whoever last
/// bound that address — another process. A bound socket on the very address of a failed listen()
/// whose owner is not known live is taken for the caller's: no bound socket refuses a listen()
/// (only listeners do), so at worst a line of the ones merely on the port is left out.
fn is_callers_socket(h: &Holder, req: &Request) -> bool {
    let on_its_port = h.state == State::Bound && h.local.port() == req.port;
    match req.syscall {
        SyscallName::Listen | SyscallName::Connect
            if on_its_port
                && h.pid == Some(req.pid)
                && (h.local.ip() == req.addr || h.local.ip().is_unspecified()) =>
        {
            true
        }
        SyscallName::Listen => on_its_port && h.source != Source::Live && h.local.ip() == req.addr,
        _ => false,
    }
}

/// Processes of the same name as one program (a client run once per request gives one process
/// per socket), most sockets first; each named by its process with most sockets.
fn by_program(users: impl Iterator<Item = PortUser>) -> Vec<PortUser> {
    let mut users: Vec<PortUser> = users.collect();
    users.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    let mut programs: Vec<PortUser> = Vec::new();
    for u in users {
        match programs.iter_mut().find(|p| p.comm == u.comm) {
            Some(p) => {
                p.sockets += u.sockets;
                p.processes += u.processes;
                p.exited += u.exited;
                p.alive |= u.alive;
            }
            None => programs.push(u),
        }
    }
    programs.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    programs
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use tracer_common::flags;

    use super::{history::tests::remembered, *};

    /// An exhausted range's users: a client run once per request is one program of many
    /// processes, not five of its pids.
    #[test]
    fn port_users_are_counted_by_program() {
        let user = |pid, comm: &str, alive, sockets| PortUser {
            pid,
            comm: comm.into(),
            alive,
            sockets,
            processes: 1,
            exited: u32::from(!alive),
        };
        let users = by_program(
            [
                user(10, "curl", false, 1),
                user(11, "curl", true, 1),
                user(12, "curl", false, 1),
                user(42, "python3", true, 2),
                user(9, "curl", false, 1),
            ]
            .into_iter(),
        );
        assert_eq!(users.len(), 2);
        let curl = &users[0];
        assert_eq!(
            (
                curl.comm.as_str(),
                curl.sockets,
                curl.processes,
                curl.exited,
                curl.alive
            ),
            ("curl", 4, 4, 3, true)
        );
        assert_eq!((users[1].pid, users[1].processes), (42, 1));
    }

    /// A failed listen()'s own socket is left out of the holders: by pid while its process
    /// lives, and, once it has exited (the socket still listed, history naming another
    /// process's bind of the address), as the bound socket on its address with no live owner.
    #[test]
    fn a_failed_listens_own_socket_is_not_a_holder() {
        let mut req = Request::bind(IpAddr::from([0, 0, 0, 0]), 5170, false, false, false);
        req.syscall = SyscallName::Listen;
        req.pid = 100;
        let bound = |pid, source| {
            let mut h = Holder::new(State::Bound, false, "0.0.0.0:5170".parse().unwrap(), source);
            h.pid = Some(pid);
            h
        };
        assert!(is_callers_socket(&bound(100, Source::Live), &req));
        assert!(is_callers_socket(&bound(200, Source::History), &req));
        assert!(
            !is_callers_socket(&bound(200, Source::Live), &req),
            "another process's bound socket"
        );
        let mut other = bound(200, Source::History);
        other.local = "127.0.0.1:5170".parse().unwrap();
        assert!(!is_callers_socket(&other, &req), "another address");
        req.syscall = SyscallName::Bind;
        assert!(!is_callers_socket(&bound(100, Source::Live), &req));
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
        assert!(!inv.forgot(&h, 1), "a one-off lookup watched nothing");
        inv.watching_since = Some(event::monotonic_now().saturating_sub(10_000_000_000));
        h.expires_ms = Some(59_000);
        assert!(
            inv.forgot(&h, 1),
            "began about 1 s ago, 10 s into the watch"
        );
        h.expires_ms = Some(30_000);
        assert!(!inv.forgot(&h, 1), "began 30 s ago, before the watch");
    }

    /// With no socket left on the port, the last one seen to take it before the failure that
    /// would have refused the call is named, as closed: not one taken after the failure, not a
    /// failed listen()'s own socket, and none for a call not made yet (`check-port`).
    #[test]
    fn before_6_8_a_bound_socket_that_went_on_to_listen_is_not_named_bound() {
        // 6.1: the listed listener (on a device, say) was judged and let the call through; the
        // history's record of its bind() is the same socket, not a bound-only one.
        let mut inv = Investigator::new(None);
        inv.lists_bound_sockets = false;
        let known = flags::SOCKOPTS_KNOWN;
        let at = |ts, mut r: Remembered| {
            r.owner.ts_ns = ts;
            r
        };
        let bound = || at(100, remembered(7, Role::Bound, [0; 4], known));
        let listening = at(101, remembered(7, Role::Listening, [0; 4], known));
        let mut req = Request::bind(IpAddr::from([0, 0, 0, 0]), 8644, false, false, false);
        req.pid = 1;
        let named = |list: &[Remembered]| -> Vec<(Option<u32>, State)> {
            inv.unlisted(list, &req)
                .iter()
                .map(|h| (h.pid, h.state))
                .collect()
        };
        assert!(named(&[bound(), listening]).is_empty());
        assert_eq!(named(&[bound()]), [(Some(7), State::Bound)], "bound only");
    }

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
}

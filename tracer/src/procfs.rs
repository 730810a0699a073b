//! Processes behind sockets: socket inode → (pid, fd) from `/proc/*/fd`, a process's name and
//! user, and a live socket's options read through a duplicate of its descriptor.
//!
//! One socket can be shared by several processes (fork, fd passing), so an inode maps to a list.
//! A full scan of `/proc` costs about 6 µs per open descriptor on the host (60 ms for a process
//! with 10 000 sockets), far too slow to run at every failure. So one full scan runs in the
//! background at start-up; at a failure, the table's entries are verified with one `readlink`
//! each, the pids the kernel history names are scanned next, and only a socket found nowhere
//! triggers a new full scan — for one inode at most one per `RESCAN_AFTER`, so a storm of
//! failures on one port does not turn into a storm of scans, while a socket new since the last
//! scan (a program that inherited a listener a moment ago) is looked for at once.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// How long a full scan is trusted for an inode it did not contain.
const RESCAN_AFTER: Duration = Duration::from_millis(100);

/// `(pid, fd)` pairs holding a socket.
pub type Holders = Vec<(u32, u32)>;

type StartConnections = HashMap<crate::preexisting::Key, crate::preexisting::StartOwner>;

/// How long a lookup waits for the start-up scan to finish (it takes a fraction of a second
/// on a busy host): a failure in bindtrace's first moments still gets the owners it finds.
const START_SCAN_WAIT: Duration = Duration::from_secs(10);

fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn numeric_entries(dir: &str) -> impl Iterator<Item = u32> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Where `pid`'s descriptors are listed: `/proc/PID/fd`, or, when its main thread has exited
/// (`pthread_exit()`: a zombie leader, whose own `fd` lists nothing) while others run on with
/// the same table, a live thread's.
fn fd_dir(pid: u32) -> String {
    let dir = format!("/proc/{pid}/fd");
    if numeric_entries(&dir).next().is_some() {
        return dir;
    }
    numeric_entries(&format!("/proc/{pid}/task"))
        .filter(|&tid| tid != pid)
        .map(|tid| format!("/proc/{pid}/task/{tid}/fd"))
        .find(|d| numeric_entries(d).next().is_some())
        .unwrap_or(dir)
}

/// Adds the sockets of `pid` that are in `wanted` (all of them when `wanted` is `None`).
fn scan_pid(pid: u32, wanted: Option<&HashSet<u64>>, out: &mut HashMap<u64, Holders>) {
    let dir = fd_dir(pid);
    for fd in numeric_entries(&dir) {
        if let Some(ino) = socket_inode(std::path::Path::new(&format!("{dir}/{fd}")))
            && wanted.is_none_or(|w| w.contains(&ino))
        {
            out.entry(ino).or_default().push((pid, fd));
        }
    }
}

/// How many processes below a socket's holders [`add_inheritors`] looks at, at most.
const INHERITOR_SEARCH_MAX: usize = 512;

/// Adds, to each socket's holders, their descendants that have it open too: a pre-fork server's
/// workers, a daemon's helpers. A cached holder or one the history names is verified alone, and
/// a child forked since shares its socket unseen; naming only the parent sends an operator to
/// stop one process while the port stays taken. Children come from `/proc/PID/task/TID/children`
/// (`CONFIG_PROC_CHILDREN`, on in Debian's, Ubuntu's and Fedora's kernels; without it nothing is
/// added). A child whose parent exited is re-parented away; the full scan finds it then.
fn add_inheritors(found: &mut HashMap<u64, Holders>) {
    for (&ino, list) in found.iter_mut() {
        let mut seen: HashSet<u32> = list.iter().map(|&(pid, _)| pid).collect();
        let mut queue: Vec<u32> = seen.iter().copied().collect();
        let wanted = HashSet::from([ino]);
        'search: while let Some(pid) = queue.pop() {
            for child in children(pid) {
                if seen.len() >= INHERITOR_SEARCH_MAX {
                    break 'search;
                }
                if !seen.insert(child) {
                    continue;
                }
                // Its own children too: a worker's helper, a double fork.
                queue.push(child);
                let mut own = HashMap::new();
                scan_pid(child, Some(&wanted), &mut own);
                list.extend(own.remove(&ino).unwrap_or_default());
            }
        }
    }
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    numeric_entries(&format!("/proc/{pid}/task"))
        .filter_map(|tid| fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether descriptor `fd` of `pid` is still socket `inode`.
fn still_holds(pid: u32, fd: u32, inode: u64) -> bool {
    socket_inode(std::path::Path::new(&format!("{}/{fd}", fd_dir(pid)))) == Some(inode)
}

fn full_scan() -> HashMap<u64, Holders> {
    let mut all = HashMap::new();
    for pid in numeric_entries("/proc") {
        scan_pid(pid, None, &mut all);
    }
    all
}

/// inode → holders for every socket on the host, from the last full scan. Entries are verified
/// with one `readlink` before use, so a stale table costs a miss, never a wrong answer.
pub struct SocketTable {
    table: Arc<Mutex<HashMap<u64, Holders>>>,
    /// TCP connections open at start-up and their processes (`preexisting`); None until the
    /// start-up scan has listed them.
    at_start: Arc<(Mutex<Option<StartConnections>>, Condvar)>,
    /// Inodes the last full scans did not find, and when.
    missed: HashMap<u64, Instant>,
}

impl SocketTable {
    /// Starts with an empty table.
    pub fn empty() -> Self {
        Self {
            table: Arc::default(),
            at_start: Arc::new((Mutex::new(Some(HashMap::new())), Condvar::new())),
            missed: HashMap::new(),
        }
    }

    /// Waits (at most `START_SCAN_WAIT`) until the start-up scan has listed the connections
    /// open at start-up: until then a TIME-WAIT they leave cannot be named.
    pub fn wait_for_start_scan(&self) {
        drop(self.start_connections());
    }

    /// Who had the TCP connection `local`→`remote` of namespace `netns` open when bindtrace
    /// started, if the start-up scan saw it.
    pub fn owner_at_start(
        &self,
        netns: u32,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> Option<crate::preexisting::StartOwner> {
        self.start_connections()
            .as_ref()?
            .get(&(netns, local, remote))
            .cloned()
    }

    /// The start-up scan's connections, once it is done (at most `START_SCAN_WAIT` later). Not
    /// done in all that time (a huge host, or the scan died): given up, so that no later lookup
    /// waits again.
    fn start_connections(&self) -> std::sync::MutexGuard<'_, Option<StartConnections>> {
        let (lock, done) = &*self.at_start;
        let guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut guard, _) = done
            .wait_timeout_while(guard, START_SCAN_WAIT, |c| c.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.get_or_insert_with(HashMap::new);
        guard
    }

    /// Fills the table in the background (processes that held their sockets before bindtrace
    /// started are in no history; this finds them without a scan at failure time).
    ///
    /// With `connections`, the scan also lists the TCP connections open now and their processes
    /// (`preexisting`), which lookups then wait for.
    pub fn prefilled(connections: bool) -> Self {
        let t = Self::empty();
        if connections {
            *t.at_start
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        let table = Arc::clone(&t.table);
        let at_start = Arc::clone(&t.at_start);
        let spawned = std::thread::Builder::new()
            .name("bindtrace-procscan".into())
            .spawn(move || {
                let all = full_scan();
                if connections {
                    let found = crate::preexisting::snapshot(&all);
                    let (lock, done) = &*at_start;
                    *lock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(found);
                    done.notify_all();
                }
                let mut guard = table
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // A lookup may have refreshed it meanwhile; keep the newer entries.
                for (ino, h) in all {
                    guard.entry(ino).or_insert(h);
                }
            });
        if spawned.is_err() {
            // No scan: nothing to wait for.
            *t.at_start
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(HashMap::new());
        }
        t
    }

    /// Holders of each of `inodes`: verified cached entries first, then the `candidates` (pids
    /// the history names), then a full scan of /proc for what is still missing; and the
    /// processes that inherited a holder's socket since (`add_inheritors`).
    pub fn owners(&mut self, inodes: &[u64], candidates: &[u32]) -> HashMap<u64, Holders> {
        let mut found = self.found_owners(inodes, candidates);
        add_inheritors(&mut found);
        found
    }

    fn found_owners(&mut self, inodes: &[u64], candidates: &[u32]) -> HashMap<u64, Holders> {
        let wanted: HashSet<u64> = inodes.iter().copied().filter(|&i| i != 0).collect();
        let mut found: HashMap<u64, Holders> = HashMap::new();
        if wanted.is_empty() {
            return found;
        }
        {
            let table = self
                .table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for &ino in &wanted {
                let live: Holders = table
                    .get(&ino)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|&(pid, fd)| still_holds(pid, fd, ino))
                    .collect();
                if !live.is_empty() {
                    found.insert(ino, live);
                }
            }
        }
        let missing: HashSet<u64> = wanted
            .iter()
            .copied()
            .filter(|i| !found.contains_key(i))
            .collect();
        if missing.is_empty() {
            return found;
        }
        for &pid in candidates {
            scan_pid(pid, Some(&missing), &mut found);
        }
        let searched_lately = |i: &u64| {
            self.missed
                .get(i)
                .is_some_and(|t| t.elapsed() < RESCAN_AFTER)
        };
        if missing
            .iter()
            .all(|i| found.contains_key(i) || searched_lately(i))
        {
            return found;
        }
        let all = full_scan();
        let now = Instant::now();
        if self.missed.len() > 4096 {
            self.missed.retain(|_, t| t.elapsed() < RESCAN_AFTER);
        }
        for ino in &missing {
            if let Some(h) = all.get(ino) {
                found.insert(*ino, h.clone());
            } else {
                self.missed.insert(*ino, now);
            }
        }
        *self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = all;
        found
    }
}

/// What is known of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
}

pub fn process(pid: u32) -> Option<Process> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Process {
        pid,
        comm: comm.trim_end_matches('\n').to_string(),
        uid,
    })
}

/// Whether the process that had `pid` at `at_ns` (CLOCK_MONOTONIC, the kernel programs' clock)
/// still runs: a process with that pid exists, has not exited (a zombie, not yet reaped, has
/// closed its sockets already) and had started by then. A pid recycled since
/// belongs to a process that started later. Not a comparison of names: the kernel programs record
/// the calling *thread's* name, and a JVM's "http-nio-8080-exec-1" that made a connection must
/// still find "java" alive (an exec does not make the process another one either).
pub fn alive_since(pid: u32, at_ns: u64) -> bool {
    start_ns(pid)
        .is_some_and(|started| started <= at_ns.saturating_add(crate::event::suspended_ns()))
}

/// Whether `pid`, a live process, certainly started before `at_ns` (CLOCK_MONOTONIC): a whole
/// clock tick before it, as its start time is known to the tick only.
pub fn started_before(pid: u32, at_ns: u64) -> bool {
    // SAFETY: sysconf has no preconditions.
    let tick = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    start_ns(pid).is_some_and(|started| {
        started.saturating_add(tick) <= at_ns.saturating_add(crate::event::suspended_ns())
    })
}

/// When the live process `pid` started (CLOCK_MONOTONIC, truncated to its clock tick); None if it
/// does not run (gone, or a zombie).
fn start_ns(pid: u32) -> Option<u64> {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return None;
    };
    // Fields after the command (which may contain spaces) start after the last ')'; starttime,
    // field 22, is the 20th of them: clock ticks since boot.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = rest.split_whitespace();
    match fields.next() {
        // A zombie leader whose other threads still run (its main thread called pthread_exit)
        // is a live process.
        Some("Z") if threads(pid) > 1 => {}
        Some("Z" | "X") | None => return None,
        _ => {}
    }
    let ticks = fields.nth(18).and_then(|v| v.parse::<u64>().ok())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // Ticks are truncated, so this is at or before the real start.
    Some(ticks.saturating_mul(1_000_000_000 / hz))
}

/// `Threads:` of /proc/PID/status (0 if unreadable).
fn threads(pid: u32) -> u32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A socket's reuse options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOpts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: Option<bool>,
}

fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Reads the options of socket `inode`, held by `pid` as descriptor `fd`, through a duplicate of
/// the descriptor (`pidfd_getfd(2)`, 5.6+, needs ptrace access to `pid`). Only `getsockopt` is
/// called on the duplicate, which is closed at once. For those microseconds the duplicate keeps
/// the socket alive: were its owner to close it and bind the port again in that instant, the bind
/// would fail. So the collector asks only about sockets the kernel programs never saw take their
/// port (`owners::history::live_options`).
pub fn socket_options(pid: u32, fd: u32, inode: u64) -> Option<SockOpts> {
    // SAFETY: raw syscalls with integer arguments; results are checked and owned.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor we own.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    // The fd number may have been reused for another file since the scan.
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and buffer.
    if unsafe { libc::fstat(dup.as_raw_fd(), &raw mut st) } != 0 || st.st_ino != inode {
        return None;
    }
    let domain = getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_DOMAIN);
    Some(SockOpts {
        reuseaddr: getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0,
        reuseport: getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0,
        v6only: (domain == Some(libc::AF_INET6))
            .then(|| getsockopt_int(&dup, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY))
            .flatten()
            .map(|v| v != 0),
    })
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _, os::unix::fs::MetadataExt as _};

    use super::*;

    #[test]
    fn a_process_is_alive_since_it_started_and_not_before() {
        let me = std::process::id();
        assert!(alive_since(me, crate::event::monotonic_now()));
        assert!(
            !alive_since(me, 0),
            "a record from before this process started was made by another with the same pid"
        );
        assert!(!alive_since(u32::MAX, crate::event::monotonic_now()));
    }

    #[test]
    fn an_exited_process_not_yet_reaped_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        // Until it is waited for, the child stays in /proc as a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read_to_string(&stat).unwrap().contains(") Z ") {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A time after it started: only its state can say it has exited.
        let at = crate::event::monotonic_now();
        assert!(
            !alive_since(child.id(), at),
            "a zombie has closed its sockets: its records are an exited owner's"
        );
        child.wait().unwrap();
    }

    #[test]
    fn finds_this_process_behind_its_own_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_raw_fd() as u32;
        let ino = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let me = std::process::id();
        let mut t = SocketTable::empty();
        let found = t.owners(&[ino], &[]);
        // Another test's child, between its fork and its exec, may hold it too for a moment
        // (seen in both scans): this process must be among the holders.
        assert!(
            found.get(&ino).is_some_and(|v| v.contains(&(me, fd))),
            "full scan: {found:?}"
        );
        let found = t.owners(&[ino], &[me]);
        assert!(
            found.get(&ino).is_some_and(|v| v.contains(&(me, fd))),
            "candidate scan: {found:?}"
        );
        let p = process(me).unwrap();
        assert!(!p.comm.is_empty());
        // std sets SO_REUSEADDR on listeners.
        let opts = socket_options(me, fd, ino).expect("pidfd_getfd on ourselves");
        assert!(opts.reuseaddr);
        assert!(!opts.reuseport);
        assert_eq!(opts.v6only, None);
        assert!(
            socket_options(me, fd, ino + 1).is_none(),
            "inode mismatch is refused"
        );
    }
}

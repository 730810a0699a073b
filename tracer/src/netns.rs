//! Network namespaces: finding one by the inode number the kernel reported, and running a lookup
//! inside it.
//!
//! Ports are per network namespace, so the holder of a port must be looked up in the failing
//! process's namespace. The handle is opened as soon as the failure arrives (the process may exit a
//! moment later); the lookup then runs on a short-lived thread that joins the namespace with
//! `setns(2)` — a thread's namespace is its own, so the collector's threads never move.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Weak},
};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    /// Shared by the handles of one namespace that are open at once (`Finder::open`).
    file: Arc<File>,
    /// The collector's own namespace: no need to switch.
    pub is_own: bool,
}

impl Netns {
    fn open(path: &Path, inode: u64, own: u64) -> Option<Self> {
        let file = File::open(path).ok()?;
        (file.metadata().ok()?.ino() == inode).then_some(Self {
            file: Arc::new(file),
            is_own: inode == own,
        })
    }

    /// Runs `f` inside this namespace and returns its result.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        if self.is_own {
            return Ok(f());
        }
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns(2) on a namespace fd we hold open; it affects only this thread,
                // which ends when `f` returns.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the namespace lookup thread panicked"))?
        })
    }
}

/// The inode of this process's network namespace.
pub fn own_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

/// Finds namespaces by inode, remembering where each was last seen.
#[derive(Default)]
pub struct Finder {
    known: HashMap<u64, PathBuf>,
    /// Handles still held (by failures waiting for their lookup): one descriptor per namespace
    /// however many failures wait — a storm of thousands would otherwise hold as many, past a
    /// service's file limit (systemd's soft 1 024). Weak: a namespace is not kept alive by it.
    open: HashMap<u64, Weak<File>>,
}

impl Finder {
    /// Opens the namespace `inode`: the handle already open for it, else through the failing
    /// thread or process if it still exists, else where it was found before, else by searching
    /// named namespaces and every process.
    pub fn open(&mut self, inode: u64, pid: u32, tid: u32) -> Option<Netns> {
        let own = own_inode();
        // While a handle is open its namespace lives, and no other has its inode.
        if inode != 0
            && let Some(file) = self.open.get(&inode).and_then(Weak::upgrade)
        {
            return Some(Netns {
                file,
                is_own: inode == own,
            });
        }
        let ns = self.find(inode, own, pid, tid)?;
        if inode != 0 {
            if self.open.len() >= 64 {
                self.open.retain(|_, f| f.strong_count() > 0);
            }
            self.open.insert(inode, Arc::downgrade(&ns.file));
        }
        Some(ns)
    }

    fn find(&mut self, inode: u64, own: u64, pid: u32, tid: u32) -> Option<Netns> {
        if inode == 0 {
            // The kernel could not read it (no BTF): the failing thread's own, while it lives.
            for path in [
                format!("/proc/{pid}/task/{tid}/ns/net"),
                format!("/proc/{pid}/ns/net"),
            ] {
                if let Ok(m) = fs::metadata(&path)
                    && let Some(ns) = Netns::open(Path::new(&path), m.ino(), own)
                {
                    return Some(ns);
                }
            }
        }
        if inode == 0 || inode == own {
            return Netns::open(Path::new("/proc/thread-self/ns/net"), own, own);
        }
        let direct = [
            PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net")),
            PathBuf::from(format!("/proc/{pid}/ns/net")),
        ];
        for path in direct.iter().chain(self.known.get(&inode)) {
            if let Some(ns) = Netns::open(path, inode, own) {
                self.known.insert(inode, path.clone());
                return Some(ns);
            }
        }
        let path = search(inode)?;
        let ns = Netns::open(&path, inode, own)?;
        self.known.insert(inode, path);
        Some(ns)
    }
}

/// Named namespaces (`ip netns`, container runtimes), then every process.
fn search(inode: u64) -> Option<PathBuf> {
    let named = ["/run/netns", "/var/run/netns", "/var/run/docker/netns"]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named
        .chain(procs)
        .find(|p| fs::metadata(p).is_ok_and(|m| m.ino() == inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_runs_in_place() {
        let mut f = Finder::default();
        let own = own_inode();
        assert_ne!(own, 0);
        let ns = f.open(own, std::process::id(), std::process::id()).unwrap();
        assert!(ns.is_own);
        assert_eq!(ns.run_in(|| 7).unwrap(), 7);
    }

    #[test]
    fn unknown_namespace_is_none() {
        let mut f = Finder::default();
        assert!(f.open(1, 999_999_999, 999_999_999).is_none());
    }
}

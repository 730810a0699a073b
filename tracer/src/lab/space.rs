//! The lab's throwaway network namespaces and its helper processes.
//!
//! A namespace is created by a thread calling `unshare(CLONE_NEWNET)` and lives only as long as
//! the file descriptor kept on it and the processes inside: there is no `/run/netns` entry to
//! forget, so an error or Ctrl-C leaves nothing behind. Helpers ("another process" in the seed's
//! experiments) are `bindtrace __lab-helper` re-executed into the namespace, with a parent-death
//! signal so they cannot outlive the lab.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt, unix::process::CommandExt},
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// Moves the calling thread into a new network namespace with loopback up; returns a handle that
/// keeps the namespace alive.
pub fn enter_new_netns() -> Result<File> {
    // SAFETY: unshare(2) affects only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot create a network namespace: {} (the lab needs root)",
            std::io::Error::last_os_error()
        );
    }
    loopback_up()?;
    File::open("/proc/thread-self/ns/net").context("opening the new network namespace")
}

/// A namespace made on a thread of its own, for cases that need a second one (seed 3.5).
pub fn new_netns_elsewhere() -> Result<File> {
    std::thread::spawn(enter_new_netns)
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
}

pub fn inode(ns: &File) -> u64 {
    ns.metadata().map_or(0, |m| m.ino())
}

/// `ip link set lo up`, by ioctl, in the calling thread's namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: a datagram socket used only for the interface ioctls, closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut ifr) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            bail!("bringing loopback up: {err}");
        }
    }
    Ok(())
}

/// A helper process holding sockets until dropped.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it reported: `{"pid":..,"errno":0,...}`.
    pub report: Value,
}

impl Helper {
    /// Runs `bindtrace __lab-helper ARGS` inside `netns`; waits for its report.
    pub fn spawn(netns: &File, args: Vec<String>) -> Result<Self> {
        let fd = netns.as_raw_fd();
        let what = args.join(" ");
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("__lab-helper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting a lab helper")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("helper stdout")?).read_line(&mut line)?;
        let report: Value = serde_json::from_str(&line)
            .with_context(|| format!("lab helper `{what}` said {line:?}"))?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            report,
        })
    }

    pub fn pid(&self) -> u32 {
        self.report["pid"].as_u64().unwrap_or(0) as u32
    }

    /// Tells it to let go of its sockets and waits for it to exit.
    pub fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

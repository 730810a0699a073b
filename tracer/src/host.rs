//! Facts about the host that decide whether bindtrace can run: privileges and the cgroup-v2 root.

use std::{fs, path::PathBuf};

use anyhow::{Result, bail};

/// Linux capability numbers (`include/uapi/linux/capability.h`).
pub mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective_caps() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn has(caps: u64, c: u32) -> bool {
    caps & (1 << c) != 0
}

/// What is missing to load and attach the programs, as capability names. Empty: all is there.
///
/// Loading needs CAP_BPF (or CAP_SYS_ADMIN before 5.8); tracepoints and kernel-memory reads need
/// CAP_PERFMON (or CAP_SYS_ADMIN); cgroup hooks need CAP_NET_ADMIN.
pub fn missing_caps(caps: u64, needs_cgroup: bool) -> Vec<&'static str> {
    let admin = has(caps, cap::SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(caps, cap::BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(caps, cap::PERFMON) || admin) {
        missing.push("CAP_PERFMON");
    }
    if needs_cgroup && !has(caps, cap::NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Fails with a message naming what is missing when the programs cannot be loaded (`needs_cgroup`:
/// also attached to a cgroup).
pub fn require_privileges(needs_cgroup: bool) -> Result<()> {
    let missing = missing_caps(effective_caps(), needs_cgroup);
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    bail!(
        "bindtrace loads eBPF programs into the kernel and needs root (running as uid {euid}); \
         missing capabilities: {}. Run it with sudo.",
        missing.join(", ")
    )
}

/// One `/proc/self/mountinfo` line: (root within the filesystem, mount point, filesystem type).
fn parse_mountinfo_line(line: &str) -> Option<(String, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let root = l.nth(3)?;
    let mount_point = l.next()?;
    let fstype = right.split(' ').next()?;
    Some((unescape(root), unescape(mount_point), fstype.to_string()))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup-v2 root: `/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root_from(mountinfo: &str) -> Option<PathBuf> {
    let mut roots: Vec<String> = mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|(root, _, fstype)| fstype == "cgroup2" && root == "/")
        .map(|(_, mp, _)| mp)
        .collect();
    roots.sort_by_key(|mp| match mp.as_str() {
        "/sys/fs/cgroup" => 0,
        "/sys/fs/cgroup/unified" => 1,
        _ => 2,
    });
    roots.into_iter().next().map(PathBuf::from)
}

pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    match cgroup2_root_from(&mountinfo) {
        Some(p) => Ok(p),
        None => bail!(
            "no cgroup v2 hierarchy is mounted (looked for a cgroup2 mount in /proc/self/mountinfo); \
             the tracepoint backend needs it for its bind hooks. Mount it with \
             `mount -t cgroup2 none /sys/fs/cgroup/unified`, or use a kernel with kprobes or fexit \
             (--backend kprobe|fexit)"
        ),
    }
}

/// The kernel lockdown mode (`none`, `integrity` or `confidentiality`: the bracketed word of
/// `/sys/kernel/security/lockdown`), if the file exists.
pub fn lockdown_mode() -> Option<String> {
    fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .map(|s| lockdown_mode_from(&s))
}

pub fn lockdown_mode_from(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map_or_else(
            || text.trim().to_string(),
            |w| w.trim_matches(['[', ']']).to_string(),
        )
}

/// Whether lockdown `mode` (see [`lockdown_mode`]) refuses BPF programs' reads of kernel memory.
pub fn lockdown_refuses_reads(mode: &str) -> bool {
    mode == "confidentiality"
}

/// What `confidentiality` lockdown takes away, for messages.
pub const LOCKDOWN_CONFIDENTIALITY: &str = "kernel lockdown is in confidentiality mode \
    (/sys/kernel/security/lockdown): the kernel refuses BPF programs' reads of kernel memory \
    (bpf_probe_read_kernel), which every backend needs to read sockets; boot with \
    lockdown=integrity (or without lockdown) to trace";

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd";

    const UNIFIED: &str = "\
34 25 0:29 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
90 34 0:29 /kubepods /var/lib/x\\040y rw - cgroup2 cgroup2 rw";

    #[test]
    fn finds_the_v2_root_on_hybrid_and_unified_hosts() {
        assert_eq!(
            cgroup2_root_from(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_root_from(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_from("garbage\n\n"), None);
        assert_eq!(unescape("/var/lib/x\\040y"), "/var/lib/x y");
    }

    #[test]
    fn names_missing_capabilities() {
        assert!(missing_caps(u64::MAX, true).is_empty());
        assert_eq!(
            missing_caps(0, true),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        let admin_only = 1 << cap::SYS_ADMIN;
        assert_eq!(missing_caps(admin_only, true), vec!["CAP_NET_ADMIN"]);
        assert!(missing_caps(admin_only, false).is_empty());
    }

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            lockdown_mode_from("none integrity [confidentiality]\n"),
            "confidentiality"
        );
        assert_eq!(
            lockdown_mode_from("[none] integrity confidentiality\n"),
            "none"
        );
    }
}

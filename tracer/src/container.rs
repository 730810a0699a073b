//! Container and Kubernetes context of a process: the container id and pod UID parsed from its
//! cgroup path (docker, containerd, CRI-O and podman, with the cgroupfs and systemd cgroup
//! drivers), whether it shares the host's network namespace (Kubernetes `hostNetwork`), and the
//! pod's name and namespace where the kubelet's layout makes them knowable (`/var/log/pods/
//! NAMESPACE_NAME_UID`).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// What is known of a process's container (all fields optional: a host process has none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The process shares the host's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
}

impl Context {
    /// Where the process runs, for text: `pod=NAMESPACE/NAME`, else `pod=UID` (a pod whose log
    /// directory is not found), else `container=ID` (12 digits); None on the host.
    pub fn label(&self) -> Option<String> {
        let short = |id: &str| id[..id.len().min(12)].to_string();
        match (
            &self.pod_namespace,
            &self.pod_name,
            &self.pod_uid,
            &self.container_id,
        ) {
            (Some(ns), Some(pod), ..) => Some(format!("pod={ns}/{pod}")),
            (_, _, Some(uid), Some(id)) => Some(format!("pod={uid} container={}", short(id))),
            (_, _, Some(uid), None) => Some(format!("pod={uid}")),
            (_, _, None, Some(id)) => Some(format!("container={}", short(id))),
            _ => None,
        }
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A 64-hex-digit container id inside one path component: `<id>`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, ...
fn container_id_in(component: &str) -> Option<String> {
    let base = component.strip_suffix(".scope").unwrap_or(component);
    let id = base.rsplit(['-', ':']).next()?;
    (id.len() == 64 && is_hex(id)).then(|| id.to_ascii_lowercase())
}

/// A pod UID inside one path component: `pod<uid>` (cgroupfs) or
/// `kubepods-burstable-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_in(component: &str) -> Option<String> {
    let base = component.strip_suffix(".slice").unwrap_or(component);
    let at = base.rfind("pod")?;
    let uid = base[at + 3..].replace('_', "-");
    let parts: Vec<&str> = uid.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    (parts.len() == 5
        && parts
            .iter()
            .zip(shape)
            .all(|(p, n)| p.len() == n && is_hex(p)))
    .then(|| uid.to_ascii_lowercase())
}

/// Container id and pod UID from a cgroup path (`/proc/PID/cgroup`'s `0::` line).
pub fn parse_cgroup_path(path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for c in path.split('/') {
        // conmon (CRI-O's monitor) is not the container.
        if c.starts_with("crio-conmon-") {
            continue;
        }
        if let Some(id) = container_id_in(c) {
            container = Some(id);
        }
        if pod.is_none() {
            pod = pod_uid_in(c);
        }
    }
    (container, pod)
}

/// The cgroup-v2 path of a process (`0::/path` in `/proc/PID/cgroup`).
pub fn cgroup_path(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .next_back()
        })
        .map(str::to_string)
}

/// The cgroup-v2 paths under `root` (as `/proc/PID/cgroup` writes them: `/` for the root) by
/// cgroup id, which is the directory's inode number (the id the kernel programs record with
/// `bpf_get_current_cgroup_id()`).
fn cgroup_paths_by_id(root: &Path) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        if let Ok(meta) = fs::metadata(&dir) {
            found.insert(
                meta.ino(),
                if rel.is_empty() {
                    "/".into()
                } else {
                    rel.clone()
                },
            );
        }
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                dirs.push((e.path(), format!("{rel}/{name}")));
            }
        }
    }
    found
}

/// How often, at most, the cgroup tree is walked again for an id it did not have.
const CGROUP_RESCAN: Duration = Duration::from_secs(1);

/// How often a watch on a container host walks the cgroup tree unasked
/// ([`Resolver::keep_up`]): a client pod (a Job, a CronJob) that lived at least this long is
/// named for its connections' TIME-WAITs after the kubelet has removed its cgroup.
pub const CGROUP_KEEP_UP: Duration = Duration::from_secs(5);

/// More cgroup paths than this and the oldest knowledge is dropped (ids are never reused, so a
/// path kept is never wrong, only stale).
const CGROUPS_KEPT: usize = 100_000;

/// Resolves contexts, caching what does not change (the host netns, the kubelet's pod list, the
/// paths of cgroup ids).
pub struct Resolver {
    host_netns: Option<u32>,
    pods: HashMap<String, (String, String)>,
    pods_read: Option<Instant>,
    cgroup_root: Option<PathBuf>,
    cgroups: HashMap<u64, String>,
    cgroups_read: Option<Instant>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self {
            // pid 1's namespace is the host's (bindtrace runs on the host, or with hostPID); so
            // is kthreadd's (pid 2: kernel threads live in the initial namespace), readable where
            // pid 1 is not (a sandbox's init). Where neither is in reach, bindtrace's own: on a
            // host, or in a hostNetwork pod (as deployed), that is the host's too — but not for
            // `check-port` run inside another namespace, which pid 2 covers.
            host_netns: fs::metadata("/proc/1/ns/net")
                .or_else(|e| {
                    // Only the real kthreadd: in a pid namespace, pid 2 is anyone.
                    let kthreadd = fs::read_to_string("/proc/2/comm")
                        .is_ok_and(|c| c.trim_end() == "kthreadd");
                    if kthreadd {
                        fs::metadata("/proc/2/ns/net")
                    } else {
                        Err(e)
                    }
                })
                .or_else(|_| fs::metadata("/proc/self/ns/net"))
                .ok()
                .map(|m| m.ino() as u32),
            pods: HashMap::new(),
            pods_read: None,
            cgroup_root: crate::host::cgroup2_root().ok(),
            cgroups: HashMap::new(),
            cgroups_read: None,
        }
    }
}

impl Resolver {
    fn read_pods(&mut self) {
        if self.pods_read.is_some_and(|t| t.elapsed().as_secs() < 10) {
            return;
        }
        self.pods_read = Some(Instant::now());
        // Kept, not cleared: a deleted pod's TIME-WAITs outlive its log directory.
        for e in fs::read_dir("/var/log/pods")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // NAMESPACE_NAME_UID: namespaces and names cannot contain '_'.
            let mut it = name.splitn(3, '_');
            if let (Some(ns), Some(pod), Some(uid)) = (it.next(), it.next(), it.next()) {
                self.pods
                    .insert(uid.to_string(), (ns.to_string(), pod.to_string()));
            }
        }
    }

    /// The path of the cgroup with id `id`, walking the cgroup tree again (at most once per
    /// [`CGROUP_RESCAN`]) if it is not known yet.
    fn cgroup_of_id(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.cgroups.contains_key(&id)
            && self
                .cgroups_read
                .is_none_or(|t| t.elapsed() >= CGROUP_RESCAN)
            && let Some(root) = &self.cgroup_root
        {
            self.cgroups_read = Some(Instant::now());
            let now = cgroup_paths_by_id(root);
            self.remember_cgroups(now);
        }
        self.cgroups.get(&id).cloned()
    }

    /// Adds the paths of a walk to those known: a cgroup removed since (a finished pod's) keeps
    /// its path, which its processes' remembered connections still need.
    fn remember_cgroups(&mut self, now: HashMap<u64, String>) {
        if self.cgroups.len() + now.len() > CGROUPS_KEPT {
            self.cgroups.clear();
        }
        self.cgroups.extend(now);
    }

    /// On a container host (the cgroup tree has a `kubepods` branch, or the kubelet's
    /// `/var/log/pods` exists), walks the cgroup tree and the pods' log directories if the last
    /// walk is [`CGROUP_KEEP_UP`] old, so that a container that exits and is removed between two
    /// failures is still known by its cgroup id. Elsewhere, nothing: cgroups are looked up when a
    /// failure names an unknown one.
    pub fn keep_up(&mut self) {
        let Some(root) = &self.cgroup_root else {
            return;
        };
        if self
            .cgroups_read
            .is_some_and(|t| t.elapsed() < CGROUP_KEEP_UP)
        {
            return;
        }
        let containers = ["kubepods", "kubepods.slice"]
            .iter()
            .any(|d| root.join(d).is_dir())
            || Path::new("/var/log/pods").is_dir();
        if !containers {
            return;
        }
        self.cgroups_read = Some(Instant::now());
        let now = cgroup_paths_by_id(root);
        self.remember_cgroups(now);
        self.read_pods();
    }

    /// The context of process `pid` (0: gone) in cgroup `cgroup_id` (0: unknown) and network
    /// namespace `netns` (0: unknown). The cgroup comes from its id when known — what the kernel saw at the
    /// call, still right after the process exits (a service that fails to bind its port and
    /// quits at once) or its pid is reused — else from `/proc/PID/cgroup`.
    pub fn resolve(&mut self, pid: u32, cgroup_id: u64, netns: u32) -> Context {
        let (container_id, pod_uid) = self
            .cgroup_of_id(cgroup_id)
            .or_else(|| (pid != 0).then(|| cgroup_path(pid)).flatten())
            .map(|p| parse_cgroup_path(&p))
            .unwrap_or_default();
        let (pod_namespace, pod_name) = match &pod_uid {
            Some(uid) => {
                if !self.pods.contains_key(uid) {
                    self.read_pods();
                }
                self.pods
                    .get(uid)
                    .cloned()
                    .map_or((None, None), |(ns, n)| (Some(ns), Some(n)))
            }
            None => (None, None),
        };
        Context {
            container_id,
            pod_uid,
            pod_name,
            pod_namespace,
            host_network: (netns != 0)
                .then_some(self.host_netns)
                .flatten()
                .map(|h| h == netns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client pod's container that ran and was removed between two failures (a Job's): a
    /// watch on a container host walked the tree meanwhile, and still names it by its cgroup id.
    #[test]
    fn a_removed_containers_cgroup_is_still_known() {
        let root = std::env::temp_dir().join(format!("bt-cgroups-{}", std::process::id()));
        let pod = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            POD.replace('-', "_")
        ));
        let scope = pod.join(format!("cri-containerd-{ID}.scope"));
        fs::create_dir_all(&scope).unwrap();
        let id = fs::metadata(&scope).unwrap().ino();
        let mut r = Resolver {
            cgroup_root: Some(root.clone()),
            ..Resolver::default()
        };
        r.keep_up();
        fs::remove_dir_all(&root).unwrap();
        let c = r.resolve(0, id, 0);
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(POD));
        // Walked again later, the tree no longer has it: still known.
        r.cgroups_read = None;
        fs::create_dir_all(root.join("kubepods.slice")).unwrap();
        r.keep_up();
        assert_eq!(r.resolve(0, id, 0).container_id.as_deref(), Some(ID));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_context_is_labelled_by_its_pod_else_its_container() {
        let id = "4f967e757657aaaabbbbccccddddeeeeffff0000111122223333444455556666".to_string();
        let mut c = Context {
            container_id: Some(id),
            ..Context::default()
        };
        assert_eq!(c.label().as_deref(), Some("container=4f967e757657"));
        c.pod_uid = Some("0d8f-11".into());
        assert_eq!(
            c.label().as_deref(),
            Some("pod=0d8f-11 container=4f967e757657")
        );
        c.pod_namespace = Some("default".into());
        c.pod_name = Some("curl-client-6b7f9".into());
        assert_eq!(c.label().as_deref(), Some("pod=default/curl-client-6b7f9"));
        assert_eq!(Context::default().label(), None);
    }

    const ID: &str = "3f1c2d0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
    const POD: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

    #[test]
    fn real_world_cgroup_paths() {
        let pod_ = POD.replace('-', "_");
        let cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
            // docker, cgroupfs driver
            (format!("/docker/{ID}"), Some(ID), None),
            // docker, systemd driver
            (format!("/system.slice/docker-{ID}.scope"), Some(ID), None),
            // kubelet + containerd, cgroupfs driver
            (
                format!("/kubepods/burstable/pod{POD}/{ID}"),
                Some(ID),
                Some(POD),
            ),
            (format!("/kubepods/pod{POD}/{ID}"), Some(ID), Some(POD)),
            // kubelet + containerd, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
                Some(POD),
            ),
            // kubelet + CRI-O, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/crio-{ID}.scope"
                ),
                Some(ID),
                Some(POD),
            ),
            // CRI-O's monitor process sits beside the container: not a container itself
            (
                format!("/kubepods.slice/kubepods-pod{pod_}.slice/crio-conmon-{ID}.scope"),
                None,
                Some(POD),
            ),
            // podman, rootless
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Some(ID),
                None,
            ),
            // host processes
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                None,
                None,
            ),
            ("/system.slice/nginx.service".into(), None, None),
            ("/".into(), None, None),
        ];
        for (path, id, pod) in cases {
            let (c, p) = parse_cgroup_path(&path);
            assert_eq!(c.as_deref(), id, "container id of {path}");
            assert_eq!(p.as_deref(), pod, "pod uid of {path}");
        }
    }

    #[test]
    fn this_process_has_a_context() {
        let mut r = Resolver::default();
        let me = std::process::id();
        let own = crate::netns::own_inode() as u32;
        let ctx = r.resolve(me, 0, own);
        assert!(cgroup_path(me).is_some());
        // The tests run in the host's namespace (or the container's, where pid 1 shares it).
        assert!(ctx.host_network.is_some());
        assert_eq!(
            r.resolve(me, 0, 0).host_network,
            None,
            "unknown netns: unknown"
        );
    }

    /// A cgroup's id is its directory's inode number, and the walk names it as /proc does.
    #[test]
    fn cgroup_ids_map_to_their_paths() {
        let dir = std::env::temp_dir().join(format!("bindtrace-cgroups-{}", std::process::id()));
        let leaf = dir.join("kubepods.slice/cri-containerd-abc.scope");
        fs::create_dir_all(&leaf).unwrap();
        let ids = cgroup_paths_by_id(&dir);
        let id = fs::metadata(&leaf).unwrap().ino();
        assert_eq!(
            ids.get(&id).map(String::as_str),
            Some("/kubepods.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            ids.get(&fs::metadata(&dir).unwrap().ino())
                .map(String::as_str),
            Some("/")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

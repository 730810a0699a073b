//! The one place that decides which kernel hooks bindtrace uses, loads the programs and attaches
//! them. Backends, best first:
//!
//! | backend | hooks | needs |
//! |---|---|---|
//! | `fexit` | fexit on `inet_bind`, `inet6_bind`, `inet_csk_get_port`, `__inet_hash_connect`, `inet_dgram_connect` | BTF, BPF trampolines (5.5+; `bpf_get_func_ret` 5.17+) |
//! | `kprobe` | kprobe + kretprobe on the same functions | `CONFIG_KPROBES` |
//! | `tracepoint` | `syscalls:sys_{enter,exit}_{bind,listen,connect}` + `cgroup/bind4`,`bind6` | syscall tracepoints, cgroup v2 |
//!
//! All three also attach `sock:inet_sock_set_state` (owners of outgoing connections). `auto`
//! tries them in that order and keeps the first that really loads and attaches — a probe by
//! doing, not by kernel version — telling the user in one line why each one before it was
//! skipped. The kernel programs themselves are in `tracer-ebpf/src/{fexit,kprobe,syscalls,
//! cgroup_bind,sock_state}.rs`.

use std::{
    fmt,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::CgroupArray,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, FExit, KProbe, ProgramError, TracePoint,
    },
    util::KernelVersion,
};
use tracer_common::{Backend, Config, KernelOffsets, TracepointOffsets, history, names};

use crate::{btf, event::BackendName, host, tracefs};

/// The compiled kernel programs (built by build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The best backend this kernel offers: fexit, then kprobe, then tracepoint.
    #[default]
    Auto,
    /// BPF trampolines on the kernel's inet functions.
    Fexit,
    /// kprobes and kretprobes on the same functions.
    Kprobe,
    /// Syscall tracepoints + cgroup bind hooks (no kprobes or trampolines needed).
    Tracepoint,
}

impl BackendChoice {
    pub fn candidates(self) -> &'static [BackendName] {
        match self {
            Self::Auto => &[
                BackendName::Fexit,
                BackendName::Kprobe,
                BackendName::Tracepoint,
            ],
            Self::Fexit => &[BackendName::Fexit],
            Self::Kprobe => &[BackendName::Kprobe],
            Self::Tracepoint => &[BackendName::Tracepoint],
        }
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for, besides the backend.
pub struct Settings {
    pub choice: BackendChoice,
    pub kernel_btf: Option<PathBuf>,
    /// Filters and switches; the offsets and backend are filled in here.
    pub config: Config,
    /// Entries of the owner-history map.
    pub history_size: u32,
    /// `--cgroup`: an open cgroup-v2 directory whose subtree callers must be in.
    pub cgroup: Option<File>,
}

/// Loaded and attached programs. Dropping it detaches everything (the links are file
/// descriptors owned by `ebpf`), as does the process dying, even by SIGKILL.
pub struct Tracer {
    pub ebpf: Ebpf,
    pub backend: BackendName,
    /// Start-up notes worth telling the user: backends skipped and why, degraded features.
    pub notes: Vec<String>,
}

/// What the running kernel offers, resolved once for all attempts.
pub struct Kernel {
    /// BTF for fexit/tp_btf loading (None: no BTF).
    pub btf: Option<Btf>,
    pub btf_error: Option<String>,
    pub offsets: KernelOffsets,
    pub tp: TracepointOffsets,
    /// Whether the syscall tracepoints' formats could be read, and why not.
    pub syscall_tracepoints: Result<(), String>,
    pub tracefs: Result<PathBuf, String>,
    pub cgroup2: Result<PathBuf, String>,
    pub notes: Vec<String>,
}

impl Kernel {
    pub fn probe(kernel_btf: Option<&Path>) -> Result<Self> {
        let t = std::time::Instant::now();
        let mut notes = Vec::new();
        // `--kernel-btf none`: behave as on a kernel without BTF (built-in offsets).
        let no_btf = kernel_btf.is_some_and(|p| p == Path::new("none"));
        if let Some(p) = kernel_btf.filter(|_| !no_btf)
            && !p.is_file()
        {
            bail!("--kernel-btf {}: no such file", p.display());
        }
        let (btf, btf_error) = match kernel_btf {
            _ if no_btf => (None, Some("--kernel-btf none".to_string())),
            Some(p) => match Btf::parse_file(p, aya::Endianness::default()) {
                Ok(b) => (Some(b), None),
                Err(e) => bail!("--kernel-btf {}: not BTF ({e})", p.display()),
            },
            None => match Btf::from_sys_fs() {
                Ok(b) => (Some(b), None),
                Err(e) => (
                    None,
                    Some(format!("{} unreadable ({e})", btf::SYSFS_VMLINUX)),
                ),
            },
        };
        log::debug!("aya BTF parsed in {:?}", t.elapsed());
        let kbtf = if no_btf {
            Err(anyhow!("--kernel-btf none"))
        } else {
            btf::KernelBtf::load(kernel_btf)
        };
        let offsets = match kbtf {
            Ok(kbtf) => {
                let (offsets, missing) = kbtf.offsets();
                for m in missing {
                    notes.push(format!("BTF lacks {m}; that field is reported as unknown"));
                }
                offsets
            }
            Err(e) => {
                let (offsets, unknown) = btf::fallback_offsets();
                notes.push(format!(
                    "no kernel BTF ({e:#}): using the built-in x86_64 sock_common offsets; \
                     unknown: {}",
                    unknown.join(", ")
                ));
                offsets
            }
        };
        log::debug!("offsets resolved after {:?}", t.elapsed());
        let tracefs = tracefs::ensure_mounted().map_err(|e| format!("{e:#}"));
        let (tp, syscall_tracepoints) = match &tracefs {
            Ok(root) => {
                let found = tracefs::offsets(root);
                notes.extend(found.syscalls.clone().err());
                notes.extend(found.set_state.err());
                (found.offsets, found.syscalls)
            }
            Err(e) => (TracepointOffsets::default(), Err(e.clone())),
        };
        let cgroup2 = host::cgroup2_root().map_err(|e| format!("{e:#}"));
        Ok(Self {
            btf,
            btf_error,
            offsets,
            tp,
            syscall_tracepoints,
            tracefs,
            cgroup2,
            notes,
        })
    }
}

/// A load error with the verifier's verdict (its last lines) instead of its whole log; the whole
/// log goes to the debug log (`RUST_LOG=debug`).
fn load_error(e: ProgramError, prog: &str) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log for {prog}:\n{log}");
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                let why = if io_error.raw_os_error() == Some(libc::EPERM) {
                    " — with no verifier message: this kernel forbids the program type here \
                     (e.g. BPF trampolines when function tracing is disabled)"
                } else {
                    ""
                };
                return anyhow!("the kernel refused to load {prog}: {io_error}{why}");
            }
            let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
            anyhow!(
                "the kernel refused to load {prog} ({io_error}); the verifier said:\n    {tail}"
            )
        }
        other => anyhow::Error::new(other).context(format!("loading {prog}")),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the object"))?;
    Ok(p.try_into()?)
}

/// Loads `prog` once (if needed) and attaches it to tracepoint `category:name`.
fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_error(e, prog))?;
    }
    p.attach(category, name)
        .with_context(|| format!("attaching {prog} to tracepoint {category}:{name}"))?;
    Ok(())
}

fn attach_cgroup_bind(ebpf: &mut Ebpf, root: &File, prog: &str) -> Result<()> {
    let p: &mut CgroupSockAddr = program(ebpf, prog)?;
    p.load().map_err(|e| load_error(e, prog))?;
    // Run beside programs others attached, never replace or block them. aya attaches with a BPF
    // link from 5.7: links are always multi-attach and `link_create` rejects the flag (EINVAL).
    // Before 5.7 it uses BPF_PROG_ATTACH, which needs BPF_F_ALLOW_MULTI.
    let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
    let mode = if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    };
    p.attach(root, mode)
        .with_context(|| format!("attaching {prog} to the cgroup-v2 root"))?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, btf: &Btf, prog: &str, function: &str) -> Result<()> {
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(function, btf).map_err(|e| load_error(e, prog))?;
    p.attach()
        .with_context(|| format!("attaching {prog} to {function}"))?;
    Ok(())
}

/// Loads `prog` once (if needed) and attaches it to `function`.
fn attach_kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<()> {
    let p: &mut KProbe = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_error(e, prog))?;
    }
    p.attach(function, 0)
        .with_context(|| format!("attaching {prog} to {function}"))?;
    Ok(())
}

/// Whether the kernel can create kprobes at all (`CONFIG_KPROBES`): the kprobe PMU or tracefs'
/// `kprobe_events`.
pub fn kprobes_available(kernel: &Kernel) -> Result<(), String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let events = kernel
        .tracefs
        .as_ref()
        .is_ok_and(|t| t.join("kprobe_events").exists());
    if pmu || events {
        Ok(())
    } else {
        Err(
            "this kernel has no kprobes (no kprobe PMU in /sys/bus/event_source/devices, no \
             kprobe_events in tracefs: CONFIG_KPROBES is off)"
                .to_string(),
        )
    }
}

/// Loads the object with `config` frozen into its `CONFIG` global, an owner history of about
/// `history_size` entries (rounded up to whole sets, a power of two of them) and room for calls
/// in flight sized to the host's CPUs.
fn load(kernel: &Kernel, config: &Config, history_size: u32) -> Result<Ebpf> {
    let sets = history::sets_for(history_size);
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
    let config = Config {
        history_mask: sets - 1,
        ..*config
    };
    EbpfLoader::new()
        .btf(kernel.btf.as_ref())
        .override_global(names::CONFIG, &config, true)
        .map_max_entries(names::HISTORY, sets)
        .map_max_entries(
            names::PENDING,
            tracer_common::pending_overflow_entries(cpus),
        )
        .load(EBPF_OBJECT)
        .context("loading bindtrace's eBPF object into the kernel")
}

/// Attaches `backend`'s own programs (beyond `inet_sock_set_state`).
fn attach_hooks(
    backend: BackendName,
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    notes: &mut Vec<String>,
) -> Result<()> {
    match backend {
        BackendName::Fexit => {
            let btf = kernel.btf.as_ref().expect("checked above");
            attach_fexit(ebpf, btf, "fexit_inet_bind", "inet_bind")?;
            attach_fexit(ebpf, btf, "fexit_inet6_bind", "inet6_bind")?;
            attach_fexit(ebpf, btf, "fexit_inet_csk_get_port", "inet_csk_get_port")?;
            if let Err(e) =
                attach_fexit(ebpf, btf, "fexit_inet_hash_connect", "__inet_hash_connect")
            {
                notes.push(format!("connect() port exhaustion is not traced: {e:#}"));
            }
            if let Err(e) =
                attach_fexit(ebpf, btf, "fexit_inet_dgram_connect", "inet_dgram_connect")
            {
                notes.push(format!("{DGRAM_UNTRACED}: {e:#}"));
            }
        }
        BackendName::Kprobe => {
            attach_kprobe(ebpf, "kp_inet_bind", "inet_bind")?;
            attach_kprobe(ebpf, "kp_inet6_bind", "inet6_bind")?;
            attach_kprobe(ebpf, "krp_bind", "inet_bind")?;
            attach_kprobe(ebpf, "krp_bind", "inet6_bind")?;
            attach_kprobe(ebpf, "kp_inet_csk_get_port", "inet_csk_get_port")?;
            attach_kprobe(ebpf, "krp_inet_csk_get_port", "inet_csk_get_port")?;
            if let Err(e) = attach_kprobe(ebpf, "kp_inet_hash_connect", "__inet_hash_connect")
                .and_then(|()| attach_kprobe(ebpf, "krp_inet_hash_connect", "__inet_hash_connect"))
            {
                notes.push(format!("connect() port exhaustion is not traced: {e:#}"));
            }
            if let Err(e) = attach_kprobe(ebpf, "kp_inet_dgram_connect", "inet_dgram_connect")
                .and_then(|()| attach_kprobe(ebpf, "krp_inet_dgram_connect", "inet_dgram_connect"))
            {
                notes.push(format!("{DGRAM_UNTRACED}: {e:#}"));
            }
        }
        _ => {
            let root_path = kernel.cgroup2.as_ref().map_err(|e| anyhow!("{e}"))?;
            let root = File::open(root_path)
                .with_context(|| format!("opening the cgroup-v2 root {}", root_path.display()))?;
            attach_cgroup_bind(ebpf, &root, "bind4")?;
            attach_cgroup_bind(ebpf, &root, "bind6")?;
            // Exits before entries: a call whose entry was seen is always finished.
            for (prog, name) in [
                ("sys_exit_bind", "sys_exit_bind"),
                ("sys_exit_listen", "sys_exit_listen"),
                ("sys_exit_connect", "sys_exit_connect"),
                ("sys_enter_listen", "sys_enter_listen"),
                ("sys_enter_connect", "sys_enter_connect"),
            ] {
                attach_tracepoint(ebpf, prog, "syscalls", name)?;
            }
            if !kernel.offsets.task_files.known() {
                notes.push(format!(
                    "{DGRAM_UNTRACED}: the kernel's BTF does not say where a task's descriptors are"
                ));
            }
        }
    }
    Ok(())
}

/// What is lost without a hook on a datagram socket's connect().
const DGRAM_UNTRACED: &str = "UDP connect() port exhaustion (EAGAIN) is not traced";

/// Loads and attaches one backend; returns notes on what works in a degraded way.
pub fn attach(
    backend: BackendName,
    kernel: &Kernel,
    config: &Config,
    history_size: u32,
    cgroup: Option<&File>,
) -> Result<(Ebpf, Vec<String>)> {
    let mut notes = Vec::new();
    let mut config = *config;
    config.backend = match backend {
        BackendName::Fexit => Backend::Fexit,
        BackendName::Kprobe => Backend::Kprobe,
        _ => Backend::Tracepoint,
    } as u8;
    // Cheap checks first, so the reason given is the real one.
    match backend {
        BackendName::Fexit if kernel.btf.is_none() => bail!(
            "needs kernel BTF: {}",
            kernel.btf_error.as_deref().unwrap_or("none")
        ),
        BackendName::Kprobe => kprobes_available(kernel).map_err(|e| anyhow!(e))?,
        BackendName::Tracepoint => {
            if let Err(e) = &kernel.syscall_tracepoints {
                bail!("the syscall tracepoints cannot be used: {e}");
            }
            kernel.cgroup2.as_ref().map_err(|e| anyhow!("{e}"))?;
            host::require_privileges(true)?;
        }
        _ => {}
    }
    config.filter_cgroup = u64::from(cgroup.is_some());
    let mut ebpf = load(kernel, &config, history_size)?;
    if let Some(dir) = cgroup {
        let mut filter: CgroupArray<_> = ebpf
            .map_mut(names::CGROUP_FILTER)
            .ok_or_else(|| anyhow!("map {} missing", names::CGROUP_FILTER))?
            .try_into()?;
        filter
            .set(0, dir.as_raw_fd(), 0)
            .context("--cgroup: not a cgroup-v2 directory")?;
    }
    if config.tp.ss_skaddr.known() {
        attach_tracepoint(
            &mut ebpf,
            "inet_sock_set_state",
            "sock",
            "inet_sock_set_state",
        )
        .unwrap_or_else(|e| {
            notes.push(format!(
                "owners of outgoing connections are not remembered ({e:#}): TIME-WAIT \
                     holders will have no owner"
            ));
        });
    } else {
        notes.push(
            "sock:inet_sock_set_state is missing (kernel < 4.16?): TIME-WAIT holders will \
             have no owner"
                .to_string(),
        );
    }
    attach_hooks(backend, &mut ebpf, kernel, &mut notes)?;
    Ok((ebpf, notes))
}

/// Tries the chosen backend(s) in order and returns the first that attaches.
pub fn start(settings: &Settings) -> Result<Tracer> {
    host::require_privileges(false)?;
    let started = std::time::Instant::now();
    let kernel = Kernel::probe(settings.kernel_btf.as_deref())?;
    log::debug!("kernel probed in {:?}", started.elapsed());
    let mut config = settings.config;
    config.kernel = kernel.offsets;
    config.tp = kernel.tp;
    config.tp_direct = u8::from(tracefs::matches_fixed_layout(&kernel.tp));
    let mut skipped = Vec::new();
    for &backend in settings.choice.candidates() {
        match attach(
            backend,
            &kernel,
            &config,
            settings.history_size,
            settings.cgroup.as_ref(),
        ) {
            Ok((ebpf, notes)) => {
                log::debug!("{backend} attached after {:?}", started.elapsed());
                let mut all = kernel.notes.clone();
                all.extend(skipped.iter().map(|s| format!("{s}; falling back")));
                all.extend(notes);
                return Ok(Tracer {
                    ebpf,
                    backend,
                    notes: all,
                });
            }
            Err(e) => skipped.push(format!("{backend} backend unavailable: {e:#}")),
        }
    }
    if host::lockdown_mode().is_some_and(|m| host::lockdown_refuses_reads(&m)) {
        skipped.push(host::LOCKDOWN_CONFIDENTIALITY.to_string());
    }
    bail!(
        "no backend could be attached on this kernel:\n  {}",
        skipped.join("\n  ")
    )
}

/// The bench's floor: empty programs on the hooks the chosen backend uses (see
/// tracer-ebpf/src/floor.rs); the first of `choice`'s candidates that attaches.
pub fn start_floor(choice: BackendChoice) -> Result<(Ebpf, BackendName)> {
    host::require_privileges(true)?;
    let kernel = Kernel::probe(None)?;
    let mut why = Vec::new();
    for &b in choice.candidates() {
        match attach_floor(b, &kernel) {
            Ok(ebpf) => return Ok((ebpf, b)),
            Err(e) => why.push(format!("{b}: {e:#}")),
        }
    }
    bail!("no floor could be attached: {}", why.join("; "))
}

fn attach_floor(backend: BackendName, kernel: &Kernel) -> Result<Ebpf> {
    let config = Config {
        kernel: kernel.offsets,
        tp: kernel.tp,
        ..Config::default()
    };
    let mut ebpf = load(kernel, &config, 1024)?;
    attach_tracepoint(&mut ebpf, "floor_tp", "sock", "inet_sock_set_state")?;
    match backend {
        BackendName::Fexit => {
            let btf = kernel
                .btf
                .as_ref()
                .ok_or_else(|| anyhow!("no kernel BTF"))?;
            for f in [
                "inet_bind",
                "inet6_bind",
                "inet_csk_get_port",
                "__inet_hash_connect",
                "inet_dgram_connect",
            ] {
                let prog = format!("floor_fexit_{}", f.trim_start_matches('_'));
                attach_fexit(&mut ebpf, btf, &prog, f)?;
            }
        }
        BackendName::Kprobe => {
            for f in [
                "inet_bind",
                "inet6_bind",
                "inet_csk_get_port",
                "__inet_hash_connect",
                "inet_dgram_connect",
            ] {
                attach_kprobe(&mut ebpf, "floor_kprobe", f)?;
                attach_kprobe(&mut ebpf, "floor_kretprobe", f)?;
            }
        }
        _ => {
            let root_path = kernel.cgroup2.as_ref().map_err(|e| anyhow!("{e}"))?;
            let root = File::open(root_path)?;
            attach_cgroup_bind(&mut ebpf, &root, "floor_bind4")?;
            attach_cgroup_bind(&mut ebpf, &root, "floor_bind6")?;
            for call in ["bind", "listen", "connect"] {
                for dir in ["enter", "exit"] {
                    attach_tracepoint(
                        &mut ebpf,
                        "floor_tp",
                        "syscalls",
                        &format!("sys_{dir}_{call}"),
                    )?;
                }
            }
        }
    }
    Ok(ebpf)
}

/// Whether this kernel loads a tp_btf program (for `doctor`; never attached).
pub fn probe_tp_btf(kernel: &Kernel) -> Result<()> {
    let btf = kernel
        .btf
        .as_ref()
        .ok_or_else(|| anyhow!("no kernel BTF"))?;
    let config = Config {
        kernel: kernel.offsets,
        tp: kernel.tp,
        ..Config::default()
    };
    let mut ebpf = load(kernel, &config, 1024)?;
    let p: &mut BtfTracePoint = program(&mut ebpf, "probe_tp_btf")?;
    p.load("inet_sock_set_state", btf)
        .map_err(|e| load_error(e, "probe_tp_btf"))?;
    Ok(())
}

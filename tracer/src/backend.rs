//! The one place that decides which kernel hooks bindtrace uses, loads the programs and attaches
//! them.
//!
//! Backends, best first:
//! - `tracepoint`: `syscalls:sys_{enter,exit}_{bind,listen,connect}` + `cgroup/bind4`,`bind6` on the
//!   cgroup-v2 root + `sock:inet_sock_set_state`. Needs no kprobes or BTF trampolines, so it runs
//!   on locked-down kernels like Firecracker guests.
//!
//! Every backend also attaches `sock:inet_sock_set_state` to remember who owns outgoing
//! connections.

use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, TracePoint},
    util::KernelVersion,
};
use tracer_common::{Backend, Config, names};

use crate::{btf, event::BackendName, host, tracefs};

/// The compiled kernel programs (built by build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The best backend this kernel offers.
    #[default]
    Auto,
    /// Syscall tracepoints + cgroup bind hooks.
    Tracepoint,
}

/// What the user asked for, besides the backend.
pub struct Settings {
    pub choice: BackendChoice,
    pub kernel_btf: Option<PathBuf>,
    /// Filters and switches; the offsets and backend are filled in here.
    pub config: Config,
    /// Entries of the owner-history map.
    pub history_size: u32,
}

/// Loaded and attached programs. Dropping it detaches everything (the links are file
/// descriptors owned by `ebpf`), as does the process dying, even by SIGKILL.
pub struct Tracer {
    pub ebpf: Ebpf,
    pub backend: BackendName,
    /// Start-up notes worth telling the user (degraded features, fallbacks).
    pub notes: Vec<String>,
}

/// The syscall tracepoints, exits before entries so that a call whose entry was seen is always
/// finished (see `attach_tracepoints`).
const SYSCALL_TRACEPOINTS: [(&str, &str, &str); 6] = [
    ("sys_exit_bind", "syscalls", "sys_exit_bind"),
    ("sys_exit_listen", "syscalls", "sys_exit_listen"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_enter_bind", "syscalls", "sys_enter_bind"),
    ("sys_enter_listen", "syscalls", "sys_enter_listen"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
];

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
            let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
            anyhow!(
                "the kernel refused to load {prog} ({io_error}); the verifier said:\n    {tail}"
            )
        }
        other => anyhow::Error::new(other).context(format!("loading {prog}")),
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
        .try_into()?;
    p.load().map_err(|e| load_error(e, prog))?;
    p.attach(category, name)
        .with_context(|| format!("attaching {prog} to tracepoint {category}:{name}"))?;
    Ok(())
}

fn attach_cgroup_bind(ebpf: &mut Ebpf, root: &File, prog: &str) -> Result<()> {
    let p: &mut CgroupSockAddr = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
        .try_into()?;
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

/// Loads the object with `config` frozen into its `CONFIG` global.
fn load(config: &Config, kernel_btf: Option<&PathBuf>, history_size: u32) -> Result<Ebpf> {
    let btf = match kernel_btf {
        Some(p) => Some(
            aya::Btf::parse_file(p, aya::Endianness::default())
                .with_context(|| format!("reading --kernel-btf {}", p.display()))?,
        ),
        None => aya::Btf::from_sys_fs().ok(),
    };
    EbpfLoader::new()
        .btf(btf.as_ref())
        .override_global(names::CONFIG, config, true)
        .map_max_entries(names::HISTORY, history_size)
        .load(EBPF_OBJECT)
        .context("loading bindtrace's eBPF object into the kernel")
}

/// Resolves everything the programs need, then loads and attaches the chosen backend.
pub fn start(settings: Settings) -> Result<Tracer> {
    let Settings {
        choice,
        kernel_btf,
        mut config,
        history_size,
    } = settings;
    let mut notes = Vec::new();
    match choice {
        BackendChoice::Auto | BackendChoice::Tracepoint => {}
    }
    host::require_privileges(true)?;
    let cgroup_root = host::cgroup2_root()?;
    let tracefs = tracefs::ensure_mounted()?;

    config.kernel = match btf::KernelBtf::load(kernel_btf.as_deref()) {
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
                "no kernel BTF ({e:#}): using the built-in x86_64 sock_common offsets; unknown: {}",
                unknown.join(", ")
            ));
            offsets
        }
    };
    config.tp = tracefs::offsets(&tracefs)?;
    config.backend = Backend::Tracepoint as u8;

    let mut ebpf = load(&config, kernel_btf.as_ref(), history_size)?;
    attach_tracepoint(
        &mut ebpf,
        "inet_sock_set_state",
        "sock",
        "inet_sock_set_state",
    )?;
    let root = File::open(&cgroup_root)
        .with_context(|| format!("opening the cgroup-v2 root {}", cgroup_root.display()))?;
    attach_cgroup_bind(&mut ebpf, &root, "bind4")?;
    attach_cgroup_bind(&mut ebpf, &root, "bind6")?;
    for (prog, category, name) in SYSCALL_TRACEPOINTS {
        attach_tracepoint(&mut ebpf, prog, category, name)?;
    }
    Ok(Tracer {
        ebpf,
        backend: BackendName::Tracepoint,
        notes,
    })
}

//! Command-line interface. `--help` is documentation: keep the texts exact.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{backend::BackendChoice, output::OutputFormat};

const EXAMPLES: &str = "\
EXAMPLES:
  Check what this kernel supports:
      sudo bindtrace doctor
  See how this kernel decides bind conflicts, and check bindtrace against it:
      sudo bindtrace lab --check
  Watch every failing bind()/listen() on the host:
      sudo bindtrace watch
  Only port 8080, as JSON lines:
      sudo bindtrace watch --port 8080 --output json
  Also show successful binds of one process:
      sudo bindtrace watch --all --pid 4242
  Run for weeks: keep a rotated post-mortem log and serve metrics on localhost:
      sudo bindtrace watch --log-file /var/log/bindtrace/events.json --metrics-addr 9464
  What happened overnight:
      bindtrace report /var/log/bindtrace/events.json*
  Before starting a service on 8080:
      sudo bindtrace check-port 8080 && exec my-service";

#[derive(Debug, Parser)]
#[command(
    name = "bindtrace",
    version,
    about = "Catches bind()/listen() failures (\"Address already in use\" and its relatives) \
             as they happen, and says who failed, on what, and who held the port.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace failing bind(), listen() and connect() calls on this host, live.
    Watch(WatchArgs),
    /// Show what this kernel offers and which backend `--backend auto` would choose, and why.
    Doctor(DoctorArgs),
    /// Run the seed's bind-conflict experiments in a throwaway network namespace, with the
    /// tracer's view of each beside the kernel's answer.
    Lab(crate::lab::LabArgs),
    /// Summarize post-mortem logs written by `watch --log-file` (and rotated ones; - for stdin).
    Report(crate::report::ReportArgs),
    /// Would a bind of PORT succeed now? Who would block it, and why. Exit status 0/1.
    CheckPort(crate::checkport::CheckPortArgs),
    /// The benchmark's floor: empty programs on the same hooks (internal).
    #[command(name = "__floor", hide = true)]
    Floor(FloorArgs),
    /// A lab experiment's helper process (internal).
    #[command(name = "__lab-helper", hide = true)]
    LabHelper(crate::lab::helper::HelperArgs),
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Kernel BTF to read struct offsets from (default: /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "FILE")]
    pub kernel_btf: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filters: FilterArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Also report successful bind() and listen() calls (failures only by default).
    #[arg(long)]
    pub all: bool,

    /// Report failures without looking up who held the port.
    #[arg(long)]
    pub no_holders: bool,

    /// Also append every event (JSON lines) to this file, rotated by size; created mode 0640.
    #[arg(long, value_name = "PATH", help_heading = "Post-mortem log")]
    pub log_file: Option<PathBuf>,

    /// Rotate the log when it would grow past this size (K, M, G).
    #[arg(long, value_name = "SIZE", default_value = "100M", value_parser = crate::logfile::parse_size, help_heading = "Post-mortem log")]
    pub log_max_size: u64,

    /// Rotated logs kept (PATH.1 ... PATH.N).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        help_heading = "Post-mortem log"
    )]
    pub log_keep: u32,

    /// Serve Prometheus metrics at http://ADDR/metrics (PORT alone binds 127.0.0.1 only).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Ports whose last owners the kernel remembers (96 bytes each; rounded up to a power of two
    /// of 4-entry sets): how far back a TIME-WAIT socket's owner can be named on a busy host.
    #[arg(long, value_name = "ENTRIES", default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub history_size: u32,

    /// Which kernel hooks to use; `auto` picks the best this kernel offers.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Kernel BTF to read struct offsets from (default: /sys/kernel/btf/vmlinux); `none` to
    /// use the built-in x86_64 offsets (for kernels whose BTF is missing or broken).
    #[arg(long, value_name = "FILE")]
    pub kernel_btf: Option<PathBuf>,

    /// Write this file once every probe is attached (for scripts and tests).
    #[arg(long, value_name = "PATH", hide = true)]
    pub ready_file: Option<PathBuf>,

    /// Have the kernel programs log their decisions (verbose; for debugging bindtrace itself).
    #[arg(long, hide = true)]
    pub debug_ebpf: bool,
}

/// Which events to report. Applied in the kernel.
#[derive(Debug, Default, Clone, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only this local port (for connect(): also the destination port).
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,

    /// Only this process (thread-group id).
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Only processes with this command name (as in /proc/PID/comm, at most 15 bytes), or threads
    /// with it.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Only processes in this cgroup-v2 directory or below it (e.g. a pod's cgroup).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Only this network namespace: its inode number, or a path such as /proc/PID/ns/net or
    /// /run/netns/NAME.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<u32>,
}

impl FilterArgs {
    /// The filters given, as they are written on the command line (`--port 8080 --netns
    /// 4026532177`); empty for none: what a run's log did not cover.
    pub fn scope(&self) -> String {
        let mut scope: Vec<String> = Vec::new();
        if let Some(p) = self.port {
            scope.push(format!("--port {p}"));
        }
        if let Some(p) = self.pid {
            scope.push(format!("--pid {p}"));
        }
        if let Some(c) = &self.comm {
            scope.push(format!("--comm {c}"));
        }
        if let Some(c) = &self.cgroup {
            scope.push(format!("--cgroup {}", c.display()));
        }
        if let Some(n) = self.netns {
            scope.push(format!("--netns {n}"));
        }
        scope.join(" ")
    }
}

pub fn parse_netns(s: &str) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt as _;
    // Namespaces' inode numbers come from the kernel's dynamic proc inodes, from
    // `PROC_DYNAMIC_FIRST` (0xf0000000) up, or for the initial ones fixed just below it (the
    // host's network namespace is 0xeffffff9 from 6.x, 4026531833; a dynamic one before).
    const FIRST_NS_INODE: u32 = 0xefff_ff00;
    if let Ok(n) = s.trim().parse::<u32>() {
        return if n < FIRST_NS_INODE {
            Err(format!(
                "{n} cannot be a namespace's inode (they start at {FIRST_NS_INODE}): give the \
                 number `ls -iL /proc/PID/ns/net` shows, or the path"
            ))
        } else {
            Ok(n)
        };
    }
    // A bare name, as `ip netns` lists it (not a file here): its /run/netns entry.
    let named = format!("/run/netns/{s}");
    let s = if !s.contains('/') && !Path::new(s).exists() && Path::new(&named).exists() {
        named.as_str()
    } else {
        s
    };
    let m = std::fs::metadata(s).map_err(|e| format!("{s}: {e}"))?;
    let not_netns = || {
        format!(
            "{s}: not a network namespace file (give /run/netns/NAME, /proc/PID/ns/net or the \
             namespace's inode number)"
        )
    };
    // Namespace files all live on the kernel's nsfs: the same device as this process's own.
    let nsfs = std::fs::metadata("/proc/self/ns/net").map(|own| own.dev());
    if nsfs.is_ok_and(|dev| dev != m.dev()) {
        return Err(not_netns());
    }
    // Of what kind (4.11+; older kernels cannot tell, and the device check stands alone).
    if let Ok(f) = std::fs::File::open(s) {
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: an ioctl without arguments on a descriptor we own.
        let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), NS_GET_NSTYPE) };
        if kind >= 0 && kind != libc::CLONE_NEWNET {
            return Err(not_netns());
        }
    }
    u32::try_from(m.ino()).map_err(|_| not_netns())
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("port 0 means \"any port\"; give a port from 1 to 65535".to_string()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (1-65535)")),
        Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".to_string()),
        Ok(p) if p <= 4_194_304 => Ok(p),
        Ok(p) => Err(format!("pid {p} is above the kernel's maximum (4194304)")),
        Err(_) => Err(format!("{s:?} is not a process id")),
    }
}

pub fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the command name is empty".to_string());
    }
    if s.len() > 15 {
        return Err(format!(
            "{s:?} is {} bytes; the kernel keeps only 15 bytes of a command name \
             (use {:?})",
            s.len(),
            truncate_comm(s)
        ));
    }
    if s.contains('\0') {
        return Err("the command name contains a NUL byte".to_string());
    }
    Ok(s.to_string())
}

fn truncate_comm(s: &str) -> &str {
    let mut end = 15;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl FilterArgs {
    /// The comm filter as the kernel compares it.
    pub fn comm_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        if let Some(c) = &self.comm {
            out[..c.len()].copy_from_slice(c.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ports_are_validated() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("65536").unwrap_err().contains("out of range"));
        assert!(parse_port("http").unwrap_err().contains("not a port"));
    }

    #[test]
    fn pids_and_comms_are_validated() {
        assert_eq!(parse_pid("1"), Ok(1));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-3").is_err());
        assert_eq!(parse_comm("java"), Ok("java".into()));
        let long = parse_comm("a-very-long-process-name").unwrap_err();
        assert!(long.contains("\"a-very-long-pro\""), "{long}");
        let f = FilterArgs {
            comm: Some("java".into()),
            ..FilterArgs::default()
        };
        assert_eq!(&f.comm_bytes()[..5], b"java\0");
    }

    #[test]
    fn netns_and_log_flags_are_validated() {
        assert_eq!(parse_netns("4026531840"), Ok(4_026_531_840));
        assert!(parse_netns("0").is_err());
        assert!(parse_netns("12345").is_err(), "a typo of an inode");
        assert_eq!(
            parse_netns("4026531833"),
            Ok(0xefff_fff9),
            "6.x's initial namespace"
        );
        assert!(
            parse_netns("/no/such/netns")
                .unwrap_err()
                .contains("/no/such/netns")
        );
        assert!(parse_netns("/proc/self/ns/net").is_ok());
        assert!(Cli::try_parse_from(["bindtrace", "watch", "--log-max-size", "10X"]).is_err());
        assert!(Cli::try_parse_from(["bindtrace", "watch", "--metrics-addr", "nope"]).is_err());
        assert!(Cli::try_parse_from(["bindtrace", "check-port", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["bindtrace", "check-port"]).is_err(),
            "port or --listening"
        );
        assert!(Cli::try_parse_from(["bindtrace", "check-port", "--listening"]).is_ok());
    }

    #[test]
    fn watch_flags_parse() {
        let cli = Cli::try_parse_from([
            "bindtrace",
            "watch",
            "--port",
            "8080",
            "--pid",
            "7",
            "--comm",
            "java",
            "--output",
            "json",
            "--all",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("watch parses as watch");
        };
        assert_eq!(w.filters.port, Some(8080));
        assert_eq!(w.filters.pid, Some(7));
        assert_eq!(w.output, OutputFormat::Json);
        assert!(w.all);
        assert!(Cli::try_parse_from(["bindtrace", "watch", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["bindtrace", "watch", "--backend", "magic"]).is_err());
    }
}

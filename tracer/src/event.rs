//! Owned, serializable events, decoded from the kernel's raw records (`tracer_common::BindEvent`).
//!
//! The JSON keys of [`Event`] are a stable interface (README "JSON events"): new keys may be added,
//! existing ones are never renamed or retyped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use tracer_common::{
    ABI_VERSION, AF_INET, AF_INET6, BIND_EVENT_SIZE, Backend, BindEvent, EventHeader, EventKind,
    IPPROTO_TCP, IPPROTO_UDP, Syscall, flags,
};

use crate::errno;

/// Why a ring-buffer record could not be decoded (counted and skipped by the collector).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record kind {0} is unknown")]
    Kind(u32),
    #[error("record ABI version {0} (this collector speaks {ABI_VERSION})")]
    Version(u16),
    #[error("record says it is {said} bytes, expected {BIND_EVENT_SIZE} and got {got}")]
    Size { said: u16, got: usize },
}

/// Checks a raw record and copies it out of the ring buffer.
pub fn decode(bytes: &[u8]) -> Result<(EventKind, BindEvent), DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; EventHeader is integers only, so any bytes are a valid value.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::Kind)?;
    if header.version != ABI_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    if header.size as usize != BIND_EVENT_SIZE || bytes.len() < BIND_EVENT_SIZE {
        return Err(DecodeError::Size {
            said: header.size,
            got: bytes.len(),
        });
    }
    // SAFETY: as above, for the whole record.
    let raw: BindEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok((kind, raw))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    BindFailure,
    BindSuccess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallName {
    Bind,
    Listen,
    Connect,
    Unknown,
}

impl SyscallName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Connect => "connect",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    Tracepoint,
    Kprobe,
    Fexit,
    Unknown,
}

impl BackendName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
            Self::Fexit => "fexit",
            Self::Unknown => "unknown",
        }
    }
}

impl From<Backend> for BackendName {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Tracepoint => Self::Tracepoint,
            Backend::Kprobe => Self::Kprobe,
            Backend::Fexit => Self::Fexit,
        }
    }
}

/// One reported bind/listen/connect outcome.
#[expect(clippy::struct_field_names, reason = "`event` is a stable JSON key")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub event: EventName,
    pub syscall: SyscallName,
    /// Positive errno (0 for a success).
    pub errno: i32,
    /// Errno name, e.g. `EADDRINUSE`.
    pub error: String,
    pub pid: u32,
    pub tid: u32,
    /// The calling process's name (`/proc/PID/comm`; the calling thread's when the process
    /// had exited before it was looked up). Untrusted text.
    pub comm: String,
    /// The calling thread's name, where it differs from the process's (a JVM's
    /// "http-nio-8080-Acceptor").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Network namespace inode number (0: unknown).
    pub netns: u32,
    pub cgroup_id: u64,
    /// `ipv4` / `ipv6`.
    pub family: String,
    /// `tcp` / `udp` / `mptcp` / ... / `unknown`.
    pub protocol: String,
    /// The requested (bind) or bound (listen, connect) local address.
    pub addr: String,
    /// The requested (bind) or bound (listen) local port; 0 for connect() without bind().
    pub port: u16,
    /// Destination of a failing connect().
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// The port the kernel chose for a successful bind() to port 0 (`--all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_port: Option<u16>,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// `IPV6_V6ONLY` of an IPv6 socket (absent when it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6only: Option<bool>,
    /// Whether `reuseaddr`/`reuseport` were read from the socket (false: unknown, shown as false).
    pub options_known: bool,
    /// `SO_BINDTODEVICE` interface index (0: none).
    pub bound_dev_if: u32,
    pub backend: BackendName,
    /// Container and Kubernetes context of the caller (keys absent when unknown).
    #[serde(flatten, default)]
    pub container: crate::container::Context,
    /// When it happened, on the kernel's CLOCK_MONOTONIC (0: unknown, as in a read-back log).
    #[serde(skip)]
    pub ts_ns: u64,
    /// Whether the socket was bound, connected or listening already (a bind()'s EINVAL); None
    /// when not read (and in a read-back log).
    #[serde(skip)]
    pub in_use: Option<bool>,
    /// Who held the port and why (failures only; see `diagnose::Diagnosis`).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<crate::diagnose::Diagnosis>,
    /// Why a failure has no diagnosis though holders were being looked up: `"stopping"`, still
    /// queued when the stop came (see `pipeline::STOP_GRACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undiagnosed: Option<String>,
}

impl Event {
    /// Builds the owned event; `wall_ns` converts the kernel's monotonic timestamp.
    pub fn from_raw(kind: EventKind, raw: &BindEvent, wall_ns: impl Fn(u64) -> i128) -> Self {
        let known = |bit| raw.flags & bit != 0;
        let mut ev = Self {
            time: rfc3339(wall_ns(raw.ts_ns)),
            ts_ns: raw.ts_ns,
            in_use: if known(flags::IN_USE) {
                Some(true)
            } else {
                known(flags::SOCKOPTS_KNOWN).then_some(false)
            },
            event: match kind {
                EventKind::Failure => EventName::BindFailure,
                EventKind::Success => EventName::BindSuccess,
            },
            syscall: match Syscall::try_from(raw.syscall) {
                Ok(Syscall::Bind) => SyscallName::Bind,
                Ok(Syscall::Listen) => SyscallName::Listen,
                Ok(Syscall::Connect) => SyscallName::Connect,
                Err(_) => SyscallName::Unknown,
            },
            errno: raw.errno,
            error: errno::name(raw.errno),
            pid: raw.pid,
            tid: raw.tid,
            comm: cstr(&raw.comm),
            thread: None,
            uid: raw.uid,
            gid: raw.gid,
            netns: raw.netns,
            cgroup_id: raw.cgroup_id,
            family: family_name(raw.family),
            protocol: if known(flags::PROTO_KNOWN) {
                protocol_name(raw.protocol)
            } else {
                "unknown".to_string()
            },
            addr: ip(raw.family, &raw.addr).to_string(),
            port: raw.port,
            remote_addr: (raw.syscall == Syscall::Connect as u8)
                .then(|| ip(raw.family, &raw.remote_addr).to_string()),
            remote_port: (raw.syscall == Syscall::Connect as u8).then_some(raw.remote_port),
            chosen_port: (raw.errno == 0 && raw.port == 0 && raw.chosen_port != 0)
                .then_some(raw.chosen_port),
            reuseaddr: known(flags::REUSEADDR),
            reuseport: known(flags::REUSEPORT),
            v6only: (raw.family == AF_INET6 && known(flags::V6ONLY_KNOWN))
                .then_some(known(flags::V6ONLY)),
            options_known: known(flags::SOCKOPTS_KNOWN),
            bound_dev_if: raw.bound_dev_if,
            backend: Backend::try_from(raw.backend).map_or(BackendName::Unknown, Into::into),
            container: crate::container::Context::default(),
            diagnosis: None,
            undiagnosed: None,
        };
        // A call from a thread other than the main one: the process's name, as the kernel read
        // it at the call, and the thread's beside it.
        let process = cstr(&raw.process_comm);
        if !process.is_empty() && process != ev.comm {
            ev.thread = Some(std::mem::replace(&mut ev.comm, process));
        }
        ev
    }

    /// Names the caller by its process, as `/proc/PID/comm` has it, keeping the kernel's name
    /// (the calling thread's) in `thread` where they differ. Left as it is when the process has
    /// gone.
    pub fn name_process(&mut self) {
        if self.tid == self.pid || self.thread.is_some() {
            return;
        }
        // A pid recycled since belongs to a process that started after the call.
        if let Some(p) = crate::procfs::process(self.pid)
            && p.comm != self.comm
            && (self.ts_ns == 0 || crate::procfs::alive_since(self.pid, self.ts_ns))
        {
            self.thread = Some(std::mem::replace(&mut self.comm, p.comm));
        }
    }

    pub fn is_failure(&self) -> bool {
        self.event == EventName::BindFailure
    }

    /// `addr:port`, with brackets for IPv6.
    pub fn local(&self) -> String {
        endpoint(&self.addr, self.port)
    }
}

/// `1.2.3.4` / `[::1]`: an address as it is written before a port.
pub fn bracketed(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// `1.2.3.4:80` / `[::1]:80`.
pub fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// An address from the kernel's 16-byte network-order buffer.
pub fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn family_name(family: u16) -> String {
    match family {
        AF_INET => "ipv4".to_string(),
        AF_INET6 => "ipv6".to_string(),
        other => format!("af{other}"),
    }
}

pub fn protocol_name(protocol: u16) -> String {
    match protocol {
        IPPROTO_TCP => "tcp".to_string(),
        IPPROTO_UDP => "udp".to_string(),
        132 => "sctp".to_string(),
        136 => "udplite".to_string(),
        262 => "mptcp".to_string(),
        other => format!("ip{other}"),
    }
}

/// A NUL-terminated kernel string (lossy: it is someone else's bytes).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// RFC 3339 in UTC with nanoseconds.
pub fn rfc3339(wall_ns: i128) -> String {
    let secs = wall_ns.div_euclid(1_000_000_000) as i64;
    let nanos = wall_ns.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos).map_or_else(
        || format!("@{wall_ns}ns"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    )
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// How far CLOCK_BOOTTIME (which counts suspended time: /proc's process start times) is ahead of
/// CLOCK_MONOTONIC (which does not: the kernel programs' stamps), in nanoseconds.
pub fn suspended_ns() -> u64 {
    (clock_ns(libc::CLOCK_BOOTTIME) - clock_ns(libc::CLOCK_MONOTONIC)).max(0) as u64
}

/// Converts a `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) stamp to wall-clock nanoseconds, using the
/// offset between the two clocks, measured at most once a second (so NTP steps during a long run
/// are followed). Measured at every call, the offset jittered by the time between its two clock
/// reads, and events of one thread came out microseconds out of order.
pub fn monotonic_to_wall(mono_ns: u64) -> i128 {
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
    static OFFSET: AtomicI64 = AtomicI64::new(0);
    static MEASURED_AT: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = clock_ns(libc::CLOCK_MONOTONIC) as i64;
    if now.saturating_sub(MEASURED_AT.load(Relaxed)) >= 1_000_000_000 {
        OFFSET.store(measure_wall_offset() as i64, Relaxed);
        MEASURED_AT.store(now, Relaxed);
    }
    i128::from(OFFSET.load(Relaxed)) + mono_ns as i128
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, from the tightest of a few reads of the wall clock between
/// two of the monotonic one.
fn measure_wall_offset() -> i128 {
    let mut best = (i128::MAX, 0);
    for _ in 0..5 {
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let wall = clock_ns(libc::CLOCK_REALTIME);
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        if after - before < best.0 {
            best = (after - before, wall - i128::midpoint(before, after));
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use tracer_common::BIND_EVENT_SIZE;

    use super::*;

    fn sample() -> BindEvent {
        let mut raw = BindEvent::ZERO;
        raw.header = EventHeader {
            kind: EventKind::Failure as u32,
            version: ABI_VERSION,
            size: BIND_EVENT_SIZE as u16,
        };
        raw.ts_ns = 5;
        raw.pid = 4242;
        raw.tid = 4243;
        raw.uid = 1000;
        raw.netns = 4_026_531_840;
        raw.errno = 98;
        raw.comm[..7].copy_from_slice(b"python3");
        raw.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.port = 8080;
        raw.family = AF_INET;
        raw.protocol = IPPROTO_TCP;
        raw.flags =
            flags::REUSEADDR | flags::SOCKOPTS_KNOWN | flags::PROTO_KNOWN | flags::ADDR_KNOWN;
        raw.syscall = Syscall::Bind as u8;
        raw.backend = Backend::Tracepoint as u8;
        raw
    }

    fn as_bytes(raw: &BindEvent) -> Vec<u8> {
        // SAFETY: BindEvent is plain old data.
        unsafe { std::slice::from_raw_parts((&raw const *raw).cast::<u8>(), BIND_EVENT_SIZE) }
            .to_vec()
    }

    #[test]
    fn bytes_to_event_to_json_round_trip() {
        let bytes = as_bytes(&sample());
        let (kind, raw) = decode(&bytes).expect("a well-formed record decodes");
        let ev = Event::from_raw(kind, &raw, |ns| 1_700_000_000_000_000_000 + ns as i128);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(json["event"], "bind_failure");
        assert_eq!(json["syscall"], "bind");
        assert_eq!(json["errno"], 98);
        assert_eq!(json["error"], "EADDRINUSE");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["tid"], 4243);
        assert_eq!(json["comm"], "python3");
        assert_eq!(json["uid"], 1000);
        assert_eq!(json["netns"], 4_026_531_840_u32);
        assert_eq!(json["family"], "ipv4");
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["addr"], "127.0.0.1");
        assert_eq!(json["port"], 8080);
        assert_eq!(json["reuseaddr"], true);
        assert_eq!(json["reuseport"], false);
        assert_eq!(json["bound_dev_if"], 0);
        assert_eq!(json["backend"], "tracepoint");
        assert!(json.get("remote_addr").is_none());
        let mut back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back.ts_ns, 0, "the kernel's clock stays out of the JSON");
        back.ts_ns = ev.ts_ns;
        back.in_use = ev.in_use;
        assert_eq!(back, ev, "JSON reads back into the same event");
    }

    #[test]
    fn ipv6_and_connect_fields() {
        let mut raw = sample();
        raw.family = AF_INET6;
        raw.addr = Ipv6Addr::UNSPECIFIED.octets();
        raw.flags |= flags::V6ONLY_KNOWN;
        raw.syscall = Syscall::Connect as u8;
        raw.remote_addr = Ipv6Addr::LOCALHOST.octets();
        raw.remote_port = 6379;
        let ev = Event::from_raw(EventKind::Failure, &raw, |ns| ns as i128);
        assert_eq!(ev.family, "ipv6");
        assert_eq!(ev.local(), "[::]:8080");
        assert_eq!(ev.v6only, Some(false));
        assert_eq!(ev.remote_addr.as_deref(), Some("::1"));
        assert_eq!(ev.remote_port, Some(6379));
    }

    #[test]
    fn rejects_short_foreign_and_unknown_records() {
        let good = as_bytes(&sample());
        assert_eq!(decode(&good[..4]), Err(DecodeError::Short(4)));
        assert!(matches!(decode(&good[..60]), Err(DecodeError::Size { .. })));
        let mut bad = good.clone();
        bad[0] = 77;
        assert_eq!(decode(&bad), Err(DecodeError::Kind(77)));
        let mut old = good;
        old[4] = 0;
        old[5] = 0;
        assert_eq!(decode(&old), Err(DecodeError::Version(0)));
    }

    #[test]
    fn unknown_options_and_protocol_say_so() {
        let mut raw = sample();
        raw.flags = flags::ADDR_KNOWN;
        let ev = Event::from_raw(EventKind::Failure, &raw, |ns| ns as i128);
        assert_eq!(ev.protocol, "unknown");
        assert!(!ev.options_known);
    }
}

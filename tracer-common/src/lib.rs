//! The ABI between bindtrace's kernel programs (`tracer-ebpf`) and its collector (`tracer`).
//!
//! Rules (checked by the `const` asserts below, so drift fails the build):
//! - every struct is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with explicit
//!   padding — any bit pattern is a valid value, so userspace may copy bytes into it;
//! - enums travel as plain integers and are decoded with `TryFrom`, never transmuted;
//! - addresses are in network byte order, ports in host byte order.
#![no_std]

/// Bumped whenever a struct below changes shape.
pub const ABI_VERSION: u16 = 2;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod history;

pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// 6.8+: a bound socket that neither listens nor connects.
    pub const BOUND_INACTIVE: u8 = 13;
}

/// Bits of [`BindEvent::flags`] and [`Owner::flags`].
pub mod flags {
    /// The socket had `SO_REUSEADDR` set.
    pub const REUSEADDR: u16 = 1 << 0;
    /// The socket had `SO_REUSEPORT` set.
    pub const REUSEPORT: u16 = 1 << 1;
    /// An IPv6 socket with `IPV6_V6ONLY`.
    pub const V6ONLY: u16 = 1 << 2;
    /// The reuse flags above were actually read (otherwise they are unknown, not "off").
    pub const SOCKOPTS_KNOWN: u16 = 1 << 3;
    /// `addr`/`port` hold what the caller asked for.
    pub const ADDR_KNOWN: u16 = 1 << 4;
    /// `V6ONLY` was actually read.
    pub const V6ONLY_KNOWN: u16 = 1 << 5;
    /// `bound_dev_if` was actually read.
    pub const DEV_KNOWN: u16 = 1 << 6;
    /// `protocol`/`sock_type` were actually read.
    pub const PROTO_KNOWN: u16 = 1 << 7;
    /// The socket, when read, had a local port or was not CLOSE: for a failed bind() (which
    /// changes neither), it was bound, connected or listening before the call — the cause of an
    /// EINVAL. Set only when both were read.
    pub const IN_USE: u16 = 1 << 8;
}

/// What a ring-buffer record is. Sent as `u32`; decode with `TryFrom`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A bind/listen/connect that failed.
    Failure = 1,
    /// A bind/listen that succeeded (only with `report_success`).
    Success = 2,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(Self::Failure),
            2 => Ok(Self::Success),
            other => Err(other),
        }
    }
}

/// The system call (or the kernel path standing for it) that failed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Bind = 1,
    Listen = 2,
    Connect = 3,
}

impl TryFrom<u8> for Syscall {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Bind),
            2 => Ok(Self::Listen),
            3 => Ok(Self::Connect),
            other => Err(other),
        }
    }
}

/// Which set of kernel hooks produced an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tracepoint = 1,
    Kprobe = 2,
    Fexit = 3,
}

impl TryFrom<u8> for Backend {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Tracepoint),
            2 => Ok(Self::Kprobe),
            3 => Ok(Self::Fexit),
            other => Err(other),
        }
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// [`ABI_VERSION`] of the program that wrote it.
    pub version: u16,
    /// `size_of` the whole record, so a reader can reject short or foreign records.
    pub size: u16,
}

/// One bind/listen/connect outcome, as seen in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindEvent {
    pub header: EventHeader,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the syscall's return.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Thread-group id (the "pid" users know).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode number of the socket's network namespace, where the port is — the caller's unless it
    /// moved (setns) after making the socket; the caller's when the socket is not known (0 when
    /// it could not be read).
    pub netns: u32,
    /// Positive errno; 0 for a success.
    pub errno: i32,
    pub comm: [u8; 16],
    /// Requested local address (bind) or the socket's bound address (listen). IPv4 uses the first
    /// four bytes.
    pub addr: [u8; 16],
    /// Destination of a failing connect().
    pub remote_addr: [u8; 16],
    /// Requested local port (bind), the bound port (listen) or 0 (connect: any ephemeral port).
    pub port: u16,
    pub remote_port: u16,
    /// `AF_INET`/`AF_INET6`.
    pub family: u16,
    /// `IPPROTO_*` (valid with [`flags::PROTO_KNOWN`]).
    pub protocol: u16,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ... (valid with [`flags::PROTO_KNOWN`]).
    pub sock_type: u16,
    /// [`flags`] bits.
    pub flags: u16,
    /// `SO_BINDTODEVICE` interface index, 0 for none.
    pub bound_dev_if: u32,
    /// A [`Syscall`] as `u8`.
    pub syscall: u8,
    /// A [`Backend`] as `u8`.
    pub backend: u8,
    /// The port the kernel chose for a bind() that asked for any (`port` 0), read from the
    /// socket at the call's exit; 0 otherwise.
    pub chosen_port: u16,
    pub _pad: [u8; 4],
    /// The process's name (its thread-group leader's `comm`) when the call came from another
    /// thread, whose name `comm` is; all zero from the main thread. Read at the call: a process
    /// that fails and exits at once is gone before the collector could read `/proc`.
    pub process_comm: [u8; 16],
}

/// Slots in the kernel programs' table of calls in flight: a thread's call lives in slot
/// `tid % PENDING_SLOTS` unless another thread's call holds it (then in a hash keyed by tid).
pub const PENDING_SLOTS: u32 = 16 * 1024;
const _: () = assert!(PENDING_SLOTS.is_power_of_two());

/// Entries of the kernel programs' `PENDING` LRU hash (calls whose thread's slot another call
/// holds) for a host with `possible_cpus` CPUs. An LRU hash with one common list lets each CPU
/// keep up to 128 free entries for itself (`LOCAL_FREE_TARGET`); before 6.16 a CPU that finds
/// the rest of the map in other CPUs' hands evicts live entries even from a nearly empty map. So:
/// twice that per CPU, and at least 4 096.
#[must_use]
pub fn pending_overflow_entries(possible_cpus: usize) -> u32 {
    u32::try_from(possible_cpus.saturating_mul(256))
        .unwrap_or(u32::MAX)
        .max(4096)
}

pub const BIND_EVENT_SIZE: usize = 136;
const _: () = assert!(core::mem::size_of::<BindEvent>() == BIND_EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 8);

/// What a remembered owner did with the port.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// bind() succeeded on it.
    Bound = 1,
    /// listen() succeeded on it.
    Listening = 2,
    /// An outgoing TCP connection used it as its local port.
    Connected = 3,
}

impl TryFrom<u8> for Role {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Bound),
            2 => Ok(Self::Listening),
            3 => Ok(Self::Connected),
            other => Err(other),
        }
    }
}

/// Key of the owner history ([`history`]): the last process that held `port` in `netns`, per role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistoryKey {
    pub netns: u32,
    pub port: u16,
    /// `IPPROTO_TCP`/`IPPROTO_UDP` (fits a byte).
    pub protocol: u8,
    /// A [`Role`] as `u8`.
    pub role: u8,
}

/// Who held a port, remembered in the kernel so that a TIME-WAIT socket, whose process may be long
/// gone, still has an owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `bpf_ktime_get_ns()` when the owner took the port.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub remote_port: u16,
    pub family: u16,
    /// [`flags`] bits of the owning socket.
    pub flags: u16,
    /// A [`Role`] as `u8`.
    pub role: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<HistoryKey>() == 8);
const _: () = assert!(core::mem::size_of::<Owner>() == 80);

/// Where a kernel struct field lives, resolved from BTF by userspace at load time.
/// The field is read as a little-endian `u64` at `byte`, shifted right by `shift` and masked to
/// `bits`. `bits == 0` means the field is unknown on this kernel and must not be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldLoc {
    pub byte: u16,
    pub shift: u8,
    pub bits: u8,
}

impl FieldLoc {
    pub const NONE: Self = Self {
        byte: 0,
        shift: 0,
        bits: 0,
    };
    /// A whole, byte-aligned field of `bytes` bytes.
    pub const fn at(byte: u16, bytes: u8) -> Self {
        Self {
            byte,
            shift: 0,
            bits: bytes * 8,
        }
    }
    pub const fn bitfield(bit_offset: u32, bits: u8) -> Self {
        Self {
            byte: (bit_offset / 8) as u16,
            shift: (bit_offset % 8) as u8,
            bits,
        }
    }
    pub const fn known(&self) -> bool {
        self.bits != 0
    }
}

/// Offsets of the kernel fields the programs read (`struct sock_common` and friends).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub skc_daddr: FieldLoc,
    pub skc_rcv_saddr: FieldLoc,
    pub skc_dport: FieldLoc,
    pub skc_num: FieldLoc,
    pub skc_family: FieldLoc,
    pub skc_state: FieldLoc,
    pub skc_reuse: FieldLoc,
    pub skc_reuseport: FieldLoc,
    pub skc_ipv6only: FieldLoc,
    pub skc_bound_dev_if: FieldLoc,
    /// `sock_common.skc_net.net` (a `struct net *`).
    pub skc_net: FieldLoc,
    pub skc_v6_daddr: FieldLoc,
    pub skc_v6_rcv_saddr: FieldLoc,
    pub sk_protocol: FieldLoc,
    pub sk_type: FieldLoc,
    /// `struct net` → `ns.inum`.
    pub net_inum: FieldLoc,
    /// `struct task_struct` → `nsproxy`.
    pub task_nsproxy: FieldLoc,
    /// `struct nsproxy` → `net_ns`.
    pub nsproxy_net_ns: FieldLoc,
    /// `struct socket` → `sk`.
    pub socket_sk: FieldLoc,
    /// The walk from the current task to the socket of one of its descriptors (the tracepoint
    /// backend's connect() that failed in `inet_autobind()`): `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.fd` (an array of `struct file *`), `file.private_data` (the
    /// `struct socket` of a socket's file).
    pub task_files: FieldLoc,
    pub files_fdt: FieldLoc,
    pub fdtable_fd: FieldLoc,
    pub file_private_data: FieldLoc,
    /// `task_struct.group_leader` and `task_struct.comm`: the process's name, which `--comm`
    /// matches as well as the calling thread's (a JVM binds from threads with names of their own).
    pub task_group_leader: FieldLoc,
    pub task_comm: FieldLoc,
    pub _pad: FieldLoc,
}

/// Field offsets of the tracepoints used, read from tracefs `format` files at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `syscalls:sys_enter_{bind,listen,connect}`: first argument (`fd`).
    pub sys_arg0: FieldLoc,
    /// second argument (`umyaddr`/`uservaddr`/`backlog`).
    pub sys_arg1: FieldLoc,
    /// third argument (`addrlen`).
    pub sys_arg2: FieldLoc,
    /// `syscalls:sys_exit_*`: `ret`.
    pub sys_ret: FieldLoc,
    /// `sock:inet_sock_set_state` fields.
    pub ss_skaddr: FieldLoc,
    pub ss_oldstate: FieldLoc,
    pub ss_newstate: FieldLoc,
    pub ss_sport: FieldLoc,
    pub ss_dport: FieldLoc,
    pub ss_family: FieldLoc,
    /// `u8` on 5.4, `u16` from 5.10.
    pub ss_protocol: FieldLoc,
    pub ss_saddr: FieldLoc,
    pub ss_daddr: FieldLoc,
    pub ss_saddr_v6: FieldLoc,
    pub ss_daddr_v6: FieldLoc,
    pub _pad: FieldLoc,
}

/// Where the tracepoints' fields are on every kernel this tool runs on (it needs the ring buffer,
/// 5.8+): the syscall tracepoints' `struct syscall_trace_enter/exit` (`args[]`/`ret` after an
/// 8-byte `trace_entry` and a padded `int nr`) and `sock:inet_sock_set_state` since 5.10. Direct
/// context loads need offsets fixed at compile time; the collector checks these against tracefs.
pub mod tp_layout {
    pub const SYS_ARG0: u16 = 16;
    pub const SYS_ARG1: u16 = 24;
    pub const SYS_ARG2: u16 = 32;
    pub const SYS_RET: u16 = 16;
    pub const SS_SKADDR: u16 = 8;
    pub const SS_OLDSTATE: u16 = 16;
    pub const SS_NEWSTATE: u16 = 20;
    pub const SS_SPORT: u16 = 24;
    pub const SS_DPORT: u16 = 26;
    pub const SS_FAMILY: u16 = 28;
    pub const SS_PROTOCOL: u16 = 30;
    pub const SS_SADDR: u16 = 32;
    pub const SS_DADDR: u16 = 36;
    pub const SS_SADDR_V6: u16 = 40;
    pub const SS_DADDR_V6: u16 = 56;
}

/// Load-time configuration, a read-only global (`CONFIG`) so the verifier prunes disabled paths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Only this thread group (0: all).
    pub filter_pid: u32,
    /// The collector's own pid, never traced.
    pub self_pid: u32,
    /// Only this port (0: all). Applied where the port is known.
    pub filter_port: u16,
    /// 1: also report successful bind/listen calls.
    pub report_success: u8,
    /// The [`Backend`] these programs run as.
    pub backend: u8,
    /// Only calls on sockets in this network namespace (0: all).
    pub filter_netns: u32,
    /// Only this command name, NUL-padded (all zero: all).
    pub filter_comm: [u8; 16],
    /// Non-zero: only callers in the cgroup set in the `CGROUP_FILTER` map, or below it.
    pub filter_cgroup: u64,
    /// 1: the programs log their decisions through aya-log (`bindtrace watch --debug-ebpf`).
    pub debug: u8,
    /// 1: the tracepoints' fields are where [`tp_layout`] says (checked against tracefs at load),
    /// so the programs read them with direct context loads; 0: through `bpf_probe_read_kernel`
    /// at the offsets in `tp`.
    pub tp_direct: u8,
    pub _pad: [u8; 2],
    /// The `HISTORY` array's length less one (it is a power of two): picks a key's set
    /// ([`history::set_of`]).
    pub history_mask: u32,
    pub kernel: KernelOffsets,
    pub tp: TracepointOffsets,
}

const _: () = assert!(core::mem::size_of::<FieldLoc>() == 4);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 104);
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 64);
const _: () = assert!(core::mem::size_of::<Config>() == 48 + 104 + 64);

/// Names shared by both sides so a rename cannot split them.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const HISTORY: &str = "HISTORY";
    pub const PENDING: &str = "PENDING";
    pub const CGROUP_FILTER: &str = "CGROUP_FILTER";
}

/// How often, at most, one CPU's records wake the collector. A record written sooner after the
/// CPU's last waking one does not wake it (`BPF_RB_NO_WAKEUP`): in this project's VM a wakeup costs
/// the traced thread ~15 µs (the ring buffer's irq_work self-interrupt and a cross-CPU wake of the
/// collector), over ten times the rest of a failure's cost. The collector makes up for it: after
/// any read that found records it reads again [`WAKEUP_FOLLOW_UP_NS`] later, so a record that did
/// not wake it normally waits at most that long (one committed over a millisecond after its
/// timestamp waits for the next waking record or the collector's 1 s tick, which also reads).
pub const WAKEUP_INTERVAL_NS: u64 = 5_000_000;

/// The name of the thread from which `check-port` puts an address to the kernel (a bind with
/// port 0 that takes no port): the kernel programs do not report its calls, which are bindtrace's
/// own doing, not a service's failure.
pub const PROBE_THREAD_COMM: [u8; 16] = *b"bindtrace-probe\0";
/// The collector's follow-up read after records: one interval plus a margin for the record being
/// committed after its timestamp was taken.
pub const WAKEUP_FOLLOW_UP_NS: u64 = WAKEUP_INTERVAL_NS + 1_000_000;

/// Index of the counters in the `LOST` per-CPU array.
pub mod counter {
    /// Records the ring buffer had no room for.
    pub const RINGBUF_FULL: u32 = 0;
    /// History entries that could not be written.
    pub const HISTORY_FAILED: u32 = 1;
    /// Failures seen (whether or not they reached userspace).
    pub const FAILURES_SEEN: u32 = 2;
    /// Calls that could not be tracked: their thread's slot was held by another call and the
    /// overflow table (`PENDING`) refused an entry. A failure of such a call is never seen. That
    /// table is an LRU hash: when full it evicts its least recently used entry rather than
    /// refuse, so this counts refusals only; an evicted call in flight would need more threads
    /// than it has entries (4 096, or 256 per CPU) colliding in their slots at once.
    pub const UNTRACKED: u32 = 3;
    pub const COUNT: u32 = 4;
}

macro_rules! impl_zeroed {
    ($($t:ty),+) => {$(
        impl $t {
            /// All fields zero.
            pub const ZERO: Self = {
                // SAFETY: integers and byte arrays only (see the module docs); zero is valid.
                unsafe { core::mem::zeroed() }
            };
        }
    )+};
}
impl_zeroed!(BindEvent, Owner, Config, HistoryKey);

#[cfg(feature = "user")]
mod user {
    use super::{BindEvent, Config, HistoryKey, Owner, history::HistorySet};
    // SAFETY: all five are `repr(C)`, `Copy`, made of integers and byte arrays with explicit padding
    // (asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for BindEvent {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for HistoryKey {}
    unsafe impl aya::Pod for Owner {}
    unsafe impl aya::Pod for HistorySet {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    /// Room for every CPU's cache of free LRU entries (128) twice over, never under 4 096.
    #[test]
    fn pending_overflow_scales_with_cpus() {
        assert_eq!(pending_overflow_entries(1), 4096);
        assert_eq!(pending_overflow_entries(16), 4096);
        assert_eq!(pending_overflow_entries(64), 16_384);
        assert_eq!(pending_overflow_entries(1024), 262_144);
        assert_eq!(pending_overflow_entries(usize::MAX), u32::MAX);
    }

    /// The offsets the kernel programs write and the collector reads; a reordering that kept the
    /// size would pass the `const` asserts but fail here.
    #[test]
    fn bind_event_layout_is_pinned() {
        assert_eq!(offset_of!(BindEvent, ts_ns), 8);
        assert_eq!(offset_of!(BindEvent, pid), 24);
        assert_eq!(offset_of!(BindEvent, errno), 44);
        assert_eq!(offset_of!(BindEvent, comm), 48);
        assert_eq!(offset_of!(BindEvent, addr), 64);
        assert_eq!(offset_of!(BindEvent, remote_addr), 80);
        assert_eq!(offset_of!(BindEvent, port), 96);
        assert_eq!(offset_of!(BindEvent, flags), 106);
        assert_eq!(offset_of!(BindEvent, bound_dev_if), 108);
        assert_eq!(offset_of!(BindEvent, syscall), 112);
        assert_eq!(offset_of!(BindEvent, backend), 113);
        assert_eq!(offset_of!(Owner, comm), 24);
        assert_eq!(offset_of!(Owner, role), 78);
        assert_eq!(offset_of!(Config, kernel), 48);
    }

    #[test]
    fn enums_decode_only_known_values() {
        assert_eq!(EventKind::try_from(1), Ok(EventKind::Failure));
        assert_eq!(EventKind::try_from(9), Err(9));
        assert_eq!(Syscall::try_from(2), Ok(Syscall::Listen));
        assert_eq!(Syscall::try_from(0), Err(0));
        assert_eq!(Backend::try_from(3), Ok(Backend::Fexit));
        assert_eq!(Role::try_from(3), Ok(Role::Connected));
    }

    #[test]
    fn field_locations() {
        let f = FieldLoc::bitfield(157, 1);
        assert_eq!((f.byte, f.shift, f.bits), (19, 5, 1));
        assert!(!FieldLoc::NONE.known());
        assert_eq!(FieldLoc::at(14, 2).bits, 16);
    }
}

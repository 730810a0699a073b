//! Maps shared by all programs. Sizes here are defaults; the collector may override them at load.

use aya_ebpf::{
    macros::map,
    maps::{Array, CgroupArray, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{BindEvent, Owner, counter, history::HistorySet};

use crate::pending::{Pending, Slot};

/// Failure (and, with `--all`, success) records for the collector.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per CPU: when (`bpf_ktime_get_ns`) this CPU last wrote a record allowed to wake the collector
/// (see `tracer_common::WAKEUP_INTERVAL_NS`).
#[map(name = "LAST_WAKEUP")]
pub static LAST_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters (`tracer_common::counter`): records dropped, history writes failed, failures
/// seen. Summed by the collector, so a full ring buffer never loses events silently.
#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The call each thread has in flight (`pending`): a slot per thread id modulo the size, claimed
/// for the call's duration. 16 384 slots of 144 bytes (2.25 MiB): thread ids 16 384 apart share a
/// slot; when both are inside a traced call at once, the second one's goes to `PENDING`.
#[map(name = "PENDING_SLOTS")]
pub static PENDING_SLOTS: Array<Slot> = Array::with_max_entries(tracer_common::PENDING_SLOTS, 0);
pub const PENDING_SLOTS_MASK: u32 = tracer_common::PENDING_SLOTS - 1;

/// Calls whose thread's slot in `PENDING_SLOTS` was held by another thread's call, keyed by
/// thread id. A thread's entry is reused by its next call that lands here rather than inserted
/// and deleted per call. LRU, so the entries of threads that stopped calling are evicted; one LRU
/// list for the whole map, not per-CPU ones (`BPF_F_NO_COMMON_LRU`), which would split the
/// entries evenly between the possible CPUs and evict within the list of the CPU a thread's
/// entry was inserted on. The collector sizes it at load to the host's CPUs
/// (`tracer_common::pending_overflow_entries`).
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(4 * 1024, 0);

/// Per-CPU room to build one event in: BPF stacks are 512 bytes, and an event plus the frames of
/// the readers that fill it do not fit.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<BindEvent> = PerCpuArray::with_max_entries(1, 0);

/// Who last held a port: (netns, port, protocol, role, and peer for connections) → owner, in sets
/// of four slots (`tracer_common::history`: why not an LRU hash). This is what names the process
/// behind a TIME-WAIT socket long after it exited. The collector sizes it at load, a power of
/// two, and sets `CONFIG.history_mask` to match.
#[map(name = "HISTORY")]
pub static HISTORY: Array<HistorySet> = Array::with_max_entries(8 * 1024, 0);

/// Tracepoint backend: outgoing TCP connections between CLOSE→SYN_SENT (in the caller's context,
/// source port maybe not chosen yet) and SYN_SENT→ESTABLISHED (any context, port known), keyed by
/// the socket's address — for connects no `connect()` exit sees: io_uring's and in-kernel ones.
/// `sys_exit_connect` records a connect() syscall's owner itself, and the fexit and kprobe
/// backends record every connect's at `__inet_hash_connect()`'s return, without this map.
#[map(name = "CONNECTING")]
pub static CONNECTING: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(16 * 1024, 0);

/// Tracepoint backend: how many connects `CONNECTING` may hold — raised before an insert, lowered
/// after a successful removal, so never below the entries present (an entry the LRU evicted, or an
/// insert that failed, leaves it high, costing lookups, never a missed owner). While it is 0,
/// which is always on hosts without io_uring or in-kernel TCP connects, a connect()'s
/// SYN_SENT→ESTABLISHED skips the hash lookup that would find nothing.
#[map(name = "CONNECTING_LIVE")]
pub static CONNECTING_LIVE: Array<u64> = Array::with_max_entries(1, 0);

/// kprobe backend: the arguments of a connect-side call in flight, keyed by thread: which function
/// (a tag), then the socket of a `__inet_hash_connect()`, or the socket and address of an
/// `inet_dgram_connect()`.
#[map(name = "CONNECT_ARGS")]
pub static CONNECT_ARGS: LruHashMap<u32, [u64; 3]> = LruHashMap::with_max_entries(4 * 1024, 0);

/// `--cgroup`: the cgroup (subtree) callers must be in, when `CONFIG.filter_cgroup` is set.
#[map(name = "CGROUP_FILTER")]
pub static CGROUP_FILTER: CgroupArray = CgroupArray::with_max_entries(1, 0);

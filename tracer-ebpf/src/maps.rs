//! Maps shared by all programs. Sizes here are defaults; the collector may override them at load.

use aya_ebpf::{
    macros::map,
    maps::{Array, CgroupArray, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{BindEvent, Owner, counter, history::HistorySet};

use crate::report::Pending;

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

/// A syscall in flight, keyed by thread id: built up at entry (and by the hooks that run inside
/// the syscall), reported at exit. A thread's entry is updated in place and marked consumed at
/// exit (`report::pending_put`/`pending_done`) rather than inserted and deleted per call: no
/// allocation on the hot path, and a new entry only for a thread's first call. LRU, so the
/// entries of threads that stopped calling are evicted.
///
/// One LRU list for the whole map, not per-CPU ones (`BPF_F_NO_COMMON_LRU`): per-CPU lists split
/// the entries evenly between the possible CPUs (`bpf_percpu_lru_populate()`), 128 each on a
/// 128-CPU host, and evict within the list a thread's entry was inserted on. A connect() waiting
/// for its handshake would lose its entry once some 128 new threads had started calling on that CPU,
/// and with it the owner of its port. Since entries are reused, inserts are rare and the common
/// list's lock is not on the hot path.
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16 * 1024, 0);

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

/// kprobe backend: the socket a `__inet_hash_connect()` in flight works on, keyed by thread.
#[map(name = "CONNECT_SK")]
pub static CONNECT_SK: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4 * 1024, 0);

/// `--cgroup`: the cgroup (subtree) callers must be in, when `CONFIG.filter_cgroup` is set.
#[map(name = "CGROUP_FILTER")]
pub static CGROUP_FILTER: CgroupArray = CgroupArray::with_max_entries(1, 0);

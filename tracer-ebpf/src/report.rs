//! The end of every traced call, whichever backend saw it: apply the filters, remember owners of
//! ports that were taken, and send failures to the collector.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    ABI_VERSION, BIND_EVENT_SIZE, BindEvent, EventHeader, EventKind, HistoryKey, Owner,
    PROBE_THREAD_COMM, Role, Syscall, WAKEUP_INTERVAL_NS, counter, flags, history,
};

use crate::{
    config::conf,
    kernel::{self, Caller},
    maps::{CGROUP_FILTER, EVENTS, HISTORY, LAST_WAKEUP, LOST, SCRATCH},
};

/// This CPU's scratch event, zeroed. Programs run to completion on one CPU without preemption by
/// another BPF program of the same kind using it, so the slot is ours until we return.
#[inline(always)]
pub fn scratch() -> Option<&'static mut BindEvent> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: see above.
    let ev = unsafe { &mut *p };
    *ev = BindEvent::ZERO;
    Some(ev)
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(p) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

/// Whether the configured filters let this caller's event through.
#[inline(always)]
fn wanted(ev: &BindEvent) -> bool {
    if ev.pid == conf!(self_pid) {
        return false;
    }
    // check-port's address probe (port 0, from a thread of this name).
    if ev.port == 0 && ev.comm == PROBE_THREAD_COMM {
        return false;
    }
    let pid = conf!(filter_pid);
    if pid != 0 && ev.pid != pid {
        return false;
    }
    let port = conf!(filter_port);
    if port != 0
        && ev.port != port
        && !(ev.syscall == Syscall::Connect as u8 && ev.remote_port == port)
    {
        return false;
    }
    let netns = conf!(filter_netns);
    if netns != 0 && ev.netns != netns {
        return false;
    }
    // `--cgroup`: the caller's cgroup or any below it (a pod's cgroup covers its containers).
    if conf!(filter_cgroup) != 0 && !CGROUP_FILTER.current_task_under_cgroup(0).unwrap_or(false) {
        return false;
    }
    // `--comm`: the calling thread's name or its process's (a JVM's server binds from a thread
    // named "main" or "http-nio-8080-Acceptor", whose process is "java").
    let comm = conf!(filter_comm);
    if comm[0] != 0 && !same_comm(&comm, &ev.comm) {
        return kernel::process_comm().is_some_and(|p| same_comm(&comm, &p));
    }
    true
}

/// Whether two NUL-padded command names are equal.
#[inline(always)]
fn same_comm(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        if a[i] == 0 {
            break;
        }
        i += 1;
    }
    true
}

/// Fills in who made the call (runs in the caller's context), and, when neither the request nor
/// its socket (`sk`, 0 if not known: see `add_from_sock`) told the network namespace, the
/// caller's.
#[inline(always)]
fn stamp_caller(ev: &mut BindEvent, c: &Caller, sk: u64) {
    ev.pid = c.pid;
    ev.tid = c.tid;
    ev.uid = c.uid;
    ev.gid = c.gid;
    ev.cgroup_id = c.cgroup_id;
    ev.comm = c.comm;
    if c.pid != c.tid {
        ev.process_comm = kernel::process_comm().unwrap_or([0; 16]);
    }
    if ev.netns == 0 && sk == 0 {
        ev.netns = kernel::current_netns();
    }
}

/// Records `owner` as the last holder of `key` (best effort): into the slot of the key's set that
/// holds it, else the set's oldest (`tracer_common::history`).
#[inline(always)]
pub fn remember(key: &HistoryKey, owner: &Owner) {
    if key.port == 0 || key.protocol == 0 {
        return;
    }
    let Some(set) = HISTORY.get_ptr_mut(history::set_of(key, conf!(history_mask))) else {
        bump(counter::HISTORY_FAILED);
        return;
    };
    // SAFETY: a map value; a racing writer of the same set can at worst leave a slot failing its
    // check, which readers treat as empty (see `tracer_common::history`).
    unsafe { (*set).write(key, owner) };
}

/// What `ev` lacks that its socket `sk` tells, from one read of the socket's head: the option
/// bits (SO_REUSEADDR/SO_REUSEPORT, IPV6_V6ONLY), the device, the port and the namespace. The
/// cgroup bind hook and `sock_state` (for a connect()) leave these to this, so that only a call
/// that is reported or remembered pays for the read; options and device do not change while the
/// call runs. A connect()'s port is the socket's: the one bound beforehand, or 0 (its ephemeral
/// port is chosen inside the call); a bind() keeps the port it asked for.
#[inline(always)]
fn add_from_sock(ev: &mut BindEvent, sk: *const u8) {
    let v = kernel::sock_head_view(sk);
    let known = flags::SOCKOPTS_KNOWN | flags::V6ONLY_KNOWN;
    let mut add = v.flags & (known | flags::REUSEADDR | flags::REUSEPORT | flags::V6ONLY);
    if ev.flags & flags::SOCKOPTS_KNOWN != 0 {
        add &= !(flags::SOCKOPTS_KNOWN | flags::REUSEADDR | flags::REUSEPORT);
    }
    if ev.flags & flags::V6ONLY_KNOWN != 0 {
        add &= !(flags::V6ONLY_KNOWN | flags::V6ONLY);
    }
    ev.flags |= add;
    if ev.syscall == Syscall::Bind as u8 {
        ev.flags |= v.flags & flags::IN_USE;
        if ev.port == 0 {
            ev.chosen_port = v.port;
        }
    }
    if ev.flags & flags::DEV_KNOWN == 0 && v.flags & flags::DEV_KNOWN != 0 {
        ev.bound_dev_if = v.bound_dev_if;
        ev.flags |= flags::DEV_KNOWN;
    } else if ev.syscall == Syscall::Bind as u8 && v.flags & flags::DEV_KNOWN != 0 {
        // A link-local address's scope id: `__inet6_bind()` binds the socket to that interface
        // during the call (over any SO_BINDTODEVICE), after the cgroup hook read the device, and
        // leaves it so when the call fails (checked on 6.18). Nothing else changes it meanwhile.
        ev.bound_dev_if = v.bound_dev_if;
    }
    if ev.syscall == Syscall::Connect as u8 {
        ev.port = v.port;
    }
    if ev.netns == 0 {
        ev.netns = kernel::view_netns(&v, sk);
    }
}

/// A call ended with `ret` (0 or -errno). Reports it if it failed (or, with `--all`, if it
/// succeeded) and remembers the new owner of a port that was taken. `sk`: the call's socket, if
/// known: what the request lacks (its namespace, option bits) is read from it.
#[inline(always)]
pub fn finish(ev: &mut BindEvent, ret: i64, sk: u64) {
    // The common case, a success nobody asked to see and no port to remember (bind(0), most
    // listen()s' re-checks): leave before gathering anything about the caller.
    let remember_it = ret == 0
        && ev.port != 0
        && ev.flags & flags::PROTO_KNOWN != 0
        && ev.syscall != Syscall::Connect as u8;
    if ret == 0 && !remember_it && conf!(report_success) == 0 {
        return;
    }
    if sk != 0 {
        add_from_sock(ev, sk as *const u8);
    }
    let c = kernel::caller();
    stamp_caller(ev, &c, sk);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.backend = conf!(backend);
    ev.errno = if ret < 0 { (-ret) as i32 } else { 0 };

    if ret == 0 {
        let role = if ev.syscall == Syscall::Listen as u8 {
            Role::Listening
        } else {
            Role::Bound
        };
        if remember_it {
            let key = HistoryKey {
                netns: ev.netns,
                port: ev.port,
                protocol: ev.protocol as u8,
                role: role as u8,
            };
            let owner = Owner {
                ts_ns: ev.ts_ns,
                cgroup_id: ev.cgroup_id,
                pid: ev.pid,
                uid: ev.uid,
                comm: kernel::owner_comm(ev.pid, ev.tid, &ev.comm),
                local_addr: ev.addr,
                remote_addr: [0; 16],
                remote_port: 0,
                family: ev.family,
                flags: ev.flags,
                role: role as u8,
                _pad: 0,
            };
            remember(&key, &owner);
        }
        if conf!(report_success) == 0 {
            return;
        }
    }
    if !wanted(ev) {
        return;
    }
    let kind = if ret < 0 {
        bump(counter::FAILURES_SEEN);
        EventKind::Failure
    } else {
        EventKind::Success
    };
    ev.header = EventHeader {
        kind: kind as u32,
        version: ABI_VERSION,
        size: BIND_EVENT_SIZE as u16,
    };
    if EVENTS
        .output::<BindEvent>(&*ev, wakeup_flags(ev.ts_ns))
        .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Flags for a record written at `now`: wake the collector at most once per `WAKEUP_INTERVAL_NS`
/// on this CPU, and no wakeup otherwise — the collector's follow-up read picks those records up.
/// The waking record forces the wakeup rather than leaving it to the ring buffer's own rule (wake
/// only if the collector has read everything before this record): under that rule one record that
/// missed its follow-up read (committed over a millisecond after its timestamp: an interrupt, the
/// hypervisor, a preempted fexit program) would keep every later record from waking it. Forced,
/// the next waking record on any CPU brings it in; the collector's 1 s tick also reads.
#[inline(always)]
fn wakeup_flags(now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP;
    };
    // SAFETY: this CPU's slot. A program preempted on this CPU (fexit on a preemptible kernel)
    // can race another one for it: the worst outcome is one wakeup too many or too few, which the
    // follow-up read and the tick cover.
    unsafe {
        if now.wrapping_sub(*last) < WAKEUP_INTERVAL_NS {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now;
    }
    BPF_RB_FORCE_WAKEUP
}

//! The end of every traced call, whichever backend saw it: apply the filters, remember owners of
//! ports that were taken, and send failures to the collector.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    ABI_VERSION, BIND_EVENT_SIZE, BindEvent, EventHeader, EventKind, HistoryKey, Owner, Role,
    Syscall, counter, flags,
};

use crate::{
    config::conf,
    kernel::{self, Caller},
    maps::{CGROUP_FILTER, EVENTS, HISTORY, LOST},
};

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
    let comm = conf!(filter_comm);
    if comm[0] != 0 {
        let mut i = 0;
        while i < 16 {
            if comm[i] != ev.comm[i] {
                return false;
            }
            if comm[i] == 0 {
                break;
            }
            i += 1;
        }
    }
    true
}

/// Fills in who made the call (runs in the caller's context).
#[inline(always)]
pub fn stamp_caller(ev: &mut BindEvent, c: &Caller) {
    ev.pid = c.pid;
    ev.tid = c.tid;
    ev.uid = c.uid;
    ev.gid = c.gid;
    ev.cgroup_id = c.cgroup_id;
    ev.comm = c.comm;
    if ev.netns == 0 {
        ev.netns = kernel::current_netns();
    }
}

/// Records `owner` as the last holder of `key` (best effort; failures are counted).
#[inline(always)]
pub fn remember(key: &HistoryKey, owner: &Owner) {
    if key.port == 0 || key.protocol == 0 {
        return;
    }
    if HISTORY.insert(key, owner, 0).is_err() {
        bump(counter::HISTORY_FAILED);
    }
}

/// A call ended with `ret` (0 or -errno). Reports it if it failed (or, with `--all`, if it
/// succeeded) and remembers the new owner of a port that was taken.
#[inline(always)]
pub fn finish(ev: &mut BindEvent, ret: i64) {
    let c = kernel::caller();
    stamp_caller(ev, &c);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.backend = conf!(backend);
    ev.errno = if ret < 0 { (-ret) as i32 } else { 0 };

    if ret == 0 {
        let role = if ev.syscall == Syscall::Listen as u8 {
            Role::Listening
        } else {
            Role::Bound
        };
        if ev.flags & flags::PROTO_KNOWN != 0 && ev.syscall != Syscall::Connect as u8 {
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
                comm: ev.comm,
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
    if EVENTS.output::<BindEvent>(&*ev, 0).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}

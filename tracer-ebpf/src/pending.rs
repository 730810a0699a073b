//! The call each thread has in flight: opened at syscall entry (or by the cgroup bind hook),
//! filled in by the hooks that run inside the call, closed at its exit.
//!
//! A thread's call lives in its slot of `PENDING_SLOTS`, an array indexed by thread id: the
//! verifier inlines the lookup, so opening and finding a call costs a few loads instead of a hash
//! computation and bucket walk on every bind(), listen() and connect(). Thread ids that share a
//! slot are told apart by the slot's claim word, taken with compare-and-swap at open and given
//! back at close: a thread whose slot is held by another call in flight uses the `PENDING` hash
//! instead, so two calls never share an entry.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::helpers::generated::bpf_jiffies64;
use tracer_common::{BindEvent, Syscall};

use crate::{
    maps::{PENDING, PENDING_SLOTS, PENDING_SLOTS_MASK},
    report::bump,
};

/// A call in flight: the event being built and, where known, the socket — the one the cgroup
/// hook saw bound, or the one `sock_state` saw go CLOSE→SYN_SENT in a connect() (whose chosen
/// port `sys_exit_connect` reads); 0 otherwise.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ev: BindEvent,
    pub sk: u64,
    /// `bpf_jiffies64()` when the cgroup bind hook opened the call, for `sys_exit_bind` to tell
    /// its own call from one left by a bind that did not return through bind(); 0 elsewhere.
    /// Jiffies, not `bpf_ktime_get_ns()`: a memory read instead of a clock read, which in a VM
    /// was a fifth of these programs' time, on every bind.
    pub since: u64,
}

impl Pending {
    const ZERO: Self = Self {
        ev: BindEvent::ZERO,
        sk: 0,
        since: 0,
    };
}

/// One slot of `PENDING_SLOTS`.
#[repr(C)]
pub struct Slot {
    /// The thread whose call the slot holds, 0 when free. 64 bits wide: LLVM's BPF backend
    /// compiles a 32-bit compare-and-swap only for `-mcpu=v3`, and builds here target v1.
    claim: u64,
    call: Pending,
}

/// Longer than any bind() spends between its cgroup hook and its return: 1 s at the highest
/// `CONFIG_HZ` (1000), 10 s at the lowest (100). A bind entry older than this was left by a bind
/// that did not return through bind() (io_uring's, an in-kernel one): not the call `sys_exit_bind`
/// sees. (Its slot stays held until that thread's next traced call: meanwhile the threads sharing
/// the slot use `PENDING`.)
pub const STALE_JIFFIES: u64 = 1000;

/// Whether a bind opened at jiffy `since` (0: not known) is older than any bind() lasts.
#[inline(always)]
pub fn stale(since: u64) -> bool {
    // SAFETY: a helper without arguments.
    since != 0 && unsafe { bpf_jiffies64() }.wrapping_sub(since) >= STALE_JIFFIES
}

#[inline(always)]
fn slot(tid: u32) -> Option<*mut Slot> {
    PENDING_SLOTS.get_ptr_mut(tid & PENDING_SLOTS_MASK)
}

/// Whether `tid`'s call is in slot `s`. (A thread's own claim cannot change under it: others
/// only swap a free claim word.)
#[inline(always)]
fn holds(s: *mut Slot, tid: u32) -> bool {
    // SAFETY: a map value; read racily, trusted only when it names this thread.
    unsafe { core::ptr::read_volatile(&raw const (*s).claim) == u64::from(tid) }
}

/// Sets the slot's claim word from `old` to `new` if it still holds `old`: a free slot (0) is
/// taken for a thread, and only its holder sets it back to 0. A BPF atomic operation is a full
/// barrier (a plain store is not, on arm64): the holder's last writes to the call are visible
/// before the slot shows as free.
#[inline(always)]
fn swap_claim(s: *mut Slot, old: u64, new: u64) -> bool {
    // SAFETY: a map value shared between CPUs, written only through this swap.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*s).claim,
            old,
            new,
        )
        .1
    }
}

/// Opens a call for `tid` and returns its entry, with whatever the thread's last call left in
/// it: the caller sets every field. In the thread's slot if it is free or already this thread's,
/// else in `PENDING`.
#[inline(always)]
pub fn open(tid: u32) -> Option<&'static mut Pending> {
    if let Some(s) = slot(tid)
        && (holds(s, tid) || swap_claim(s, 0, tid.into()))
    {
        // SAFETY: the slot is this thread's until `done` gives it back.
        return Some(unsafe { &mut (*s).call });
    }
    if let Some(p) = PENDING.get_ptr_mut(tid) {
        // SAFETY: the entry belongs to this thread; nothing else writes it.
        return Some(unsafe { &mut *p });
    }
    if PENDING.insert(tid, &Pending::ZERO, 0).is_err() {
        bump(tracer_common::counter::HISTORY_FAILED);
        return None;
    }
    // SAFETY: as above.
    PENDING.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// Makes `ev` (on socket `sk`, 0 if not known yet; opened at jiffy `since`) this thread's call.
#[inline(always)]
pub fn put(tid: u32, ev: &BindEvent, sk: u64, since: u64) {
    if let Some(p) = open(tid) {
        p.ev = *ev;
        p.sk = sk;
        p.since = since;
    }
}

/// This thread's call of kind `syscall`, if one is open.
#[inline(always)]
pub fn entry(tid: u32, syscall: Syscall) -> Option<&'static mut Pending> {
    let p = match slot(tid) {
        // SAFETY: a slot this thread holds is written by nothing else.
        Some(s) if holds(s, tid) => unsafe { &mut (*s).call },
        // SAFETY: as above.
        _ => unsafe { &mut *PENDING.get_ptr_mut(tid)? },
    };
    (p.ev.syscall == syscall as u8).then_some(p)
}

/// The event of this thread's call of kind `syscall`, if one is open.
#[inline(always)]
pub fn get(tid: u32, syscall: Syscall) -> Option<&'static mut BindEvent> {
    entry(tid, syscall).map(|p| &mut p.ev)
}

/// Closes this thread's call, `ev` (from `entry`/`get`), and gives its slot back. A hash entry
/// stays, for the thread's next call to reuse.
#[inline(always)]
pub fn done(tid: u32, ev: &mut BindEvent) {
    ev.syscall = 0;
    if let Some(s) = slot(tid) {
        // The event was closed above, so the next holder never finds a call of ours in the slot.
        swap_claim(s, tid.into(), 0);
    }
}

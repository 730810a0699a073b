//! The call each thread has in flight: opened at syscall entry (or by the cgroup bind hook),
//! filled in by the hooks that run inside the call, closed at its exit.
//!
//! A thread's call lives in its slot of `PENDING_SLOTS`, an array indexed by thread id: the
//! verifier inlines the lookup, so opening and finding a call costs a few loads instead of a hash
//! computation and bucket walk on every bind(), listen() and connect(). Thread ids that share a
//! slot are told apart by the slot's claim word, taken with compare-and-swap at open and given
//! back with one at close: a thread whose slot is held by another call in flight uses the
//! `PENDING` hash instead.
//!
//! Some calls are never closed: a bind the cgroup hook or a kprobe saw that never returns through
//! the exit that closes it (io_uring's `IORING_OP_BIND`, in-kernel binds from kernel threads, a
//! missed kretprobe). The claim word says when its call was opened and of what kind, so a bind or
//! listen() call older than any real one ([`STALE_JIFFIES`]) is taken over by the next thread
//! sharing the slot, and never mistaken for a live call by [`entry`].

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::helpers::generated::bpf_jiffies64;
use tracer_common::{BindEvent, Syscall, counter};

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
    /// A connect()'s descriptor and address (a user pointer), as passed: its exit finds the
    /// socket from them when no hook inside the call did (a datagram socket's failed autobind).
    pub fd: u64,
    pub uaddr: u64,
    /// `bpf_jiffies64()` when the call was opened. Jiffies, not `bpf_ktime_get_ns()`: a memory
    /// read instead of a clock read, which in a VM was a fifth of these programs' time.
    pub since: u64,
}

impl Pending {
    const ZERO: Self = Self {
        ev: BindEvent::ZERO,
        sk: 0,
        fd: 0,
        uaddr: 0,
        since: 0,
    };
}

/// One slot of `PENDING_SLOTS`.
#[repr(C)]
pub struct Slot {
    /// 0 when free; else the holder's thread id (bits 0–31), its call's [`Syscall`] (32–39) and
    /// the low 24 bits of the jiffy it was opened at (40–63). One word, so that a thread taking
    /// over an abandoned call judges it by the same value its compare-and-swap checks: a holder
    /// that opens a new call changes the word first. 64 bits wide also because LLVM's BPF backend
    /// compiles a 32-bit compare-and-swap only for `-mcpu=v3`, and builds here target v1.
    claim: u64,
    call: Pending,
}

/// Longer than any bind() or listen() spends between its opening and its exit: 1 s at the
/// highest `CONFIG_HZ` (1000), 10 s at the lowest (100). Such a call still open was left by a
/// call that did not return through its exit. (connect() calls always do, and may legitimately
/// wait minutes for a handshake: they never go stale.)
pub const STALE_JIFFIES: u64 = 1000;

#[inline(always)]
fn jiffies() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// Whether a call of kind `syscall` (as `u8`) opened at `since` is older than any of its kind
/// lasts at `now` (`now()`, called only for the kinds that can go stale). `since` and `now` may
/// be truncated to `bits` bits.
#[inline(always)]
fn stale(syscall: u8, since: u64, now: impl FnOnce() -> u64, bits: u32) -> bool {
    (syscall == Syscall::Bind as u8 || syscall == Syscall::Listen as u8)
        && now().wrapping_sub(since) & (u64::MAX >> (64 - bits)) >= STALE_JIFFIES
}

const CLAIM_TIME_BITS: u32 = 24;

#[inline(always)]
fn claim_word(tid: u32, syscall: Syscall, now: u64) -> u64 {
    (now << 40) | ((syscall as u64) << 32) | u64::from(tid)
}

#[inline(always)]
fn slot(tid: u32) -> Option<*mut Slot> {
    if tid == 0 {
        // The idle task: its claim word would read as free. Never a caller here anyway.
        return None;
    }
    PENDING_SLOTS.get_ptr_mut(tid & PENDING_SLOTS_MASK)
}

#[inline(always)]
fn claim_of(s: *mut Slot) -> u64 {
    // SAFETY: a map value; read racily, trusted only through the swap or when it names the
    // reading thread (whose own claim only it replaces, except when it is abandoned).
    unsafe { core::ptr::read_volatile(&raw const (*s).claim) }
}

/// Sets the slot's claim word from `old` to `new` if it still holds `old`. A BPF compare-and-swap
/// is fully ordered (a plain store is not, on arm64): the previous holder's last writes to the
/// call are visible before the slot shows as free, and a new holder's writes come after.
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

/// Opens a call of kind `syscall` for `tid` and returns its entry, `since` set; the caller sets
/// every other field (the entry holds whatever an earlier call left). In the thread's slot if it
/// is free, this thread's, or held by an abandoned call; else in `PENDING`.
#[inline(always)]
pub fn open(tid: u32, syscall: Syscall) -> Option<&'static mut Pending> {
    let now = jiffies();
    if let Some(s) = slot(tid) {
        let held = claim_of(s);
        let takeable = held == 0
            || held as u32 == tid
            || stale((held >> 32) as u8, held >> 40, || now, CLAIM_TIME_BITS);
        if takeable && swap_claim(s, held, claim_word(tid, syscall, now)) {
            // SAFETY: the slot is this thread's until `done` gives it back.
            let p = unsafe { &mut (*s).call };
            p.since = now;
            return Some(p);
        }
    }
    let p = match PENDING.get_ptr_mut(tid) {
        Some(p) => p,
        None => {
            if PENDING.insert(tid, &Pending::ZERO, 0).is_err() {
                bump(counter::UNTRACKED);
                return None;
            }
            let Some(p) = PENDING.get_ptr_mut(tid) else {
                bump(counter::UNTRACKED);
                return None;
            };
            p
        }
    };
    // SAFETY: the entry belongs to this thread; nothing else writes it.
    let p = unsafe { &mut *p };
    p.since = now;
    Some(p)
}

/// Makes `ev` (on socket `sk`, 0 if not known yet) this thread's call, of the kind `ev` says.
#[inline(always)]
pub fn put(tid: u32, ev: &BindEvent, sk: u64) {
    let Ok(syscall) = Syscall::try_from(ev.syscall) else {
        return;
    };
    if let Some(p) = open(tid, syscall) {
        p.ev = *ev;
        p.sk = sk;
    }
}

/// This thread's call of kind `syscall`, if one is open and not abandoned.
#[inline(always)]
pub fn entry(tid: u32, syscall: Syscall) -> Option<&'static mut Pending> {
    let p = match slot(tid) {
        // SAFETY: a slot this thread holds is written by nothing else.
        Some(s) if claim_of(s) as u32 == tid => unsafe { &mut (*s).call },
        // SAFETY: as above.
        _ => unsafe { &mut *PENDING.get_ptr_mut(tid)? },
    };
    (p.ev.syscall == syscall as u8 && !stale(p.ev.syscall, p.since, jiffies, 64)).then_some(p)
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
        let held = claim_of(s);
        // The event was closed above, so the next holder never finds a call of ours in the slot.
        if held as u32 == tid {
            swap_claim(s, held, 0);
        }
    }
}

//! Reads the kernel's ring buffer without busy polling (epoll via tokio's `AsyncFd`), decodes each
//! record into an [`Event`] and hands it to a [`Sink`]. Also watches the kernel's counters so
//! records the ring buffer had no room for are reported, never silently dropped.

use std::{future::Future, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tokio::io::{Interest, unix::AsyncFd};
use tracer_common::{WAKEUP_FOLLOW_UP_NS, counter, names};

use crate::event::{self, Event};

/// Where decoded events go.
pub trait Sink {
    fn event(&mut self, ev: Event) -> Result<()>;
    /// `lost` records were dropped in the kernel since the last call (`lost_total` since start).
    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> Result<()>;
    /// `new` more calls could not be tracked in the kernel (`counter::UNTRACKED`).
    fn untracked(&mut self, _new: u64) -> Result<()> {
        Ok(())
    }
    /// Whether `event` would take an event now without waiting.
    fn has_room(&self) -> bool {
        true
    }
    /// A stop was asked for: what follows is the rest the programs left, to be written promptly.
    fn stopping(&mut self) {}
}

/// What a run saw, for the summary at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub failures: u64,
    /// Records dropped in the kernel because the ring buffer was full.
    pub lost: u64,
    /// Records that did not decode (counted, skipped).
    pub corrupt: u64,
    /// Failures the kernel saw and meant to send (reported + lost).
    pub failures_seen: u64,
    /// Calls the kernel programs could not track (`tracer_common::counter::UNTRACKED`): their
    /// failures, if any, were never seen.
    pub untracked: u64,
}

/// Registers an fd-owning object with tokio's reactor for readability.
///
/// Only for objects that own their descriptor for their whole life (aya's maps and loggers do:
/// they close it on drop and never swap it), which is what tokio requires.
pub fn readable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: see above: the descriptor stays open and the same until `inner` is dropped, which
    // happens only with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

pub struct Collector {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    stats: Stats,
}

impl Collector {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        let ring = RingBuf::try_from(
            ebpf.take_map(names::EVENTS)
                .ok_or_else(|| anyhow!("map {} missing", names::EVENTS))?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(names::LOST)
                .ok_or_else(|| anyhow!("map {} missing", names::LOST))?,
        )?;
        Ok(Self {
            ring: readable(ring).context("registering the ring buffer with epoll")?,
            counters,
            stats: Stats::default(),
        })
    }

    /// Sum over CPUs of one kernel counter.
    pub fn kernel_counter(&self, index: u32) -> u64 {
        self.counters.get(&index, 0).map_or(0, |v| v.iter().sum())
    }

    /// Reads the records in the ring buffer, at most `limit`, and, unless `wait`, only while
    /// the sink has room; returns how many there were.
    fn drain(&mut self, sink: &mut (dyn Sink + Send), limit: u64, wait: bool) -> Result<u64> {
        let ring = self.ring.get_mut();
        let mut read = 0;
        while read < limit
            && (wait || sink.has_room())
            && let Some(item) = ring.next()
        {
            read += 1;
            match event::decode(&item) {
                Ok((kind, raw)) => {
                    let ev = Event::from_raw(kind, &raw, event::monotonic_to_wall);
                    self.stats.events += 1;
                    if ev.is_failure() {
                        self.stats.failures += 1;
                    }
                    drop(item);
                    sink.event(ev)?;
                }
                Err(e) => {
                    self.stats.corrupt += 1;
                    if self.stats.corrupt == 1 {
                        log::warn!("skipping a ring-buffer record that does not decode: {e}");
                    }
                }
            }
        }
        Ok(read)
    }

    fn check_lost(&mut self, sink: &mut (dyn Sink + Send)) -> Result<()> {
        let total = self.kernel_counter(counter::RINGBUF_FULL);
        self.stats.failures_seen = self.kernel_counter(counter::FAILURES_SEEN);
        let untracked = self.kernel_counter(counter::UNTRACKED);
        if untracked > self.stats.untracked {
            if self.stats.untracked == 0 {
                log::warn!(
                    "{untracked} call(s) could not be tracked: the kernel refused them an entry \
                     in the table of calls in flight (their failures, if any, are not reported)"
                );
            }
            sink.untracked(untracked - self.stats.untracked)?;
            self.stats.untracked = untracked;
        }
        if total > self.stats.lost {
            let new = total - self.stats.lost;
            self.stats.lost = total;
            let now = event::rfc3339(event::monotonic_to_wall(event::monotonic_now()));
            sink.lost(&now, new, total)?;
        }
        Ok(())
    }

    /// Runs until `shutdown` completes, then calls `detach` (which stops the kernel programs),
    /// drains what they left and returns the statistics.
    pub async fn run(
        mut self,
        sink: &mut (dyn Sink + Send),
        shutdown: impl Future<Output = ()>,
        detach: impl FnOnce(),
    ) -> Result<Stats> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Records written soon after a CPU's last wakeup do not wake us (see
        // `tracer_common::WAKEUP_INTERVAL_NS`): after every read that found records, read again
        // a little later, until a read finds none. Idle, nothing is scheduled.
        let follow_up_after = Duration::from_nanos(WAKEUP_FOLLOW_UP_NS);
        let mut follow_up: Option<tokio::time::Instant> = None;
        // A read stops after a batch, or when the sink is full (the diagnosis thread behind:
        // records wait in the ring buffer, and what it has no room for the kernel counts as
        // lost), so that in a storm the loop still sees the tick, which reports what the kernel
        // dropped, and a signal, never blocked on a full queue. The next batch is read at once,
        // or when the sink has had a moment to make room.
        let next = |read: u64, sink: &(dyn Sink + Send)| {
            let now = tokio::time::Instant::now();
            if sink.has_room() {
                match read {
                    0 => None,
                    r if r >= DRAIN_BATCH => Some(now),
                    _ => Some(now + follow_up_after),
                }
            } else {
                Some(now + BACKLOG_RETRY)
            }
        };
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("waiting on the ring buffer")?;
                    guard.clear_ready();
                    drop(guard);
                    let read = self.drain(sink, DRAIN_BATCH, false)?;
                    if read > 0 || !sink.has_room() {
                        follow_up = next(read, sink);
                    }
                }
                () = sleep_until_some(follow_up) => {
                    let read = self.drain(sink, DRAIN_BATCH, false)?;
                    follow_up = next(read, sink);
                }
                // The tick also reads: the safety net for a record that missed its follow-up.
                _ = tick.tick() => {
                    let read = self.drain(sink, DRAIN_BATCH, false)?;
                    if read >= DRAIN_BATCH || !sink.has_room() {
                        follow_up = next(read, sink);
                    }
                    self.check_lost(sink)?;
                }
                () = &mut shutdown => break,
            }
        }
        sink.stopping();
        // No program writes once detached: what is in the ring buffer then is all there is, and
        // the kernel's counters are final.
        crate::stopping::at(crate::stopping::Step::Detaching);
        detach();
        crate::stopping::at(crate::stopping::Step::Draining);
        self.drain(sink, u64::MAX, true)?;
        self.check_lost(sink)?;
        Ok(self.stats)
    }
}

/// Records read before the loop looks at its other work (the tick, a signal).
const DRAIN_BATCH: u64 = 4096;

/// How long a full sink is given before the ring buffer is read again.
const BACKLOG_RETRY: Duration = Duration::from_millis(2);

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

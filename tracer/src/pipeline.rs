//! Between the collector and the output. A failure's network namespace is opened the moment it
//! arrives (the failing process may exit a moment later); the lookup of who held the port and the
//! verdict run on one worker thread, so events are written in the order they happened and the
//! collector keeps draining the ring buffer meanwhile.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use crate::{
    collector::Sink,
    event::Event,
    netns::{self, Netns},
    owners::Investigator,
};

/// Where finished events go: the renderer, or (in `lab`) a collector.
pub trait Writer: Send + 'static {
    fn event(&mut self, ev: &Event) -> std::io::Result<()>;
    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> std::io::Result<()>;
    /// `new` more calls could not be tracked in the kernel.
    fn untracked(&mut self, _new: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every event to each of several writers (terminal, log file, metrics).
pub struct Fanout(pub Vec<Box<dyn Writer>>);

impl Writer for Fanout {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        self.0.iter_mut().try_for_each(|w| w.event(ev))
    }
    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> std::io::Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|w| w.lost(time, lost, lost_total))
    }
    fn untracked(&mut self, new: u64) -> std::io::Result<()> {
        self.0.iter_mut().try_for_each(|w| w.untracked(new))
    }
}

enum Msg {
    Event(Box<Event>, Option<Netns>),
    Lost { time: String, lost: u64, total: u64 },
    Untracked(u64),
}

/// Events waiting for the diagnosis thread. When it falls this far behind, the collector waits,
/// the kernel's ring buffer fills, and the kernel counts what it drops: memory stays bounded and
/// nothing is lost silently.
const QUEUE: usize = 4 * 1024;

/// Holders a reported failure names (JSON; text shows fewer); the rest are counted by state.
const MAX_HOLDERS: usize = 16;

/// After a stop is asked for, how long queued failures still get their holders looked up. A
/// storm can leave thousands queued, and a service manager's stop timeout (systemd's 90 s) must
/// not be spent on them: past this, the rest are written without holders, and a warning says how
/// many.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub struct Pipeline {
    tx: Option<mpsc::SyncSender<Msg>>,
    /// Events sent and not yet taken by the diagnosis thread: the collector reads the ring
    /// buffer only while there is room, so that it never blocks on a full queue.
    queued: Arc<AtomicUsize>,
    worker: Option<JoinHandle<Result<()>>>,
    /// When the stop was asked for (see `STOP_GRACE`).
    stop_asked: Arc<OnceLock<Instant>>,
    finder: netns::Finder,
    diagnose: bool,
}

impl Pipeline {
    /// `investigator`: None to report failures without looking up holders.
    pub fn start(mut renderer: impl Writer, investigator: Option<Investigator>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let diagnose = investigator.is_some();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&queued);
        let stop_asked = Arc::new(OnceLock::<Instant>::new());
        let stop_seen = Arc::clone(&stop_asked);
        let worker = thread::Builder::new()
            .name("bindtrace-diagnose".into())
            .spawn(move || -> Result<()> {
                let mut investigator = investigator;
                let mut own = crate::container::Resolver::default();
                let mut undiagnosed = 0u64;
                loop {
                    // Between events too, the containers' cgroups are kept up with (on a
                    // container host only): a pod gone by the time a failure names it is known.
                    let containers = investigator
                        .as_mut()
                        .map_or(&mut own, Investigator::containers);
                    containers.keep_up();
                    let msg = match rx.recv_timeout(crate::container::CGROUP_KEEP_UP) {
                        Ok(msg) => msg,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    taken.fetch_sub(1, Ordering::Relaxed);
                    match msg {
                        Msg::Event(mut ev, ns) => {
                            ev.name_process();
                            ev.container = containers.resolve(ev.pid, ev.cgroup_id, ev.netns);
                            if let Some(inv) = investigator.as_mut()
                                && ev.is_failure()
                            {
                                if stop_seen.get().is_some_and(|t| t.elapsed() > STOP_GRACE) {
                                    undiagnosed += 1;
                                    ev.undiagnosed = Some("stopping".into());
                                } else {
                                    let mut d = inv.diagnose(&ev, ns.as_ref());
                                    d.keep_holders(MAX_HOLDERS);
                                    ev.diagnosis = Some(d);
                                }
                            }
                            renderer.event(&ev)?;
                        }
                        Msg::Lost { time, lost, total } => renderer.lost(&time, lost, total)?,
                        Msg::Untracked(new) => renderer.untracked(new)?,
                    }
                }
                if undiagnosed > 0 {
                    log::warn!(
                        "{undiagnosed} failure(s) still queued {} s after the stop was asked for \
                         are reported without who held the port",
                        STOP_GRACE.as_secs()
                    );
                }
                Ok(())
            })
            .expect("spawning the diagnosis thread");
        Self {
            tx: Some(tx),
            queued,
            worker: Some(worker),
            stop_asked,
            finder: netns::Finder::default(),
            diagnose,
        }
    }

    fn send(&mut self, msg: Msg) -> Result<()> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.tx
            && tx.send(msg).is_ok()
        {
            return Ok(());
        }
        // The worker stopped: its error says why.
        self.finish()?;
        Err(anyhow!("the output thread stopped"))
    }

    /// Waits until everything sent has been written.
    pub fn finish(&mut self) -> Result<()> {
        self.tx.take();
        match self.worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| anyhow!("the output thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Sink for Pipeline {
    fn event(&mut self, ev: Event) -> Result<()> {
        let ns = if self.diagnose && ev.is_failure() {
            self.finder.open(u64::from(ev.netns), ev.pid, ev.tid)
        } else {
            None
        };
        self.send(Msg::Event(Box::new(ev), ns))
    }

    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> Result<()> {
        self.send(Msg::Lost {
            time: time.to_string(),
            lost,
            total: lost_total,
        })
    }

    fn untracked(&mut self, new: u64) -> Result<()> {
        self.send(Msg::Untracked(new))
    }

    fn stopping(&mut self) {
        let _ = self.stop_asked.set(Instant::now());
    }

    fn has_room(&self) -> bool {
        // The lost and untracked notices the collector sends besides events need room too.
        self.queued.load(Ordering::Relaxed) + 8 < QUEUE
    }
}

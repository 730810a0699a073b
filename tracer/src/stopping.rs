//! A watch's stop must end. After SIGINT/SIGTERM/SIGHUP it detaches the kernel programs, drains
//! the ring buffer and writes what is queued (`collector::Collector::run`, `pipeline`), which
//! ends within seconds even in a storm. Should a step not end (a detach waiting on the kernel, a
//! holder lookup stuck on a process's `/proc`, a stalled output), an operator must not need
//! `kill -9`: a second SIGINT or SIGTERM, more than [`REPEAT`] after the first, ends the process
//! at once, and a stop still under way after [`DEADLINE`] ends it too — each saying which step it
//! was in, on stderr.

use std::{
    io::Write as _,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use tokio::signal::unix::Signal;

/// Longer than any stop seen in a storm (18 s on a software-emulated VM, under 3 s here), within
/// systemd's default stop timeout (90 s).
const DEADLINE: Duration = Duration::from_mins(1);

/// The step a stop is in.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Step {
    Running = 0,
    Asked,
    Detaching,
    Draining,
    Writing,
}

static STEP: AtomicU8 = AtomicU8::new(Step::Running as u8);

pub fn at(step: Step) {
    STEP.store(step as u8, Ordering::Relaxed);
}

fn describe(step: u8) -> &'static str {
    match step {
        s if s == Step::Asked as u8 => "the stop was asked for; reading had not ended",
        s if s == Step::Detaching as u8 => "detaching the kernel programs",
        s if s == Step::Draining as u8 => "reading what the programs left in the ring buffer",
        s if s == Step::Writing as u8 => "writing the failures still queued",
        _ => "running",
    }
}

/// Ends the process now, with `why` and the step the stop was in. The notice is written from a
/// thread of its own and given a moment: a stalled stderr (a terminal paused with Ctrl-S, a
/// hung logger's pipe, which may be what stalled the stop) must not keep the process alive.
fn exit_now(why: &str, code: i32) -> ! {
    let step = describe(STEP.load(Ordering::Relaxed));
    let line = format!("bindtrace: {why} (the stop was {step}); exiting without finishing it");
    let (done, written) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().spawn(move || {
        let _ = writeln!(std::io::stderr(), "{line}");
        let _ = done.send(());
    });
    let _ = written.recv_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

/// A repeat of the stop signal sooner than this after the first is the same request: a wrapper
/// that forwards its SIGTERM while systemd signals the whole group, `timeout` signalling the
/// child and then its process group.
pub const REPEAT: Duration = Duration::from_secs(1);

/// Called once the stop is asked for: arms the deadline, and ends the process on the next SIGINT
/// or SIGTERM (`int`, `term`: their streams, still registered) — one that comes later than
/// [`REPEAT`] after this call — if the stop has not ended by then. Signals that arrive before the
/// first is taken (a collector busy with a storm takes it late) count as one, within the
/// repeat: it takes one more.
pub fn asked(mut int: Signal, mut term: Signal) {
    at(Step::Asked);
    let first = std::time::Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if first.elapsed() >= REPEAT {
                break;
            }
        }
        exit_now("a second stop signal", 130);
    });
    let _ = std::thread::Builder::new()
        .name("bindtrace-stop".into())
        .spawn(|| {
            std::thread::sleep(DEADLINE);
            exit_now(&format!("still stopping after {} s", DEADLINE.as_secs()), 1);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_described() {
        for step in [Step::Asked, Step::Detaching, Step::Draining, Step::Writing] {
            assert_ne!(describe(step as u8), "running");
        }
    }
}

//! A watch's stop must end. After SIGINT/SIGTERM/SIGHUP it detaches the kernel programs, drains
//! the ring buffer and writes what is queued (`collector::Collector::run`, `pipeline`), which
//! ends within seconds even in a storm. Should a step not end (a detach waiting on the kernel, a
//! holder lookup stuck on a process's `/proc`), an operator must not need `kill -9`: a second
//! signal ends the process at once, and a stop still under way after [`DEADLINE`] ends it too —
//! each saying which step it was in, on stderr.

use std::{
    io::Write as _,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

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

/// Ends the process now, with `why` and the step the stop was in.
fn exit_now(why: &str, code: i32) -> ! {
    let step = describe(STEP.load(Ordering::Relaxed));
    // stderr may be a pipe whose reader has gone: nothing else to do then.
    let _ = writeln!(
        std::io::stderr(),
        "bindtrace: {why} (the stop was {step}); exiting without finishing it"
    );
    std::process::exit(code);
}

/// Called once the stop is asked for: arms the deadline, and ends the process on `again` (the
/// next stop signal) if the stop has not ended by then.
pub fn asked(again: impl Future<Output = ()> + Send + 'static) {
    at(Step::Asked);
    tokio::spawn(async move {
        again.await;
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

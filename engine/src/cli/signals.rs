//! SIGINT and SIGTERM during `ferry get` and `ferry pull`: the first one stops the engine's jobs
//! cleanly ([`ferry::Interrupter`]): the writes in flight complete and a pull's resume journal
//! records them, nothing incomplete gets a final name, and the command exits with 128 + the
//! signal (130 for SIGINT, 143 for SIGTERM) within [`GRACE`]. A second signal exits at once with
//! that code. Both are safe for the data: the journal is appended after every completed write,
//! so even an exit at once loses no recorded byte (as after `kill -9`).
//!
//! Not here: what stopping means for a download (`download/`), or other commands (`serve` and
//! `ping` keep the default: a signal ends them).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long the clean stop may take before the process exits anyway: connections blocked in a
/// read of a silent server notice the stop only when their read returns.
pub(crate) const GRACE: Duration = Duration::from_millis(1500);

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The exit code of a command stopped by a signal: 128 + the signal, as shells report it.
pub(crate) fn interrupted_code() -> u8 {
    let sig = match RECEIVED.load(Ordering::Relaxed) {
        0 => SIGINT,
        s => s,
    };
    (128 + sig) as u8
}

fn name(sig: i32) -> &'static str {
    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
}

/// Watches SIGINT and SIGTERM from now on, on a thread of its own: the first one interrupts the
/// engine's jobs (`after` says what becomes of the work done, for the message), the second one,
/// or the end of `grace` ([`GRACE`] for a download), exits the process.
pub(crate) fn watch(interrupter: ferry::Interrupter, after: &'static str, grace: Duration) {
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            // The default action (the process ends) still applies; the journal makes that safe.
            tracing::warn!("cannot watch SIGINT/SIGTERM ({e}); a signal will end ferry at once");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if RECEIVED
                    .compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    eprintln!("ferry: {}: exiting at once ({after})", name(sig));
                    std::process::exit(i32::from(interrupted_code()));
                }
                eprintln!(
                    "ferry: {}: stopping: the writes in flight complete, then ferry exits \
                     ({after}); a second signal exits at once",
                    name(sig)
                );
                interrupter.interrupt();
                let code = interrupted_code();
                let _ = std::thread::Builder::new()
                    .name("ferry-grace".into())
                    .spawn(move || {
                        std::thread::sleep(grace);
                        eprintln!(
                            "ferry: still stopping after {:.1} s: exiting now ({after})",
                            grace.as_secs_f64()
                        );
                        std::process::exit(i32::from(code));
                    });
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch SIGINT/SIGTERM ({e}); a signal will end ferry at once");
    }
}

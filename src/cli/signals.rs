//! SIGINT/SIGTERM for `tessera watch`: the pass in progress finishes, then the loop stops.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to [`STOP`].
pub(super) fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_stop_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as *const () as libc::sighandler_t,
        );
    }
}

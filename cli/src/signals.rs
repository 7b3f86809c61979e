//! Ctrl-C and SIGTERM for the commands that stop cleanly on them (`send`,
//! `subscribe`): the handler only notes the signal; the command looks at it between
//! steps.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// The last signal received (0: none), and how many arrived.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM are noted instead of ending the process.
pub(crate) fn install() {
    // SAFETY: the handler only stores to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// The signal that asked to stop, if one did.
pub(crate) fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// How many stop signals arrived.
pub(crate) fn count() -> u32 {
    COUNT.load(Ordering::SeqCst)
}

pub(crate) fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

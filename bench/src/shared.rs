//! What the engines, the consumers and chaos share with the run: the interrupt flag,
//! the clock of send timestamps, and where keeld is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the run early, with a report, and the broker this tool
/// started is stopped and its directory removed.
pub(crate) fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// `--keeld`, else `keeld` next to this binary, else `keeld` on the PATH.
pub(crate) fn keeld_binary(given: Option<&PathBuf>) -> PathBuf {
    if let Some(path) = given {
        return path.clone();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("keeld")));
    match sibling {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("keeld"),
    }
}

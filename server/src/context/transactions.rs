//! The broker's open transactions: the state `broker/transactions.rs` keeps (rebuilt
//! from the log) and its counters.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

pub(crate) struct Open {
    pub(crate) half_offset: u64,
    pub(crate) producer_group: String,
    pub(crate) topic: String,
    pub(crate) stored_ms: u64,
    pub(crate) checks: u32,
    pub(crate) next_check_ms: u64,
    /// A check is due and no producer has taken it yet.
    pub(crate) wanted: bool,
}

/// A resolved half message above the progress: where its op is, and whether the op is
/// durable yet (the progress never passes it before).
#[derive(Clone, Copy)]
pub(crate) struct Ended {
    pub(crate) op_offset: u64,
    pub(crate) op_end: u64,
}

#[derive(Default)]
pub(crate) struct State {
    /// Rebuilt for the broker's current time as master.
    pub(crate) loaded: bool,
    /// The next queue offsets of `%HALF%` and `%HALF_OP%` to read.
    pub(crate) half_next: u64,
    pub(crate) op_next: u64,
    /// Transaction id (the half message's log offset) -> the open transaction.
    pub(crate) open: BTreeMap<u64, Open>,
    /// Half queue offset -> its end, for ends above the progress.
    pub(crate) ended: BTreeMap<u64, Ended>,
    /// The progress last committed.
    pub(crate) committed: (u64, u64),
}

/// Counters (Prometheus).
#[derive(Default)]
pub struct TransactionStats {
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    /// Ended by the broker because the checks ran out.
    pub resolved_by_broker: AtomicU64,
    /// Checks handed to producers.
    pub checks: AtomicU64,
    /// Open transactions now.
    pub open: AtomicU64,
    /// Committed, but their message could not be stored.
    pub dropped: AtomicU64,
}

#[derive(Default)]
pub struct Transactions {
    state: Mutex<State>,
    pub stats: TransactionStats,
}

impl Transactions {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The broker's role changed: what is held is rebuilt from the log before use.
    pub fn invalidate(&self) {
        self.lock().loaded = false;
        self.stats
            .open
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

//! The epoch history: which master term wrote which part of the log.
//!
//! Every time a broker starts as a master, or a slave is promoted, a new epoch begins at
//! the log's end offset. A slave copies its master's history. When two logs meet again
//! (a slave reconnecting, an old master coming back as a slave), the newest epoch both
//! histories share, with the same start, bounds their common prefix: bytes past the end
//! of that epoch on either side were written by different masters.
//!
//! File `DATA_DIR/epochs`: one line `EPOCH START_OFFSET` per epoch, oldest first, then a
//! `crc32c` trailer; replaced atomically.

use crate::disk::Disk;
use crate::fs_util::{read_sealed, seal_text, write_atomic};
use crate::StoreError;
use std::path::Path;

pub use keel_protocol::Epoch;

/// Checks that epochs and their starts both never go down.
pub fn validate_history(history: &[Epoch]) -> Result<(), String> {
    for (a, b) in history.iter().zip(history.iter().skip(1)) {
        if b.epoch <= a.epoch || b.start < a.start {
            return Err(format!(
                "epoch history is not increasing: epoch {} at {} is followed by epoch {} at {}",
                a.epoch, a.start, b.epoch, b.start
            ));
        }
    }
    Ok(())
}

/// Where the newest epoch both histories share (same number, same start) ends in the
/// common prefix of two logs: `None` when they share no epoch.
///
/// An epoch ends where the next one of the same history starts, or at that log's end.
pub fn common_prefix_end(
    ours: &[Epoch],
    our_end: u64,
    theirs: &[Epoch],
    their_end: u64,
) -> Option<u64> {
    let end_in = |history: &[Epoch], index: usize, log_end: u64| {
        history
            .get(index + 1)
            .map_or(log_end, |next| next.start.min(log_end))
    };
    for (their_index, their) in theirs.iter().enumerate().rev() {
        if let Some(our_index) = ours.iter().position(|e| e == their) {
            let ours_ends = end_in(ours, our_index, our_end);
            let theirs_ends = end_in(theirs, their_index, their_end);
            return Some(ours_ends.min(theirs_ends));
        }
    }
    None
}

/// What an operator can do about a damaged epochs file.
const REMEDY: &str = "the epoch history is needed to replicate safely: restore the file \
    from a backup, or delete it while keeld is stopped (this broker then proves a common \
    prefix with its master by record checksums alone)";

pub(crate) fn load(disk: &dyn Disk, path: &Path) -> Result<Vec<Epoch>, StoreError> {
    let Some(text) = read_sealed(disk, path, REMEDY)? else {
        return Ok(Vec::new());
    };
    let damaged = |detail: String| StoreError::Corruption {
        path: path.to_path_buf(),
        position: 0,
        detail: format!("{detail}; {REMEDY}"),
    };
    let mut history = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let parse = |field: Option<&str>| field.and_then(|f| f.parse::<u64>().ok());
        match (parse(fields.next()), parse(fields.next()), fields.next()) {
            (Some(epoch), Some(start), None) => history.push(Epoch { epoch, start }),
            _ => return Err(damaged(format!("bad line {line:?}"))),
        }
    }
    validate_history(&history).map_err(damaged)?;
    Ok(history)
}

pub(crate) fn save(disk: &dyn Disk, path: &Path, history: &[Epoch]) -> Result<(), StoreError> {
    let mut text = String::new();
    for entry in history {
        text.push_str(&format!("{} {}\n", entry.epoch, entry.start));
    }
    write_atomic(disk, path, &seal_text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> Vec<Epoch> {
        entries
            .iter()
            .map(|&(epoch, start)| Epoch { epoch, start })
            .collect()
    }

    #[test]
    fn a_slave_behind_in_the_same_epoch_shares_its_whole_log() {
        let master = history(&[(1, 0), (2, 100)]);
        let slave = history(&[(1, 0), (2, 100)]);
        assert_eq!(common_prefix_end(&master, 500, &slave, 300), Some(300));
    }

    #[test]
    fn an_old_master_is_cut_where_the_promoted_slave_began_its_epoch() {
        // The old master wrote epoch 2 up to 150; the slave had 120 when promoted.
        let new_master = history(&[(1, 0), (2, 100), (3, 120)]);
        let old_master = history(&[(1, 0), (2, 100)]);
        assert_eq!(
            common_prefix_end(&new_master, 400, &old_master, 150),
            Some(120)
        );
    }

    #[test]
    fn a_master_that_lost_its_tail_and_restarted_bounds_the_slave() {
        // Master lost 80..100 of epoch 1, restarted at 80 as epoch 2; slave had 100.
        let master = history(&[(1, 0), (2, 80)]);
        let slave = history(&[(1, 0)]);
        assert_eq!(common_prefix_end(&master, 200, &slave, 100), Some(80));
    }

    #[test]
    fn histories_without_a_shared_epoch_prove_nothing() {
        assert_eq!(
            common_prefix_end(&history(&[(1, 0)]), 10, &history(&[(2, 0)]), 10),
            None
        );
        assert_eq!(common_prefix_end(&[], 10, &history(&[(1, 0)]), 10), None);
    }

    #[test]
    fn histories_must_increase() {
        assert!(validate_history(&history(&[(1, 0), (2, 5)])).is_ok());
        assert!(validate_history(&history(&[(2, 0), (2, 5)])).is_err());
        assert!(validate_history(&history(&[(1, 9), (2, 5)])).is_err());
    }
}

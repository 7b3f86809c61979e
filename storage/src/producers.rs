//! Idempotent producers: per producer id, the sequences most recently stored and where.
//!
//! A producer numbers its messages (`producer_id` and `sequence` travel in the stored
//! record). A send whose (producer, sequence) is already stored is a retry: it is
//! answered with the original's place and stores nothing. The table is rebuilt from the
//! records by recovery and by a slave as it applies the stream, so it survives restarts
//! and promotion.
//!
//! Sequences of one producer arrive at one broker in increasing order, except for
//! retries (and pipelined sends retried out of order), so a window of the last
//! `WINDOW` sequences per producer is enough; a sequence below the window is refused
//! rather than guessed at.

use std::collections::{HashMap, VecDeque};

/// Sequences remembered per producer.
pub(crate) const WINDOW: usize = 1024;
/// Producers remembered; beyond it the one silent longest is forgotten.
pub(crate) const PRODUCERS_MAX: usize = 65_536;

/// Where a record was stored, and which message it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredAt {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_offset: u64,
    pub offset_end: u64,
    /// The producer's `message_crc`: a retry carries the same; another message under
    /// the same sequence does not.
    pub message_crc: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    Duplicate(StoredAt),
    /// Below the remembered window: it may or may not be stored.
    TooOld {
        oldest: u64,
    },
}

#[derive(Default)]
struct Window {
    /// (sequence, where), oldest first, sequences increasing.
    entries: VecDeque<(u64, StoredAt)>,
}

#[derive(Default)]
pub(crate) struct Producers {
    windows: HashMap<u64, Window>,
}

impl Producers {
    pub(crate) fn seen(&self, producer_id: u64, sequence: u64) -> Seen {
        let Some(window) = self.windows.get(&producer_id) else {
            return Seen::New;
        };
        // The common case, a producer's next message: past the newest one remembered.
        if window
            .entries
            .back()
            .is_none_or(|(newest, _)| sequence > *newest)
        {
            return Seen::New;
        }
        match window
            .entries
            .binary_search_by_key(&sequence, |(seq, _)| *seq)
        {
            Ok(index) => match window.entries.get(index) {
                Some((_, stored)) => Seen::Duplicate(*stored),
                None => unreachable!("binary_search found index {index}"),
            },
            Err(0) if window.entries.len() >= WINDOW => Seen::TooOld {
                oldest: window.entries.front().map_or(0, |(seq, _)| *seq),
            },
            Err(_) => Seen::New,
        }
    }

    pub(crate) fn record(&mut self, producer_id: u64, sequence: u64, at: StoredAt) {
        if producer_id == 0 {
            return;
        }
        if self.windows.len() >= PRODUCERS_MAX && !self.windows.contains_key(&producer_id) {
            self.evict_one();
        }
        let window = self.windows.entry(producer_id).or_default();
        // The common case: the producer's next message goes at the end.
        if window
            .entries
            .back()
            .is_none_or(|(newest, _)| sequence > *newest)
        {
            window.entries.push_back((sequence, at));
            if window.entries.len() > WINDOW {
                window.entries.pop_front();
            }
            return;
        }
        let index = window.entries.partition_point(|(seq, _)| *seq < sequence);
        if window
            .entries
            .get(index)
            .is_some_and(|(seq, _)| *seq == sequence)
        {
            return;
        }
        window.entries.insert(index, (sequence, at));
        while window.entries.len() > WINDOW {
            window.entries.pop_front();
        }
    }

    /// Forgets records at or after `log_offset` (cut from the log).
    pub(crate) fn forget_from(&mut self, log_offset: u64) {
        for window in self.windows.values_mut() {
            window.entries.retain(|(_, at)| at.log_offset < log_offset);
        }
        self.windows.retain(|_, window| !window.entries.is_empty());
    }

    /// Forgets the producer silent longest, never one of the broker's own (the timer
    /// relies on its windows to recognise a redone round).
    fn evict_one(&mut self) {
        let stalest = self
            .windows
            .iter()
            .filter(|(id, _)| !keel_protocol::names::is_broker_producer_id(**id))
            .min_by_key(|(_, window)| window.entries.back().map_or(0, |(_, at)| at.log_offset))
            .map(|(id, _)| *id);
        if let Some(id) = stalest {
            self.windows.remove(&id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(log_offset: u64) -> StoredAt {
        StoredAt {
            queue_id: 0,
            queue_offset: log_offset,
            log_offset,
            offset_end: log_offset + 1,
            message_crc: 7,
        }
    }

    #[test]
    fn retries_are_recognised_out_of_order_and_old_ones_refused() {
        let mut producers = Producers::default();
        producers.record(7, 1, at(10));
        producers.record(7, 3, at(30));
        assert_eq!(producers.seen(7, 3), Seen::Duplicate(at(30)));
        assert_eq!(producers.seen(7, 2), Seen::New, "never stored here");
        producers.record(7, 2, at(40));
        assert_eq!(producers.seen(7, 2), Seen::Duplicate(at(40)));
        assert_eq!(producers.seen(8, 1), Seen::New);
        for sequence in 10..(10 + WINDOW as u64) {
            producers.record(7, sequence, at(100 + sequence));
        }
        assert!(matches!(producers.seen(7, 1), Seen::TooOld { .. }));
        producers.forget_from(100 + 20);
        assert_eq!(producers.seen(7, 25), Seen::New);
        assert!(matches!(producers.seen(7, 15), Seen::Duplicate(_)));
    }
}

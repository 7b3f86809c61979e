//! Recent rates (TOPIC_STATS, the console): every second a thread notes each topic's
//! totals (messages and bytes appended) and each consumer group's committed total on
//! each topic, and keeps a minute of them. A rate is the difference between now and
//! the oldest note, over the time between.

use keel_protocol::{QueueStats, TopicStats};
use keel_storage::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back rates look.
const WINDOW: Duration = Duration::from_secs(60);

/// One note: each topic's (messages appended, bytes appended) at a moment, and each
/// (group, topic)'s sum of committed offsets.
struct Note {
    at: Instant,
    totals: HashMap<String, (u64, u64)>,
    committed: HashMap<(String, String), u64>,
}

#[derive(Default)]
pub struct Rates {
    notes: Mutex<VecDeque<Note>>,
}

impl Rates {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Note>> {
        self.notes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes a note of `totals` now, and forgets notes the window no longer needs (it
    /// keeps the newest one at least `WINDOW` old).
    fn note(&self, totals: HashMap<String, (u64, u64)>, committed: HashMap<(String, String), u64>) {
        let now = Instant::now();
        let mut notes = self.lock();
        notes.push_back(Note {
            at: now,
            totals,
            committed,
        });
        while notes
            .get(1)
            .is_some_and(|second| now.duration_since(second.at) >= WINDOW)
        {
            notes.pop_front();
        }
    }

    /// Forgets what the notes say of `topic` (deleted: a topic of the name made again
    /// counts from zero).
    pub fn forget(&self, topic: &str) {
        for note in self.lock().iter_mut() {
            note.totals.remove(topic);
            note.committed.retain(|(_, of), _| of != topic);
        }
    }

    /// The window in milliseconds and the oldest note's totals of `topic` (zero for a
    /// topic created since).
    fn since_oldest(&self, topic: &str) -> (u32, (u64, u64)) {
        let notes = self.lock();
        match notes.front() {
            Some(oldest) => (
                u32::try_from(oldest.at.elapsed().min(WINDOW).as_millis()).unwrap_or(u32::MAX),
                oldest.totals.get(topic).copied().unwrap_or((0, 0)),
            ),
            None => (0, (0, 0)),
        }
    }

    /// Messages a second `group` committed on `topic` over the window, given its
    /// committed total now: from the oldest note that knows the group (a group that
    /// just appeared has no rate yet, rather than its whole offset as one).
    fn commit_rate(&self, group: &str, topic: &str, now_committed: u64) -> f64 {
        let key = (group.to_string(), topic.to_string());
        let notes = self.lock();
        let Some((at, then)) = notes
            .iter()
            .find_map(|note| note.committed.get(&key).map(|then| (note.at, *then)))
        else {
            return 0.0;
        };
        let seconds = at.elapsed().min(WINDOW).as_secs_f64();
        if seconds < 0.5 {
            return 0.0;
        }
        now_committed.saturating_sub(then) as f64 / seconds
    }
}

/// Each (group, topic)'s sum of committed offsets.
fn committed_totals(offsets: Vec<(String, String, u32, u64)>) -> HashMap<(String, String), u64> {
    let mut totals: HashMap<(String, String), u64> = HashMap::new();
    for (group, topic, _, offset) in offsets {
        let total = totals.entry((group, topic)).or_default();
        *total = total.saturating_add(offset);
    }
    totals
}

impl Rates {
    /// Messages a second each (group, topic) committed over the broker's last minute.
    pub fn commit_rates(&self, store: &Store) -> HashMap<(String, String), f64> {
        committed_totals(store.consumer_offsets())
            .into_iter()
            .map(|(key, now)| {
                let rate = self.commit_rate(&key.0, &key.1, now);
                (key, rate)
            })
            .collect()
    }
}

fn totals(queues: &[keel_storage::QueueStat]) -> (u64, u64) {
    queues.iter().fold((0, 0), |(messages, bytes), queue| {
        (
            messages.saturating_add(queue.max_offset),
            bytes.saturating_add(queue.appended_bytes),
        )
    })
}

impl Rates {
    /// TOPIC_STATS: each queue's range and size, and what the topic took in over the
    /// last minute (`topic`, or every topic when empty). Memory only.
    pub fn topic_stats(&self, store: &Store, topic: &str) -> Vec<TopicStats> {
        let only = (!topic.is_empty()).then_some(topic);
        store
            .queue_stats(only)
            .into_iter()
            .map(|(topic, queues)| {
                let (now_messages, now_bytes) = totals(&queues);
                let (window_ms, (then_messages, then_bytes)) = self.since_oldest(&topic);
                TopicStats {
                    window_ms,
                    window_messages: now_messages.saturating_sub(then_messages),
                    window_bytes: now_bytes.saturating_sub(then_bytes),
                    queues: queues
                        .iter()
                        .map(|queue| QueueStats {
                            min_offset: queue.min_offset,
                            max_offset: queue.max_offset,
                            bytes: queue.bytes,
                        })
                        .collect(),
                    topic,
                }
            })
            .collect()
    }
}

/// Takes a note of `store`'s totals now (every second, from `Broker::start_rates`).
pub fn note_now(rates: &Rates, store: &Store) {
    let totals = store
        .queue_stats(None)
        .into_iter()
        .map(|(topic, queues)| (topic, totals(&queues)))
        .collect();
    let committed = committed_totals(store.consumer_offsets());
    rates.note(totals, committed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_older_than_the_window_are_forgotten_but_one() {
        let rates = Rates::default();
        let old = Instant::now() - WINDOW - Duration::from_secs(5);
        rates.lock().push_back(Note {
            at: old,
            totals: HashMap::from([("t".to_string(), (10, 100))]),
            committed: HashMap::new(),
        });
        rates.lock().push_back(Note {
            at: old + Duration::from_secs(2),
            totals: HashMap::from([("t".to_string(), (12, 120))]),
            committed: HashMap::from([(("g".to_string(), "t".to_string()), 4)]),
        });
        rates.note(
            HashMap::from([("t".to_string(), (20, 200))]),
            HashMap::new(),
        );
        // The note 63 s old is the newest one at least a minute old: it stays.
        assert_eq!(rates.lock().len(), 2);
        let (window_ms, then) = rates.since_oldest("t");
        assert_eq!(window_ms, 60_000);
        assert_eq!(then, (12, 120));
        assert_eq!(rates.since_oldest("new").1, (0, 0));
        // Committed from 4 to 64 over the minute the note covers: one a second.
        assert!((rates.commit_rate("g", "t", 64) - 1.0).abs() < 0.01);
        assert_eq!(rates.commit_rate("new-group", "t", 1_000_000), 0.0);
    }
}

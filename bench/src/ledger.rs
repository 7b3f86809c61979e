//! The ledger: what every send was told, what consumers read, and what that means.
//!
//! A send is `Ok` only if it got `SEND_OK`. An error from the broker (or a send that
//! never left the client) is `Failed`: the message must not be stored. Any other
//! status, a timeout or a cut connection is `Indeterminate`: the message may or may not
//! be stored. The standard check (docs/TESTING.md): lost = ok - read must be empty,
//! unexpected (read, never sent) must be empty, and nothing failed may be read;
//! duplicates and recovered indeterminate sends are counted.

use keel_client::{Admin, Consumer, ConsumerOptions, Record};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reads every record of `topic` on the broker at `address` from the start, as `group`
/// (a fresh one: it commits as it goes), until each queue's position reaches the end the
/// broker reported when the read began. Checks CRCs on the way (the consumer does).
pub fn read_all(
    address: &str,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let admin = Admin::connect(address).map_err(|e| format!("{address}: {e}"))?;
    let topics = admin
        .list_topics(Some(topic))
        .map_err(|e| format!("{address}: list topics: {e}"))?;
    let ends: Vec<u64> = topics
        .first()
        .map(|t| t.queues.iter().map(|q| q.max_offset).collect())
        .unwrap_or_default();
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(100),
        pull_batch: 256,
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(address, group, topic, options)
        .map_err(|e| format!("{address}: consumer: {e}"))?;
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while consumer
        .positions()
        .iter()
        .zip(&ends)
        .any(|(position, end)| position < end)
    {
        if Instant::now() >= deadline {
            return Err(format!(
                "reading {topic} did not reach {ends:?} within {timeout:?}: at {:?}",
                consumer.positions()
            ));
        }
        consumer
            .poll(|record| {
                records.push(record.clone());
                Ok::<(), String>(())
            })
            .map_err(|e| format!("{address}: poll: {e}"))?;
    }
    Ok(records)
}

/// A payload of `size` bytes (at least the id's length) that starts with `id` and is
/// filled with bytes derived from it, so a consumer can check it byte for byte.
pub fn payload_for(id: &str, size: usize) -> Vec<u8> {
    let mut payload = id.as_bytes().to_vec();
    payload.push(b'|');
    let mut state = crc32c::crc32c(id.as_bytes()) as u64 | 1;
    while payload.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        payload.push(b'a' + (state % 26) as u8);
    }
    payload
}

/// The id a payload made by `payload_for` carries, if it is intact.
pub fn id_of(payload: &[u8]) -> Option<String> {
    let end = payload.iter().position(|byte| *byte == b'|')?;
    let id = std::str::from_utf8(&payload[..end]).ok()?.to_string();
    (payload_for(&id, payload.len()) == payload).then_some(id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Indeterminate(String),
    /// Answered with an error (or not sent): "not stored".
    Failed(String),
}

impl Outcome {
    /// What a send's result means for the ledger.
    pub fn of(result: &Result<keel_client::SendResult, keel_client::ClientError>) -> Outcome {
        Outcome::of_status(result.as_ref().map(|result| result.status))
    }

    /// `of`, for anything answered with a send status (a batch, a handle).
    pub fn of_status(
        result: Result<keel_client::SendStatus, &keel_client::ClientError>,
    ) -> Outcome {
        match result {
            Ok(keel_client::SendStatus::SendOk) => Outcome::Ok,
            Ok(status) => Outcome::Indeterminate(status.to_string()),
            Err(error) if error.is_outcome_unknown() => Outcome::Indeterminate(error.to_string()),
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }

    /// Ok over indeterminate over failed: a later attempt can only show more stored.
    fn rank(&self) -> u8 {
        match self {
            Outcome::Ok => 2,
            Outcome::Indeterminate(_) => 1,
            Outcome::Failed(_) => 0,
        }
    }
}

#[derive(Default)]
pub struct Ledger {
    sent: Mutex<HashMap<String, Outcome>>,
    read: Mutex<Vec<String>>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub ok: usize,
    pub indeterminate: usize,
    pub read: usize,
    /// Acknowledged (`SEND_OK`) but never read.
    pub lost: Vec<String>,
    /// Read more than once, with the count.
    pub duplicated: Vec<(String, usize)>,
    /// Read but never sent.
    pub unexpected: Vec<String>,
    /// Answered with an error ("not stored") and yet read.
    pub failed_but_stored: Vec<String>,
    pub failed: usize,
    /// Indeterminate sends that turned out to be stored.
    pub recovered: usize,
    /// Indeterminate outcomes by reason, for the test's log.
    pub reasons: BTreeMap<String, usize>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records what a send was told. A later outcome for the same id replaces an
    /// earlier one only when it shows more stored (a retry that succeeded): `Ok` over
    /// `Indeterminate` over `Failed`.
    pub fn sent(&self, id: &str, outcome: Outcome) {
        let mut sent = self.sent.lock().unwrap();
        let entry = sent
            .entry(id.to_string())
            .or_insert_with(|| outcome.clone());
        if outcome.rank() > entry.rank() {
            *entry = outcome;
        }
    }

    pub fn read(&self, id: &str) {
        self.read.lock().unwrap().push(id.to_string());
    }

    pub fn ok_count(&self) -> usize {
        self.sent
            .lock()
            .unwrap()
            .values()
            .filter(|outcome| **outcome == Outcome::Ok)
            .count()
    }

    pub fn report(&self) -> Report {
        let sent = self.sent.lock().unwrap();
        let read = self.read.lock().unwrap();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in read.iter() {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let mut report = Report {
            read: read.len(),
            ..Report::default()
        };
        for (id, outcome) in sent.iter() {
            let seen = counts.get(id.as_str()).copied().unwrap_or(0);
            match outcome {
                Outcome::Ok => {
                    report.ok += 1;
                    if seen == 0 {
                        report.lost.push(id.clone());
                    }
                }
                Outcome::Indeterminate(reason) => {
                    report.indeterminate += 1;
                    *report.reasons.entry(reason.clone()).or_default() += 1;
                    if seen > 0 {
                        report.recovered += 1;
                    }
                }
                Outcome::Failed(_) => {
                    report.failed += 1;
                    if seen > 0 {
                        report.failed_but_stored.push(id.clone());
                    }
                }
            }
        }
        for (id, count) in &counts {
            if !sent.contains_key(*id) {
                report.unexpected.push(id.to_string());
            }
            if *count > 1 {
                report.duplicated.push((id.to_string(), *count));
            }
        }
        report.lost.sort();
        report.unexpected.sort();
        report.failed_but_stored.sort();
        report.duplicated.sort();
        report
    }
}

impl Report {
    /// Nothing acknowledged lost, nothing unexpected read, nothing refused stored.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.failed_but_stored.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok={} indeterminate={} failed={} read={} lost={} duplicated={} unexpected={} \
             recovered={} failed_but_stored={}",
            self.ok,
            self.indeterminate,
            self.failed,
            self.read,
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.recovered,
            self.failed_but_stored.len()
        )?;
        if !self.failed_but_stored.is_empty() {
            write!(
                f,
                "\n  answered with an error yet stored (first 10): {:?}",
                &self.failed_but_stored[..self.failed_but_stored.len().min(10)]
            )?;
        }
        if !self.lost.is_empty() {
            write!(
                f,
                "\n  lost (first 10): {:?}",
                &self.lost[..self.lost.len().min(10)]
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\n  unexpected (first 10): {:?}",
                &self.unexpected[..self.unexpected.len().min(10)]
            )?;
        }
        if !self.duplicated.is_empty() {
            write!(
                f,
                "\n  duplicated (first 10): {:?}",
                &self.duplicated[..self.duplicated.len().min(10)]
            )?;
        }
        if !self.reasons.is_empty() {
            write!(f, "\n  indeterminate reasons: {:?}", self.reasons)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_identify_themselves_and_detect_damage() {
        let payload = payload_for("p3-s17", 1024);
        assert_eq!(payload.len(), 1024);
        assert_eq!(id_of(&payload).as_deref(), Some("p3-s17"));
        let mut damaged = payload.clone();
        damaged[900] ^= 1;
        assert_eq!(id_of(&damaged), None);
    }

    #[test]
    fn report_finds_lost_duplicated_unexpected_and_recovered() {
        let ledger = Ledger::new();
        ledger.sent("a", Outcome::Ok);
        ledger.sent("b", Outcome::Ok);
        ledger.sent("c", Outcome::Indeterminate("timeout".into()));
        ledger.sent("d", Outcome::Indeterminate("timeout".into()));
        ledger.sent("d", Outcome::Ok);
        ledger.sent("e", Outcome::Failed("refused".into()));
        ledger.sent("f", Outcome::Failed("refused".into()));
        ledger.sent("f", Outcome::Indeterminate("retry timed out".into()));
        for id in ["a", "a", "c", "d", "zz", "e", "f"] {
            ledger.read(id);
        }
        let report = ledger.report();
        assert_eq!(report.lost, vec!["b".to_string()]);
        assert_eq!(report.duplicated, vec![("a".to_string(), 2)]);
        assert_eq!(report.unexpected, vec!["zz".to_string()]);
        assert_eq!(report.recovered, 2);
        assert_eq!(report.ok, 3);
        assert_eq!(report.failed_but_stored, vec!["e".to_string()]);
        assert!(!report.is_clean());
    }
}

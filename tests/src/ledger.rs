//! The ledger: what every send was told, what consumers read, and what that means.
//!
//! A send is `Ok` only if it got `SEND_OK`. Any other status, an error or a timeout is
//! `Indeterminate`: the message may or may not be stored. The standard check
//! (RELIABILITY.md): lost = ok - read must be empty, unexpected (read, never sent) must
//! be empty; duplicates and recovered indeterminate sends are counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Indeterminate(String),
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
    /// indeterminate one (a retry that succeeded) but never an `Ok`.
    pub fn sent(&self, id: &str, outcome: Outcome) {
        let mut sent = self.sent.lock().unwrap();
        let entry = sent
            .entry(id.to_string())
            .or_insert_with(|| outcome.clone());
        if outcome == Outcome::Ok {
            *entry = Outcome::Ok;
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
        report.duplicated.sort();
        report
    }
}

impl Report {
    /// Nothing acknowledged lost, nothing unexpected read.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok={} indeterminate={} read={} lost={} duplicated={} unexpected={} recovered={}",
            self.ok,
            self.indeterminate,
            self.read,
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.recovered
        )?;
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
    fn report_finds_lost_duplicated_unexpected_and_recovered() {
        let ledger = Ledger::new();
        ledger.sent("a", Outcome::Ok);
        ledger.sent("b", Outcome::Ok);
        ledger.sent("c", Outcome::Indeterminate("timeout".into()));
        ledger.sent("d", Outcome::Indeterminate("timeout".into()));
        ledger.sent("d", Outcome::Ok);
        for id in ["a", "a", "c", "d", "zz"] {
            ledger.read(id);
        }
        let report = ledger.report();
        assert_eq!(report.lost, vec!["b".to_string()]);
        assert_eq!(report.duplicated, vec![("a".to_string(), 2)]);
        assert_eq!(report.unexpected, vec!["zz".to_string()]);
        assert_eq!(report.recovered, 1);
        assert_eq!(report.ok, 3);
        assert!(!report.is_clean());
    }
}

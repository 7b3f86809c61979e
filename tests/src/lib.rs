//! Shared pieces of keel's integration and fault tests: the ledger that checks "nothing
//! acknowledged is lost", and deterministic payloads that can be checked byte for byte
//! (kept in keel-bench, whose `chaos` command uses them too).

pub use keel_bench::ledger::{id_of, payload_for, Ledger, Outcome, Report};

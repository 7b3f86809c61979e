//! What the broker waits for before it answers each request kind: the wire contract's
//! table, which docs/PROTOCOL.md prints ("What each request waits for", checked by a
//! test) and from which a client sizes its timeouts. It also says where the work runs,
//! so that nothing that waits runs on an event loop.

use crate::Kind;

/// What an answer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: answered on the event loop from memory.
    Nothing,
    /// The record's fsync (and, on a `sync_master`, a slave's), within the flush and
    /// slave timeouts.
    Durability,
    /// Records to arrive (a long poll), then their read, on a reader thread.
    Records,
    /// A binary search over the queue's index, on a reader thread.
    IndexSearch,
    /// The metadata files' fsync (offsets, topics, groups).
    Metadata,
    /// The deletion record's durability (a slave's too, on a `sync_master`), on a
    /// thread for slow requests.
    Deletion,
    /// The security thread: a password check (Argon2id) or a security change written
    /// to `security.json`.
    SecurityThread,
    /// A scan of the whole log, on a thread for slow requests.
    LogScan,
    /// The promotion thread: the end of the master's stream and the fsync of what
    /// arrived.
    Promotion,
    /// A thread for slow requests, with the broker's open transactions (a commit or
    /// rollback also waits for its records' durability).
    Transactions,
}

impl Wait {
    /// The words docs/PROTOCOL.md prints for it.
    pub fn words(self) -> &'static str {
        match self {
            Wait::Nothing => "nothing: answered on the event loop",
            Wait::Durability => "the fsync (and a slave's on a sync master)",
            Wait::Records => "records or the long-poll deadline, then a reader thread",
            Wait::IndexSearch => "a reader thread's search of the queue's index",
            Wait::Metadata => "the metadata files' fsync",
            Wait::Deletion => "the deletion record's durability, on a slow-request thread",
            Wait::SecurityThread => "the security thread",
            Wait::LogScan => "a scan of the whole log, on a slow-request thread",
            Wait::Promotion => "the promotion thread",
            Wait::Transactions => {
                "a slow-request thread (the open transactions; a commit or rollback also \
                 waits for its records' durability)"
            }
        }
    }
}

impl Kind {
    /// `None` for response kinds. An exhaustive match: a new kind does not compile
    /// without saying what it waits for.
    pub fn waits_for(self) -> Option<Wait> {
        Some(match self {
            Kind::Ping | Kind::Heartbeat | Kind::QueryOffset | Kind::ListTopics => Wait::Nothing,
            Kind::Stats | Kind::TopicStats | Kind::ListGroups => Wait::Nothing,
            Kind::RegisterBroker | Kind::GetRoutes | Kind::GetBrokers => Wait::Nothing,
            Kind::Send | Kind::SendBatch | Kind::SendBack => Wait::Durability,
            Kind::Pull => Wait::Records,
            Kind::OffsetForTime => Wait::IndexSearch,
            Kind::CommitOffset | Kind::GroupCommit => Wait::Metadata,
            Kind::CreateTopic | Kind::AddQueues | Kind::DeleteGroup => Wait::Metadata,
            Kind::GroupSettings => Wait::Metadata,
            Kind::DeleteTopic => Wait::Deletion,
            Kind::Login | Kind::SecurityAdmin => Wait::SecurityThread,
            Kind::MessageInfo => Wait::LogScan,
            Kind::EndTransaction => Wait::Transactions,
            Kind::CheckTransactions | Kind::ListTransactions => Wait::Transactions,
            Kind::Promote => Wait::Promotion,
            Kind::Pong
            | Kind::SendResult
            | Kind::PullResult
            | Kind::CommitOffsetOk
            | Kind::Offset
            | Kind::TopicCreated
            | Kind::TopicList
            | Kind::StatsResult
            | Kind::SendBatchResult
            | Kind::Promoted
            | Kind::Registered
            | Kind::Routes
            | Kind::Assignment
            | Kind::Info
            | Kind::LoginOk
            | Kind::SecurityResult
            | Kind::GroupList
            | Kind::TopicStatsResult
            | Kind::Brokers
            | Kind::TopicDeleted
            | Kind::GroupDeleted
            | Kind::GroupSettingsResult
            | Kind::TransactionEnded
            | Kind::TransactionChecks
            | Kind::Transactions
            | Kind::Error => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md prints one row per request kind: its permission and what it
    /// waits for, in the words of `Kind::permission` and `Kind::waits_for`.
    #[test]
    fn every_request_kind_says_what_it_waits_for_and_the_protocol_doc_prints_it() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for kind in Kind::ALL.iter().copied() {
            match (kind.is_request(), kind.waits_for()) {
                (true, Some(wait)) => {
                    let row = format!("| {} | {} |", kind.name(), wait.words());
                    assert!(doc.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
                }
                (true, None) => panic!("request kind {} says no wait", kind.name()),
                (false, Some(_)) => panic!("response kind {} waits", kind.name()),
                (false, None) => {}
            }
        }
    }
}

//! The permission each request kind needs, in words: the wire contract's table, which
//! docs/PROTOCOL.md prints ("Security") and the broker enforces (a test in the server
//! holds its checks to these words, another holds the docs to them).

use crate::Kind;

impl Kind {
    /// `None` for response kinds. An exhaustive match: a new kind does not compile
    /// without its rule.
    pub fn permission(self) -> Option<&'static str> {
        let kind = self;
        Some(match kind {
            Kind::Ping => "none (allowed before login)",
            Kind::Login => "none (allowed before login)",
            Kind::Send => "topic:publish",
            Kind::SendBatch => "topic:publish (each topic in the batch)",
            Kind::Pull => "topic:subscribe, and group:consume when a group is named",
            Kind::OffsetForTime => "topic:subscribe",
            Kind::Heartbeat => "group:consume and topic:subscribe",
            Kind::GroupCommit => "group:commit",
            Kind::CommitOffset => "group:commit",
            Kind::QueryOffset => "group:consume",
            Kind::SendBack => "group:consume",
            Kind::CreateTopic | Kind::AddQueues => "admin:create_topic",
            Kind::DeleteTopic => "admin:delete_topic",
            Kind::DeleteGroup => "group:commit",
            Kind::GroupSettings => "group:consume to read, group:commit to change",
            Kind::EndTransaction => "topic:publish",
            Kind::CheckTransactions => "group:consume (the producer group)",
            Kind::ListTransactions => "admin:lookup",
            Kind::ListTopics => "topic:describe (admin:describe to list every topic)",
            Kind::Stats => "admin:stats",
            Kind::MessageInfo => "admin:lookup",
            Kind::Promote => "cluster:promote",
            Kind::RegisterBroker => "cluster:register",
            Kind::GetRoutes => "topic:describe (admin:describe for every route)",
            Kind::GetBrokers => "admin:describe",
            Kind::SecurityAdmin => "admin:security",
            Kind::ListGroups => "group:consume (admin:describe to list every group)",
            Kind::TopicStats => "topic:describe (admin:describe for every topic)",
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

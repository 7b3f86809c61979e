//! One decoded request to its handler.

use crate::broker::connection::ReplyTo;
use crate::broker::handlers::{admin, group, message_info, pull, send, transaction};
use crate::broker::shard::Shard;
use keel_protocol::{ErrorCode, Request, Response};

impl Shard {
    /// Carries out one request of connection `to`. Its answer (none for a oneway send)
    /// goes to the outbox, now or once it is known.
    pub(crate) fn dispatch(&mut self, to: ReplyTo, oneway: bool, request: Request) {
        match request {
            Request::Ping => self.reply(to, Response::Pong),
            Request::Send(message) => send::on_send(self, to, oneway, vec![message], false),
            Request::SendBatch(messages) => send::on_send(self, to, oneway, messages, true),
            Request::Pull(request) => pull::on_pull(self, to, request),
            Request::OffsetForTime(query) => pull::on_offset_for_time(self, to, query),
            Request::Heartbeat(heartbeat) => group::on_heartbeat(self, to, heartbeat),
            Request::GroupCommit(commit) => group::on_group_commit(self, to, commit),
            Request::SendBack(back) => group::on_send_back(self, to, back),
            Request::CommitOffset(commit) => admin::on_commit_offset(self, to, commit),
            Request::QueryOffset(query) => admin::on_query_offset(self, to, query),
            Request::CreateTopic(create) => admin::on_create_topic(self, to, create),
            Request::AddQueues(grow) => admin::on_add_queues(self, to, grow),
            Request::DeleteTopic { topic, force } => admin::on_delete_topic(self, to, topic, force),
            Request::GroupSettings { group, ordered } => {
                group::on_group_settings(self, to, &group, ordered)
            }
            Request::EndTransaction(end) => transaction::on_end_transaction(self, to, end),
            Request::CheckTransactions {
                producer_group,
                max,
            } => transaction::on_check_transactions(self, to, producer_group, max),
            Request::ListTransactions { producer_group } => {
                transaction::on_list_transactions(self, to, producer_group)
            }
            Request::DeleteGroup { group, force } => {
                group::on_delete_group(self, to, &group, force)
            }
            Request::ListTopics(list) => admin::on_list_topics(self, to, list),
            Request::TopicStats(topic) => {
                let topics = self.broker.topic_stats(&topic);
                self.reply(to, Response::TopicStats(topics));
            }
            Request::ListGroups(group) => {
                let groups = self.broker.group_list(&group);
                self.reply(to, Response::GroupList(groups));
            }
            Request::Stats => {
                let stats = self.broker.stats();
                self.reply(to, Response::Stats(stats));
            }
            Request::Promote { role, force } => admin::on_promote(self, to, role, force),
            Request::MessageInfo { msg_id, key } => {
                message_info::on_message_info(self, to, msg_id, key)
            }
            // The event loop answers these (`EventLoop::admit`) and never hands them over.
            Request::Login(_) | Request::SecurityAdmin(_) => {
                let detail = format!("{} reached the shard", request.kind().name());
                self.reply(to, Response::error(ErrorCode::Internal, detail));
            }
            Request::RegisterBroker(_) | Request::GetRoutes(_) | Request::GetBrokers => {
                let detail = format!(
                    "{} is for a name server (keeld namesrv), not a broker",
                    request.kind().name()
                );
                self.reply(to, Response::error(ErrorCode::InvalidArgument, detail));
            }
        }
    }
}

//! Topic and broker administration: create and list topics, read and set consumer
//! group offsets, read stats.

use crate::connection::{Connection, ConnectionOptions};
use crate::{resolve, ClientError};
use keel_protocol::{
    CommitOffsetRequest, CreateTopicRequest, ListTopicsRequest, QueryOffsetRequest, Request,
    Response, TopicCreated, TopicInfo,
};
use std::time::Duration;

pub struct Admin {
    connection: Connection,
    timeout: Duration,
}

impl Admin {
    pub fn connect(address: &str) -> Result<Admin, ClientError> {
        let connection = Connection::connect(resolve(address)?, &ConnectionOptions::default())?;
        Ok(Admin {
            connection,
            timeout: Duration::from_secs(10),
        })
    }

    fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self.connection.call(&request, self.timeout)? {
            Response::Error(error) => Err(ClientError::Broker(error)),
            response => Ok(response),
        }
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other, "PING")),
        }
    }

    /// Creates a topic (returned with `created = false` if it already existed).
    pub fn create_topic(&self, topic: &str, queues: u32) -> Result<TopicCreated, ClientError> {
        match self.call(Request::CreateTopic(CreateTopicRequest {
            topic: topic.into(),
            queues,
        }))? {
            Response::TopicCreated(created) => Ok(created),
            other => Err(unexpected(&other, "CREATE_TOPIC")),
        }
    }

    /// Every topic (or only `topic`) with each queue's offsets.
    pub fn list_topics(&self, topic: Option<&str>) -> Result<Vec<TopicInfo>, ClientError> {
        let request = Request::ListTopics(ListTopicsRequest {
            topic: topic.unwrap_or_default().into(),
        });
        match self.call(request)? {
            Response::TopicList(topics) => Ok(topics),
            other => Err(unexpected(&other, "LIST_TOPICS")),
        }
    }

    /// The offset `group` committed for a queue, if any.
    pub fn query_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ClientError> {
        let request = Request::QueryOffset(QueryOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            queue_id,
        });
        match self.call(request)? {
            Response::Offset(offset) => Ok(offset),
            other => Err(unexpected(&other, "QUERY_OFFSET")),
        }
    }

    /// Sets the offset of `group` for a queue (durable when this returns).
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        let request = Request::CommitOffset(CommitOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            queue_id,
            offset,
        });
        match self.call(request)? {
            Response::CommitOffsetOk => Ok(()),
            other => Err(unexpected(&other, "COMMIT_OFFSET")),
        }
    }

    pub fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        match self.call(Request::Stats)? {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other, "STATS")),
        }
    }
}

impl Admin {
    /// Promotes the slave this admin is connected to into a master with `role`
    /// (async_master, sync_master or master). Returns its new epoch and log end.
    pub fn promote(&self, role: keel_protocol::BrokerRole) -> Result<(u64, u64), ClientError> {
        match self.call(Request::Promote(role))? {
            Response::Promoted { epoch, log_end } => Ok((epoch, log_end)),
            other => Err(unexpected(&other, "PROMOTE")),
        }
    }
}

pub(crate) fn unexpected(response: &Response, request: &str) -> ClientError {
    ClientError::Protocol(format!("{} in reply to {request}", response.kind().name()))
}

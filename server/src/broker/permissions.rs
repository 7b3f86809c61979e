//! The permission every request kind needs: one table, checked in one place on the
//! dispatch path (`refusal`), its words (`rule`) held to docs/PROTOCOL.md by a test.

use keel_protocol::{Kind, OwnTopic, Request};
use keel_security::{Action, Authority, Principal, ResourceType};

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub resource: ResourceType,
    pub name: String,
    pub action: Action,
}

fn need(resource: ResourceType, name: &str, action: Action) -> Need {
    Need {
        resource,
        name: name.to_string(),
        action,
    }
}

/// The broker's own topics and groups (`%...`, the scheduler's among them) hold
/// copies of every topic's messages: only an operator with `admin:security` (the
/// strongest permission) reaches them directly.
fn own_need() -> Need {
    need(ResourceType::Admin, "*", Action::Security)
}

/// A topic's permission: a group's retry and dead-letter topics are the group's
/// (consume), the broker's other own topics (`%...`) need `own_need`.
fn topic_need(topic: &str, action: Action) -> Need {
    match keel_protocol::own_topic(topic) {
        Some(OwnTopic::Retry { group } | OwnTopic::DeadLetter { group }) => {
            group_need(group, Action::Consume)
        }
        Some(OwnTopic::Schedule | OwnTopic::Reserved) => own_need(),
        None => need(ResourceType::Topic, topic, action),
    }
}

/// A group's permission; the broker's own groups (`%...`) need `own_need`.
fn group_need(group: &str, action: Action) -> Need {
    if group.starts_with('%') {
        return own_need();
    }
    need(ResourceType::Group, group, action)
}

/// The permissions `request` needs; `None` for the two kinds every connection may
/// send (PING, LOGIN). An exhaustive match: a new request kind does not compile
/// without its rule.
pub fn needs(request: &Request) -> Option<Vec<Need>> {
    use Action::*;
    use ResourceType::*;
    let needs = match request {
        Request::Ping | Request::Login(_) => return None,
        Request::Send(message) => vec![topic_need(&message.topic, Publish)],
        Request::SendBatch(messages) => {
            let mut needs: Vec<Need> = Vec::new();
            for message in messages {
                let wanted = topic_need(&message.topic, Publish);
                if !needs.contains(&wanted) {
                    needs.push(wanted);
                }
            }
            needs
        }
        Request::Pull(pull) => {
            let mut needs = vec![topic_need(&pull.topic, Subscribe)];
            if !pull.group.is_empty() {
                needs.push(group_need(&pull.group, Consume));
            }
            needs
        }
        Request::OffsetForTime(query) => vec![topic_need(&query.topic, Subscribe)],
        Request::Heartbeat(heartbeat) => vec![
            group_need(&heartbeat.group, Consume),
            topic_need(&heartbeat.topic, Subscribe),
        ],
        Request::GroupCommit(commit) => vec![group_need(&commit.group, Commit)],
        Request::CommitOffset(commit) => vec![group_need(&commit.group, Commit)],
        Request::QueryOffset(query) => vec![group_need(&query.group, Consume)],
        Request::SendBack(back) => vec![group_need(&back.group, Consume)],
        Request::CreateTopic(_) | Request::AddQueues(_) => vec![need(Admin, "*", CreateTopic)],
        Request::DeleteTopic { .. } => vec![need(Admin, "*", DeleteTopic)],
        // Whoever may commit a group's offsets may reset them: deleting them is that.
        Request::DeleteGroup { group, .. } => vec![group_need(group, Commit)],
        Request::GroupSettings { group, ordered } => match ordered {
            None => vec![group_need(group, Consume)],
            Some(_) => vec![group_need(group, Commit)],
        },
        Request::ListTopics(list) if list.topic.is_empty() => vec![need(Admin, "*", Describe)],
        Request::ListTopics(list) => vec![topic_need(&list.topic, Describe)],
        Request::Stats => vec![need(Admin, "*", Stats)],
        Request::MessageInfo { .. } => vec![need(Admin, "*", Lookup)],
        Request::EndTransaction(end) => vec![topic_need(&end.topic, Publish)],
        Request::CheckTransactions { producer_group, .. } => {
            vec![group_need(producer_group, Consume)]
        }
        Request::ListTransactions { .. } => vec![need(Admin, "*", Lookup)],
        Request::Promote { .. } => vec![need(Cluster, "*", Promote)],
        Request::RegisterBroker(_) => vec![need(Cluster, "*", Register)],
        Request::GetBrokers => vec![need(Admin, "*", Describe)],
        Request::GetRoutes(topic) if topic.is_empty() => vec![need(Admin, "*", Describe)],
        Request::GetRoutes(topic) => vec![topic_need(topic, Describe)],
        Request::SecurityAdmin(_) => vec![need(Admin, "*", Security)],
        Request::ListGroups(group) if group.is_empty() => vec![need(Admin, "*", Describe)],
        Request::ListGroups(group) => vec![group_need(group, Consume)],
        Request::TopicStats(topic) if topic.is_empty() => vec![need(Admin, "*", Describe)],
        Request::TopicStats(topic) => vec![topic_need(topic, Describe)],
    };
    Some(needs)
}

/// The rule of each request kind, in words: `Kind::permission` (docs/PROTOCOL.md has
/// the same table; a test holds them together, another holds `needs` to it).
pub fn rule(kind: Kind) -> Option<&'static str> {
    kind.permission()
}

/// The first permission `principal` lacks for `request`, if any.
pub(crate) fn refusal(
    authority: &Authority,
    principal: &Principal,
    request: &Request,
) -> Option<Need> {
    needs(request)?
        .into_iter()
        .find(|need| !authority.permits(principal, need.resource, &need.name, need.action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_kind_has_a_rule_and_the_protocol_doc_lists_it() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        for kind in Kind::ALL.iter().copied() {
            match (kind.is_request(), rule(kind)) {
                (true, Some(rule)) => {
                    let row = format!("| {} | {rule} |", kind.name());
                    assert!(doc.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
                }
                (true, None) => panic!("request kind {} has no permission rule", kind.name()),
                (false, Some(_)) => panic!("response kind {} has a rule", kind.name()),
                (false, None) => {}
            }
        }
    }

    #[test]
    fn a_groups_own_topics_are_the_groups_and_the_brokers_are_admins() {
        let send = |topic: &str| {
            let message = keel_protocol::Message::new(topic, "x");
            needs(&Request::Send(message)).unwrap()
        };
        assert_eq!(
            send("orders"),
            vec![need(ResourceType::Topic, "orders", Action::Publish)]
        );
        assert_eq!(
            send("%RETRY%g"),
            vec![need(ResourceType::Group, "g", Action::Consume)]
        );
        assert_eq!(
            send("%DLQ%g"),
            vec![need(ResourceType::Group, "g", Action::Consume)]
        );
        assert_eq!(send("%SCHEDULE%"), vec![own_need()]);
        let commit = Request::CommitOffset(keel_protocol::CommitOffsetRequest {
            group: "%SCHEDULER%".into(),
            topic: "%SCHEDULE%".into(),
            ..Default::default()
        });
        assert_eq!(needs(&commit).unwrap(), vec![own_need()]);
        assert_eq!(needs(&Request::Ping), None);
    }
}

//! Who may do what: the permission every request kind needs (one table, checked in one
//! place on the dispatch path), and the thread that checks logins and carries out
//! security admin requests off the event loops (Argon2id takes milliseconds; a change
//! is fsynced before it is answered).

use crate::config::Config;
use crate::connection::ReplyTo;
use crate::error::BrokerError;
use keel_protocol::{ErrorCode, Kind, Login, Request, Response};
use keel_security::{
    Action, Authority, ClientTls, LoginError, Principal, ResourceType, SecurityCommand,
    SECURITY_FILE,
};
use mio::Waker;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;

/// Logins and admin requests waiting for the security thread; past this, new ones are
/// refused (OVERLOADED) instead of queueing without bound.
const JOBS_MAX: usize = 1024;

/// A broker's security set-up.
pub struct Security {
    pub authority: Arc<Authority>,
    /// The client port's and HA port's TLS, when on.
    pub tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// TLS for the connections this broker makes (to its master, name servers).
    pub outbound_tls: Option<ClientTls>,
    /// The cluster token this broker shows its master and the name servers.
    pub cluster_token: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("outbound_tls", &self.outbound_tls)
            .finish()
    }
}

impl Security {
    /// Loads what `from_config` would (certificates, keys, the token file) without
    /// touching the data directory.
    pub fn check(config: &Config) -> Result<(), BrokerError> {
        let settings = &config.security;
        let fail = |detail: String| BrokerError::Security(detail);
        if let Some(tls) = settings.server_tls() {
            tls.config().map_err(fail)?;
        }
        if let Some(ca) = &settings.tls_ca_file {
            ClientTls::new(ca, None, settings.tls_server_name.clone()).map_err(fail)?;
        }
        if let Some(path) = &settings.cluster_token_file {
            keel_security::read_secret_file(path).map_err(fail)?;
        }
        Ok(())
    }

    /// How this broker reaches name servers and the controllers.
    pub fn dial(&self) -> keel_net::Dial {
        keel_net::Dial {
            tls: self.outbound_tls.clone(),
            token: self.cluster_token.clone().map(keel_security::Secret),
        }
    }

    /// The HA link's share: TLS both ways, the token shown to a master, the rules.
    pub fn ha(&self) -> keel_replication::HaSecurity {
        keel_replication::HaSecurity {
            authority: self.authority.clone(),
            server_tls: self.tls.clone(),
            client_tls: self.outbound_tls.clone(),
            token: self.cluster_token.clone().map(keel_security::Secret),
        }
    }

    /// Loads certificates, keys, the cluster token and the users, tokens and
    /// permissions in the data directory; any of them unusable stops the start.
    pub fn from_config(config: &Config) -> Result<Security, BrokerError> {
        let settings = &config.security;
        let fail = |detail: String| BrokerError::Security(detail);
        let tls = match settings.server_tls() {
            Some(tls) => Some(tls.config().map_err(fail)?),
            None => None,
        };
        let outbound_tls = match &settings.tls_ca_file {
            Some(ca) => {
                let cert_key = match (&settings.tls_cert_file, &settings.tls_key_file) {
                    (Some(cert), Some(key)) if settings.tls_client_ca_file.is_some() => {
                        Some((cert.as_path(), key.as_path()))
                    }
                    _ => None,
                };
                Some(ClientTls::new(ca, cert_key, settings.tls_server_name.clone()).map_err(fail)?)
            }
            None => None,
        };
        let cluster_token = match &settings.cluster_token_file {
            Some(path) => Some(keel_security::read_secret_file(path).map_err(fail)?),
            None => None,
        };
        if cluster_token.is_some() && outbound_tls.is_none() {
            let remote = config
                .master_address
                .iter()
                .chain(&config.namesrv_addrs)
                .chain(&config.controller_addrs)
                .find(|address| !keel_net::channel::is_loopback_address(address));
            if let Some(address) = remote {
                log::warn!(
                    "the cluster token goes to {address} in plaintext (no tls_ca_file): anyone \
                     on the path can read it, and peers refuse it from another host"
                );
            }
        }
        let authority = Authority::open(
            settings.auth,
            Some(config.data_dir.join(SECURITY_FILE)),
            cluster_token.as_deref(),
        )
        .map_err(fail)?;
        Ok(Security {
            authority: Arc::new(authority),
            tls,
            outbound_tls,
            cluster_token,
        })
    }
}

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
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
    if let Some(group) = topic
        .strip_prefix("%RETRY%")
        .or_else(|| topic.strip_prefix("%DLQ%"))
    {
        return group_need(group, Action::Consume);
    }
    if topic.starts_with('%') {
        return own_need();
    }
    need(ResourceType::Topic, topic, action)
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
pub(crate) fn needs(request: &Request) -> Option<Vec<Need>> {
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
        Request::ListTopics(list) if list.topic.is_empty() => vec![need(Admin, "*", Describe)],
        Request::ListTopics(list) => vec![topic_need(&list.topic, Describe)],
        Request::Stats => vec![need(Admin, "*", Stats)],
        Request::MessageInfo { .. } => vec![need(Admin, "*", Lookup)],
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

/// The rule of each request kind, in words (docs/PROTOCOL.md has the same table; a
/// test holds them together). `None` for response kinds.
pub fn rule(kind: Kind) -> Option<&'static str> {
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
        | Kind::Error => return None,
    })
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

/// Work for the security thread.
pub(crate) enum Job {
    Login {
        to: ReplyTo,
        login: Login,
        peer: SocketAddr,
        /// Over TLS or from loopback.
        secure: bool,
    },
    Admin {
        to: ReplyTo,
        principal: String,
        peer: SocketAddr,
        command: String,
    },
}

/// A job's outcome, for the loop that owns the connection.
pub(crate) struct Done {
    pub to: ReplyTo,
    pub response: Response,
    /// A login that succeeded: the connection's principal from now on.
    pub principal: Option<Principal>,
    /// The security state's generation before the login was checked.
    pub generation: u64,
    /// The connection is closed once the answer is written (a failed login).
    pub close: bool,
}

/// Where a loop sends jobs, and gets their outcomes.
pub(crate) struct SecurityLink {
    pub jobs: SyncSender<(usize, Job)>,
    pub done: Receiver<Done>,
}

impl SecurityLink {
    /// Queues a job; `Err` with the answer when the queue is full.
    pub fn submit(&self, loop_index: usize, job: Job) -> Result<(), Response> {
        match self.jobs.try_send((loop_index, job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Response::error(
                ErrorCode::Overloaded,
                format!("{JOBS_MAX} logins and security requests are waiting; retry"),
            )),
            Err(TrySendError::Disconnected(_)) => Err(Response::error(
                ErrorCode::ShuttingDown,
                "the security thread has stopped",
            )),
        }
    }
}

/// Starts the security thread; returns one link per loop (`wakers[i]` wakes loop i).
pub(crate) fn start(
    authority: Arc<Authority>,
    wakers: Vec<Arc<Waker>>,
    read_only: Arc<dyn Fn() -> Option<String> + Send + Sync>,
) -> std::io::Result<Vec<SecurityLink>> {
    let (jobs, incoming) = std::sync::mpsc::sync_channel::<(usize, Job)>(JOBS_MAX);
    let mut links = Vec::new();
    let mut outboxes: Vec<(Sender<Done>, Arc<Waker>)> = Vec::new();
    for waker in wakers {
        let (sender, receiver) = std::sync::mpsc::channel();
        outboxes.push((sender, waker));
        links.push(SecurityLink {
            jobs: jobs.clone(),
            done: receiver,
        });
    }
    std::thread::Builder::new()
        .name("keel-security".into())
        .spawn(move || {
            for (loop_index, job) in incoming {
                let done = run_job(&authority, job, read_only.as_ref());
                if let Some((sender, waker)) = outboxes.get(loop_index) {
                    if sender.send(done).is_ok() {
                        let _ = waker.wake();
                    }
                }
            }
        })?;
    Ok(links)
}

fn run_job(
    authority: &Authority,
    job: Job,
    read_only: &(dyn Fn() -> Option<String> + Send + Sync),
) -> Done {
    match job {
        Job::Login {
            to,
            login,
            peer,
            secure,
        } => {
            let generation = authority.generation();
            let (outcome, who) = match &login {
                Login::Password { user, password } => (
                    authority.login_password(user, password, peer.ip(), secure),
                    format!("user {user:?}"),
                ),
                Login::Token(token) => (
                    authority.login_token(token, peer.ip(), secure),
                    "a token".to_string(),
                ),
            };
            match outcome {
                Ok(principal) => {
                    log::info!("{peer} logged in as {} ({who})", principal.name);
                    Done {
                        to,
                        response: Response::LoginOk(principal.name.clone()),
                        principal: Some(principal),
                        generation,
                        close: false,
                    }
                }
                Err(error) => {
                    log::warn!("login refused from {peer} ({who}): {error}");
                    let code = match error {
                        LoginError::BadCredentials => ErrorCode::AuthenticationFailed,
                        LoginError::RateLimited { .. } => ErrorCode::TooManyLoginFailures,
                        LoginError::NeedsTls => ErrorCode::TlsRequired,
                    };
                    Done {
                        to,
                        response: Response::error(code, error.to_string()),
                        principal: None,
                        generation,
                        close: true,
                    }
                }
            }
        }
        Job::Admin {
            to,
            principal,
            peer,
            command,
        } => {
            let answer = SecurityCommand::from_json(&command).and_then(|command| {
                if command.changes_state() {
                    if let Some(why) = read_only() {
                        return Err(format!("NOT_MASTER:{why}"));
                    }
                }
                let summary = describe(&command);
                let reply = authority.apply(command)?;
                if !summary.is_empty() {
                    log::warn!("security change by {principal} from {peer}: {summary}");
                }
                Ok(reply)
            });
            let response = match answer {
                Ok(reply) => Response::SecurityResult(keel_protocol::SecretText(reply.to_json())),
                Err(detail) => match detail.strip_prefix("NOT_MASTER:") {
                    Some(why) => Response::error(ErrorCode::NotMaster, why),
                    None => Response::error(ErrorCode::InvalidArgument, detail),
                },
            };
            Done {
                to,
                response,
                principal: None,
                generation: 0,
                close: false,
            }
        }
    }
}

/// A change, for the log (never a password or token).
fn describe(command: &SecurityCommand) -> String {
    match command {
        SecurityCommand::UserAdd { name, .. } => format!("add user {name}"),
        SecurityCommand::UserPasswd { name, .. } => format!("change the password of {name}"),
        SecurityCommand::UserRemove { name } => format!("remove user {name}"),
        SecurityCommand::TokenCreate { name } => format!("create a token for {name}"),
        SecurityCommand::TokenRevoke { id } => format!("revoke token {id}"),
        SecurityCommand::AclGrant { entry } => format!("grant {entry}"),
        SecurityCommand::AclRevoke { entry } => format!("revoke {entry}"),
        SecurityCommand::UserList | SecurityCommand::TokenList | SecurityCommand::AclList => {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_kind_has_a_rule_and_the_protocol_doc_lists_it() {
        let doc = include_str!("../../docs/PROTOCOL.md");
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

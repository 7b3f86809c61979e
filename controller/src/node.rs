//! One voter's state: its Raft handle, the last heartbeat of every replica, and the
//! decisions it takes as leader (who is master, who is in sync), each through Raft.

use crate::config::TypeConfig;
use crate::state::{Applied, Command, Group, Replica};
use crate::store::MachineState;
use keel_controller_api::api::{
    BrokerHeartbeat, ClusterView, ElectReply, ElectRequest, GroupStatus, GroupView, HeartbeatReply,
    ReplicaStatus,
};
use openraft::Raft;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The last heartbeat the leader got from one replica.
pub(crate) struct Heard {
    pub at: Instant,
    pub report: BrokerHeartbeat,
}

pub(crate) struct Node {
    pub id: u64,
    pub raft: Raft<TypeConfig>,
    pub peers: BTreeMap<u64, String>,
    pub machine: Arc<Mutex<MachineState>>,
    /// By (group, broker id); kept by whichever voter is leader.
    pub heard: Mutex<HashMap<(String, u32), Heard>>,
    pub master_timeout: Duration,
    /// The controller port's open connections.
    pub connections: keel_net::Census,
    /// TLS of the controller port.
    pub tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// Checks the cluster token.
    pub authority: keel_security::Authority,
    /// The term in which this voter, as leader, caught up with the committed log.
    pub ready_term: AtomicU64,
    /// Groups whose new master is being decided now.
    pub electing: Mutex<std::collections::HashSet<String>>,
}

/// Epochs at or above this are refused (no election number can overflow).
pub(crate) const EPOCH_LIMIT: u64 = 1 << 48;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

pub(crate) fn other(detail: impl std::fmt::Display) -> io::Error {
    io::Error::other(detail.to_string())
}

impl Node {
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    pub fn group(&self, name: &str) -> Option<Group> {
        lock(&self.machine).groups.groups.get(name).cloned()
    }

    /// Commits `command` through Raft and returns what applying it said.
    pub async fn propose(&self, command: Command) -> Result<Applied, String> {
        let write = self.raft.client_write(command);
        match tokio::time::timeout(Duration::from_secs(3), write).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("not committed within 3 s (no quorum?)".into()),
        }
    }

    fn view(&self, name: &str, group: &Group) -> GroupView {
        let master = group.master.and_then(|id| group.replicas.get(&id));
        GroupView {
            group: name.to_string(),
            master: group.master,
            master_address: master.map(|r| r.address.clone()),
            master_ha_address: master.map(|r| r.ha_address.clone()),
            master_epoch: group.master_epoch,
            sss: group.sss.iter().copied().collect(),
            sss_epoch: group.sss_epoch,
            elections: group.elections,
        }
    }

    /// The controller address of the leader, when it is another voter.
    fn other_leader(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader;
        leader
            .filter(|id| *id != self.id)
            .and_then(|id| self.peers.get(&id).cloned())
    }

    /// Whether this voter leads and has applied everything committed before its term
    /// (a new leader's state machine may still be replaying the log).
    pub async fn leads_with_current_state(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let (term, quorum_ack) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_term, metrics.millis_since_quorum_ack)
        };
        // A leader cut off from its followers does not know it was replaced: it speaks
        // for the controller only while a quorum acknowledged it recently.
        let fresh = self.master_timeout.as_millis() as u64 / 4;
        if quorum_ack.is_none_or(|ms| ms > fresh) {
            return false;
        }
        if self.ready_term.load(Ordering::Acquire) == term {
            return true;
        }
        let caught_up =
            tokio::time::timeout(Duration::from_secs(1), self.raft.ensure_linearizable()).await;
        match caught_up {
            Ok(Ok(_)) => {
                self.ready_term.store(term, Ordering::Release);
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    pub(crate) async fn heartbeat(&self, report: BrokerHeartbeat) -> HeartbeatReply {
        if !self.leads_with_current_state().await {
            return HeartbeatReply::NotLeader {
                leader: self.other_leader(),
            };
        }
        if lock(&self.electing).contains(&report.group) {
            // Deciding a new master of this group: no answer that could renew the old
            // one's lease.
            return HeartbeatReply::NotLeader { leader: None };
        }
        if report.epoch >= EPOCH_LIMIT {
            log::warn!(
                "controller: ignoring a heartbeat of {}/{} with epoch {}",
                report.group,
                report.broker_id,
                report.epoch
            );
            return HeartbeatReply::NotLeader { leader: None };
        }
        let key = (report.group.clone(), report.broker_id);
        lock(&self.heard).insert(
            key,
            Heard {
                at: Instant::now(),
                report: report.clone(),
            },
        );
        let replica = Replica {
            address: report.address.clone(),
            ha_address: report.ha_address.clone(),
        };
        let known = self.group(&report.group);
        let registered = known
            .as_ref()
            .is_some_and(|g| g.replicas.get(&report.broker_id) == Some(&replica));
        let masterless = known.as_ref().is_none_or(|g| g.master.is_none());
        let newer_master_epoch = known.as_ref().is_some_and(|g| {
            report.is_master && g.master == Some(report.broker_id) && report.epoch > g.master_epoch
        });
        if !registered || (masterless && report.claims_master) || newer_master_epoch {
            let command = Command::Register {
                group: report.group.clone(),
                broker_id: report.broker_id,
                replica,
                claims_master: report.claims_master,
                epoch: report.epoch,
            };
            if let Err(error) = self.propose(command).await {
                log::warn!(
                    "controller: cannot register {}/{}: {error}",
                    report.group,
                    report.broker_id
                );
            }
        }
        let Some(group) = self.group(&report.group) else {
            return HeartbeatReply::Group(GroupView {
                group: report.group,
                ..GroupView::default()
            });
        };
        // The master asks for the SSS it sees: itself and its slaves in sync.
        if report.is_master && group.master == Some(report.broker_id) {
            let mut wanted: BTreeSet<u32> = report
                .in_sync
                .iter()
                .copied()
                .filter(|id| group.replicas.contains_key(id))
                .collect();
            wanted.insert(report.broker_id);
            if wanted != group.sss {
                let command = Command::AlterSss {
                    group: report.group.clone(),
                    master: report.broker_id,
                    master_epoch: group.master_epoch,
                    sss_epoch: report.sss_epoch,
                    sss: wanted.clone(),
                };
                match self.propose(command).await {
                    Ok(Applied::Done) => log::info!(
                        "controller: SyncStateSet of {} is now {wanted:?} (was {:?}): \
                         reported in sync by its master {}",
                        report.group,
                        group.sss,
                        report.broker_id
                    ),
                    Ok(Applied::Refused(why)) => {
                        log::info!("controller: SSS change of {} refused: {why}", report.group)
                    }
                    Err(error) => log::warn!("controller: SSS change not committed: {error}"),
                }
            }
        }
        let group = self.group(&report.group).unwrap_or(group);
        HeartbeatReply::Group(self.view(&report.group, &group))
    }

    /// An operator's election (`keel cluster --elect`).
    pub(crate) async fn elect(&self, request: ElectRequest) -> ElectReply {
        if !self.leads_with_current_state().await {
            return ElectReply::NotLeader {
                leader: self.other_leader(),
            };
        }
        let Some(group) = self.group(&request.group) else {
            return ElectReply::Refused(format!("no group {}", request.group));
        };
        let candidate = request.broker_id;
        if group.master == Some(candidate) {
            return ElectReply::Refused(format!("broker {candidate} is already the master"));
        }
        let heard: Vec<(u32, u64, u64)> = lock(&self.heard)
            .iter()
            .filter(|((name, _), h)| *name == request.group && h.at.elapsed() < self.master_timeout)
            .map(|((_, id), h)| (*id, h.report.epoch, h.report.log_end))
            .collect();
        let Some(&(_, candidate_epoch, candidate_end)) =
            heard.iter().find(|(id, _, _)| *id == candidate)
        else {
            return ElectReply::Refused(format!(
                "broker {candidate} of {} has not been heard from within {:?}: it must be \
                 running to be elected",
                request.group, self.master_timeout
            ));
        };
        let in_sss = group.sss.contains(&candidate);
        if !in_sss && !request.unclean {
            return ElectReply::Refused(format!(
                "broker {candidate} is not in the SyncStateSet {:?} of {}: it may lack \
                 acknowledged messages. Elect it with --unclean to accept that",
                group.sss, request.group
            ));
        }
        let sss_end = group
            .sss
            .iter()
            .filter_map(|id| heard.iter().find(|(h, _, _)| h == id))
            .map(|(_, _, end)| *end)
            .max();
        let detail = match (in_sss, sss_end) {
            (true, _) => "it is in the SyncStateSet: nothing acknowledged is lost".to_string(),
            (false, Some(end)) if end > candidate_end => format!(
                "UNCLEAN: its log ends at {candidate_end}, a member of the SyncStateSet \
                 reached {end}: up to {} bytes of acknowledged records may be lost",
                end - candidate_end
            ),
            (false, _) => format!(
                "UNCLEAN: no member of the SyncStateSet {:?} is alive to compare with; any \
                 acknowledged record past its log end ({candidate_end}) is lost",
                group.sss
            ),
        };
        let highest = heard.iter().map(|(_, epoch, _)| *epoch).max().unwrap_or(0);
        let epoch = group.master_epoch.max(highest).max(candidate_epoch) + 1;
        if epoch >= EPOCH_LIMIT {
            return ElectReply::Refused(format!("epoch {epoch} is out of range"));
        }
        let command = Command::Elect {
            group: request.group.clone(),
            expected_master_epoch: group.master_epoch,
            broker_id: candidate,
            epoch,
            reason: format!("operator election: {detail}"),
            unclean: !in_sss,
        };
        match self.propose(command).await {
            Ok(Applied::Done) => {
                log::warn!(
                    "controller: operator elected broker {candidate} master of {} at epoch \
                     {epoch}: {detail}",
                    request.group
                );
                ElectReply::Elected { epoch, detail }
            }
            Ok(Applied::Refused(why)) => ElectReply::Refused(why),
            Err(error) => ElectReply::Refused(format!("not committed: {error}")),
        }
    }

    pub(crate) fn describe(&self) -> ClusterView {
        let metrics = self.raft.metrics().borrow().clone();
        let groups = lock(&self.machine).groups.groups.clone();
        let heard = lock(&self.heard);
        let now = Instant::now();
        let statuses = groups
            .iter()
            .map(|(name, group)| {
                let replicas = group
                    .replicas
                    .iter()
                    .map(|(id, replica)| {
                        let last = heard.get(&(name.clone(), *id));
                        let report = last.map(|h| &h.report);
                        let reachable = last.is_some_and(|h| {
                            now.saturating_duration_since(h.at) < self.master_timeout / 2
                        });
                        ReplicaStatus {
                            broker_id: *id,
                            address: replica.address.clone(),
                            is_master: reachable && report.is_some_and(|r| r.is_master),
                            reachable: Some(reachable),
                            epoch: report.map_or(0, |r| r.epoch),
                            log_end: report.map_or(0, |r| r.log_end),
                            flushed: report.map_or(0, |r| r.flushed),
                            since_heard_ms: last
                                .map(|h| now.saturating_duration_since(h.at).as_millis() as u64),
                            in_sss: group.sss.contains(id),
                        }
                    })
                    .collect();
                GroupStatus {
                    view: self.view(name, group),
                    elections: group.elections,
                    replicas,
                }
            })
            .collect();
        ClusterView {
            node_id: self.id,
            leader: metrics.current_leader,
            leader_address: metrics
                .current_leader
                .and_then(|id| self.peers.get(&id).cloned()),
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index),
            voters: self
                .peers
                .iter()
                .map(|(id, address)| (*id, address.clone()))
                .collect(),
            groups: statuses,
        }
    }
}

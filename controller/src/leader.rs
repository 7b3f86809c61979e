//! The leader's duty: replace a master that fell silent, choosing only from its
//! group's SyncStateSet, the member with the highest (epoch, log end) heard from
//! recently. A voter that just became leader waits a full `master_timeout` before
//! judging anyone: its heartbeat table starts empty.

use crate::node::{lock, Node};
use crate::state::{Applied, Command};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

pub(crate) async fn duties(node: Arc<Node>, stop: Arc<AtomicBool>) {
    let mut leader_since: Option<Instant> = None;
    // Groups whose lack of an electable replica was already logged.
    let mut stuck: HashSet<String> = HashSet::new();
    // When this leader first saw each group's current master: a master just elected
    // has not heartbeated as master yet, and is judged from then on.
    let mut master_since: HashMap<String, (u32, Instant)> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(TICK).await;
        if !node.leads_with_current_state().await {
            if leader_since.take().is_some() {
                lock(&node.heard).clear();
                master_since.clear();
            }
            continue;
        }
        let since = *leader_since.get_or_insert_with(|| {
            log::info!("controller {} is the leader", node.id);
            Instant::now()
        });
        let groups = lock(&node.machine).groups.groups.clone();
        for (name, group) in groups {
            let Some(master) = group.master else { continue };
            let now = Instant::now();
            let named_at = match master_since.get(&name) {
                Some((known, at)) if *known == master => *at,
                _ => {
                    master_since.insert(name.clone(), (master, now));
                    now
                }
            };
            // Only a heartbeat that says it serves as master shows the master alive (a
            // master restarted as a slave, or on an empty disk, is replaced).
            let last_heard = |id: u32| {
                lock(&node.heard)
                    .get(&(name.clone(), id))
                    .filter(|heard| heard.report.is_master)
                    .map(|heard| heard.at.max(since).max(named_at))
                    .unwrap_or(since.max(named_at))
            };
            let silent = now.saturating_duration_since(last_heard(master));
            if silent < node.master_timeout {
                stuck.remove(&name);
                continue;
            }
            let candidates: Vec<(u64, u64, u32)> = {
                let heard = lock(&node.heard);
                group
                    .sss
                    .iter()
                    .filter(|id| **id != master)
                    .filter_map(|id| heard.get(&(name.clone(), *id)))
                    // Heard within half the timeout: a candidate that fell silent with
                    // its master is not elected (it would leave the group masterless).
                    .filter(|h| now.saturating_duration_since(h.at) < node.master_timeout / 2)
                    .map(|h| (h.report.epoch, h.report.log_end, h.report.broker_id))
                    .collect()
            };
            let Some(&(_, log_end, chosen)) = candidates.iter().max() else {
                if stuck.insert(name.clone()) {
                    log::error!(
                        "controller: master {master} of {name} silent for {silent:?}, and no \
                         other member of its SyncStateSet {:?} is alive: no election (a \
                         replica outside the SSS may lack acknowledged records)",
                        group.sss
                    );
                }
                continue;
            };
            let highest_epoch = lock(&node.heard)
                .iter()
                .filter(|((group_name, _), _)| *group_name == name)
                .map(|(_, heard)| heard.report.epoch)
                .max()
                .unwrap_or(0);
            let epoch = group.master_epoch.max(highest_epoch) + 1;
            if epoch >= crate::node::EPOCH_LIMIT {
                log::error!("controller: no election in {name}: epoch {epoch} is out of range");
                continue;
            }
            let reason = format!(
                "master {master} silent for {} ms (timeout {} ms)",
                silent.as_millis(),
                node.master_timeout.as_millis()
            );
            let command = Command::Elect {
                group: name.clone(),
                expected_master_epoch: group.master_epoch,
                broker_id: chosen,
                epoch,
                reason: reason.clone(),
                unclean: false,
            };
            lock(&node.electing).insert(name.clone());
            let outcome = node.propose(command).await;
            lock(&node.electing).remove(&name);
            match outcome {
                Ok(Applied::Done) => log::warn!(
                    "controller: elected broker {chosen} master of {name} at epoch {epoch} \
                     (its log ends at {log_end}; SyncStateSet was {:?}): {reason}",
                    group.sss
                ),
                Ok(Applied::Refused(why)) => {
                    log::info!("controller: election in {name} refused: {why}")
                }
                Err(error) => log::warn!("controller: election in {name} not committed: {error}"),
            }
        }
    }
}

//! Consumer groups in clustering mode: which member consumes which queue.
//!
//! Members heartbeat (per group and topic) with the queues they still hold; the broker
//! answers with the queues they may consume. Queues are spread evenly over the live
//! members, sorted by id (contiguous ranges, like RocketMQ's "averagely" strategy).
//!
//! A queue has at most one owner at a time, and only the owner's commits are accepted
//! (GROUP_COMMIT, else NOT_OWNER). When a rebalance moves a queue, its current owner
//! keeps it until it reports, in a later heartbeat, that it let go (after committing
//! what it finished); only then is it given to the new member. A member silent for its
//! session timeout is dropped and its queues are given away at once: its later commits
//! are refused, so two members never commit the same queue.
//!
//! Soft state, in memory: after a broker restart the members' reports rebuild it (the
//! first member to report a queue keeps it). Ordered groups that consumed the topic
//! before also get a grace: for the longest session timeout of their members after the
//! broker started (or was promoted), a queue nobody reports is given to no one, since
//! the member that held it may still be handling its messages and not have reported yet
//! (a lost answer, a connection not yet back). Only then may another member take it,
//! so two members never handle one message group at once across a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// (group, topic) pairs tracked at most; group names come from clients.
const GROUPS_MAX: usize = 100_000;

/// Bounds on a member's session timeout.
const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(500);
const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(300);

struct Member {
    last_seen: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct Group {
    members: BTreeMap<String, Member>,
    /// queue -> owning member.
    owners: HashMap<u32, String>,
    /// Queues whose member (by the spread) asked and was given nothing: another member
    /// still holds them, or an ordered group's grace keeps them for their old owner.
    withheld: BTreeSet<u32>,
    /// Queues a member reported holding since the broker started serving: their old
    /// owner is known, so no grace holds them once it lets go.
    reported: BTreeSet<u32>,
    generation: u64,
}

/// What a heartbeat gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub generation: u64,
    pub members: u32,
    pub queues: Vec<u32>,
}

pub struct Groups {
    groups: Mutex<HashMap<(String, String), Group>>,
    /// When this broker started serving as it does now (start-up, or a promotion):
    /// the grace of ordered groups counts from then.
    serving_since: Mutex<Instant>,
}

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            groups: Mutex::default(),
            serving_since: Mutex::new(Instant::now()),
        }
    }
}

/// The member each queue should go to: members sorted by id, each a contiguous range,
/// the first `queues % members` one queue more.
fn target(members: &[&String], queue_count: u32, queue: u32) -> Option<usize> {
    let count = members.len() as u32;
    if count == 0 || queue >= queue_count {
        return None;
    }
    let base = queue_count / count;
    let extra = queue_count % count;
    // Members 0..extra hold base + 1 queues, the rest base.
    let big = (base + 1) * extra;
    let index = if queue < big {
        queue / (base + 1)
    } else {
        extra + (queue - big) / base.max(1)
    };
    Some(index.min(count - 1) as usize)
}

impl Groups {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Group>> {
        self.groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The broker starts serving anew (a promotion): members' reports rebuild who
    /// holds what, and the grace of ordered groups starts again.
    pub fn serve_anew(&self) {
        *self
            .serving_since
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
        for state in self.lock().values_mut() {
            state.reported.clear();
        }
    }

    /// A member's heartbeat: it is alive, still holds `owned`; returns what it may
    /// consume of the topic's `queue_count` queues. With `hold_unreported` (an ordered
    /// group that consumed the topic before), a queue no member has reported since the
    /// broker started serving is given to none until the members' longest session
    /// timeout has passed.
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        session_timeout: Duration,
        owned: &[u32],
        queue_count: u32,
        hold_unreported: bool,
    ) -> Option<Granted> {
        let now = Instant::now();
        let since = *self
            .serving_since
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut groups = self.lock();
        let key = (group.to_string(), topic.to_string());
        if groups.len() >= GROUPS_MAX && !groups.contains_key(&key) {
            for (name, state) in groups.iter_mut() {
                expire(state, now, &name.0);
            }
            groups.retain(|_, state| !state.members.is_empty());
            if groups.len() >= GROUPS_MAX {
                return None;
            }
        }
        let state = groups.entry(key).or_default();
        let before: Vec<String> = state.members.keys().cloned().collect();
        expire(state, now, group);
        state.members.insert(
            member_id.to_string(),
            Member {
                last_seen: now,
                timeout: session_timeout.clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX),
            },
        );
        if state.members.keys().ne(before.iter()) {
            state.generation += 1;
        }
        let holds: BTreeSet<u32> = owned.iter().copied().collect();
        // Queues it let go of are free; queues it holds that nobody owns (a broker
        // restart) are its again.
        state
            .owners
            .retain(|queue, owner| owner != member_id || holds.contains(queue));
        for queue in &holds {
            if *queue < queue_count {
                state
                    .owners
                    .entry(*queue)
                    .or_insert_with(|| member_id.to_string());
                state.reported.insert(*queue);
            }
        }
        let longest = state.members.values().map(|member| member.timeout).max();
        let in_grace =
            hold_unreported && longest.is_some_and(|timeout| now.duration_since(since) <= timeout);
        let members: Vec<&String> = state.members.keys().collect();
        let me = members.iter().position(|id| id.as_str() == member_id);
        let mut granted = Vec::new();
        let mut withheld = Vec::new();
        for queue in 0..queue_count {
            if target(&members, queue_count, queue) != me {
                continue;
            }
            match state.owners.get(&queue) {
                Some(owner) if owner != member_id => withheld.push(queue), // not let go yet
                Some(_) => granted.push(queue),
                // Its old owner, if any, may report yet.
                None if in_grace && !state.reported.contains(&queue) => withheld.push(queue),
                None => granted.push(queue),
            }
        }
        state.withheld.retain(|queue| *queue < queue_count);
        for queue in &granted {
            state.owners.insert(*queue, member_id.to_string());
            state.withheld.remove(queue);
        }
        state.withheld.extend(withheld);
        Some(Granted {
            generation: state.generation,
            members: state.members.len() as u32,
            queues: granted,
        })
    }

    /// Whether `member_id` owns the queue now (its commits are accepted).
    pub fn owns(&self, group: &str, topic: &str, member_id: &str, queue: u32) -> bool {
        let mut groups = self.lock();
        let Some(state) = groups.get_mut(&(group.to_string(), topic.to_string())) else {
            return false;
        };
        expire(state, Instant::now(), group);
        state
            .owners
            .get(&queue)
            .is_some_and(|owner| owner == member_id)
    }

    /// (group, topic, queues withheld) for each pair with live members and a queue
    /// that its member asked for and could not be given yet; sorted.
    pub fn withheld(&self) -> Vec<(String, String, usize)> {
        let now = Instant::now();
        let mut groups = self.lock();
        let mut waiting = Vec::new();
        for ((group, topic), state) in groups.iter_mut() {
            expire(state, now, group);
            if !state.members.is_empty() && !state.withheld.is_empty() {
                waiting.push((group.clone(), topic.clone(), state.withheld.len()));
            }
        }
        waiting.sort();
        waiting
    }

    /// The groups with live members on `topic`, and how many each has.
    pub fn live_on(&self, topic: &str) -> Vec<(String, usize)> {
        self.live(|(_, on)| on == topic, |(group, _)| group)
    }

    /// A group's live members, on every topic: (topic, members).
    pub fn live_members(&self, group: &str) -> Vec<(String, usize)> {
        self.live(|(name, _)| name == group, |(_, topic)| topic)
    }

    /// For each (group, topic) that `which` takes and that has live members: the part
    /// of the key `named` gives, and how many members; sorted.
    fn live(
        &self,
        which: impl Fn(&(String, String)) -> bool,
        named: impl Fn(&(String, String)) -> &String,
    ) -> Vec<(String, usize)> {
        let now = Instant::now();
        let mut groups = self.lock();
        let mut live = Vec::new();
        for (key, state) in groups.iter_mut().filter(|(key, _)| which(key)) {
            expire(state, now, &key.0);
            if !state.members.is_empty() {
                live.push((named(key).clone(), state.members.len()));
            }
        }
        live.sort();
        live
    }

    /// Forgets `group` on every topic (its members and queue owners): a deleted group.
    /// Returns how many live members it had.
    pub fn forget(&self, group: &str) -> usize {
        let mut groups = self.lock();
        let mut members = 0;
        groups.retain(|(name, _), state| {
            if name != group {
                return true;
            }
            members += state.members.len();
            false
        });
        members
    }

    /// Each group's live members and owned queues, for stats and message lookups.
    pub fn describe(&self) -> Vec<(String, String, usize, usize)> {
        let now = Instant::now();
        let mut groups = self.lock();
        // Members past their session timeout are gone, whether or not anything of the
        // group was asked since.
        for ((group, _), state) in groups.iter_mut() {
            expire(state, now, group);
        }
        groups
            .iter()
            .map(|((group, topic), state)| {
                (
                    group.clone(),
                    topic.clone(),
                    state.members.len(),
                    state.owners.len(),
                )
            })
            .collect()
    }
}

/// Drops members silent past their timeout, and their queues.
fn expire(state: &mut Group, now: Instant, group: &str) {
    let gone: Vec<String> = state
        .members
        .iter()
        .filter(|(_, member)| now.duration_since(member.last_seen) > member.timeout)
        .map(|(id, _)| id.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    for id in &gone {
        log::warn!("consumer {id} of group {group} stopped heartbeating: its queues move");
        state.members.remove(id);
    }
    state.owners.retain(|_, owner| !gone.contains(owner));
    state.withheld.clear(); // The next heartbeats tell again.
    state.generation += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn queues_are_spread_evenly_and_contiguously() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let members: Vec<&String> = ids.iter().collect();
        let owners: Vec<usize> = (0..8).map(|q| target(&members, 8, q).unwrap()).collect();
        assert_eq!(owners, vec![0, 0, 0, 1, 1, 1, 2, 2]);
        let one: Vec<&String> = ids.iter().take(1).collect();
        assert!((0..8).all(|q| target(&one, 8, q) == Some(0)));
        let owners: Vec<usize> = (0..2).map(|q| target(&members, 2, q).unwrap()).collect();
        assert_eq!(owners, vec![0, 1]);
    }

    #[test]
    fn a_queue_moves_only_after_its_owner_lets_go() {
        let groups = Groups::default();
        let heartbeat = |member: &str, owned: &[u32]| {
            groups
                .heartbeat("g", "t", member, TIMEOUT, owned, 4, false)
                .unwrap()
        };
        let a = heartbeat("a", &[]);
        assert_eq!(a.queues, vec![0, 1, 2, 3]);
        // b joins: its share (2, 3) is still held by a.
        let b = heartbeat("b", &[]);
        assert!(b.queues.is_empty());
        assert!(
            groups.owns("g", "t", "a", 3),
            "a may still commit what it finished"
        );
        // a is told to keep 0 and 1 only; it commits 2 and 3, then lets go.
        let a = heartbeat("a", &[0, 1, 2, 3]);
        assert_eq!(a.queues, vec![0, 1]);
        let a = heartbeat("a", &[0, 1]);
        assert_eq!(a.queues, vec![0, 1]);
        assert!(!groups.owns("g", "t", "a", 3));
        let b = heartbeat("b", &[]);
        assert_eq!(b.queues, vec![2, 3]);
        assert!(groups.owns("g", "t", "b", 3));
        assert!(!groups.owns("g", "t", "a", 3), "never two owners");
    }

    #[test]
    fn a_silent_member_loses_its_queues_and_its_commits() {
        let groups = Groups::default();
        let short = Duration::from_millis(500);
        groups.heartbeat("g", "t", "a", short, &[], 2, false);
        groups.heartbeat("g", "t", "b", TIMEOUT, &[], 2, false);
        groups.heartbeat("g", "t", "a", short, &[0], 2, false);
        assert!(groups.owns("g", "t", "a", 0));
        std::thread::sleep(Duration::from_millis(600));
        let b = groups
            .heartbeat("g", "t", "b", TIMEOUT, &[1], 2, false)
            .unwrap();
        assert_eq!(b.queues, vec![0, 1]);
        assert!(!groups.owns("g", "t", "a", 0));
    }

    #[test]
    fn a_member_that_went_silent_is_not_counted_live_by_anyone() {
        let groups = Groups::default();
        groups.heartbeat("quiet", "t", "a", Duration::from_millis(500), &[], 2, false);
        assert_eq!(groups.describe()[0].2, 1);
        std::thread::sleep(Duration::from_millis(600));
        // Nothing of the group was asked since: describe itself expires it.
        assert_eq!(groups.describe()[0].2, 0);
        assert!(groups.live_on("t").is_empty());
    }

    #[test]
    fn after_a_restart_an_ordered_groups_unreported_queues_wait_for_their_old_owner() {
        let groups = Groups::default();
        let short = Duration::from_millis(500);
        let heartbeat = |member: &str, owned: &[u32]| {
            groups
                .heartbeat("g", "t", member, short, owned, 2, true)
                .unwrap()
                .queues
        };
        // b is first back after the restart: queue 0 (its share) is held for whoever
        // held it before, who may not have reported yet.
        assert!(heartbeat("b", &[]).is_empty());
        // a reports queue 1 (b's share now) and queue 0: it keeps neither for good, but
        // 1 stays a's until a lets go, and 0 is a's own share.
        assert_eq!(heartbeat("a", &[0, 1]), vec![0]);
        assert!(groups.owns("g", "t", "a", 1));
        assert!(heartbeat("b", &[]).is_empty(), "1 is still a's");
        assert_eq!(groups.withheld(), vec![("g".into(), "t".into(), 1)]);
        // a lets go of 1: b gets it, nothing is withheld.
        assert_eq!(heartbeat("a", &[0]), vec![0]);
        assert_eq!(heartbeat("b", &[]), vec![1]);
        assert!(groups.withheld().is_empty());
        // A queue nobody reports is given away once the longest session timeout passed.
        let groups = Groups::default();
        let heartbeat = |owned: &[u32]| {
            groups
                .heartbeat("g", "t", "b", short, owned, 2, true)
                .unwrap()
                .queues
        };
        assert!(heartbeat(&[]).is_empty());
        assert_eq!(groups.withheld(), vec![("g".into(), "t".into(), 2)]);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(heartbeat(&[]), vec![0, 1]);
        assert!(groups.withheld().is_empty());
        // A promotion starts the grace again.
        groups.serve_anew();
        let other = groups
            .heartbeat("g", "t2", "b", short, &[], 2, true)
            .unwrap();
        assert!(other.queues.is_empty());
        // Without hold_unreported (not ordered, or never consumed), nothing waits.
        let fresh = Groups::default();
        let granted = fresh
            .heartbeat("g", "t", "b", short, &[], 2, false)
            .unwrap();
        assert_eq!(granted.queues, vec![0, 1]);
    }
}

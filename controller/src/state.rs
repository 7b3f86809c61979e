//! What the controller decides, per broker group (one broker name): its master, the
//! master epoch, and the SyncStateSet (SSS), the replicas known to hold every
//! acknowledged record. Changed only by commands committed through Raft; every command
//! is checked again when applied, so a stale proposal changes nothing.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where a replica is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Client address (`listen`).
    pub address: String,
    /// HA address: where its slaves connect when it is master.
    pub ha_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub master: Option<u32>,
    pub master_epoch: u64,
    /// Broker ids, the master's included.
    pub sss: BTreeSet<u32>,
    pub sss_epoch: u64,
    pub replicas: BTreeMap<u32, Replica>,
    /// Masters elected by the controller so far.
    pub elections: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A replica's addresses; the first master of a group that has none becomes its
    /// master at its own epoch, and the master's own newer epoch (it restarted) is
    /// recorded.
    Register {
        group: String,
        broker_id: u32,
        replica: Replica,
        claims_master: bool,
        epoch: u64,
    },
    /// A new master chosen from the SSS, valid only while the group is still at
    /// `expected_master_epoch`.
    Elect {
        group: String,
        expected_master_epoch: u64,
        broker_id: u32,
        epoch: u64,
        reason: String,
        /// An operator's election of a replica outside the SSS (it may lack
        /// acknowledged records); never proposed automatically.
        #[serde(default)]
        unclean: bool,
    },
    /// The master's request to change the SSS, valid only with the current master epoch
    /// and SSS epoch.
    AlterSss {
        group: String,
        master: u32,
        master_epoch: u64,
        sss_epoch: u64,
        sss: BTreeSet<u32>,
    },
}

/// The answer to a command once applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    /// Checked when applied and refused: nothing changed.
    Refused(String),
}

impl Groups {
    /// Applies a committed command. Every voter applies the same commands in the same
    /// order, so what must hold after each is asserted: a voter that broke it would hand
    /// out masters from a state no other voter has. A group's master is in its
    /// SyncStateSet, and its epochs and election count never go back.
    pub fn apply(&mut self, command: &Command) -> Applied {
        let group = match command {
            Command::Register { group, .. }
            | Command::Elect { group, .. }
            | Command::AlterSss { group, .. } => group,
        };
        let before = self
            .groups
            .get(group)
            .map(|state| (state.master_epoch, state.sss_epoch, state.elections));
        let applied = self.apply_unchecked(command);
        if let Some(state) = self.groups.get(group) {
            if let Some(master) = state.master {
                assert!(
                    state.sss.contains(&master),
                    "{group}: master {master} outside its SyncStateSet {:?}",
                    state.sss
                );
            }
            if let Some((master_epoch, sss_epoch, elections)) = before {
                assert!(
                    state.master_epoch >= master_epoch
                        && state.sss_epoch >= sss_epoch
                        && state.elections >= elections,
                    "{group}: an epoch went back applying {command:?}"
                );
            }
        }
        if matches!(applied, Applied::Refused(_)) {
            assert_eq!(
                self.groups.get(group).map(|state| (
                    state.master_epoch,
                    state.sss_epoch,
                    state.elections
                )),
                before,
                "{group}: a refused command changed the group"
            );
        }
        applied
    }

    fn apply_unchecked(&mut self, command: &Command) -> Applied {
        match command {
            Command::Register {
                group,
                broker_id,
                replica,
                claims_master,
                epoch,
            } => {
                let state = self.groups.entry(group.clone()).or_default();
                state.replicas.insert(*broker_id, replica.clone());
                if state.master == Some(*broker_id) {
                    // A master restarted begins a new epoch of its own.
                    state.master_epoch = state.master_epoch.max(*epoch);
                }
                if state.master.is_none() && *claims_master {
                    state.master = Some(*broker_id);
                    state.master_epoch = state.master_epoch.max(*epoch);
                    state.sss = BTreeSet::from([*broker_id]);
                    state.sss_epoch += 1;
                }
                Applied::Done
            }
            Command::Elect {
                group,
                expected_master_epoch,
                broker_id,
                epoch,
                reason: _,
                unclean,
            } => {
                let Some(state) = self.groups.get_mut(group) else {
                    return Applied::Refused(format!("no group {group}"));
                };
                if state.master_epoch != *expected_master_epoch {
                    return Applied::Refused(format!(
                        "{group} is at master epoch {}, not {expected_master_epoch}",
                        state.master_epoch
                    ));
                }
                if !state.replicas.contains_key(broker_id) {
                    return Applied::Refused(format!("no broker {broker_id} in {group}"));
                }
                if !state.sss.contains(broker_id) && !unclean {
                    return Applied::Refused(format!(
                        "broker {broker_id} is not in the SyncStateSet of {group}"
                    ));
                }
                if *epoch <= state.master_epoch {
                    return Applied::Refused(format!(
                        "epoch {epoch} is not above {}",
                        state.master_epoch
                    ));
                }
                // The other members still hold every acknowledged record: they stay,
                // so one of them can be elected if the new master dies before they
                // follow it (the new master waits for them meanwhile).
                let old_master = state.master;
                state.sss.retain(|id| Some(*id) != old_master);
                if *unclean {
                    state.sss.clear();
                }
                state.sss.insert(*broker_id);
                state.master = Some(*broker_id);
                state.master_epoch = *epoch;
                state.sss_epoch += 1;
                state.elections += 1;
                Applied::Done
            }
            Command::AlterSss {
                group,
                master,
                master_epoch,
                sss_epoch,
                sss,
            } => {
                let Some(state) = self.groups.get_mut(group) else {
                    return Applied::Refused(format!("no group {group}"));
                };
                if state.master != Some(*master) || state.master_epoch != *master_epoch {
                    return Applied::Refused(format!(
                        "broker {master} at epoch {master_epoch} is not the master of {group}"
                    ));
                }
                if state.sss_epoch != *sss_epoch {
                    return Applied::Refused(format!(
                        "the SyncStateSet of {group} is at epoch {}, not {sss_epoch}",
                        state.sss_epoch
                    ));
                }
                if !sss.contains(master) {
                    return Applied::Refused("the master must stay in its SyncStateSet".into());
                }
                state.sss = sss.clone();
                state.sss_epoch += 1;
                Applied::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(port: u16) -> Replica {
        Replica {
            address: format!("127.0.0.1:{port}"),
            ha_address: format!("127.0.0.1:{}", port + 1),
        }
    }

    fn register(id: u32, master: bool, epoch: u64) -> Command {
        Command::Register {
            group: "g".into(),
            broker_id: id,
            replica: replica(10_000 + id as u16 * 2),
            claims_master: master,
            epoch,
        }
    }

    #[test]
    fn elections_and_sss_changes_are_fenced_by_their_epochs() {
        let mut groups = Groups::default();
        assert_eq!(groups.apply(&register(0, true, 3)), Applied::Done);
        assert_eq!(groups.apply(&register(1, false, 3)), Applied::Done);
        // A second claimant does not replace the master.
        assert_eq!(groups.apply(&register(2, true, 9)), Applied::Done);
        let g = &groups.groups["g"];
        assert_eq!((g.master, g.master_epoch, g.sss_epoch), (Some(0), 3, 1));
        // Only a member of the SSS is electable.
        let elect = |id, expected, epoch| Command::Elect {
            group: "g".into(),
            expected_master_epoch: expected,
            broker_id: id,
            epoch,
            reason: "test".into(),
            unclean: false,
        };
        assert!(matches!(groups.apply(&elect(1, 3, 4)), Applied::Refused(_)));
        let grow = |sss_epoch, members: &[u32]| Command::AlterSss {
            group: "g".into(),
            master: 0,
            master_epoch: 3,
            sss_epoch,
            sss: members.iter().copied().collect(),
        };
        assert_eq!(groups.apply(&grow(1, &[0, 1])), Applied::Done);
        // A stale SSS epoch changes nothing.
        assert!(matches!(groups.apply(&grow(1, &[0])), Applied::Refused(_)));
        assert!(matches!(groups.apply(&elect(1, 2, 4)), Applied::Refused(_)));
        assert!(matches!(groups.apply(&elect(1, 3, 3)), Applied::Refused(_)));
        assert_eq!(groups.apply(&elect(1, 3, 4)), Applied::Done);
        let g = &groups.groups["g"];
        assert_eq!(g.master, Some(1));
        assert_eq!(g.sss, BTreeSet::from([1]));
        // The deposed master can no longer change the SSS.
        assert!(matches!(
            groups.apply(&grow(3, &[0, 1])),
            Applied::Refused(_)
        ));
    }
}

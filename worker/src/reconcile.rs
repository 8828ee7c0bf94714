//! The pure reconciler: what the scheduler wants on this node (desired)
//! against what this worker has (local), turned into actions. Running it
//! again after its actions were carried out yields nothing.
//!
//! An allocation that ended here and was forgotten leaves a tombstone: a
//! set that lists it again (an older view, from a replica that had not
//! applied its end) never starts it a second time.

use std::collections::{BTreeMap, BTreeSet};

/// What the scheduler wants for one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Assigned or running: it should be running here.
    Run,
    /// Its job was cancelled: stop it and report.
    Stop,
}

/// What this worker has for one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Running,
    /// Being stopped (signal sent), not yet exited.
    Stopping,
    /// Ended here; kept until the scheduler drops the allocation, so a
    /// finished allocation is never started twice.
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start(u64),
    Stop(u64),
    /// Cancelled before it ever started here: report it ended.
    ReportNeverStarted(u64),
    /// The scheduler no longer lists it and it has ended: drop the record.
    Forget(u64),
}

pub fn reconcile(
    desired: &BTreeMap<u64, Desired>,
    local: &BTreeMap<u64, Local>,
    tombstones: &BTreeSet<u64>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (&alloc, &want) in desired {
        if tombstones.contains(&alloc) {
            continue;
        }
        match (want, local.get(&alloc)) {
            (Desired::Run, None) => actions.push(Action::Start(alloc)),
            (Desired::Stop, None) => actions.push(Action::ReportNeverStarted(alloc)),
            (Desired::Stop, Some(Local::Running)) => actions.push(Action::Stop(alloc)),
            _ => {}
        }
    }
    for (&alloc, &have) in local {
        if desired.contains_key(&alloc) {
            continue;
        }
        match have {
            // Not wanted any more (the node was declared lost and came back,
            // say): stop it; its report will be stale and dropped.
            Local::Running => actions.push(Action::Stop(alloc)),
            Local::Stopping => {}
            Local::Ended => actions.push(Action::Forget(alloc)),
        }
    }
    actions
}

/// What the local table looks like once `actions` have been carried out
/// (before any process exits), for tests and for reasoning.
pub fn after(local: &BTreeMap<u64, Local>, actions: &[Action]) -> BTreeMap<u64, Local> {
    let mut next = local.clone();
    for a in actions {
        match *a {
            Action::Start(id) => {
                next.insert(id, Local::Running);
            }
            Action::Stop(id) => {
                next.insert(id, Local::Stopping);
            }
            Action::ReportNeverStarted(id) => {
                next.insert(id, Local::Ended);
            }
            Action::Forget(id) => {
                next.remove(&id);
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_forgets() {
        let desired = BTreeMap::from([
            (1, Desired::Run),
            (2, Desired::Stop),
            (3, Desired::Stop),
            (4, Desired::Run),
        ]);
        let local = BTreeMap::from([
            (2, Local::Running),
            (4, Local::Ended),
            (5, Local::Ended),
            (6, Local::Running),
        ]);
        let actions = reconcile(&desired, &local, &BTreeSet::new());
        assert_eq!(
            actions,
            vec![
                Action::Start(1),
                Action::Stop(2),
                Action::ReportNeverStarted(3),
                Action::Forget(5),
                Action::Stop(6)
            ]
        );
        // A finished allocation the scheduler still lists is not restarted.
        assert!(!actions.contains(&Action::Start(4)));
        // Running it on its own output changes nothing.
        assert!(reconcile(&desired, &after(&local, &actions), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_forgotten_allocation_listed_again_is_not_started_twice() {
        let tombstones = BTreeSet::from([7]);
        let desired = BTreeMap::from([(7, Desired::Run), (8, Desired::Stop), (9, Desired::Run)]);
        let actions = reconcile(&desired, &BTreeMap::new(), &tombstones);
        assert_eq!(
            actions,
            vec![Action::ReportNeverStarted(8), Action::Start(9)]
        );
        // A stop for a tombstoned allocation is not reported again either.
        let desired = BTreeMap::from([(7, Desired::Stop)]);
        assert!(reconcile(&desired, &BTreeMap::new(), &tombstones).is_empty());
    }
}

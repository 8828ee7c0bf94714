//! The leader driver: while this replica leads, it proposes `Schedule` when
//! a pass would place something, and `NodeLost` for nodes whose heartbeats
//! stopped. Followers run it too but it does nothing until they lead.
//!
//! It only proposes; the decisions themselves are made in `apply`, so a
//! driver that proposes at the wrong moment wastes a log entry but cannot
//! produce a wrong state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coop_core::fairshare;
use coop_core::{Command, NodeId, NodeState};

use crate::shared::{now_ms, Shared};

/// How often the driver looks even when nothing was applied.
const TICK: Duration = Duration::from_millis(200);

pub async fn run(shared: Arc<Shared>) {
    let mut applied_rx = shared.node.state_machine().subscribe();
    let mut leader_since: Option<Instant> = None;
    let scheduling = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            changed = applied_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TICK) => {},
        }
        if !shared.node.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        adopt_genesis_policy(&shared).await;
        maybe_schedule(&shared, &scheduling);
        detect_lost_nodes(&shared, since).await;
    }
}

/// The first leader of a new cluster proposes the genesis policy from its
/// bootstrap config; `apply` takes only the first such proposal, ever.
async fn adopt_genesis_policy(shared: &Arc<Shared>) {
    if let Err(e) = shared.ensure_genesis().await {
        tracing::debug!(error = %e, "genesis policy proposal failed");
    }
}

/// Proposes one `Schedule` at a time, and only when it would place a job.
fn maybe_schedule(shared: &Arc<Shared>, in_flight: &Arc<AtomicBool>) {
    if in_flight.load(Ordering::Acquire) {
        return;
    }
    // A pass over a large queue takes a while (docs/benchmarks.md): run it
    // where blocking is allowed rather than stalling this runtime thread.
    let worth_it = tokio::task::block_in_place(|| {
        let applied = shared.node.state_machine().read();
        // Without a ready node nothing can be placed or reclaimed: skip the pass.
        !applied.state.pending.is_empty()
            && applied.state.ready_nodes() > 0
            && !fairshare::plan(&applied.state).is_empty()
    });
    if !worth_it {
        return;
    }
    in_flight.store(true, Ordering::Release);
    let shared = shared.clone();
    let in_flight = in_flight.clone();
    tokio::spawn(async move {
        if let Err(e) = shared.write(Command::Schedule { now_ms: now_ms() }).await {
            tracing::debug!(error = %e, "schedule proposal failed");
        }
        in_flight.store(false, Ordering::Release);
    });
}

async fn detect_lost_nodes(shared: &Arc<Shared>, leader_since: Instant) {
    let timeout = Duration::from_millis(shared.config.heartbeat_timeout_ms);
    let ready: Vec<(NodeId, u64)> = {
        let applied = shared.node.state_machine().read();
        applied
            .state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| (n.id.clone(), n.incarnation))
            .collect()
    };
    let lost: Vec<(NodeId, u64)> = {
        let beats = shared.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        ready
            .into_iter()
            .filter(|(node, incarnation)| {
                // A new leader gives every node a full timeout from when it took over.
                let last = match beats.get(node) {
                    Some((inc, at)) if inc == incarnation => (*at).max(leader_since),
                    _ => leader_since,
                };
                last.elapsed() > timeout
            })
            .collect()
    };
    for (node, incarnation) in lost {
        tracing::warn!(node = %node, "no heartbeat within {timeout:?}: marking node lost");
        let cmd = Command::NodeLost {
            node,
            incarnation,
            now_ms: now_ms(),
        };
        if let Err(e) = shared.write(cmd).await {
            tracing::debug!(error = %e, "node lost proposal failed");
        }
    }
}

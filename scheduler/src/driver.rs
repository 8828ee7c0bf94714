//! The leader driver: while this replica leads, it proposes `Schedule` when
//! the core says a pass is due (demand or supply changed and something could
//! move; `ClusterState::pass_due`, cheap) and on a slow tick while jobs wait
//! (decayed usage and contribution move the shares with time alone) or the
//! log's time lags the leader's clock by more than a step, and `NodeLost`
//! for nodes whose heartbeats stopped. Followers run it too but
//! it does nothing until they lead.
//!
//! It only proposes; the decisions themselves are made in `apply`, so a
//! driver that proposes at the wrong moment wastes a log entry but cannot
//! produce a wrong state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use coop_core::{Command, NodeId};

use crate::shared::Shared;

/// How often the driver looks even when nothing was applied.
const TICK: Duration = Duration::from_millis(200);

/// A pass is proposed at least this often while jobs wait and a node is
/// ready, even when nothing changed: time alone moves decayed shares.
const SLOW_PASS: Duration = Duration::from_secs(10);

pub async fn run(shared: Arc<Shared>) {
    let mut applied_rx = shared.node.state_machine().subscribe();
    let mut leader_since: Option<Instant> = None;
    let scheduling = Arc::new(AtomicBool::new(false));
    let mut last_pass = Instant::now();
    let mut last_checkpoint = Instant::now();
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
        if maybe_schedule(&shared, &scheduling, last_pass.elapsed() > SLOW_PASS) {
            last_pass = Instant::now();
        }
        detect_lost_nodes(&shared, since).await;
        let interval = Duration::from_millis(shared.config.checkpoint_interval_ms);
        if last_checkpoint.elapsed() >= interval {
            last_checkpoint = Instant::now();
            propose_checkpoint(&shared);
        }
    }
}

/// Asks every replica to sign the log's head, unless nothing was logged
/// since the last checkpoint (a quiet log needs no new signatures).
fn propose_checkpoint(shared: &Arc<Shared>) {
    let grew = {
        let applied = shared.node.state_machine().read();
        let size = applied.state.log_size();
        size > 0 && shared.witness.latest_own_size() < size
    };
    if !grew {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = shared
            .write(Command::Checkpoint {
                now_ms: shared.now_ms(),
            })
            .await
        {
            tracing::debug!(error = %e, "checkpoint proposal failed");
        }
    });
}

/// The first leader of a new cluster proposes the genesis policy from its
/// bootstrap config; `apply` takes only the first such proposal, ever.
async fn adopt_genesis_policy(shared: &Arc<Shared>) {
    if let Err(e) = shared.ensure_genesis().await {
        tracing::debug!(error = %e, "genesis policy proposal failed");
    }
}

/// Proposes one `Schedule` at a time, when the core says one is due (or
/// `slow_tick` and jobs wait). Returns whether it proposed.
fn maybe_schedule(shared: &Arc<Shared>, in_flight: &Arc<AtomicBool>, slow_tick: bool) -> bool {
    if in_flight.load(Ordering::Acquire) {
        return false;
    }
    let worth_it = {
        let applied = shared.node.state_machine().read();
        let state = &applied.state;
        // After a quiet spell the log's time lags (it moves at most
        // MAX_STEP_MS per command): catch it up, so times shown and
        // deadlines do not wait for the next member's request.
        let lagging = shared.now_ms().saturating_sub(state.now_ms()) > coop_core::MAX_STEP_MS;
        state.pass_due()
            || lagging
            || (slow_tick && !state.pending().is_empty() && state.ready_nodes() > 0)
    };
    if !worth_it {
        return false;
    }
    in_flight.store(true, Ordering::Release);
    let shared = shared.clone();
    let in_flight = in_flight.clone();
    tokio::spawn(async move {
        if let Err(e) = shared
            .write(Command::Schedule {
                now_ms: shared.now_ms(),
            })
            .await
        {
            tracing::debug!(error = %e, "schedule proposal failed");
        }
        in_flight.store(false, Ordering::Release);
    });
    true
}

async fn detect_lost_nodes(shared: &Arc<Shared>, leader_since: Instant) {
    let timeout = Duration::from_millis(shared.config.heartbeat_timeout_ms);
    let ready: Vec<(NodeId, u64)> = {
        let applied = shared.node.state_machine().read();
        applied
            .state
            .nodes()
            .values()
            .filter(|n| n.is_ready())
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
            now_ms: shared.now_ms(),
        };
        if let Err(e) = shared.write(cmd).await {
            tracing::debug!(error = %e, "node lost proposal failed");
        }
    }
}

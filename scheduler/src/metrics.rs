//! Every metric a scheduler replica exports, in one place. Names are
//! `coop_<subsystem>_<name>`; docs/metrics.md documents each, and the
//! dashboard and alert rules in deploy/ use exactly these names.
//!
//! State-derived gauges are computed from the replica's applied state at
//! scrape time (so they are never stale and every replica reports the same
//! numbers); counters and histograms are fed as commands are applied and
//! RPCs are served.

use std::time::Instant;

use coop_core::{ClusterState, Outcome};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::raft::{NodeRole, RaftStatus};

pub struct SchedulerMetrics {
    registry: Registry,
    member_entitlement: GaugeVec,
    member_allocated: GaugeVec,
    member_share: GaugeVec,
    member_dominant_share: GaugeVec,
    member_share_to_entitlement: GaugeVec,
    member_usage: GaugeVec,
    member_contribution: GaugeVec,
    member_pending: IntGaugeVec,
    member_running: IntGaugeVec,
    member_floor_attainment: GaugeVec,
    member_wait: HistogramVec,
    cluster_jain: prometheus::Gauge,
    cluster_capacity: GaugeVec,
    cluster_allocated: GaugeVec,
    cluster_utilization: GaugeVec,
    cluster_pending: IntGauge,
    cluster_running: IntGauge,
    cluster_nodes: IntGaugeVec,
    proposals: IntGaugeVec,
    member_votes_cast: IntGaugeVec,
    decision_log_entries: IntGauge,
    checkpoint_age: prometheus::Gauge,
    checkpoint_size: IntGauge,
    checkpoint_conflicts: IntGauge,
    /// The log time of the latest valid checkpoint (or, before there is
    /// one, when this replica started), in ms: its age is computed at scrape.
    checkpoint_at_ms: std::sync::atomic::AtomicU64,
    placements: IntCounterVec,
    preemptions: IntCounterVec,
    raft_is_leader: IntGauge,
    raft_leader_id: IntGauge,
    raft_term: IntGauge,
    raft_last_log: IntGauge,
    raft_commit: IntGauge,
    raft_applied: IntGauge,
    raft_apply_lag: IntGauge,
    raft_snapshot: IntGauge,
    raft_replica_matched: IntGaugeVec,
    rpc_duration: HistogramVec,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

const RESOURCES: [&str; 3] = ["gpu", "cpu", "memory"];

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedulerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = ["member"];
        let mr = ["member", "resource"];
        Self {
            member_entitlement: gauge_vec(&r, "coop_member_entitlement_ratio", "Fraction of the pool the member is entitled to (0 without demand).", &m),
            member_allocated: gauge_vec(&r, "coop_member_allocated", "Resources the member's live allocations hold (GPUs, cores, bytes).", &mr),
            member_share: gauge_vec(&r, "coop_member_share_ratio", "Member's allocation as a fraction of the pool, per resource.", &mr),
            member_dominant_share: gauge_vec(&r, "coop_member_dominant_share_ratio", "Member's largest share of any resource (DRF).", &m),
            member_share_to_entitlement: gauge_vec(&r, "coop_member_share_to_entitlement_ratio", "Dominant share divided by entitlement (1 = exactly its share).", &m),
            member_usage: gauge_vec(&r, "coop_member_usage_decayed", "Decayed resource-seconds used (GPU-s, core-s, GiB-s).", &mr),
            member_contribution: gauge_vec(&r, "coop_member_contribution_decayed", "Decayed GPU-equivalent-seconds the member's machines offered.", &m),
            member_pending: int_gauge_vec(&r, "coop_member_pending_jobs", "Member's pending jobs.", &m),
            member_running: int_gauge_vec(&r, "coop_member_running_jobs", "Member's jobs with a live allocation.", &m),
            member_floor_attainment: gauge_vec(&r, "coop_member_floor_attainment_ratio", "Dominant share over the member's social-floor share, capped at 1 (members with demand).", &m),
            member_wait: histogram_vec(&r, "coop_member_wait_seconds", "Submit-to-start time of the member's jobs.", &m, prometheus::exponential_buckets(0.005, 4.0, 12).expect("buckets")),
            cluster_jain: {
                let g = prometheus::Gauge::new(
                    "coop_cluster_fairness_jain_index",
                    "Jain's index over members with demand of dominant share / entitlement (1 = perfectly fair).",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            cluster_capacity: gauge_vec(&r, "coop_cluster_capacity", "Capacity of ready nodes (GPUs, cores, bytes).", &["resource"]),
            cluster_allocated: gauge_vec(&r, "coop_cluster_allocated", "Resources held by live allocations on ready nodes.", &["resource"]),
            cluster_utilization: gauge_vec(&r, "coop_cluster_utilization_ratio", "Allocated over capacity, per resource.", &["resource"]),
            cluster_pending: int_gauge(&r, "coop_cluster_pending_jobs", "Pending jobs."),
            cluster_running: int_gauge(&r, "coop_cluster_running_jobs", "Jobs with a live allocation."),
            proposals: int_gauge_vec(
                &r,
                "coop_governance_proposals",
                "Proposals by kind (policy, admit, remove, appeal) and status (open, adopted, rejected, expired, void).",
                &["kind", "status"],
            ),
            member_votes_cast: int_gauge_vec(
                &r,
                "coop_governance_votes_cast",
                "Votes a member has cast on all proposals.",
                &["member"],
            ),
            decision_log_entries: int_gauge(
                &r,
                "coop_decision_log_entries",
                "Leaves of the decision log (its tree size).",
            ),
            checkpoint_age: {
                let g = prometheus::Gauge::new(
                    "coop_checkpoint_age_seconds",
                    "Time since the latest checkpoint a majority of replicas signed (since start when there is none).",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            checkpoint_size: int_gauge(&r, "coop_checkpoint_size", "Tree size of the latest checkpoint a majority of replicas signed."),
            checkpoint_conflicts: int_gauge(&r, "coop_checkpoint_conflicts", "Pairs of validly signed checkpoints with different heads for one size (a forked history) this replica has seen."),
            checkpoint_at_ms: std::sync::atomic::AtomicU64::new(crate::clock::system_ms()),
            cluster_nodes: int_gauge_vec(&r, "coop_cluster_nodes", "Nodes by state.", &["state"]),
            placements: counter_vec(&r, "coop_scheduler_placements_total", "Placements applied, by the policy rule that made them.", &["rule"]),
            preemptions: counter_vec(&r, "coop_scheduler_preemptions_total", "Preemptions applied, by the policy rule that made them.", &["rule"]),
            raft_is_leader: int_gauge(&r, "coop_raft_is_leader", "1 on the replica that leads."),
            raft_leader_id: int_gauge(&r, "coop_raft_leader_id", "The leader this replica knows (0: none)."),
            raft_term: int_gauge(&r, "coop_raft_term", "Current Raft term."),
            raft_last_log: int_gauge(&r, "coop_raft_last_log_index", "Last index in this replica's log."),
            raft_commit: int_gauge(&r, "coop_raft_commit_index", "Committed index as this replica knows it."),
            raft_applied: int_gauge(&r, "coop_raft_applied_index", "Last index applied to the state."),
            raft_apply_lag: int_gauge(&r, "coop_raft_apply_lag", "Committed but not yet applied entries."),
            raft_snapshot: int_gauge(&r, "coop_raft_snapshot_index", "Index of the last snapshot."),
            raft_replica_matched: int_gauge_vec(&r, "coop_raft_replica_matched_index", "Leader only: the last index each replica is known to hold.", &["replica"]),
            rpc_duration: histogram_vec(&r, "coop_rpc_duration_seconds", "Time to serve a gRPC call, by method.", &["method"], prometheus::exponential_buckets(0.0005, 4.0, 10).expect("buckets")),
            registry: r,
        }
    }

    /// Times an RPC until the guard drops.
    pub fn timer(&self, method: &str) -> RpcTimer {
        RpcTimer {
            histogram: self.rpc_duration.with_label_values(&[method]),
            started: Instant::now(),
        }
    }

    /// Counts what an applied command did.
    pub fn observe(&self, outcome: &Outcome, state: &ClusterState) {
        match outcome {
            Outcome::Scheduled {
                placements,
                preemptions,
            } => {
                for p in placements {
                    self.placements.with_label_values(&[p.rule.as_str()]).inc();
                }
                for p in preemptions {
                    self.preemptions.with_label_values(&[p.rule.as_str()]).inc();
                }
            }
            Outcome::AllocStarted { job, .. } => {
                if let Some(j) = state.job(*job) {
                    let waited = j
                        .started_at_ms
                        .unwrap_or(j.submitted_at_ms)
                        .saturating_sub(j.submitted_at_ms);
                    self.member_wait
                        .with_label_values(&[j.member.as_str()])
                        .observe(waited as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }

    /// Renders every metric from the applied state and Raft's view.
    pub fn render(&self, state: &ClusterState, raft: &RaftStatus) -> String {
        self.update_state(state);
        self.update_raft(raft);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn update_state(&self, state: &ClusterState) {
        let shares = state.shares();
        let fairness = coop_core::fairness::compute(&shares);
        for v in [
            &self.member_entitlement,
            &self.member_allocated,
            &self.member_share,
            &self.member_dominant_share,
            &self.member_share_to_entitlement,
            &self.member_usage,
            &self.member_contribution,
            &self.member_floor_attainment,
        ] {
            v.reset();
        }
        self.member_pending.reset();
        self.member_running.reset();
        for s in shares.members.values() {
            let m = s.member.as_str();
            self.member_entitlement
                .with_label_values(&[m])
                .set(s.entitlement);
            let held = [
                s.allocated.gpus as f64,
                s.allocated.cpu_millis as f64 / 1000.0,
                s.allocated.memory_bytes as f64,
            ];
            let usage = [s.usage.gpu, s.usage.cpu, s.usage.mem];
            for (i, r) in RESOURCES.iter().enumerate() {
                self.member_allocated
                    .with_label_values(&[m, r])
                    .set(held[i]);
                self.member_share.with_label_values(&[m, r]).set(s.share[i]);
                self.member_usage.with_label_values(&[m, r]).set(usage[i]);
            }
            self.member_dominant_share
                .with_label_values(&[m])
                .set(s.dominant_share);
            self.member_contribution
                .with_label_values(&[m])
                .set(s.contribution);
            self.member_pending
                .with_label_values(&[m])
                .set(s.pending as i64);
            self.member_running
                .with_label_values(&[m])
                .set(s.running as i64);
            if let Some(ratio) = fairness.share_to_entitlement.get(&s.member) {
                self.member_share_to_entitlement
                    .with_label_values(&[m])
                    .set(*ratio);
            }
            if let Some(attained) = fairness.floor_attainment.get(&s.member) {
                self.member_floor_attainment
                    .with_label_values(&[m])
                    .set(*attained);
            }
        }
        self.cluster_jain.set(fairness.jain_index);
        let ready: Vec<_> = state.nodes().values().filter(|n| n.is_ready()).collect();
        let cap = ready.iter().fold(coop_core::Resources::ZERO, |a, n| {
            a.saturating_add(&n.capacity)
        });
        let held = ready.iter().fold(coop_core::Resources::ZERO, |a, n| {
            a.saturating_add(&n.allocated())
        });
        let cap_v = [
            cap.gpus as f64,
            cap.cpu_millis as f64 / 1000.0,
            cap.memory_bytes as f64,
        ];
        let held_v = [
            held.gpus as f64,
            held.cpu_millis as f64 / 1000.0,
            held.memory_bytes as f64,
        ];
        for (i, r) in RESOURCES.iter().enumerate() {
            self.cluster_capacity.with_label_values(&[r]).set(cap_v[i]);
            self.cluster_allocated
                .with_label_values(&[r])
                .set(held_v[i]);
            self.cluster_utilization
                .with_label_values(&[r])
                .set(if cap_v[i] > 0.0 {
                    held_v[i] / cap_v[i]
                } else {
                    0.0
                });
        }
        // Every kind and status, zero included, so panels and alerts always
        // have a series.
        for kind in coop_core::governance::ProposalKind::NAMES {
            for status in coop_core::governance::ProposalStatus::ALL {
                self.proposals
                    .with_label_values(&[kind, status.as_str()])
                    .set(0);
            }
        }
        let mut votes: std::collections::BTreeMap<&str, i64> =
            state.members().keys().map(|m| (m.as_str(), 0)).collect();
        for p in state.proposals().values() {
            self.proposals
                .with_label_values(&[p.kind.name(), p.status.as_str()])
                .inc();
            for m in p.votes.keys() {
                if let Some(n) = votes.get_mut(m.as_str()) {
                    *n += 1;
                }
            }
        }
        self.member_votes_cast.reset();
        for (m, n) in votes {
            self.member_votes_cast.with_label_values(&[m]).set(n);
        }
        self.decision_log_entries.set(state.log_size() as i64);
        let at = self
            .checkpoint_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.checkpoint_age
            .set(crate::clock::system_ms().saturating_sub(at) as f64 / 1000.0);
        self.cluster_pending.set(state.pending().len() as i64);
        self.cluster_running.set(state.running_jobs() as i64);
        self.cluster_nodes
            .with_label_values(&["ready"])
            .set(ready.len() as i64);
        self.cluster_nodes
            .with_label_values(&["lost"])
            .set((state.nodes().len() - ready.len()) as i64);
    }

    /// Records what the witness knows: the latest valid checkpoint and how
    /// many conflicts it has seen.
    pub fn observe_checkpoints(
        &self,
        latest_valid: Option<&coop_core::checkpoint::Head>,
        conflicts: usize,
    ) {
        if let Some(head) = latest_valid {
            self.checkpoint_at_ms
                .store(head.at_ms, std::sync::atomic::Ordering::Relaxed);
            self.checkpoint_size.set(head.size as i64);
        }
        self.checkpoint_conflicts.set(conflicts as i64);
    }

    fn update_raft(&self, raft: &RaftStatus) {
        self.raft_is_leader
            .set(i64::from(raft.role == NodeRole::Leader));
        self.raft_leader_id.set(raft.leader_id.unwrap_or(0) as i64);
        self.raft_term.set(raft.term as i64);
        self.raft_last_log.set(raft.last_log_index as i64);
        self.raft_commit.set(raft.commit_index as i64);
        self.raft_applied.set(raft.applied_index as i64);
        self.raft_apply_lag
            .set(raft.commit_index.saturating_sub(raft.applied_index) as i64);
        self.raft_snapshot.set(raft.snapshot_index as i64);
        self.raft_replica_matched.reset();
        if raft.role == NodeRole::Leader {
            for r in &raft.replicas {
                if let Some(i) = r.matched_index {
                    self.raft_replica_matched
                        .with_label_values(&[&r.id.to_string()])
                        .set(i as i64);
                }
            }
        }
    }
}

pub struct RpcTimer {
    histogram: prometheus::Histogram,
    started: Instant,
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = SchedulerMetrics::new();
        let status = RaftStatus {
            id: 1,
            role: NodeRole::Leader,
            leader_id: Some(1),
            term: 2,
            last_log_index: 5,
            commit_index: 5,
            applied_index: 4,
            snapshot_index: 0,
            replicas: vec![],
        };
        let text = m.render(&ClusterState::new(), &status);
        for name in [
            "coop_raft_is_leader 1",
            "coop_raft_apply_lag 1",
            "coop_cluster_fairness_jain_index 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let docs = include_str!("../../docs/metrics.md");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or("");
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
}

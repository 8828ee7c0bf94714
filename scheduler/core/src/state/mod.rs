//! `ClusterState`: everything the Raft log replicates, with read-only
//! queries. Commands change it through `apply` (see `crate::apply`), which
//! goes through the narrow mutators below.
//!
//! ```text
//!   Command ──▶ apply (one clamped `now`) ──▶ handler (jobs, nodes, results, schedule, policy)
//!                                                 │ insert/remove pairs keep the derived caches
//!                                                 ▼
//!   jobs ─ pending queue ─ allocations ─ nodes.allocated ─ members.allocated
//! ```
//!
//! Derived caches (the pending queue, each node's and member's allocated
//! sum and a node's allocation set) change in exactly one place each:
//! `insert_job`/`set_job_state` for the queue, `insert_alloc`/`remove_alloc`
//! for the sums. The fields they depend on are private.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alloc::{Allocation, JobFacts};
use crate::decision::{Decision, DECISIONS_KEPT};
use crate::error::SnapshotError;
use crate::explain::{self, Explanation, PendingReason};
use crate::fairshare::{self, Plan, Reservation, Shares};
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::{Job, JobState};
use crate::leaderboard::{self, Leaderboard};
use crate::ledger::gpu_equivalents;
use crate::member::Member;
use crate::node::{Node, NodeGrant};
use crate::policy::Policy;
use crate::resources::Resources;
use crate::view::{dequeue, enqueue, QueueByMember, View};

mod checks;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by genesis; every member signature names it.
    #[serde(default)]
    cluster_id: String,
    last_job_id: u64,
    last_alloc_id: u64,
    /// The latest time any applied command carried; never goes back.
    now_ms: u64,
    members: BTreeMap<MemberId, Member>,
    nodes: BTreeMap<NodeId, Node>,
    /// Every change of the replica group a member asked for: id, address,
    /// added or removed, who, when.
    #[serde(default)]
    replica_changes: Vec<ReplicaChange>,
    /// Every proposal ever made, open or decided (see `governance`).
    #[serde(default)]
    proposals: BTreeMap<crate::governance::ProposalId, crate::governance::Proposal>,
    /// Members removed by vote: their records stay for the history.
    #[serde(default)]
    former_members: BTreeMap<MemberId, Member>,
    /// Which member authorized which node key (see `NodeGrant`).
    #[serde(default)]
    node_grants: BTreeMap<NodeId, NodeGrant>,
    jobs: BTreeMap<JobId, Job>,
    /// Live allocations (assigned, running or stopping).
    allocs: BTreeMap<AllocId, Allocation>,
    /// Pending jobs in submission order: the queue the allocator walks.
    pending: BTreeSet<JobId>,
    /// The same queue by member (derived: kept in step with `pending`, not
    /// in snapshots, rebuilt when one loads), so a pass takes each member's
    /// queue without reading every waiting job's member.
    #[serde(skip)]
    queued: QueueByMember,
    /// Dedup table: member -> client request id -> the job it created.
    requests: BTreeMap<MemberId, BTreeMap<String, JobId>>,
    /// The rules in force.
    policy: Policy,
    /// Whether the genesis policy was adopted (it can be, once).
    genesis_adopted: bool,
    /// The latest placements and preemptions, oldest first.
    decisions: VecDeque<Decision>,
    /// Where the next expiry scan starts (see `apply::jobs::expire`).
    #[serde(default)]
    expiry_cursor: u64,
    /// The decision log's Merkle frontier (see `decision_log`).
    #[serde(default)]
    log: crate::merkle::Frontier,
    /// Demand or supply changed since the last scheduling pass.
    #[serde(default)]
    pass_due: bool,
}

/// A change of the replica group a member asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChange {
    pub id: u64,
    pub addr: String,
    /// Added (else removed).
    pub added: bool,
    pub member: MemberId,
    pub at_ms: u64,
}

/// Read-only queries: what the API, the metrics, the CLI and tests see.
impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The cluster's id, empty before genesis.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn genesis_adopted(&self) -> bool {
        self.genesis_adopted
    }

    pub fn members(&self) -> &BTreeMap<MemberId, Member> {
        &self.members
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, Node> {
        &self.nodes
    }

    pub fn proposals(
        &self,
    ) -> &BTreeMap<crate::governance::ProposalId, crate::governance::Proposal> {
        &self.proposals
    }

    pub fn former_members(&self) -> &BTreeMap<MemberId, Member> {
        &self.former_members
    }

    /// The tally of a proposal over the current members.
    pub fn tally(&self, p: &crate::governance::Proposal) -> crate::governance::Tally {
        let counted = p
            .votes
            .iter()
            .filter(|(m, _)| self.members.contains_key(*m));
        let yes = counted.clone().filter(|(_, y)| **y).count();
        let no = counted.filter(|(_, y)| !**y).count();
        crate::governance::Tally {
            yes,
            no,
            eligible: self.members.len(),
        }
    }

    /// How many leaves the decision log has.
    pub fn log_size(&self) -> u64 {
        self.log.size()
    }

    /// The decision log's tree head.
    pub fn log_root(&self) -> crate::merkle::Hash {
        self.log.root()
    }

    pub fn replica_changes(&self) -> &[ReplicaChange] {
        &self.replica_changes
    }

    pub fn node_grants(&self) -> &BTreeMap<NodeId, NodeGrant> {
        &self.node_grants
    }

    pub fn jobs(&self) -> &BTreeMap<JobId, Job> {
        &self.jobs
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn allocs(&self) -> &BTreeMap<AllocId, Allocation> {
        &self.allocs
    }

    /// Pending jobs in submission order.
    pub fn pending(&self) -> &BTreeSet<JobId> {
        &self.pending
    }

    /// The latest placements and preemptions, oldest first.
    pub fn decisions(&self) -> &VecDeque<Decision> {
        &self.decisions
    }

    /// The dedup table: member -> client request id -> the job it created.
    pub fn requests(&self) -> &BTreeMap<MemberId, BTreeMap<String, JobId>> {
        &self.requests
    }

    /// The job a member's request id created, while it is remembered.
    pub fn request(&self, member: &MemberId, request_id: &str) -> Option<JobId> {
        self.requests.get(member)?.get(request_id).copied()
    }

    /// The read-only window the allocator and the explanations use.
    pub fn view(&self) -> View<'_> {
        View {
            policy: &self.policy,
            members: &self.members,
            nodes: &self.nodes,
            jobs: &self.jobs,
            allocs: &self.allocs,
            pending: &self.pending,
            queued: &self.queued,
            now_ms: self.now_ms,
        }
    }

    /// The canonical encoding of the state: what a snapshot holds. Two
    /// replicas that applied the same log produce the same bytes.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster state always serializes")
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut state: Self = serde_json::from_slice(bytes)?;
        for id in &state.pending {
            if let Some(job) = state.jobs.get(id) {
                enqueue(&mut state.queued, &job.member, *id);
            }
        }
        let jobs = &state.jobs;
        for a in state.allocs.values_mut() {
            if let Some(job) = jobs.get(&a.job) {
                a.facts = JobFacts::of(job);
            }
        }
        Ok(state)
    }

    /// SHA-256 of the public state, hex: the snapshot bytes with every
    /// job's env values as their commitments, so an auditor replaying the
    /// public record reaches the digest the replicas report.
    pub fn digest(&self) -> String {
        if self.jobs.values().all(|j| j.env_salt.is_none()) {
            return hex::encode(Sha256::digest(self.to_snapshot_bytes()));
        }
        let mut public = self.clone();
        for job in public.jobs.values_mut() {
            if let Some(salt) = job.env_salt.take() {
                job.spec = job.spec.committed(&salt);
            }
        }
        hex::encode(Sha256::digest(public.to_snapshot_bytes()))
    }

    /// Jobs placed and not yet ended (assigned or running).
    pub fn running_jobs(&self) -> usize {
        self.allocs
            .values()
            .filter(|a| {
                self.jobs
                    .get(&a.job)
                    .is_some_and(|j| matches!(j.state(), JobState::Assigned | JobState::Running))
            })
            .count()
    }

    /// Nodes that can take work.
    pub fn ready_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.is_ready()).count()
    }

    /// GPU indices on a node not held by a live allocation.
    pub fn free_gpu_indices(&self, node: &Node) -> BTreeSet<u32> {
        self.view().free_gpu_indices(node)
    }

    /// The live allocations a node's worker should be running, in id order.
    pub fn node_allocations(&self, node: &NodeId) -> Vec<&Allocation> {
        self.nodes
            .get(node)
            .map(|n| {
                n.allocs()
                    .iter()
                    .filter_map(|a| self.allocs.get(a))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everyone's entitlement and share, from the state as it is.
    pub fn shares(&self) -> Shares {
        fairshare::compute_shares(&self.view())
    }

    /// Everyone's entitlement and share with the decayed ledgers accrued to
    /// `at_ms` (never before the state's own time): what `coop share`
    /// shows. Nothing is written.
    pub fn shares_at(&self, at_ms: u64) -> Shares {
        fairshare::compute_shares_at(&self.view(), Some(at_ms.max(self.now_ms)))
    }

    /// The rooms a scheduling pass now holds for large jobs
    /// (docs/policy.md §6), recomputed from the state as the pass does.
    pub fn reservations(&self) -> Vec<Reservation> {
        let view = self.view();
        fairshare::reservations(&view, &fairshare::compute_shares(&view))
    }

    /// The earliest time a job could start on a node as the allocations
    /// there end (by their timeouts); `None` if never or either is unknown.
    pub fn earliest_fit(&self, job: JobId, node: &NodeId) -> Option<u64> {
        let view = self.view();
        fairshare::earliest_fit(&view, self.nodes.get(node)?, self.jobs.get(&job)?)
    }

    /// What one scheduling pass would do now (nothing is changed).
    pub fn plan(&self) -> Plan {
        fairshare::plan(&self.view())
    }

    /// Evaluation results as leaderboards, one per dataset (optionally one dataset).
    pub fn leaderboards(&self, dataset: Option<&str>) -> Vec<Leaderboard> {
        leaderboard::compute(self.jobs.values(), dataset)
    }

    /// A sharded evaluation's merged result, asked of any of its shards:
    /// none until every shard has succeeded (see `leaderboard::merge_array`).
    pub fn sharded_result(
        &self,
        job: &Job,
    ) -> Option<Result<crate::JobResult, crate::result::ResultError>> {
        match &job.spec.kind {
            crate::JobKind::Evaluation { options, .. } if options.shards > 0 => {
                leaderboard::merge_array(self.array_jobs(job))
            }
            _ => None,
        }
    }

    /// Why a job waits; `None` for an unknown job.
    pub fn explain(&self, job: JobId) -> Option<Explanation> {
        explain::explain(&self.view(), job)
    }

    /// Every reason a pending job waits; empty for a job that is not pending.
    pub fn pending_reasons(&self, job: JobId) -> Vec<PendingReason> {
        match self.jobs.get(&job) {
            Some(j) if j.state() == JobState::Pending => {
                self.explain(job).map(|e| e.reasons).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Whether a scheduling pass is worth proposing: demand or supply
    /// changed since the last pass, and some waiting job could use room that
    /// is free now or that reclaim could free. Cheap (no allocator run): a
    /// `true` that turns out to place nothing costs one log entry, and the
    /// pass clears the flag, so the leader never loops on it.
    pub fn pass_due(&self) -> bool {
        if !self.pass_due || self.pending.is_empty() {
            return false;
        }
        let view = self.view();
        if self.ready_nodes() == 0 {
            return false;
        }
        // Per dimension, the most any one node has free: a job that does not
        // fit in that fits nowhere.
        let mut largest_free = Resources::ZERO;
        for n in view.ready_nodes() {
            let f = n.free();
            largest_free.cpu_millis = largest_free.cpu_millis.max(f.cpu_millis);
            largest_free.memory_bytes = largest_free.memory_bytes.max(f.memory_bytes);
            largest_free.gpus = largest_free.gpus.max(f.gpus);
        }
        let preemptible = self
            .allocs
            .values()
            .any(|a| !a.is_stopping() && self.jobs.get(&a.job).is_some_and(|j| j.spec.preemptible));
        preemptible
            || view
                .pending_jobs()
                .any(|j| j.spec.resources.fits_in(&largest_free))
    }
}

/// The narrow mutators `apply`'s handlers change the state through.
impl ClusterState {
    pub(crate) fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    pub(crate) fn mark_pass_due(&mut self) {
        self.pass_due = true;
    }

    pub(crate) fn clear_pass_due(&mut self) {
        self.pass_due = false;
    }

    /// The jobs of the array `job` is one of, in index order (those the
    /// state still holds); none for a job outside an array.
    pub fn array_jobs<'a>(&'a self, job: &Job) -> impl Iterator<Item = &'a Job> + 'a {
        let ids = match (job.array, job.spec.array) {
            (Some(place), Some(range)) => place.first.0..place.first.0 + u64::from(range.len()),
            _ => 0..0,
        };
        ids.filter_map(|id| self.jobs.get(&JobId(id)))
    }

    /// The highest job id given so far.
    pub fn last_job_id(&self) -> u64 {
        self.last_job_id
    }

    pub(crate) fn next_job_id(&mut self) -> JobId {
        self.last_job_id += 1;
        JobId(self.last_job_id)
    }

    pub(crate) fn next_alloc_id(&mut self) -> AllocId {
        self.last_alloc_id += 1;
        AllocId(self.last_alloc_id)
    }

    /// Adds a submitted job to the jobs, the queue and the dedup table.
    pub(crate) fn insert_job(&mut self, job: Job) {
        let id = job.id;
        if job.state() == JobState::Pending {
            self.pending.insert(id);
            enqueue(&mut self.queued, &job.member, id);
        }
        // An array's jobs share its request id, which names the first.
        self.requests
            .entry(job.member.clone())
            .or_default()
            .entry(job.request_id.clone())
            .or_insert(id);
        self.jobs.insert(id, job);
        self.pass_due = true;
    }

    /// Forgets an ended job and its request id.
    pub(crate) fn remove_job(&mut self, id: JobId) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        if self.pending.remove(&id) {
            dequeue(&mut self.queued, &job.member, id);
        }
        if let Some(requests) = self.requests.get_mut(&job.member) {
            if requests.get(&job.request_id) == Some(&id) {
                requests.remove(&job.request_id);
            }
            if requests.is_empty() {
                self.requests.remove(&job.member);
            }
        }
        Some(job)
    }

    /// The one place a job's state changes, keeping the pending queue in step.
    pub(crate) fn set_job_state(&mut self, id: JobId, state: JobState) -> Option<&mut Job> {
        let job = self.jobs.get_mut(&id)?;
        job.set_state(state);
        if state == JobState::Pending {
            if self.pending.insert(id) {
                enqueue(&mut self.queued, &job.member, id);
            }
            self.pass_due = true;
        } else if self.pending.remove(&id) {
            dequeue(&mut self.queued, &job.member, id);
        }
        Some(job)
    }

    /// A job's fields other than its state.
    pub(crate) fn job_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&id)
    }

    pub(crate) fn alloc_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        self.allocs.get_mut(&id)
    }

    /// Adds a live allocation and charges it to its node and member.
    pub(crate) fn insert_alloc(&mut self, mut alloc: Allocation, member: &MemberId, now_ms: u64) {
        if let Some(job) = self.jobs.get(&alloc.job) {
            alloc.facts = JobFacts::of(job);
        }
        if let Some(node) = self.nodes.get_mut(&alloc.node) {
            node.attach(alloc.id, &alloc.resources);
        }
        if let Some(m) = self.member_mut(member, now_ms) {
            m.attach(&alloc.resources);
        }
        self.allocs.insert(alloc.id, alloc);
    }

    /// Removes a live allocation and gives its resources back.
    pub(crate) fn remove_alloc(&mut self, id: AllocId, now_ms: u64) -> Option<Allocation> {
        let alloc = self.allocs.remove(&id)?;
        if let Some(node) = self.nodes.get_mut(&alloc.node) {
            node.detach(id, &alloc.resources);
        }
        if let Some(member) = self.jobs.get(&alloc.job).map(|j| j.member.clone()) {
            if let Some(m) = self.member_mut(&member, now_ms) {
                m.detach(&alloc.resources);
            }
        }
        self.pass_due = true;
        Some(alloc)
    }

    /// A member's record with its ledger brought up to `now_ms`, so a
    /// change of rates starts from here. Members are made only by genesis
    /// (and, later, admission votes): `None` for anyone else.
    pub(crate) fn member_mut(&mut self, id: &MemberId, now_ms: u64) -> Option<&mut Member> {
        let policy = &self.policy;
        let m = self.members.get_mut(id)?;
        m.accrue(now_ms, policy);
        Some(m)
    }

    /// Genesis: the cluster's id and its founding members.
    pub(crate) fn found(
        &mut self,
        cluster_id: &str,
        founders: &[crate::command::Founder],
        now_ms: u64,
    ) {
        self.cluster_id = cluster_id.to_string();
        for f in founders {
            self.members
                .insert(f.name.clone(), Member::new(f.name.clone(), f.key, now_ms));
        }
    }

    /// Brings every member's ledger up to `now_ms`.
    pub(crate) fn accrue_all(&mut self, now_ms: u64) {
        for m in self.members.values_mut() {
            m.accrue(now_ms, &self.policy);
        }
    }

    pub(crate) fn node_mut(&mut self, id: &NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id)
    }

    pub(crate) fn proposals_mut(
        &mut self,
    ) -> &mut BTreeMap<crate::governance::ProposalId, crate::governance::Proposal> {
        &mut self.proposals
    }

    /// Admits a member by vote.
    pub(crate) fn admit(&mut self, id: MemberId, key: crate::identity::PublicKey, now_ms: u64) {
        self.former_members.remove(&id);
        self.members
            .insert(id.clone(), Member::new(id, key, now_ms));
        self.pass_due = true;
    }

    /// Moves a member to the former members, with its node grants revoked.
    pub(crate) fn retire_member(&mut self, id: &MemberId) {
        if let Some(m) = self.members.remove(id) {
            self.former_members.insert(id.clone(), m);
        }
        self.node_grants.retain(|_, g| &g.owner != id);
        self.pass_due = true;
    }

    pub(crate) fn push_leaf(&mut self, leaf: crate::merkle::Hash) {
        self.log.push(leaf);
    }

    pub(crate) fn record_replica(&mut self, change: ReplicaChange) {
        self.replica_changes.push(change);
    }

    pub(crate) fn grant_node(&mut self, node: NodeId, grant: NodeGrant) {
        self.node_grants.insert(node, grant);
    }

    pub(crate) fn insert_node(&mut self, node: Node) -> &mut Node {
        self.pass_due = true;
        let id = node.id.clone();
        self.nodes.entry(id).or_insert(node)
    }

    /// Recomputes what a member's ready nodes offer per second.
    pub(crate) fn refresh_offered(&mut self, owner: &MemberId, now_ms: u64) {
        let offered: f64 = self
            .nodes
            .values()
            .filter(|n| &n.owner == owner && n.is_ready())
            .map(|n| gpu_equivalents(&n.capacity, &self.policy))
            .sum();
        if let Some(m) = self.member_mut(owner, now_ms) {
            m.offered = offered;
        }
    }

    pub(crate) fn set_policy(&mut self, policy: Policy, genesis: bool) {
        self.policy = policy;
        self.genesis_adopted |= genesis;
        self.pass_due = true;
    }

    pub(crate) fn decide(&mut self, decision: Decision) {
        if self.decisions.len() == DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        self.decisions.push_back(decision);
    }

    pub(crate) fn expiry_cursor(&self) -> u64 {
        self.expiry_cursor
    }

    pub(crate) fn set_expiry_cursor(&mut self, cursor: u64) {
        self.expiry_cursor = cursor;
    }
}

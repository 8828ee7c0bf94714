//! `ClusterState`: everything the Raft log replicates, and `apply`, the one
//! deterministic way it changes.
//!
//! ```text
//!   Command ──▶ ClusterState::apply ──▶ Result<Outcome, CoreError>
//!                    │  (no clock, no I/O, no randomness:
//!                    │   time comes in the command as now_ms)
//!                    ▼
//!   jobs ─ pending queue ─ allocations ─ nodes
//! ```
//!
//! `apply` checks everything first and mutates only once the command is
//! known to be valid, so a refused command leaves the state untouched.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alloc::{AllocState, Allocation};
use crate::command::{Command, CoreError, ExitStatus, Outcome, Placement, Preemption};
use crate::fairshare;
use crate::ids::{validate_name, AllocId, JobId, MemberId, NodeId};
use crate::job::{Job, JobResult, JobSpec, JobState};
use crate::ledger::{decay_factor, gpu_equivalents, Usage};
use crate::node::{GpuInfo, Node, NodeState};
use crate::policy::Policy;
use crate::resources::Resources;

/// Longest client request id accepted (it is kept in the dedup table).
pub const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: MemberId,
    pub first_seen_ms: u64,
    pub jobs_submitted: u64,
    /// Sum of the member's live allocations.
    pub allocated: Resources,
    /// Decayed resource-seconds the member has used.
    pub usage: Usage,
    /// Decayed GPU-equivalent-seconds the member's ready nodes have offered.
    pub contribution: f64,
    /// GPU-equivalents per second the member's ready nodes offer now.
    pub offered: f64,
    /// When `usage` and `contribution` were last brought up to date.
    pub accrued_at_ms: u64,
}

impl Member {
    fn new(id: MemberId, now_ms: u64) -> Self {
        Self {
            id,
            first_seen_ms: now_ms,
            jobs_submitted: 0,
            allocated: Resources::ZERO,
            usage: Usage::default(),
            contribution: 0.0,
            offered: 0.0,
            accrued_at_ms: now_ms,
        }
    }

    /// Brings the decayed ledger up to `now_ms` at the current rates.
    fn accrue(&mut self, now_ms: u64, policy: &Policy) {
        if now_ms <= self.accrued_at_ms {
            return;
        }
        let dt = now_ms - self.accrued_at_ms;
        let factor = decay_factor(dt, policy);
        let secs = dt as f64 / 1000.0;
        self.usage.decay(factor);
        self.usage.add(&self.allocated, secs);
        self.contribution = self.contribution * factor + self.offered * secs;
        self.accrued_at_ms = now_ms;
    }
}

/// One allocation decision, kept in a bounded history for `coop status`
/// and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: u64,
    /// "place" or "preempt".
    pub kind: String,
    pub job: JobId,
    pub member: MemberId,
    pub alloc: AllocId,
    pub node: NodeId,
    pub rule: String,
    pub policy_version: u64,
}

/// Decisions kept in the state; older ones are dropped first.
pub const DECISIONS_KEPT: usize = 1000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub last_job_id: u64,
    pub last_alloc_id: u64,
    /// The latest `now_ms` any command carried; time never goes back in the state.
    pub now_ms: u64,
    pub members: BTreeMap<MemberId, Member>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub jobs: BTreeMap<JobId, Job>,
    /// Live allocations (assigned, running or stopping).
    pub allocs: BTreeMap<AllocId, Allocation>,
    /// Pending jobs in submission order: the queue the allocator walks.
    pub pending: BTreeSet<JobId>,
    /// Dedup table: member -> client request id -> the job it created.
    pub requests: BTreeMap<MemberId, BTreeMap<String, JobId>>,
    /// The rules in force.
    pub policy: Policy,
    /// Whether the genesis policy was adopted (it can be, once).
    pub genesis_adopted: bool,
    /// The latest placements and preemptions, oldest first.
    pub decisions: VecDeque<Decision>,
    /// Where the next expiry scan starts (see `expire_jobs`).
    #[serde(default)]
    pub expiry_cursor: u64,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, CoreError> {
        match cmd {
            Command::Submit {
                request_id,
                member,
                spec,
                now_ms,
            } => self.submit(request_id, member, spec, *now_ms),
            Command::Cancel {
                job,
                member,
                now_ms,
            } => self.cancel(*job, member, *now_ms),
            Command::RegisterNode {
                node,
                owner,
                capacity,
                addr,
                incarnation,
                now_ms,
                gpus,
            } => self.register_node(node, owner, *capacity, addr, *incarnation, gpus, *now_ms),
            Command::NodeLost {
                node,
                incarnation,
                now_ms,
            } => self.node_lost(node, *incarnation, *now_ms),
            Command::Schedule { now_ms } => Ok(self.schedule(*now_ms)),
            Command::AdoptGenesisPolicy { policy, now_ms } => self.adopt_genesis(policy, *now_ms),
            Command::AllocStarted {
                alloc,
                node,
                now_ms,
            } => self.alloc_started(*alloc, node, *now_ms),
            Command::AllocFinished {
                alloc,
                node,
                exit,
                now_ms,
                result,
            } => self.alloc_finished(*alloc, node, exit, result.as_ref(), *now_ms),
            Command::Unknown => Err(CoreError::UnknownCommand),
        }
    }

    /// The canonical encoding of the state: what a snapshot holds. Two
    /// replicas that applied the same log produce the same bytes.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster state always serializes")
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt snapshot: {e}"))
    }

    /// SHA-256 of the snapshot bytes, hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_snapshot_bytes()))
    }

    /// Checks a submission against the state without applying it, so a
    /// server can reject bad input before it reaches the log.
    pub fn check_submit(
        &self,
        request_id: &str,
        member: &MemberId,
        spec: &JobSpec,
    ) -> Result<(), CoreError> {
        validate_name("member", member.as_str()).map_err(CoreError::InvalidName)?;
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(CoreError::InvalidSpec(format!(
                "request id must be 1 to {MAX_REQUEST_ID_LEN} bytes"
            )));
        }
        spec.validate().map_err(CoreError::InvalidSpec)?;
        let want = spec.resources;
        if let Some(max) = self.policy.max_job_gpus {
            if want.gpus > max {
                return Err(CoreError::Impossible(format!(
                    "the policy (version {}) allows at most {max} GPUs per job",
                    self.policy.version
                )));
            }
        }
        if let (Some(max), Some(asked)) = (self.policy.max_job_runtime_secs, spec.timeout_secs) {
            if asked > max {
                return Err(CoreError::Impossible(format!(
                    "the policy (version {}) allows runs of at most {max} s",
                    self.policy.version
                )));
            }
        }
        if spec.has_gpu_constraints()
            && !self.nodes.is_empty()
            && !self.nodes.values().any(|n| {
                n.matching_gpus(spec.gpu_model.as_deref(), spec.gpu_min_memory_bytes)
                    >= want.gpus as usize
            })
        {
            return Err(CoreError::Impossible(format!(
                "no node in the pool has {} GPUs matching the constraints",
                want.gpus
            )));
        }
        // Impossible asks are refused up front rather than queued forever.
        // With no node registered yet there is nothing to compare against,
        // so the job waits for the pool to form.
        if !self.nodes.is_empty() && !self.nodes.values().any(|n| want.fits_in(&n.capacity)) {
            let largest = self
                .nodes
                .values()
                .map(|n| n.capacity)
                .max_by_key(|c| (c.gpus, c.cpu_millis, c.memory_bytes))
                .unwrap_or_default();
            return Err(CoreError::Impossible(format!(
                "no node in the pool can ever hold {want} (largest node: {largest})"
            )));
        }
        Ok(())
    }

    fn touch_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The member's record, created on first sight, with its ledger brought
    /// up to the state's time so a change of rates starts from here.
    fn member_mut(&mut self, id: &MemberId) -> &mut Member {
        let now = self.now_ms;
        let policy = &self.policy;
        let m = self
            .members
            .entry(id.clone())
            .or_insert_with(|| Member::new(id.clone(), now));
        m.accrue(now, policy);
        m
    }

    /// Recomputes what a member's ready nodes offer per second.
    fn refresh_offered(&mut self, owner: &MemberId) {
        let offered: f64 = self
            .nodes
            .values()
            .filter(|n| &n.owner == owner && n.state == NodeState::Ready)
            .map(|n| gpu_equivalents(&n.capacity, &self.policy))
            .sum();
        self.member_mut(owner).offered = offered;
    }

    fn submit(
        &mut self,
        request_id: &str,
        member: &MemberId,
        spec: &JobSpec,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        if let Some(job) = self.requests.get(member).and_then(|r| r.get(request_id)) {
            return Ok(Outcome::Submitted {
                job: *job,
                existing: true,
            });
        }
        self.check_submit(request_id, member, spec)?;
        self.touch_time(now_ms);
        self.last_job_id += 1;
        let id = JobId(self.last_job_id);
        self.member_mut(member).jobs_submitted += 1;
        let mut job = Job {
            id,
            member: member.clone(),
            request_id: request_id.to_string(),
            spec: spec.clone(),
            state: JobState::Pending,
            attempts: 0,
            alloc: None,
            last_run: None,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            message: String::new(),
            result: None,
            history: Vec::new(),
        };
        job.record(now_ms, "submitted".into());
        self.jobs.insert(id, job);
        self.pending.insert(id);
        self.requests
            .entry(member.clone())
            .or_default()
            .insert(request_id.to_string(), id);
        Ok(Outcome::Submitted {
            job: id,
            existing: false,
        })
    }

    fn cancel(
        &mut self,
        job_id: JobId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(CoreError::UnknownJob(job_id))?;
        if &job.member != member {
            return Err(CoreError::NotOwner {
                job: job_id,
                owner: job.member.clone(),
            });
        }
        if job.state.is_terminal() {
            return Err(CoreError::AlreadyEnded {
                job: job_id,
                state: job.state,
            });
        }
        let alloc = job.alloc;
        self.touch_time(now_ms);
        if let Some(a) = alloc.and_then(|a| self.allocs.get_mut(&a)) {
            a.state = AllocState::Stopping;
        }
        self.pending.remove(&job_id);
        let job = self.jobs.get_mut(&job_id).expect("checked above");
        job.state = JobState::Cancelled;
        job.finished_at_ms = Some(now_ms);
        job.message = format!("cancelled by {member}");
        job.record(now_ms, format!("cancelled by {member}"));
        Ok(Outcome::Cancelled {
            job: job_id,
            stopping: alloc,
        })
    }

    fn adopt_genesis(&mut self, policy: &Policy, now_ms: u64) -> Result<Outcome, CoreError> {
        if self.genesis_adopted {
            return Err(CoreError::Policy(format!(
                "the genesis policy was adopted already (version {} is in force); changes go through a member vote",
                self.policy.version
            )));
        }
        policy.validate().map_err(CoreError::Policy)?;
        self.touch_time(now_ms);
        // Bring every ledger up to now under the old rates first.
        let ids: Vec<MemberId> = self.members.keys().cloned().collect();
        for id in &ids {
            self.member_mut(id);
        }
        self.policy = policy.clone();
        self.genesis_adopted = true;
        let owners: BTreeSet<MemberId> = self.nodes.values().map(|n| n.owner.clone()).collect();
        for owner in owners {
            self.refresh_offered(&owner);
        }
        Ok(Outcome::PolicyAdopted {
            version: policy.version,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn register_node(
        &mut self,
        node_id: &NodeId,
        owner: &MemberId,
        capacity: Resources,
        addr: &str,
        incarnation: u64,
        gpus: &[GpuInfo],
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        validate_name("node", node_id.as_str()).map_err(CoreError::InvalidName)?;
        validate_name("member", owner.as_str()).map_err(CoreError::InvalidName)?;
        if capacity.cpu_millis == 0 || capacity.memory_bytes == 0 {
            return Err(CoreError::Impossible(
                "a node must offer some cpu and memory".into(),
            ));
        }
        if !gpus.is_empty() {
            let indices: BTreeSet<u32> = gpus.iter().map(|g| g.index).collect();
            if gpus.len() != capacity.gpus as usize || indices != (0..capacity.gpus).collect() {
                return Err(CoreError::Impossible(format!(
                    "node {node_id} lists {} GPUs but offers {}; indices must be 0..{}",
                    gpus.len(),
                    capacity.gpus,
                    capacity.gpus
                )));
            }
        }
        if let Some(existing) = self.nodes.get(node_id) {
            if incarnation < existing.incarnation {
                return Err(CoreError::StaleIncarnation {
                    node: node_id.clone(),
                    current: existing.incarnation,
                    given: incarnation,
                });
            }
            // Within one worker process the capacity is fixed: allocations
            // were sized against it, so a change needs a new incarnation.
            if incarnation == existing.incarnation
                && (capacity != existing.capacity || existing.owner != *owner)
            {
                return Err(CoreError::Impossible(format!(
                    "node {node_id} changed capacity or owner without restarting its worker"
                )));
            }
        }
        self.touch_time(now_ms);
        let mut requeued = Vec::new();
        let previous_owner = self.nodes.get(node_id).map(|n| n.owner.clone());
        let same_incarnation = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.incarnation == incarnation);
        if !same_incarnation && self.nodes.contains_key(node_id) {
            // A new worker process: whatever the old one ran is gone with it.
            let (req, _failed) = self.end_node_allocs(node_id, now_ms, "its worker restarted");
            requeued = req;
        }
        let inventory: Vec<GpuInfo> = if gpus.is_empty() {
            (0..capacity.gpus)
                .map(|index| GpuInfo {
                    index,
                    ..GpuInfo::default()
                })
                .collect()
        } else {
            gpus.to_vec()
        };
        let node = self.nodes.entry(node_id.clone()).or_insert_with(|| Node {
            id: node_id.clone(),
            owner: owner.clone(),
            capacity,
            allocated: Resources::ZERO,
            labels: BTreeMap::new(),
            state: NodeState::Ready,
            addr: addr.to_string(),
            incarnation,
            registered_at_ms: now_ms,
            allocs: BTreeSet::new(),
            gpus: Vec::new(),
        });
        node.owner = owner.clone();
        node.capacity = capacity;
        node.addr = addr.to_string();
        node.incarnation = incarnation;
        node.state = NodeState::Ready;
        node.gpus = inventory;
        if !same_incarnation {
            node.registered_at_ms = now_ms;
        }
        self.refresh_offered(owner);
        if let Some(prev) = previous_owner.filter(|p| p != owner) {
            self.refresh_offered(&prev);
        }
        Ok(Outcome::NodeRegistered {
            node: node_id.clone(),
            requeued,
        })
    }

    fn node_lost(
        &mut self,
        node_id: &NodeId,
        incarnation: u64,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| CoreError::UnknownNode(node_id.clone()))?;
        if node.incarnation != incarnation || node.state == NodeState::Lost {
            return Err(CoreError::StaleIncarnation {
                node: node_id.clone(),
                current: node.incarnation,
                given: incarnation,
            });
        }
        let owner = node.owner.clone();
        self.touch_time(now_ms);
        let (requeued, failed) = self.end_node_allocs(node_id, now_ms, "its node was lost");
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.state = NodeState::Lost;
        }
        self.refresh_offered(&owner);
        Ok(Outcome::NodeLost {
            node: node_id.clone(),
            requeued,
            failed,
        })
    }

    /// Ends every live allocation on a node as lost; their jobs requeue
    /// while retries remain. Returns (requeued, failed).
    fn end_node_allocs(
        &mut self,
        node_id: &NodeId,
        now_ms: u64,
        why: &str,
    ) -> (Vec<JobId>, Vec<JobId>) {
        let allocs: Vec<AllocId> = self
            .nodes
            .get(node_id)
            .map(|n| n.allocs.iter().copied().collect())
            .unwrap_or_default();
        let mut requeued = Vec::new();
        let mut failed = Vec::new();
        for alloc_id in allocs {
            let Some(alloc) = self.remove_alloc(alloc_id) else {
                continue;
            };
            let exit = ExitStatus {
                code: None,
                signal: None,
                error: format!("allocation {alloc_id} lost: {why}"),
            };
            match self.end_run(alloc.job, &alloc, &exit, now_ms) {
                JobState::Pending => requeued.push(alloc.job),
                JobState::Failed => failed.push(alloc.job),
                _ => {}
            }
        }
        (requeued, failed)
    }

    fn remove_alloc(&mut self, alloc_id: AllocId) -> Option<Allocation> {
        let alloc = self.allocs.remove(&alloc_id)?;
        if let Some(node) = self.nodes.get_mut(&alloc.node) {
            node.allocated = node.allocated.saturating_sub(&alloc.resources);
            node.allocs.remove(&alloc_id);
        }
        if let Some(member) = self.jobs.get(&alloc.job).map(|j| j.member.clone()) {
            let m = self.member_mut(&member);
            m.allocated = m.allocated.saturating_sub(&alloc.resources);
        }
        Some(alloc)
    }

    /// Records the end of a job's run and decides what the job becomes:
    /// succeeded, requeued (retries left, or preempted) or failed. A
    /// cancelled job stays cancelled.
    fn end_run(
        &mut self,
        job_id: JobId,
        alloc: &Allocation,
        exit: &ExitStatus,
        now_ms: u64,
    ) -> JobState {
        let alloc_id = alloc.id;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return JobState::Failed;
        };
        if job.alloc == Some(alloc_id) {
            job.alloc = None;
        }
        if job.state == JobState::Cancelled {
            job.record(
                now_ms,
                format!("allocation {alloc_id} stopped: {}", exit.describe()),
            );
            return JobState::Cancelled;
        }
        if alloc.preempted {
            // Reclaim is the cooperative's decision, not the job's failure.
            job.state = JobState::Pending;
            job.record(
                now_ms,
                format!(
                    "allocation {alloc_id} preempted ({}); requeued without spending a retry",
                    exit.describe()
                ),
            );
            self.pending.insert(job_id);
            return JobState::Pending;
        }
        job.exit_code = exit.code;
        if exit.success() {
            job.state = JobState::Succeeded;
            job.finished_at_ms = Some(now_ms);
            job.message = exit.describe();
        } else if job.attempts < job.spec.max_retries {
            job.attempts += 1;
            job.state = JobState::Pending;
            job.record(
                now_ms,
                format!(
                    "run {} ended: {}; requeued (retry {} of {})",
                    alloc_id,
                    exit.describe(),
                    job.attempts,
                    job.spec.max_retries
                ),
            );
            self.pending.insert(job_id);
            return JobState::Pending;
        } else {
            job.attempts += 1;
            job.state = JobState::Failed;
            job.finished_at_ms = Some(now_ms);
            job.message = if job.spec.max_retries == 0 {
                exit.describe()
            } else {
                format!("{} (retries exhausted)", exit.describe())
            };
        }
        let line = format!("allocation {alloc_id} ended: {}", exit.describe());
        job.record(now_ms, line);
        job.state
    }

    fn decide(&mut self, decision: Decision) {
        if self.decisions.len() == DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        self.decisions.push_back(decision);
    }

    /// One pass of the fair-share allocator (see `fairshare`), carried out.
    /// Ended jobs checked for expiry per scheduling pass: bounds the work a
    /// pass spends on housekeeping whatever the history.
    const EXPIRY_SCAN: usize = 1000;

    /// Removes jobs that ended more than the policy's retention ago, oldest
    /// ids first, a bounded number per pass (evaluation results are kept).
    fn expire_jobs(&mut self) {
        let retention_ms = self.policy.job_retention_secs.saturating_mul(1000);
        let cutoff = self.now_ms.saturating_sub(retention_ms);
        if cutoff == 0 {
            return;
        }
        // A cursor walks the jobs round-robin, so jobs kept for good
        // (evaluation results) never hold back the expiry of later ones.
        let scanned: Vec<&Job> = self
            .jobs
            .range(JobId(self.expiry_cursor)..)
            .map(|(_, j)| j)
            .take(Self::EXPIRY_SCAN)
            .collect();
        self.expiry_cursor = match scanned.last() {
            Some(last) if scanned.len() == Self::EXPIRY_SCAN => last.id.0 + 1,
            _ => 0,
        };
        let expired: Vec<JobId> = scanned
            .into_iter()
            .filter(|j| j.state.is_terminal() && j.alloc.is_none())
            .filter(|j| j.finished_at_ms.is_some_and(|t| t < cutoff))
            .filter(|j| !matches!(j.result, Some(JobResult::Evaluation { .. })))
            .map(|j| j.id)
            .collect();
        for id in expired {
            if let Some(job) = self.jobs.remove(&id) {
                if let Some(requests) = self.requests.get_mut(&job.member) {
                    requests.remove(&job.request_id);
                }
            }
        }
    }

    fn schedule(&mut self, now_ms: u64) -> Outcome {
        self.touch_time(now_ms);
        self.expire_jobs();
        let ids: Vec<MemberId> = self.members.keys().cloned().collect();
        for id in &ids {
            self.member_mut(id);
        }
        let plan = fairshare::plan(self);
        let mut revoked = plan.revoked;
        let mut outcome = self.carry_out(plan, now_ms);
        // A pass that took back loans may leave room only another pass can
        // fill; carry on until a pass takes nothing back, so scheduling the
        // result again changes nothing. Each round satisfies a claim, and
        // the bound keeps a pathological state from looping.
        let mut rounds = 0;
        while revoked > 0 && rounds < 8 {
            rounds += 1;
            let plan = fairshare::plan(self);
            if plan.is_empty() {
                break;
            }
            revoked = plan.revoked;
            if let (
                Outcome::Scheduled {
                    placements,
                    preemptions,
                },
                Outcome::Scheduled {
                    placements: all_placements,
                    preemptions: all_preemptions,
                },
            ) = (self.carry_out(plan, now_ms), &mut outcome)
            {
                all_placements.extend(placements);
                all_preemptions.extend(preemptions);
            }
        }
        outcome
    }

    /// Applies a plan: its placements, then its preemptions.
    fn carry_out(&mut self, plan: fairshare::Plan, now_ms: u64) -> Outcome {
        let version = self.policy.version;
        let mut placements = Vec::with_capacity(plan.placements.len());
        for p in plan.placements {
            self.last_alloc_id += 1;
            let alloc_id = AllocId(self.last_alloc_id);
            let rule = p.rule.as_str().to_string();
            let alloc = Allocation {
                id: alloc_id,
                job: p.job,
                node: p.node.clone(),
                resources: p.resources,
                gpu_indices: p.gpu_indices.clone(),
                state: AllocState::Assigned,
                created_at_ms: now_ms,
                rule: rule.clone(),
                preempted: false,
            };
            if let Some(node) = self.nodes.get_mut(&p.node) {
                node.allocated = node.allocated.saturating_add(&p.resources);
                node.allocs.insert(alloc_id);
            }
            self.allocs.insert(alloc_id, alloc);
            self.pending.remove(&p.job);
            let member = match self.jobs.get_mut(&p.job) {
                Some(job) => {
                    job.state = JobState::Assigned;
                    job.alloc = Some(alloc_id);
                    job.last_run = Some((alloc_id, p.node.clone()));
                    job.record(
                        now_ms,
                        format!("placed on {} as allocation {alloc_id} (rule: {rule}, policy v{version})", p.node),
                    );
                    job.member.clone()
                }
                None => continue,
            };
            let m = self.member_mut(&member);
            m.allocated = m.allocated.saturating_add(&p.resources);
            self.decide(Decision {
                at_ms: now_ms,
                kind: "place".into(),
                job: p.job,
                member,
                alloc: alloc_id,
                node: p.node.clone(),
                rule: rule.clone(),
                policy_version: version,
            });
            placements.push(Placement {
                job: p.job,
                alloc: alloc_id,
                node: p.node,
                resources: p.resources,
                gpu_indices: p.gpu_indices,
                rule,
            });
        }
        let mut preemptions = Vec::with_capacity(plan.preemptions.len());
        for p in plan.preemptions {
            let Some(alloc) = self.allocs.get_mut(&p.alloc) else {
                continue;
            };
            alloc.state = AllocState::Stopping;
            alloc.preempted = true;
            let (job_id, node) = (alloc.job, alloc.node.clone());
            let rule = p.rule.as_str().to_string();
            let for_member = self
                .jobs
                .get(&p.for_job)
                .map(|j| j.member.clone())
                .unwrap_or_else(|| MemberId::new("?"));
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.record(
                now_ms,
                format!(
                    "preempted on {node} (rule: {rule}, policy v{version}) for job {} of {for_member}; grace {} s",
                    p.for_job, self.policy.grace_secs
                ),
            );
            let victim = job.member.clone();
            self.decide(Decision {
                at_ms: now_ms,
                kind: "preempt".into(),
                job: job_id,
                member: victim.clone(),
                alloc: p.alloc,
                node,
                rule: rule.clone(),
                policy_version: version,
            });
            preemptions.push(Preemption {
                alloc: p.alloc,
                job: job_id,
                victim,
                for_job: p.for_job,
                rule,
            });
        }
        Outcome::Scheduled {
            placements,
            preemptions,
        }
    }

    fn live_alloc_on(&self, alloc_id: AllocId, node: &NodeId) -> Result<&Allocation, CoreError> {
        match self.allocs.get(&alloc_id) {
            Some(a) if &a.node == node => Ok(a),
            _ => Err(CoreError::StaleAllocation {
                alloc: alloc_id,
                node: node.clone(),
            }),
        }
    }

    fn alloc_started(
        &mut self,
        alloc_id: AllocId,
        node: &NodeId,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        let alloc = self.live_alloc_on(alloc_id, node)?;
        let job_id = alloc.job;
        match alloc.state {
            AllocState::Assigned => {}
            // A worker retrying a report it already made: harmless.
            AllocState::Running => {
                return Ok(Outcome::AllocStarted {
                    alloc: alloc_id,
                    job: job_id,
                })
            }
            state @ AllocState::Stopping => {
                return Err(CoreError::BadAllocTransition {
                    alloc: alloc_id,
                    state,
                });
            }
        }
        self.touch_time(now_ms);
        if let Some(a) = self.allocs.get_mut(&alloc_id) {
            a.state = AllocState::Running;
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.state = JobState::Running;
            job.started_at_ms = Some(now_ms);
            job.record(now_ms, format!("started on {node} (allocation {alloc_id})"));
        }
        Ok(Outcome::AllocStarted {
            alloc: alloc_id,
            job: job_id,
        })
    }

    fn alloc_finished(
        &mut self,
        alloc_id: AllocId,
        node: &NodeId,
        exit: &ExitStatus,
        result: Option<&JobResult>,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        self.live_alloc_on(alloc_id, node)?;
        self.touch_time(now_ms);
        let alloc = self.remove_alloc(alloc_id).expect("checked live above");
        if let (Some(result), Some(job)) = (result, self.jobs.get_mut(&alloc.job)) {
            match result.validate() {
                Ok(()) => job.result = Some(result.clone()),
                Err(e) => job.record(
                    now_ms,
                    format!("result of allocation {alloc_id} dropped: {e}"),
                ),
            }
        }
        let job_state = self.end_run(alloc.job, &alloc, exit, now_ms);
        Ok(Outcome::AllocFinished {
            alloc: alloc_id,
            job: alloc.job,
            job_state,
        })
    }

    /// Jobs placed and not yet ended (assigned or running).
    pub fn running_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Assigned | JobState::Running))
            .count()
    }

    /// Nodes that can take work.
    pub fn ready_nodes(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .count()
    }

    /// GPU indices on a node not held by a live allocation.
    pub fn free_gpu_indices(&self, node: &Node) -> BTreeSet<u32> {
        let mut free: BTreeSet<u32> = (0..node.capacity.gpus).collect();
        for a in &node.allocs {
            if let Some(alloc) = self.allocs.get(a) {
                for g in &alloc.gpu_indices {
                    free.remove(g);
                }
            }
        }
        free
    }

    /// The live allocations a node's worker should be running, in id order.
    pub fn node_allocations(&self, node: &NodeId) -> Vec<&Allocation> {
        self.nodes
            .get(node)
            .map(|n| n.allocs.iter().filter_map(|a| self.allocs.get(a)).collect())
            .unwrap_or_default()
    }

    /// Every reason a pending job waits; empty for a job that is not pending.
    pub fn pending_reasons(&self, job: JobId) -> Vec<String> {
        match self.jobs.get(&job) {
            Some(j) if j.state == JobState::Pending => crate::explain::explain(self, job)
                .map(|e| e.reasons)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

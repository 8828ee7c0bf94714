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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alloc::{AllocState, Allocation};
use crate::allocator;
use crate::command::{Command, CoreError, ExitStatus, Outcome, Placement};
use crate::ids::{validate_name, AllocId, JobId, MemberId, NodeId};
use crate::job::{Job, JobSpec, JobState};
use crate::node::{Node, NodeState};
use crate::resources::Resources;

/// Longest client request id accepted (it is kept in the dedup table).
pub const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: MemberId,
    pub first_seen_ms: u64,
    pub jobs_submitted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
            } => self.register_node(node, owner, *capacity, addr, *incarnation, *now_ms),
            Command::NodeLost {
                node,
                incarnation,
                now_ms,
            } => self.node_lost(node, *incarnation, *now_ms),
            Command::Schedule { now_ms } => Ok(self.schedule(*now_ms)),
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
            } => self.alloc_finished(*alloc, node, exit, *now_ms),
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
        let entry = self
            .members
            .entry(member.clone())
            .or_insert_with(|| Member {
                id: member.clone(),
                first_seen_ms: now_ms,
                jobs_submitted: 0,
            });
        entry.jobs_submitted += 1;
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

    fn register_node(
        &mut self,
        node_id: &NodeId,
        owner: &MemberId,
        capacity: Resources,
        addr: &str,
        incarnation: u64,
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        validate_name("node", node_id.as_str()).map_err(CoreError::InvalidName)?;
        validate_name("member", owner.as_str()).map_err(CoreError::InvalidName)?;
        if capacity.cpu_millis == 0 || capacity.memory_bytes == 0 {
            return Err(CoreError::Impossible(
                "a node must offer some cpu and memory".into(),
            ));
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
            if incarnation == existing.incarnation && capacity != existing.capacity {
                return Err(CoreError::Impossible(format!(
                    "node {node_id} changed capacity without restarting its worker"
                )));
            }
        }
        self.touch_time(now_ms);
        let mut requeued = Vec::new();
        let same_incarnation = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.incarnation == incarnation);
        if !same_incarnation && self.nodes.contains_key(node_id) {
            // A new worker process: whatever the old one ran is gone with it.
            let (req, _failed) = self.end_node_allocs(node_id, now_ms, "its worker restarted");
            requeued = req;
        }
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
        });
        node.owner = owner.clone();
        node.capacity = capacity;
        node.addr = addr.to_string();
        node.incarnation = incarnation;
        node.state = NodeState::Ready;
        if !same_incarnation {
            node.registered_at_ms = now_ms;
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
        self.touch_time(now_ms);
        let (requeued, failed) = self.end_node_allocs(node_id, now_ms, "its node was lost");
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.state = NodeState::Lost;
        }
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
            match self.end_run(alloc.job, alloc_id, &exit, now_ms) {
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
        Some(alloc)
    }

    /// Records the end of a job's run and decides what the job becomes:
    /// succeeded, requeued (retries left) or failed. A cancelled job stays
    /// cancelled.
    fn end_run(
        &mut self,
        job_id: JobId,
        alloc_id: AllocId,
        exit: &ExitStatus,
        now_ms: u64,
    ) -> JobState {
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

    fn schedule(&mut self, now_ms: u64) -> Outcome {
        self.touch_time(now_ms);
        let plan = allocator::plan_first_fit(self);
        let mut placements = Vec::with_capacity(plan.len());
        for p in plan {
            self.last_alloc_id += 1;
            let alloc_id = AllocId(self.last_alloc_id);
            let alloc = Allocation {
                id: alloc_id,
                job: p.job,
                node: p.node.clone(),
                resources: p.resources,
                gpu_indices: p.gpu_indices.clone(),
                state: AllocState::Assigned,
                created_at_ms: now_ms,
            };
            if let Some(node) = self.nodes.get_mut(&p.node) {
                node.allocated = node.allocated.saturating_add(&p.resources);
                node.allocs.insert(alloc_id);
            }
            self.allocs.insert(alloc_id, alloc);
            self.pending.remove(&p.job);
            if let Some(job) = self.jobs.get_mut(&p.job) {
                job.state = JobState::Assigned;
                job.alloc = Some(alloc_id);
                job.last_run = Some((alloc_id, p.node.clone()));
                job.record(
                    now_ms,
                    format!(
                        "placed on {} as allocation {alloc_id} (rule: first-fit)",
                        p.node
                    ),
                );
            }
            placements.push(Placement {
                job: p.job,
                alloc: alloc_id,
                node: p.node,
                resources: p.resources,
                gpu_indices: p.gpu_indices,
            });
        }
        Outcome::Scheduled { placements }
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
        now_ms: u64,
    ) -> Result<Outcome, CoreError> {
        self.live_alloc_on(alloc_id, node)?;
        self.touch_time(now_ms);
        let alloc = self.remove_alloc(alloc_id).expect("checked live above");
        let job_state = self.end_run(alloc.job, alloc_id, exit, now_ms);
        Ok(Outcome::AllocFinished {
            alloc: alloc_id,
            job: alloc.job,
            job_state,
        })
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
            Some(j) if j.state == JobState::Pending => allocator::pending_reasons(self, job),
            _ => Vec::new(),
        }
    }
}

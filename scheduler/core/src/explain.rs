//! Why a job waits, and what would let it start, computed
//! counterfactually.
//!
//! The reasons are read off the scheduling pass the allocator would run on
//! the state as it is (`fairshare::plan`): who that pass serves on the
//! nodes that could hold the job, which room it holds for a reserved job,
//! what reclaim does. Every "it starts when" line names one change to the
//! state (allocations that end, or a node that joins) under which the same
//! pass was run and placed the job; a change the allocator does not
//! confirm is never shown. A property test makes each change through real
//! commands and runs the pass again.
//!
//! Reasons are values (`PendingReason`, `WouldStart`) carrying the numbers
//! they cite; `Display` renders them for `coop why` and `coop status`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::alloc::Allocation;
use crate::error::Impossible;
use crate::fairshare::{
    self, add, compute_shares, dominant, expected_end, over_cap, share_of, sub, MemberShare, Plan,
    Reservation, Shares, EPS,
};
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::{Job, JobState};
use crate::member::Member;
use crate::node::{never_fits, GpuInfo, Node};
use crate::policy::Policy;
use crate::resources::{format_bytes, Resources};
use crate::view::{enqueue, QueueByMember, View};

/// A member named in a reason, with everything that orders it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub member: MemberId,
    pub dominant_share: f64,
    pub entitlement: f64,
    /// The member's part of all decayed usage (docs/policy.md §3).
    pub usage_share: f64,
    /// The ordering key: lower is served first.
    pub key: f64,
}

impl Standing {
    fn of(m: &MemberShare) -> Self {
        Self {
            member: m.member.clone(),
            dominant_share: m.dominant_share,
            entitlement: m.entitlement,
            usage_share: m.usage_share,
            key: m.key,
        }
    }
}

/// What a job asks for, as the reasons quote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub resources: Resources,
    pub gpu_model: Option<String>,
    pub gpu_min_memory_bytes: Option<u64>,
}

impl Ask {
    fn of(job: &Job) -> Self {
        let gpus = job.spec.resources.gpus > 0;
        Self {
            resources: job.spec.resources,
            gpu_model: job.spec.gpu_model.clone().filter(|_| gpus),
            gpu_min_memory_bytes: job.spec.gpu_min_memory_bytes.filter(|_| gpus),
        }
    }
}

impl Ask {
    /// The GPUs of a node made to hold this ask: its model and memory.
    pub fn gpu_inventory(&self) -> Vec<GpuInfo> {
        (0..self.resources.gpus)
            .map(|index| GpuInfo {
                index,
                model: self.gpu_model.clone().unwrap_or_default(),
                memory_bytes: self.gpu_min_memory_bytes.unwrap_or(0),
                ..GpuInfo::default()
            })
            .collect()
    }
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resources)?;
        match (&self.gpu_model, self.gpu_min_memory_bytes) {
            (Some(m), Some(b)) => write!(f, " (GPU model {m}, {} each)", format_bytes(b)),
            (Some(m), None) => write!(f, " (GPU model {m})"),
            (None, Some(b)) => write!(f, " (GPUs of {} or more)", format_bytes(b)),
            (None, None) => Ok(()),
        }
    }
}

/// One reason a pending job waits, most fundamental first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum PendingReason {
    NoReadyNode,
    /// No ready node can ever hold it, even idle.
    NoNodeCanHold {
        ask: Ask,
        ready_nodes: usize,
        why: Impossible,
    },
    /// The pass the allocator would run now places it.
    PlacedNextPass {
        node: NodeId,
    },
    MemberCap {
        member: MemberId,
        dominant_share: f64,
        job_share: f64,
        cap: f64,
        policy_version: u64,
    },
    /// Placing it would take the member past its entitlement: it may only
    /// borrow idle room, and reclaim makes no room for it.
    AboveEntitlement {
        member: MemberId,
        dominant_share: f64,
        job_share: f64,
        entitlement: f64,
    },
    /// Room is held for it (a reservation, docs/policy.md §6).
    Reserved {
        node: NodeId,
        in_secs: u64,
    },
    /// The room that fits it now is held for another member's larger job.
    RoomHeld {
        node: NodeId,
        job: JobId,
        member: MemberId,
        in_secs: u64,
        spare: Resources,
    },
    /// Nodes that could hold it are full; per dimension, on how many of them it is short.
    NodesBusy {
        nodes: usize,
        short: BTreeMap<String, usize>,
    },
    /// Room that fits it is free, and the pass gives it to these members first.
    ServedFirst {
        me: Standing,
        first: Vec<Standing>,
    },
    /// When room frees on the node that frees soonest, the pass gives it to
    /// other members first (`smaller`: every job it places there is smaller).
    FreedToOthers {
        node: NodeId,
        to: Vec<Standing>,
        smaller: bool,
    },
    /// The member is below its entitlement and the job within it, but no
    /// node that could hold it has anything reclaim may take (`reserved`:
    /// some of them are held for another member's job).
    HeldByNonPreemptible {
        nodes: usize,
        reserved: bool,
    },
    ReclaimUnderWay {
        stopping: usize,
        grace_secs: u64,
    },
    OlderJobsAhead {
        member: MemberId,
        count: usize,
    },
}

impl PendingReason {
    /// A stable name for the reason, for machines (`coop why -o json`, tests).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoReadyNode => "no_ready_node",
            Self::NoNodeCanHold { .. } => "no_node_can_hold",
            Self::PlacedNextPass { .. } => "room_free_now",
            Self::MemberCap { .. } => "member_cap",
            Self::AboveEntitlement { .. } => "above_entitlement",
            Self::Reserved { .. } => "reserved",
            Self::RoomHeld { .. } => "room_held",
            Self::NodesBusy { .. } => "nodes_busy",
            Self::ServedFirst { .. } => "fair_share",
            Self::FreedToOthers { .. } => "freed_to_others",
            Self::HeldByNonPreemptible { .. } => "held_by_non_preemptible",
            Self::ReclaimUnderWay { .. } => "reclaim_under_way",
            Self::OlderJobsAhead { .. } => "older_jobs_ahead",
        }
    }
}

/// One change under which the allocator's pass places the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum WouldStart {
    /// These allocations on `node` end, freeing `frees` there; `in_secs`
    /// when their timeouts say they will have ended.
    NodeFrees {
        node: NodeId,
        allocs: Vec<AllocId>,
        frees: Resources,
        in_secs: Option<u64>,
    },
    /// These allocations of the member end, bringing its dominant share to `to`.
    ShareFalls {
        member: MemberId,
        allocs: Vec<AllocId>,
        to: f64,
    },
    /// The allocations preempted for it finish stopping.
    ReclaimCompletes {
        allocs: Vec<AllocId>,
        grace_secs: u64,
    },
    /// The member adds a node that can hold the job.
    NodeJoins { member: MemberId, ask: Ask },
    /// A policy the members vote for raises the member cap from `from` to
    /// `to`, the least under which this job passes it.
    CapRaised {
        from: f64,
        to: f64,
        policy_version: u64,
    },
}

impl WouldStart {
    /// The allocations the change ends.
    pub fn ended(&self) -> &[AllocId] {
        match self {
            Self::NodeFrees { allocs, .. }
            | Self::ShareFalls { allocs, .. }
            | Self::ReclaimCompletes { allocs, .. } => allocs,
            Self::NodeJoins { .. } | Self::CapRaised { .. } => &[],
        }
    }
}

/// "now" or "within N s".
fn when(secs: u64) -> String {
    if secs == 0 {
        "now".into()
    } else {
        format!("within {secs} s")
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (key {:.3}: share {}, decayed usage {}, entitled to {})",
            self.member,
            self.key,
            pct(self.dominant_share),
            pct(self.usage_share),
            pct(self.entitlement)
        )
    }
}

fn list(members: &[Standing]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReadyNode => write!(f, "no ready node in the pool"),
            Self::NoNodeCanHold {
                ask,
                ready_nodes,
                why,
            } => write!(
                f,
                "this job can never run on the {ready_nodes} ready nodes: it asks for {ask}, and {why}"
            ),
            Self::PlacedNextPass { node } => write!(
                f,
                "room is free on {node}: the next scheduling pass places it there"
            ),
            Self::MemberCap {
                member,
                dominant_share,
                job_share,
                cap,
                policy_version,
            } => write!(
                f,
                "the cap holds {member}: its dominant share {} plus this job's {} would pass the cap of {} (policy v{policy_version})",
                pct(*dominant_share),
                pct(*job_share),
                pct(*cap)
            ),
            Self::AboveEntitlement {
                member,
                dominant_share,
                job_share,
                entitlement,
            } => write!(
                f,
                "this job would take {member} above its entitlement ({} + {} > {}): it may only borrow idle room, and reclaim makes no room for it",
                pct(*dominant_share),
                pct(*job_share),
                pct(*entitlement)
            ),
            Self::Reserved { node, in_secs } => write!(
                f,
                "room is held for it on {node}: expected to start {}, as allocations there stop or reach their timeouts",
                when(*in_secs)
            ),
            Self::RoomHeld {
                node,
                job,
                member,
                in_secs,
                spare,
            } => write!(
                f,
                "the room that fits it on {node} is held for job {job} of {member} (expected to start {}): only a job that ends before then, or fits in the spare {spare}, may use it",
                when(*in_secs)
            ),
            Self::NodesBusy { nodes, short } => {
                let dims: Vec<String> = short.iter().map(|(d, c)| format!("{d} on {c}")).collect();
                let what = if dims.is_empty() {
                    "matching GPUs".to_string()
                } else {
                    dims.join(", ")
                };
                write!(
                    f,
                    "the {nodes} nodes that can hold it are busy: not enough free {what}"
                )
            }
            Self::ServedFirst { me, first } => write!(
                f,
                "fair share: the room that fits it goes to members served first: {}; {me}",
                list(first)
            ),
            Self::FreedToOthers { node, to, smaller } => write!(
                f,
                "freed capacity goes to {}: room freed on {node} goes to {}",
                if *smaller { "smaller jobs first" } else { "members served first" },
                list(to)
            ),
            Self::HeldByNonPreemptible { nodes, reserved } => write!(
                f,
                "reclaim cannot make room: what runs on the {nodes} nodes that can hold it is not preemptible, or belongs to members within their entitlement{}",
                if *reserved { ", or the room is held for another member's job" } else { "" }
            ),
            Self::ReclaimUnderWay { stopping, grace_secs } => write!(
                f,
                "reclaim under way: {stopping} preempted allocations are stopping or are preempted by the next pass (grace {grace_secs} s)"
            ),
            Self::OlderJobsAhead { member, count } => write!(
                f,
                "{count} older jobs of {member} are ahead of it in {member}'s queue"
            ),
        }
    }
}

fn allocs_text(allocs: &[AllocId]) -> String {
    const SHOWN: usize = 4;
    let mut ids: Vec<String> = allocs.iter().take(SHOWN).map(ToString::to_string).collect();
    if allocs.len() > SHOWN {
        ids.push(format!("{} more", allocs.len() - SHOWN));
    }
    ids.join(", ")
}

impl fmt::Display for WouldStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NodeFrees {
                node,
                allocs,
                frees,
                in_secs,
            } => {
                write!(
                    f,
                    "{frees} frees up on {node} (allocations {} end)",
                    allocs_text(allocs)
                )?;
                match in_secs {
                    Some(s) => write!(
                        f,
                        ", expected {} (being stopped, or by their timeouts)",
                        when(*s)
                    ),
                    None => Ok(()),
                }
            }
            Self::ShareFalls { member, allocs, to } => write!(
                f,
                "{member}'s allocations {} end, bringing its dominant share to {}",
                allocs_text(allocs),
                pct(*to)
            ),
            Self::ReclaimCompletes { allocs, grace_secs } => write!(
                f,
                "the preempted allocations {} stop (within the grace of {grace_secs} s)",
                allocs_text(allocs)
            ),
            Self::NodeJoins { member, ask } => {
                write!(f, "{member} adds a node that can hold {ask}")
            }
            Self::CapRaised {
                from,
                to,
                policy_version,
            } => write!(
                f,
                "the members vote a policy raising the member cap from {} to {} (policy v{policy_version} in force)",
                pct(*from),
                pct(*to)
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub job: JobId,
    pub member: MemberId,
    pub state: JobState,
    /// Every reason the job waits, most fundamental first (empty unless pending).
    pub reasons: Vec<PendingReason>,
    /// 1-based position among the member's pending jobs (0 unless pending).
    pub queue_position: usize,
    pub queue_length: usize,
    pub dominant_share: f64,
    pub entitlement: f64,
    pub usage_share: f64,
    /// The member's ordering key (lower is served first).
    pub key: f64,
    /// The room held for it, if any: node and expected start (log time).
    pub reserved: Option<(NodeId, u64)>,
    /// Changes under which the allocator's pass places it, each confirmed
    /// by running that pass.
    pub would_start: Vec<WouldStart>,
    pub policy_version: u64,
    /// The log's time the explanation was computed at.
    pub at_ms: u64,
}

pub fn explain(view: &View<'_>, job_id: JobId) -> Option<Explanation> {
    let job = view.jobs.get(&job_id)?;
    // A pass brings every ledger up to its time before it plans
    // (`apply::schedule`), so every pass run here does too.
    let members: BTreeMap<MemberId, Member> = view
        .members
        .iter()
        .map(|(id, m)| {
            let mut m = m.clone();
            m.accrue(view.now_ms, view.policy);
            (id.clone(), m)
        })
        .collect();
    let view = &View {
        members: &members,
        ..*view
    };
    let shares = compute_shares(view);
    let me = shares.members.get(&job.member);
    let mut e = Explanation {
        job: job_id,
        member: job.member.clone(),
        state: job.state(),
        reasons: Vec::new(),
        queue_position: 0,
        queue_length: 0,
        dominant_share: me.map(|m| m.dominant_share).unwrap_or(0.0),
        entitlement: me.map(|m| m.entitlement).unwrap_or(0.0),
        usage_share: me.map(|m| m.usage_share).unwrap_or(0.0),
        key: me.map(|m| m.key).unwrap_or(f64::INFINITY),
        reserved: None,
        would_start: Vec::new(),
        policy_version: view.policy.version,
        at_ms: view.now_ms,
    };
    if job.state() != JobState::Pending {
        return Some(e);
    }
    let mine: Vec<JobId> = view
        .pending_jobs()
        .filter(|j| j.member == job.member)
        .map(|j| j.id)
        .collect();
    e.queue_length = mine.len();
    e.queue_position = mine
        .iter()
        .position(|id| *id == job_id)
        .map(|p| p + 1)
        .unwrap_or(0);
    let me = me.expect("a member with a pending job has a share");
    Case {
        view,
        shares: &shares,
        job,
        me,
        reservations: fairshare::reservations(view, &shares),
    }
    .explain(&mut e);
    if e.queue_position > 1
        && !matches!(
            e.reasons.first(),
            Some(PendingReason::PlacedNextPass { .. })
        )
    {
        e.reasons.push(PendingReason::OlderJobsAhead {
            member: job.member.clone(),
            count: e.queue_position - 1,
        });
    }
    Some(e)
}

/// How many allocation-ending candidates are tried per kind of change:
/// each costs one allocator pass.
const NODES_TRIED: usize = 2;
const SHARE_STEPS: usize = 3;

/// The name a node joining in a counterfactual goes by.
const JOINING_NODE: &str = "a-new-node";

struct Case<'v, 'a> {
    view: &'v View<'a>,
    shares: &'v Shares,
    job: &'a Job,
    me: &'v MemberShare,
    /// The rooms the pass holds for large jobs.
    reservations: Vec<Reservation>,
}

impl<'a> Case<'_, 'a> {
    fn explain(&self, e: &mut Explanation) {
        let (view, job) = (self.view, self.job);
        let ready: Vec<&'a Node> = view.ready_nodes().collect();
        if ready.is_empty() {
            e.reasons.push(PendingReason::NoReadyNode);
            self.node_joins(e);
            return;
        }
        if let Some(why) = never_fits(&job.spec, ready.iter().copied()) {
            e.reasons.push(PendingReason::NoNodeCanHold {
                ask: Ask::of(job),
                ready_nodes: ready.len(),
                why,
            });
            self.node_joins(e);
            return;
        }
        let plan = fairshare::plan(view);
        if let Some(p) = plan.placements.iter().find(|p| p.job == job.id) {
            e.reasons.push(PendingReason::PlacedNextPass {
                node: p.node.clone(),
            });
            return;
        }
        let pool = self.shares.pool;
        let job_share = share_of(&job.spec.resources, &pool);
        let after = add(&self.me.share, &job_share);
        let capped = over_cap(view.policy, &after);
        if capped {
            e.reasons.push(PendingReason::MemberCap {
                member: job.member.clone(),
                dominant_share: self.me.dominant_share,
                job_share: dominant(&job_share),
                cap: view.policy.member_cap.unwrap_or(1.0),
                policy_version: view.policy.version,
            });
        }
        let within = dominant(&after) <= self.me.entitlement + EPS;
        if !within {
            e.reasons.push(PendingReason::AboveEntitlement {
                member: job.member.clone(),
                dominant_share: self.me.dominant_share,
                job_share: dominant(&job_share),
                entitlement: self.me.entitlement,
            });
        }
        if let Some(r) = self.reservations.iter().find(|r| r.job == job.id) {
            e.reserved = Some((r.node.clone(), r.start_ms));
            e.reasons.push(PendingReason::Reserved {
                node: r.node.clone(),
                in_secs: secs_until(view.now_ms, r.start_ms),
            });
        }
        let holders: Vec<&'a Node> = ready
            .iter()
            .copied()
            .filter(|n| n.can_ever_hold(&job.spec))
            .collect();
        let fits_now: Vec<&Node> = holders
            .iter()
            .copied()
            .filter(|n| fits_free(view, n, job))
            .collect();
        if fits_now.is_empty() {
            let mut short = BTreeMap::<String, usize>::new();
            for n in &holders {
                for dim in job.spec.resources.shortfall(&n.free()) {
                    *short.entry(dim.to_string()).or_default() += 1;
                }
            }
            e.reasons.push(PendingReason::NodesBusy {
                nodes: holders.len(),
                short,
            });
        } else {
            self.room_taken(&fits_now, &plan, e);
        }
        let below = self.me.dominant_share + EPS < self.me.entitlement;
        let mut reclaimed = Vec::new();
        if below && within && fits_now.is_empty() {
            reclaimed = self.reclaim(&holders, &plan, e);
        }
        if !reclaimed.is_empty() {
            let change = WouldStart::ReclaimCompletes {
                allocs: reclaimed,
                grace_secs: view.policy.grace_secs,
            };
            self.confirm(change, e);
        }
        if fits_now.is_empty() {
            self.node_frees(&holders, e);
        }
        if !within || capped || !fits_now.is_empty() {
            self.share_falls(e);
        }
        if capped {
            // The least cap under which the job passes: its member's share
            // with the job placed.
            let change = WouldStart::CapRaised {
                from: view.policy.member_cap.unwrap_or(1.0),
                to: dominant(&after),
                policy_version: view.policy.version,
            };
            self.confirm(change, e);
        }
    }

    /// Who the pass gives the room that fits the job now.
    fn room_taken(&self, fits_now: &[&Node], plan: &Plan, e: &mut Explanation) {
        let here: BTreeSet<&NodeId> = fits_now.iter().map(|n| &n.id).collect();
        if let Some(r) = self.reservations.iter().find(|r| {
            r.job != self.job.id
                && here.contains(&r.node)
                && !fairshare::reservation_allows(r, self.job, self.view.now_ms)
        }) {
            e.reasons.push(PendingReason::RoomHeld {
                node: r.node.clone(),
                job: r.job,
                member: r.member.clone(),
                in_secs: secs_until(self.view.now_ms, r.start_ms),
                spare: r.spare,
            });
        }
        let first = self.members_placed(plan, &here);
        if !first.is_empty() {
            e.reasons.push(PendingReason::ServedFirst {
                me: Standing::of(self.me),
                first,
            });
        }
    }

    /// Other members the pass places jobs for on these nodes, lowest key first.
    fn members_placed(&self, plan: &Plan, nodes: &BTreeSet<&NodeId>) -> Vec<Standing> {
        let members: BTreeSet<&MemberId> = plan
            .placements
            .iter()
            .filter(|p| nodes.contains(&p.node))
            .filter_map(|p| self.view.jobs.get(&p.job))
            .map(|j| &j.member)
            .filter(|m| **m != self.job.member)
            .collect();
        let mut members: Vec<&MemberId> = members.into_iter().collect();
        self.shares.sort_by_key(&mut members);
        members
            .into_iter()
            .filter_map(|m| self.shares.members.get(m))
            .map(Standing::of)
            .collect()
    }

    /// What reclaim does for the job: the allocations being stopped on the
    /// nodes that can hold it, and those the pass preempts for it.
    fn reclaim(&self, holders: &[&Node], plan: &Plan, e: &mut Explanation) -> Vec<AllocId> {
        let view = self.view;
        let mut allocs: BTreeSet<AllocId> = plan
            .preemptions
            .iter()
            .filter(|p| p.for_job == self.job.id)
            .map(|p| p.alloc)
            .collect();
        for n in holders {
            allocs.extend(
                view.node_allocs(n)
                    .filter(|a| a.preempted && a.is_stopping())
                    .map(|a| a.id),
            );
        }
        if allocs.is_empty() {
            let reserved = self.reservations.iter().any(|r| {
                r.job != self.job.id
                    && holders.iter().any(|n| n.id == r.node)
                    && !fairshare::reservation_allows(r, self.job, view.now_ms)
            });
            e.reasons.push(PendingReason::HeldByNonPreemptible {
                nodes: holders.len(),
                reserved,
            });
        } else {
            e.reasons.push(PendingReason::ReclaimUnderWay {
                stopping: allocs.len(),
                grace_secs: view.policy.grace_secs,
            });
        }
        allocs.into_iter().collect()
    }

    /// The nodes that can hold the job, freeing soonest first: on each, the
    /// allocations expected to end first until the job fits there.
    fn node_frees(&self, holders: &[&'a Node], e: &mut Explanation) {
        let now = self.view.now_ms;
        let mut options: Vec<(Option<u64>, usize, &'a Node, Vec<&'a Allocation>)> = holders
            .iter()
            .filter_map(|n| {
                let ending = self.ending_until_fit(n)?;
                let by = ending
                    .iter()
                    .map(|a| expected_end(self.view, a, now))
                    .try_fold(now, |t, end| end.map(|end| t.max(end)));
                Some((by, ending.len(), *n, ending))
            })
            .collect();
        options.sort_by(|a, b| {
            let finite = |t: Option<u64>| t.unwrap_or(u64::MAX);
            finite(a.0)
                .cmp(&finite(b.0))
                .then(a.1.cmp(&b.1))
                .then(a.2.id.cmp(&b.2.id))
        });
        let mut taken_by: Option<PendingReason> = None;
        for (by, _, node, ending) in options.into_iter().take(NODES_TRIED) {
            let change = WouldStart::NodeFrees {
                node: node.id.clone(),
                allocs: ending.iter().map(|a| a.id).collect(),
                frees: ending
                    .iter()
                    .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.resources)),
                in_secs: by.map(|t| secs_until(now, t)),
            };
            let (placed, plan) = self.places(&change);
            if placed {
                e.would_start.push(change);
                return;
            }
            if taken_by.is_none() {
                let to = self.members_placed(&plan, &BTreeSet::from([&node.id]));
                let want = self.job.spec.resources;
                let smaller = plan
                    .placements
                    .iter()
                    .filter(|p| p.node == node.id)
                    .all(|p| p.resources.fits_in(&want) && p.resources != want);
                if !to.is_empty() {
                    taken_by = Some(PendingReason::FreedToOthers {
                        node: node.id.clone(),
                        to,
                        smaller,
                    });
                }
            }
        }
        e.reasons.extend(taken_by);
    }

    /// The allocations on `node` that must end for the job to fit there,
    /// expected end first (those without a timeout last, newest first).
    fn ending_until_fit(&self, node: &'a Node) -> Option<Vec<&'a Allocation>> {
        let view = self.view;
        let mut allocs: Vec<&Allocation> = view.node_allocs(node).collect();
        self.by_end(&mut allocs);
        let mut free = node.free();
        let mut free_gpus = view.free_gpu_indices(node);
        let fits = |free: &Resources, gpus: &BTreeSet<u32>| {
            fairshare::pick_gpus(node, self.job, free, gpus).is_some()
        };
        let mut out = Vec::new();
        for a in allocs {
            if fits(&free, &free_gpus) {
                break;
            }
            free = free.saturating_add(&a.resources);
            free_gpus.extend(a.gpu_indices.iter().copied());
            out.push(a);
        }
        fits(&free, &free_gpus).then_some(out)
    }

    /// Orders allocations by when they are expected to end (soonest
    /// first), then newest first: the least work lost when nothing says.
    fn by_end(&self, allocs: &mut [&'a Allocation]) {
        let now = self.view.now_ms;
        allocs.sort_by_key(|a| {
            (
                expected_end(self.view, a, now).unwrap_or(u64::MAX),
                std::cmp::Reverse(a.created_at_ms),
                a.id,
            )
        });
    }

    /// The fewest of the member's own allocations (expected end first) whose
    /// end lets the pass place the job, trying a few prefix lengths.
    fn share_falls(&self, e: &mut Explanation) {
        let view = self.view;
        let mut own: Vec<&Allocation> = view
            .allocs
            .values()
            .filter(|a| !a.is_stopping())
            .filter(|a| {
                view.jobs
                    .get(&a.job)
                    .is_some_and(|j| j.member == self.job.member)
            })
            .collect();
        if own.is_empty() {
            return;
        }
        self.by_end(&mut own);
        let pool = self.shares.pool;
        let job_share = share_of(&self.job.spec.resources, &pool);
        let share_without = |k: usize| {
            own[..k].iter().fold(self.me.share, |s, a| {
                let s = sub(&s, &share_of(&a.resources, &pool));
                [s[0].max(0.0), s[1].max(0.0), s[2].max(0.0)]
            })
        };
        // The least that can work: the job within the cap and the entitlement.
        let mut k = (1..=own.len())
            .find(|&k| {
                let after = add(&share_without(k), &job_share);
                !over_cap(view.policy, &after) && dominant(&after) <= self.me.entitlement + EPS
            })
            .unwrap_or(own.len());
        for _ in 0..SHARE_STEPS {
            let change = WouldStart::ShareFalls {
                member: self.job.member.clone(),
                allocs: own[..k].iter().map(|a| a.id).collect(),
                to: dominant(&share_without(k)),
            };
            if self.places(&change).0 {
                e.would_start.push(change);
                return;
            }
            if k == own.len() {
                return;
            }
            k = (k * 2).min(own.len());
        }
    }

    /// A node of the member's that can hold the job joins, if that is
    /// what it takes.
    fn node_joins(&self, e: &mut Explanation) {
        let change = WouldStart::NodeJoins {
            member: self.job.member.clone(),
            ask: Ask::of(self.job),
        };
        self.confirm(change, e);
    }

    fn confirm(&self, change: WouldStart, e: &mut Explanation) {
        if self.places(&change).0 {
            e.would_start.push(change);
        }
    }

    /// Runs the allocator's pass with the change made: whether it places
    /// the job, and the pass.
    fn places(&self, change: &WouldStart) -> (bool, Plan) {
        let changed = Changed::new(self.view, change);
        let plan = fairshare::plan(&changed.view(self.view));
        (plan.placements.iter().any(|p| p.job == self.job.id), plan)
    }
}

/// Whether the job fits in what is free on the node now, GPUs picked as
/// the pass picks them.
fn fits_free(view: &View<'_>, node: &Node, job: &Job) -> bool {
    // Free GPUs are only looked up where the rest fits.
    let free = node.free();
    job.spec.resources.fits_in(&free)
        && fairshare::pick_gpus(node, job, &free, &view.free_gpu_indices(node)).is_some()
}

fn secs_until(now: u64, t: u64) -> u64 {
    t.saturating_sub(now).div_ceil(1000)
}

/// The parts of the state a change touches, copied and changed: ended
/// allocations leave their nodes, a preempted one's job waits again in its
/// old place (as applying its report does), and a joining node is ready.
struct Changed {
    members: BTreeMap<MemberId, Member>,
    nodes: BTreeMap<NodeId, Node>,
    allocs: BTreeMap<AllocId, Allocation>,
    pending: BTreeSet<JobId>,
    queued: QueueByMember,
    /// The policy, where the change is one.
    policy: Option<Policy>,
}

impl Changed {
    fn new(view: &View<'_>, change: &WouldStart) -> Self {
        let mut c = Self {
            members: view.members.clone(),
            nodes: view.nodes.clone(),
            allocs: view.allocs.clone(),
            pending: view.pending.clone(),
            queued: view.queued.clone(),
            policy: None,
        };
        for id in change.ended() {
            let Some(a) = c.allocs.remove(id) else {
                continue;
            };
            if let Some(n) = c.nodes.get_mut(&a.node) {
                n.detach(a.id, &a.resources);
            }
            if let Some(m) = view
                .jobs
                .get(&a.job)
                .and_then(|j| c.members.get_mut(&j.member))
            {
                m.detach(&a.resources);
            }
            if a.preempted && c.pending.insert(a.job) {
                enqueue(&mut c.queued, &a.facts.member, a.job);
            }
        }
        if let WouldStart::NodeJoins { member, ask } = change {
            let id = NodeId::new(JOINING_NODE);
            let mut node = Node::new(
                id.clone(),
                member.clone(),
                ask.resources,
                String::new(),
                0,
                view.now_ms,
            );
            node.gpus = ask.gpu_inventory();
            c.nodes.insert(id, node);
        }
        if let WouldStart::CapRaised { to, .. } = change {
            c.policy = Some(Policy {
                member_cap: Some(*to),
                ..view.policy.clone()
            });
        }
        c
    }

    fn view<'s>(&'s self, base: &View<'s>) -> View<'s> {
        View {
            members: &self.members,
            nodes: &self.nodes,
            allocs: &self.allocs,
            pending: &self.pending,
            queued: &self.queued,
            policy: self.policy.as_ref().unwrap_or(base.policy),
            ..*base
        }
    }
}

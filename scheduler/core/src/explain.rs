//! Why a job waits: every reason, its place in its member's queue, the
//! member's dominant share against its entitlement, and what would let it
//! start. Computed from the state as it is, so it is never stale, and by
//! the same functions the allocator uses, so it cannot disagree with it.
//!
//! Reasons are values (`PendingReason`, `WouldStart`) carrying the numbers
//! they cite; `Display` renders them for `coop why`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fairshare::{compute_shares, share_of, MemberShare, Shares, EPS};
use crate::ids::{JobId, MemberId};
use crate::job::{Job, JobState};
use crate::node::Node;
use crate::resources::Resources;
use crate::view::View;

/// A member named in a reason, with its standing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub member: MemberId,
    pub dominant_share: f64,
    pub entitlement: f64,
}

/// What a job asks for, as the reasons quote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub resources: Resources,
    /// The job constrains which GPUs it may get.
    pub gpu_constrained: bool,
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gpu_constrained {
            write!(
                f,
                "{} with {} matching GPUs",
                self.resources, self.resources.gpus
            )
        } else {
            write!(f, "{}", self.resources)
        }
    }
}

/// One reason a pending job waits, most fundamental first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum PendingReason {
    NoReadyNode,
    NoNodeCanHold {
        ask: Ask,
        ready_nodes: usize,
    },
    /// Nodes that could hold it are full; per dimension, on how many of them it is short.
    NodesBusy {
        nodes: usize,
        short: BTreeMap<String, usize>,
    },
    RoomFreeNow {
        nodes: usize,
    },
    MemberCap {
        member: MemberId,
        dominant_share: f64,
        job_share: f64,
        cap: f64,
        policy_version: u64,
    },
    FairShare {
        me: Standing,
        ahead: Vec<Standing>,
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
            Self::NodesBusy { .. } => "nodes_busy",
            Self::RoomFreeNow { .. } => "room_free_now",
            Self::MemberCap { .. } => "member_cap",
            Self::FairShare { .. } => "fair_share",
            Self::ReclaimUnderWay { .. } => "reclaim_under_way",
            Self::OlderJobsAhead { .. } => "older_jobs_ahead",
        }
    }
}

/// One change that would let the job start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum WouldStart {
    WorkerJoins,
    NodeJoins { ask: Ask },
    RoomFrees { resources: Resources },
    ShareUnderCap { member: MemberId },
    Reclaim { member: MemberId },
    ShareFalls { member: MemberId, entitlement: f64 },
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} of {})",
            self.member,
            pct(self.dominant_share),
            pct(self.entitlement)
        )
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReadyNode => write!(f, "no ready node in the pool"),
            Self::NoNodeCanHold { ask, ready_nodes } => write!(
                f,
                "no ready node can hold {ask} even when idle ({ready_nodes} ready nodes)"
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
            Self::RoomFreeNow { nodes } => write!(
                f,
                "room is free on {nodes} nodes now; it is placed at the next scheduling pass"
            ),
            Self::MemberCap {
                member,
                dominant_share,
                job_share,
                cap,
                policy_version,
            } => write!(
                f,
                "member cap: {member}'s dominant share {} plus this job's {} would pass the cap of {} (policy v{policy_version})",
                pct(*dominant_share),
                pct(*job_share),
                pct(*cap)
            ),
            Self::FairShare { me, ahead } => write!(
                f,
                "fair share: {} has {} of the pool against an entitlement of {}; members further below theirs go first: {}",
                me.member,
                pct(me.dominant_share),
                pct(me.entitlement),
                ahead.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            Self::ReclaimUnderWay { stopping, grace_secs } => write!(
                f,
                "reclaim under way: {stopping} preempted allocations are stopping (grace {grace_secs} s)"
            ),
            Self::OlderJobsAhead { member, count } => write!(
                f,
                "{count} older jobs of {member} are ahead of it in {member}'s queue"
            ),
        }
    }
}

impl fmt::Display for WouldStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WorkerJoins => write!(f, "a worker joins the pool"),
            Self::NodeJoins { ask } => write!(f, "a node that can hold {ask} joins the pool"),
            Self::RoomFrees { resources } => {
                write!(f, "{resources} frees up on one of those nodes")
            }
            Self::ShareUnderCap { member } => write!(
                f,
                "{member}'s running jobs end, bringing its share under the cap"
            ),
            Self::Reclaim { member } => write!(
                f,
                "{member} is below its entitlement: a preemptible job of a member above its own is reclaimed when one can make room"
            ),
            Self::ShareFalls {
                member,
                entitlement,
            } => write!(
                f,
                "{member}'s share falls back toward its entitlement of {}, or others' demand drops",
                pct(*entitlement)
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
    /// What would let it start.
    pub would_start: Vec<WouldStart>,
    pub policy_version: u64,
}

pub fn explain(view: &View<'_>, job_id: JobId) -> Option<Explanation> {
    let job = view.jobs.get(&job_id)?;
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
        would_start: Vec::new(),
        policy_version: view.policy.version,
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
    if !room(view, job, &mut e) {
        return Some(e);
    }
    if let Some(m) = me {
        cap(view, job, m, &shares, &mut e);
        share(view, job, m, &shares, &mut e);
    }
    if e.queue_position > 1 {
        e.reasons.push(PendingReason::OlderJobsAhead {
            member: job.member.clone(),
            count: e.queue_position - 1,
        });
    }
    Some(e)
}

/// Whether any node could hold the job, now or when idle. Returns false
/// when the pool has no ready node at all (nothing else matters then).
fn room(view: &View<'_>, job: &Job, e: &mut Explanation) -> bool {
    let want = job.spec.resources;
    let ready: Vec<&Node> = view.ready_nodes().collect();
    if ready.is_empty() {
        e.reasons.push(PendingReason::NoReadyNode);
        e.would_start.push(WouldStart::WorkerJoins);
        return false;
    }
    let model = job.spec.gpu_model.as_deref();
    let min_mem = job.spec.gpu_min_memory_bytes;
    let big_enough: Vec<&Node> = ready
        .iter()
        .copied()
        .filter(|n| {
            want.fits_in(&n.capacity) && n.matching_gpus(model, min_mem) >= want.gpus as usize
        })
        .collect();
    if big_enough.is_empty() {
        let ask = Ask {
            resources: want,
            gpu_constrained: job.spec.has_gpu_constraints(),
        };
        e.reasons.push(PendingReason::NoNodeCanHold {
            ask: ask.clone(),
            ready_nodes: ready.len(),
        });
        e.would_start.push(WouldStart::NodeJoins { ask });
        return true;
    }
    let fits_now = big_enough
        .iter()
        .filter(|n| {
            let free_gpus = view.free_gpu_indices(n);
            want.fits_in(&n.free())
                && free_gpus
                    .iter()
                    .filter(|i| n.gpu_matches(**i, model, min_mem))
                    .count()
                    >= want.gpus as usize
        })
        .count();
    if fits_now == 0 {
        let mut short = BTreeMap::<String, usize>::new();
        for n in &big_enough {
            for dim in want.shortfall(&n.free()) {
                *short.entry(dim.to_string()).or_default() += 1;
            }
        }
        e.reasons.push(PendingReason::NodesBusy {
            nodes: big_enough.len(),
            short,
        });
        e.would_start
            .push(WouldStart::RoomFrees { resources: want });
    } else {
        e.reasons
            .push(PendingReason::RoomFreeNow { nodes: fits_now });
    }
    true
}

fn cap(view: &View<'_>, job: &Job, m: &MemberShare, shares: &Shares, e: &mut Explanation) {
    let Some(cap) = view.policy.member_cap else {
        return;
    };
    let job_share = share_of(&job.spec.resources, &shares.pool)
        .iter()
        .copied()
        .fold(0.0, f64::max);
    if m.dominant_share + job_share > cap + EPS {
        e.reasons.push(PendingReason::MemberCap {
            member: job.member.clone(),
            dominant_share: m.dominant_share,
            job_share,
            cap,
            policy_version: view.policy.version,
        });
        e.would_start.push(WouldStart::ShareUnderCap {
            member: job.member.clone(),
        });
    }
}

fn standing(m: &MemberShare) -> Standing {
    Standing {
        member: m.member.clone(),
        dominant_share: m.dominant_share,
        entitlement: m.entitlement,
    }
}

fn share(view: &View<'_>, job: &Job, m: &MemberShare, shares: &Shares, e: &mut Explanation) {
    let ahead: Vec<Standing> = shares
        .members
        .values()
        .filter(|o| o.member != job.member && o.pending > 0 && o.key < m.key)
        .map(standing)
        .collect();
    if !ahead.is_empty() {
        e.reasons.push(PendingReason::FairShare {
            me: standing(m),
            ahead,
        });
    }
    if m.dominant_share + EPS < m.entitlement {
        let stopping = view
            .allocs
            .values()
            .filter(|a| a.preempted && a.is_stopping())
            .count();
        if stopping > 0 {
            e.reasons.push(PendingReason::ReclaimUnderWay {
                stopping,
                grace_secs: view.policy.grace_secs,
            });
        } else {
            e.would_start.push(WouldStart::Reclaim {
                member: job.member.clone(),
            });
        }
    } else {
        e.would_start.push(WouldStart::ShareFalls {
            member: job.member.clone(),
            entitlement: m.entitlement,
        });
    }
}

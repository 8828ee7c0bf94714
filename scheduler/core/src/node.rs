//! Nodes: the machines members contribute to the pool.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Impossible;
use crate::ids::{AllocId, MemberId, NodeId};
use crate::job::JobSpec;
use crate::resources::Resources;

/// The most one node may offer: 4,096 cores, 64 TiB and 256 GPUs. A
/// registration beyond it is refused, so no report can make `apply` build
/// an unbounded GPU table or overflow a sum.
pub const MAX_NODE_CAPACITY: Resources = Resources {
    cpu_millis: 4096 * 1000,
    memory_bytes: 64 << 40,
    gpus: 256,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    /// Missed heartbeats past the timeout; it gets nothing until it registers again.
    Lost,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Lost => "lost",
        }
    }
}

/// A member's authorization of a node of its own: the node may register,
/// report and receive assignments only as this key, and it contributes to
/// this member. Only the owner can replace the key (`coop node add` again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGrant {
    pub owner: MemberId,
    pub key: crate::identity::PublicKey,
    /// The issued-at of the authorization in force: an older one (a replay
    /// of a replaced key's grant) is refused.
    pub issued_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// The member who contributes this machine.
    pub owner: MemberId,
    pub capacity: Resources,
    /// Sum of the resources of the live allocations on this node (derived:
    /// changed only by `attach`/`detach`, from `ClusterState`'s insert/remove pair).
    allocated: Resources,
    pub labels: BTreeMap<String, String>,
    pub state: NodeState,
    /// Where the worker serves job logs.
    pub addr: String,
    /// Changes each time the worker process starts; allocations of an older
    /// incarnation are gone with the process that ran them.
    pub incarnation: u64,
    pub registered_at_ms: u64,
    /// The live allocations on this node (derived, like `allocated`).
    allocs: BTreeSet<AllocId>,
    /// The GPUs, by index; `capacity.gpus` of them.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// The model engines its worker offers beyond tract.
    #[serde(default, skip_serializing_if = "NodeEngines::is_none")]
    pub engines: NodeEngines,
}

/// Longest ONNX Runtime build description a worker may advertise.
pub const MAX_ENGINE_INFO_LEN: usize = 256;

/// The model engines a worker offers beyond tract, which every worker has:
/// ONNX Runtime if its library loaded there, and whether ONNX Runtime's
/// CUDA execution provider did. Advertised in the signed registration, so
/// placement, `why` and any auditor read the same facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEngines {
    /// ONNX Runtime's build description (its version first) when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
    /// ONNX Runtime's CUDA execution provider is available.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cuda: bool,
}

impl NodeEngines {
    pub fn is_none(&self) -> bool {
        self.onnxruntime.is_none() && !self.cuda
    }

    /// Whether a job with these needs can run here.
    pub fn meets(&self, needs: crate::job::EngineNeeds) -> bool {
        (!needs.onnxruntime || self.onnxruntime.is_some()) && (!needs.cuda || self.cuda)
    }

    /// The engines as `coop nodes` lists them.
    pub fn describe(&self) -> String {
        match (&self.onnxruntime, self.cuda) {
            (None, _) => "tract".into(),
            (Some(_), false) => "tract, onnxruntime".into(),
            (Some(_), true) => "tract, onnxruntime (cuda)".into(),
        }
    }
}

/// One GPU of a node, as the worker detected it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl GpuInfo {
    /// Whether this GPU meets a job's constraints.
    pub fn matches(&self, model: Option<&str>, min_memory: Option<u64>) -> bool {
        model.is_none_or(|m| self.model.to_lowercase().contains(&m.to_lowercase()))
            && min_memory.is_none_or(|b| self.memory_bytes >= b)
    }
}

impl Node {
    /// A newly registered node, holding nothing.
    pub(crate) fn new(
        id: NodeId,
        owner: MemberId,
        capacity: Resources,
        addr: String,
        incarnation: u64,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            owner,
            capacity,
            allocated: Resources::ZERO,
            labels: BTreeMap::new(),
            state: NodeState::Ready,
            addr,
            incarnation,
            registered_at_ms: now_ms,
            allocs: BTreeSet::new(),
            gpus: Vec::new(),
            engines: NodeEngines::default(),
        }
    }

    pub fn allocated(&self) -> Resources {
        self.allocated
    }

    pub fn allocs(&self) -> &BTreeSet<AllocId> {
        &self.allocs
    }

    pub fn is_ready(&self) -> bool {
        self.state == NodeState::Ready
    }

    pub(crate) fn attach(&mut self, alloc: AllocId, resources: &Resources) {
        self.allocated = self.allocated.saturating_add(resources);
        self.allocs.insert(alloc);
    }

    pub(crate) fn detach(&mut self, alloc: AllocId, resources: &Resources) {
        self.allocated = self.allocated.saturating_sub(resources);
        self.allocs.remove(&alloc);
    }

    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }

    /// Whether GPU `index` of this node meets a job's constraints.
    pub fn gpu_matches(&self, index: u32, model: Option<&str>, min_memory: Option<u64>) -> bool {
        self.gpus
            .iter()
            .find(|g| g.index == index)
            .is_some_and(|g| g.matches(model, min_memory))
    }

    /// Whether this node, idle, could hold a job of this spec: every
    /// constraint on this one node.
    pub fn can_ever_hold(&self, spec: &JobSpec) -> bool {
        let want = spec.resources;
        self.runs(spec)
            && want.fits_in(&self.capacity)
            && self.matching_gpus(spec.gpu_model.as_deref(), spec.gpu_min_memory_bytes)
                >= want.gpus as usize
    }

    /// Whether this node's worker has the engine a job of this spec needs.
    pub fn runs(&self, spec: &JobSpec) -> bool {
        self.engines.meets(spec.engine_needs())
    }

    /// How many of this node's GPUs meet a job's constraints.
    pub fn matching_gpus(&self, model: Option<&str>, min_memory: Option<u64>) -> usize {
        self.gpus
            .iter()
            .filter(|g| g.matches(model, min_memory))
            .count()
    }
}

/// Why none of `nodes` can ever hold a job of this spec, even idle; `None`
/// if one can. Every constraint must hold on one node: a node with the
/// GPUs and another with the cores do not make a place the job can run.
pub fn never_fits<'a>(
    spec: &JobSpec,
    nodes: impl Iterator<Item = &'a Node> + Clone,
) -> Option<Impossible> {
    let want = spec.resources;
    let model = spec.gpu_model.as_deref();
    let min_mem = spec.gpu_min_memory_bytes;
    let gpus_match = |n: &Node| n.matching_gpus(model, min_mem) >= want.gpus as usize;
    if nodes.clone().any(|n| n.can_ever_hold(spec)) {
        return None;
    }
    let needs = spec.engine_needs();
    if !nodes.clone().any(|n| n.engines.meets(needs)) {
        return Some(Impossible::NoEngine {
            engine: needs.describe(),
        });
    }
    if spec.has_gpu_constraints() && !nodes.clone().any(gpus_match) {
        return Some(Impossible::NoMatchingGpus { gpus: want.gpus });
    }
    if spec.has_node_constraints() && nodes.clone().any(|n| want.fits_in(&n.capacity)) {
        return Some(Impossible::NoNodeHasAll { want });
    }
    let largest = nodes
        .map(|n| n.capacity)
        .max_by_key(|c| (c.gpus, c.cpu_millis, c.memory_bytes))
        .unwrap_or_default();
    Some(Impossible::NoNodeLargeEnough { want, largest })
}

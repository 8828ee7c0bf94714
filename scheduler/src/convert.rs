//! Conversions between `coop-core` types and the gRPC messages.

use coop_core::{AllocState, Allocation, ClusterState, Job, JobKind, JobSpec, Node, Resources};
use coop_proto::{api, worker};

pub fn resources_to_proto(r: &Resources) -> api::Resources {
    api::Resources {
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
        gpus: r.gpus,
    }
}

pub fn resources_from_proto(r: Option<&api::Resources>) -> Resources {
    r.map(|r| Resources::new(r.cpu_millis, r.memory_bytes, r.gpus))
        .unwrap_or_default()
}

pub fn spec_to_proto(spec: &JobSpec) -> api::JobSpec {
    let JobKind::Command { argv, env } = &spec.kind;
    api::JobSpec {
        name: spec.name.clone(),
        argv: argv.clone(),
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources: Some(resources_to_proto(&spec.resources)),
        max_retries: spec.max_retries,
        preemptible: spec.preemptible,
    }
}

pub fn spec_from_proto(spec: &api::JobSpec) -> JobSpec {
    JobSpec {
        name: spec.name.clone(),
        kind: JobKind::Command {
            argv: spec.argv.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        resources: resources_from_proto(spec.resources.as_ref()),
        max_retries: spec.max_retries,
        preemptible: spec.preemptible,
    }
}

pub fn job_to_proto(state: &ClusterState, job: &Job, with_detail: bool) -> api::Job {
    let alloc = job.alloc.and_then(|a| state.allocs.get(&a));
    let (alloc_id, node) = match (alloc, &job.last_run) {
        (Some(a), _) => (a.id.0, a.node.to_string()),
        (None, Some((a, n))) => (a.0, n.to_string()),
        (None, None) => (0, String::new()),
    };
    api::Job {
        id: job.id.0,
        member: job.member.to_string(),
        state: job.state.as_str().into(),
        spec: Some(spec_to_proto(&job.spec)),
        attempts: job.attempts,
        alloc_id,
        node,
        gpu_indices: alloc.map(|a| a.gpu_indices.clone()).unwrap_or_default(),
        submitted_at_ms: job.submitted_at_ms,
        started_at_ms: job.started_at_ms.unwrap_or(0),
        finished_at_ms: job.finished_at_ms.unwrap_or(0),
        exit_code: job.exit_code,
        message: job.message.clone(),
        pending_reasons: if with_detail {
            state.pending_reasons(job.id)
        } else {
            Vec::new()
        },
        history: if with_detail {
            job.history
                .iter()
                .map(|e| api::JobEvent {
                    at_ms: e.at_ms,
                    what: e.what.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        request_id: job.request_id.clone(),
    }
}

pub fn node_to_proto(node: &Node) -> api::Node {
    api::Node {
        id: node.id.to_string(),
        owner: node.owner.to_string(),
        capacity: Some(resources_to_proto(&node.capacity)),
        allocated: Some(resources_to_proto(&node.allocated)),
        state: node.state.as_str().into(),
        addr: node.addr.clone(),
        allocations: node.allocs.len() as u32,
        incarnation: node.incarnation,
    }
}

pub fn assignment_to_proto(state: &ClusterState, alloc: &Allocation) -> worker::Assignment {
    let job = state.jobs.get(&alloc.job);
    worker::Assignment {
        alloc_id: alloc.id.0,
        job_id: alloc.job.0,
        member: job.map(|j| j.member.to_string()).unwrap_or_default(),
        spec: job.map(|j| spec_to_proto(&j.spec)),
        gpu_indices: alloc.gpu_indices.clone(),
        state: match alloc.state {
            AllocState::Assigned => "assigned",
            AllocState::Running => "running",
            AllocState::Stopping => "stopping",
        }
        .into(),
    }
}

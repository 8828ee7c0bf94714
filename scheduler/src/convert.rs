//! Conversions between `coop-core` types and the gRPC messages.

use coop_core::{
    Allocation, Artifact, ClusterState, EvalTask, GpuInfo, Job, JobKind, JobSpec, Node, Resources,
};
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

fn artifact_to_proto(a: &Artifact) -> api::Artifact {
    api::Artifact {
        uri: a.uri.clone(),
        sha256: a.sha256.clone(),
    }
}

fn artifact_from_proto(a: Option<&api::Artifact>) -> Artifact {
    a.map(|a| Artifact {
        uri: a.uri.clone(),
        sha256: a.sha256.clone().filter(|h| !h.is_empty()),
    })
    .unwrap_or(Artifact {
        uri: String::new(),
        sha256: None,
    })
}

pub fn spec_to_proto(spec: &JobSpec) -> api::JobSpec {
    let mut out = api::JobSpec {
        name: spec.name.clone(),
        resources: Some(resources_to_proto(&spec.resources)),
        max_retries: spec.max_retries,
        preemptible: spec.preemptible,
        gpu_model: spec.gpu_model.clone(),
        gpu_min_memory_bytes: spec.gpu_min_memory_bytes,
        timeout_secs: spec.timeout_secs,
        ..Default::default()
    };
    match &spec.kind {
        JobKind::Command { argv, env } => {
            out.argv = argv.clone();
            out.env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        JobKind::Inference {
            model,
            input,
            output,
        } => {
            out.inference = Some(api::InferenceSpec {
                model: Some(artifact_to_proto(model)),
                input: Some(artifact_to_proto(input)),
                output: output.clone(),
            });
        }
        JobKind::Evaluation {
            models,
            dataset,
            label_column,
            task,
            metrics,
        } => {
            out.evaluation = Some(api::EvaluationSpec {
                models: models.iter().map(artifact_to_proto).collect(),
                dataset: Some(artifact_to_proto(dataset)),
                label_column: label_column.clone(),
                task: task.as_str().into(),
                metrics: metrics.clone(),
            });
        }
    }
    out
}

/// The core spec for a request; a model job's kind-specific checks happen in the core.
pub fn spec_from_proto(spec: &api::JobSpec) -> Result<JobSpec, String> {
    let kind = match (&spec.inference, &spec.evaluation) {
        (Some(_), Some(_)) => return Err("a job is an inference or an evaluation, not both".into()),
        (Some(_), None) | (None, Some(_)) if !spec.argv.is_empty() => {
            return Err("a model job takes no command".into())
        }
        (Some(i), None) => JobKind::Inference {
            model: artifact_from_proto(i.model.as_ref()),
            input: artifact_from_proto(i.input.as_ref()),
            output: i.output.clone(),
        },
        (None, Some(e)) => {
            let task = match e.task.as_str() {
                "classification" => EvalTask::Classification,
                "regression" => EvalTask::Regression,
                other => return Err(format!("task {other:?}: use classification or regression")),
            };
            JobKind::Evaluation {
                models: e
                    .models
                    .iter()
                    .map(|a| artifact_from_proto(Some(a)))
                    .collect(),
                dataset: artifact_from_proto(e.dataset.as_ref()),
                label_column: e.label_column.clone(),
                task,
                metrics: if e.metrics.is_empty() {
                    task.metrics().iter().map(|m| m.to_string()).collect()
                } else {
                    e.metrics.clone()
                },
            }
        }
        (None, None) => JobKind::Command {
            argv: spec.argv.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    };
    Ok(JobSpec {
        name: spec.name.clone(),
        kind,
        resources: resources_from_proto(spec.resources.as_ref()),
        max_retries: spec.max_retries,
        preemptible: spec.preemptible,
        gpu_model: spec.gpu_model.clone(),
        gpu_min_memory_bytes: spec.gpu_min_memory_bytes,
        timeout_secs: spec.timeout_secs,
    })
}

pub fn gpu_to_proto(g: &GpuInfo) -> api::GpuInfo {
    api::GpuInfo {
        index: g.index,
        uuid: g.uuid.clone(),
        model: g.model.clone(),
        memory_bytes: g.memory_bytes,
    }
}

pub fn gpu_from_proto(g: &api::GpuInfo) -> GpuInfo {
    GpuInfo {
        index: g.index,
        uuid: g.uuid.clone(),
        model: g.model.clone(),
        memory_bytes: g.memory_bytes,
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
        result_json: job
            .result
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        decisions: if with_detail {
            state
                .decisions
                .iter()
                .filter(|d| d.job == job.id)
                .map(|d| api::Decision {
                    at_ms: d.at_ms,
                    kind: d.kind.clone(),
                    job_id: d.job.0,
                    member: d.member.to_string(),
                    alloc_id: d.alloc.0,
                    node: d.node.to_string(),
                    rule: d.rule.clone(),
                    policy_version: d.policy_version,
                })
                .collect()
        } else {
            Vec::new()
        },
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
        gpus: node.gpus.iter().map(gpu_to_proto).collect(),
    }
}

pub fn assignment_to_proto(state: &ClusterState, alloc: &Allocation) -> worker::Assignment {
    let job = state.jobs.get(&alloc.job);
    worker::Assignment {
        alloc_id: alloc.id.0,
        job_id: alloc.job.0,
        member: job.map(|j| j.member.to_string()).unwrap_or_default(),
        // The policy's runtime limit is the timeout of a job that names none.
        spec: job.map(|j| {
            let mut spec = spec_to_proto(&j.spec);
            spec.timeout_secs = spec.timeout_secs.or(state.policy.max_job_runtime_secs);
            spec
        }),
        gpu_indices: alloc.gpu_indices.clone(),
        state: alloc.state.as_str().into(),
        stop_grace_ms: if alloc.preempted {
            state.policy.grace_secs * 1000
        } else {
            0
        },
        preempted: alloc.preempted,
    }
}

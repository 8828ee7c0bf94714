//! Tables for people, JSON for programs.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::Table;
use coop_core::resources::{format_bytes, format_cpu};
use coop_core::{DecisionKind, EvalTask, JobResult, JobState, NodeState, Rule};
use coop_proto::api;
use coop_proto::convert::FromWire;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

pub fn res(r: Option<&api::Resources>) -> String {
    let r = r.copied().unwrap_or_default();
    format!(
        "cpu {} · mem {} · gpu {}",
        format_cpu(r.cpu_millis),
        format_bytes(r.memory_bytes),
        r.gpus
    )
}

pub fn res_json(r: Option<&api::Resources>) -> Value {
    let r = r.copied().unwrap_or_default();
    json!({"cpu_millis": r.cpu_millis, "memory_bytes": r.memory_bytes, "gpus": r.gpus})
}

/// A wire enum's name as the core spells it; "unknown" for a number this
/// build does not know (a newer server).
fn wire_name<T: FromWire>(v: i32, name: fn(T) -> &'static str) -> &'static str {
    T::from_wire(v).map(name).unwrap_or("unknown")
}

pub fn job_state(v: i32) -> &'static str {
    wire_name(v, JobState::as_str)
}

pub fn node_state(v: i32) -> &'static str {
    wire_name(v, NodeState::as_str)
}

pub fn rule_name(v: i32) -> &'static str {
    wire_name(v, Rule::as_str)
}

pub fn decision_kind(v: i32) -> &'static str {
    wire_name(v, DecisionKind::as_str)
}

pub fn eval_task(v: i32) -> &'static str {
    wire_name(v, EvalTask::as_str)
}

/// A job's model result as the core types it, when it has one that converts.
pub fn job_result(j: &api::Job) -> Option<JobResult> {
    j.result.as_ref().and_then(|r| JobResult::try_from(r).ok())
}

pub fn ms_ago(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

pub fn job_json(j: &api::Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "member": j.member,
        "state": job_state(j.state),
        "name": spec.name,
        "argv": spec.argv,
        "resources": res_json(spec.resources.as_ref()),
        "max_retries": spec.max_retries,
        "preemptible": spec.preemptible,
        "attempts": j.attempts,
        "alloc_id": j.alloc_id,
        "node": j.node,
        "gpu_indices": j.gpu_indices,
        "submitted_at_ms": j.submitted_at_ms,
        "started_at_ms": j.started_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "exit_code": j.exit_code,
        "message": j.message,
        "pending_reasons": j.pending_reasons.iter().map(|r| json!({"code": r.code, "text": r.text})).collect::<Vec<_>>(),
        "result": job_result(j),
        "history": j.history.iter().map(|e| json!({"at_ms": e.at_ms, "what": e.what})).collect::<Vec<_>>(),
        "request_id": j.request_id,
        "array": j.array.as_ref().map(|a| json!({
            "first": a.first, "index": a.index, "total": a.total, "pending": a.pending,
            "running": a.running, "succeeded": a.succeeded, "failed": a.failed,
            "cancelled": a.cancelled,
            "merged": a.merged.as_ref().and_then(|r| JobResult::try_from(r).ok()),
            "merge_error": a.merge_error,
        })),
    })
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

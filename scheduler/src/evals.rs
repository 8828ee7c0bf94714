//! Evaluation results as leaderboards: every evaluation job's scores,
//! grouped by dataset digest, best first by the task's first metric.

use std::collections::BTreeMap;

use coop_core::{ClusterState, EvalTask, JobResult};
use coop_proto::api::{EvalEntry, Leaderboard};

pub fn leaderboards(state: &ClusterState, dataset_filter: &str) -> Vec<Leaderboard> {
    let mut boards: BTreeMap<String, Leaderboard> = BTreeMap::new();
    for job in state.jobs.values() {
        let Some(JobResult::Evaluation {
            dataset,
            dataset_sha256,
            rows,
            task,
            scores,
            ensemble,
        }) = &job.result
        else {
            continue;
        };
        if !dataset_filter.is_empty()
            && dataset_filter != dataset
            && dataset_filter != dataset_sha256
        {
            continue;
        }
        let board = boards
            .entry(dataset_sha256.clone())
            .or_insert_with(|| Leaderboard {
                dataset: dataset.clone(),
                dataset_sha256: dataset_sha256.clone(),
                task: task.as_str().into(),
                entries: Vec::new(),
            });
        for score in scores.iter().chain(ensemble.iter()) {
            board.entries.push(EvalEntry {
                job_id: job.id.0,
                member: job.member.to_string(),
                model: score.model.clone(),
                model_sha256: score.sha256.clone(),
                metrics: score.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                rows: *rows,
                finished_at_ms: job.finished_at_ms.unwrap_or(0),
            });
        }
    }
    let mut out: Vec<Leaderboard> = boards.into_values().collect();
    for board in &mut out {
        let (metric, higher_is_better) = match board.task.as_str() {
            "regression" => (EvalTask::Regression.metrics()[0], false),
            _ => (EvalTask::Classification.metrics()[0], true),
        };
        board.entries.sort_by(|a, b| {
            let x = a.metrics.get(metric).copied().unwrap_or(f64::NAN);
            let y = b.metrics.get(metric).copied().unwrap_or(f64::NAN);
            let ord = if higher_is_better {
                y.total_cmp(&x)
            } else {
                x.total_cmp(&y)
            };
            ord.then(a.job_id.cmp(&b.job_id))
        });
    }
    out
}

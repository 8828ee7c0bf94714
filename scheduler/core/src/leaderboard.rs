//! Evaluation results as leaderboards: every evaluation job's scores,
//! grouped by dataset digest, best first by the task's first metric
//! (accuracy, or the lowest mse).

use std::collections::BTreeMap;

use crate::ids::{JobId, MemberId};
use crate::job::{EvalTask, Job, JobState};
use crate::result::{merge_shards, JobResult, ModelScore, ResultError};

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The evaluation's job (a sharded evaluation's first shard).
    pub job: JobId,
    pub member: MemberId,
    pub score: ModelScore,
    pub rows: u64,
    pub finished_at_ms: u64,
    /// How many shards the score was merged from (0: not sharded).
    pub shards: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Leaderboard {
    pub dataset: String,
    pub dataset_sha256: String,
    pub task: EvalTask,
    /// Best first.
    pub entries: Vec<Entry>,
}

/// The boards for every dataset, or for the one named by URI or digest.
/// A sharded evaluation is one entry per model, merged from its shards
/// once every shard has succeeded.
pub fn compute<'a>(jobs: impl Iterator<Item = &'a Job>, dataset: Option<&str>) -> Vec<Leaderboard> {
    let mut boards: BTreeMap<String, Leaderboard> = BTreeMap::new();
    // Each result with its job, finish time and shard count: unsharded
    // evaluations as they are, and each sharded one merged.
    let mut results: Vec<(&Job, std::borrow::Cow<JobResult>, Option<u64>, u32)> = Vec::new();
    // Shards by their array, in index order (an array's ids are consecutive).
    let mut arrays: BTreeMap<JobId, Vec<&Job>> = BTreeMap::new();
    for job in jobs {
        match (&job.result, job.array) {
            (Some(JobResult::Evaluation { shard: None, .. }), _) => {
                results.push((
                    job,
                    std::borrow::Cow::Borrowed(job.result.as_ref().expect("matched")),
                    job.finished_at_ms,
                    0,
                ));
            }
            (Some(JobResult::Evaluation { shard: Some(_), .. }), Some(place)) => {
                arrays.entry(place.first).or_default().push(job);
            }
            _ => {}
        }
    }
    for shards in arrays.values() {
        if let Some(Ok(result)) = merge_array(shards.iter().copied()) {
            let last = shards.iter().filter_map(|j| j.finished_at_ms).max();
            results.push((
                shards[0],
                std::borrow::Cow::Owned(result),
                last,
                shards.len() as u32,
            ));
        }
    }
    for (job, result, finished_at_ms, shards) in &results {
        let JobResult::Evaluation {
            dataset: uri,
            dataset_sha256,
            rows,
            task,
            scores,
            ensemble,
            ..
        } = result.as_ref()
        else {
            continue;
        };
        if dataset.is_some_and(|d| d != uri && d != dataset_sha256) {
            continue;
        }
        let board = boards
            .entry(dataset_sha256.clone())
            .or_insert_with(|| Leaderboard {
                dataset: uri.clone(),
                dataset_sha256: dataset_sha256.clone(),
                task: *task,
                entries: Vec::new(),
            });
        for score in scores.iter().chain(ensemble.iter()) {
            board.entries.push(Entry {
                job: job.id,
                member: job.member.clone(),
                score: score.clone(),
                rows: *rows,
                finished_at_ms: finished_at_ms.unwrap_or(0),
                shards: *shards,
            });
        }
    }
    let mut out: Vec<Leaderboard> = boards.into_values().collect();
    for board in &mut out {
        let task = board.task;
        board
            .entries
            .sort_by(|a, b| by_score(task, &a.score, &b.score).then(a.job.cmp(&b.job)));
    }
    out
}

/// A sharded evaluation's merged result, from its array's jobs in index
/// order: none until every shard has succeeded with its result, then the
/// merge (or why the shards cannot be merged).
pub fn merge_array<'a>(
    jobs: impl Iterator<Item = &'a Job>,
) -> Option<Result<JobResult, ResultError>> {
    let mut parts = Vec::new();
    for job in jobs {
        let total = job.spec.array.map_or(0, |r| r.len());
        if job.state() != JobState::Succeeded
            || job.array.map(|a| a.index) != Some(parts.len() as u32)
        {
            return None;
        }
        parts.push((job.result.as_ref()?, total));
    }
    let total = parts.first()?.1;
    if parts.len() as u32 != total {
        return None;
    }
    let parts: Vec<&JobResult> = parts.into_iter().map(|(r, _)| r).collect();
    Some(merge_shards(&parts))
}

/// Best first by the task's first metric (the highest accuracy, the lowest
/// mse); a model that could not be scored comes after every score, so its
/// failure is listed next to the others.
fn by_score(task: EvalTask, a: &ModelScore, b: &ModelScore) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let metric = task.metrics()[0];
    match (a.metrics.get(metric), b.metrics.get(metric)) {
        (Some(x), Some(y)) if task == EvalTask::Classification => y.total_cmp(x),
        (Some(x), Some(y)) => x.total_cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(metric: &str, value: Option<f64>) -> ModelScore {
        ModelScore {
            model: format!("{value:?}"),
            sha256: String::new(),
            metrics: value.map(|v| (metric.to_string(), v)).into_iter().collect(),
            error: value.is_none().then(|| "cannot be scored".to_string()),
            seconds: 0.0,
            tally: None,
        }
    }

    #[test]
    fn the_best_first_and_a_failed_model_last() {
        for (task, metric, best, worst) in [
            (EvalTask::Classification, "accuracy", 0.9, 0.5),
            (EvalTask::Regression, "mse", 0.5, 0.9),
        ] {
            let mut scores = [
                score(metric, None),
                score(metric, Some(worst)),
                score(metric, Some(best)),
            ];
            scores.sort_by(|a, b| by_score(task, a, b));
            let order: Vec<Option<f64>> = scores
                .iter()
                .map(|s| s.metrics.get(metric).copied())
                .collect();
            assert_eq!(order, vec![Some(best), Some(worst), None], "{task}");
        }
    }
}

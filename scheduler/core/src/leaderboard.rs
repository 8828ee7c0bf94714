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
    // Shards by their array, in index order (an array's ids are consecutive).
    let mut arrays: BTreeMap<JobId, Vec<&Job>> = BTreeMap::new();
    for job in jobs {
        match (&job.result, job.array) {
            (Some(r @ JobResult::Evaluation { shard: None, .. }), _) => {
                add(&mut boards, dataset, job, r, job.finished_at_ms, 0);
            }
            (Some(JobResult::Evaluation { shard: Some(_), .. }), Some(place)) => {
                arrays.entry(place.first).or_default().push(job);
            }
            _ => {}
        }
    }
    for shards in arrays.values() {
        if let Some(Ok(merged)) = merge_array(shards.iter().copied()) {
            let last = shards.iter().filter_map(|j| j.finished_at_ms).max();
            add(
                &mut boards,
                dataset,
                shards[0],
                &merged,
                last,
                shards.len() as u32,
            );
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

/// Puts an evaluation's scores (a sharded one's merged, named by its first
/// shard) on its dataset's board, unless another dataset was asked for.
fn add(
    boards: &mut BTreeMap<String, Leaderboard>,
    dataset: Option<&str>,
    job: &Job,
    result: &JobResult,
    finished_at_ms: Option<u64>,
    shards: u32,
) {
    let JobResult::Evaluation {
        dataset: uri,
        dataset_sha256,
        rows,
        task,
        scores,
        ensemble,
        ..
    } = result
    else {
        return;
    };
    if dataset.is_some_and(|d| d != uri && d != dataset_sha256) {
        return;
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
            shards,
        });
    }
}

/// A sharded evaluation's merged result, from its array's jobs in index
/// order: none until every shard has succeeded with its result, then the
/// merge (or why the shards cannot be merged).
pub fn merge_array<'a>(
    jobs: impl Iterator<Item = &'a Job>,
) -> Option<Result<JobResult, ResultError>> {
    let mut parts = Vec::new();
    let mut total = 0;
    for job in jobs {
        if job.state() != JobState::Succeeded
            || job.array.map(|a| a.index) != Some(parts.len() as u32)
        {
            return None;
        }
        total = job.spec.array.map_or(0, |r| r.len());
        parts.push(job.result.as_ref()?);
    }
    (!parts.is_empty() && parts.len() as u32 == total).then(|| merge_shards(&parts))
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

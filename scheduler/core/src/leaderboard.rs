//! Evaluation results as leaderboards: every evaluation job's scores,
//! grouped by dataset digest, best first by the task's first metric
//! (accuracy, or the lowest mse).

use std::collections::BTreeMap;

use crate::ids::{JobId, MemberId};
use crate::job::{EvalTask, Job};
use crate::result::{JobResult, ModelScore};

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub job: JobId,
    pub member: MemberId,
    pub score: ModelScore,
    pub rows: u64,
    pub finished_at_ms: u64,
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
pub fn compute<'a>(jobs: impl Iterator<Item = &'a Job>, dataset: Option<&str>) -> Vec<Leaderboard> {
    let mut boards: BTreeMap<String, Leaderboard> = BTreeMap::new();
    for job in jobs {
        let Some(JobResult::Evaluation {
            dataset: uri,
            dataset_sha256,
            rows,
            task,
            scores,
            ensemble,
            ..
        }) = &job.result
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
                finished_at_ms: job.finished_at_ms.unwrap_or(0),
            });
        }
    }
    let mut out: Vec<Leaderboard> = boards.into_values().collect();
    for board in &mut out {
        let metric = board.task.metrics()[0];
        let higher_is_better = board.task == EvalTask::Classification;
        // A model that could not be scored is listed after every score,
        // with its error, so its failure is seen next to the others.
        board.entries.sort_by(|a, b| {
            let (x, y) = (a.score.metrics.get(metric), b.score.metrics.get(metric));
            let ord = match (x, y) {
                (Some(x), Some(y)) if higher_is_better => y.total_cmp(x),
                (Some(x), Some(y)) => x.total_cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            ord.then(a.job.cmp(&b.job))
        });
    }
    out
}

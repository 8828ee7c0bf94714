//! What a model job produced, recorded through the log: one definition
//! that the worker writes, the scheduler stores and the CLI prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{EvalTask, MAX_EVAL_MODELS};

/// Most metrics one model score may carry.
pub const MAX_METRICS: usize = 16;

/// Why a worker's result report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultError {
    #[error("result too large")]
    TooLarge,
    #[error("result for {model} has a non-finite metric")]
    NonFinite { model: String },
    #[error("inference seconds must be finite")]
    BadSeconds,
    #[error("{0}")]
    Shard(String),
}

/// Scores of one model (or of the ensemble) on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelScore {
    /// The model's URI, or "ensemble".
    pub model: String,
    /// SHA-256 of the model file (empty for the ensemble).
    pub sha256: String,
    pub metrics: BTreeMap<String, f64>,
    /// Why this model could not be scored (the others still are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the model took over the whole dataset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seconds: f64,
    /// What the metrics are computed from, on a shard's rows: what a
    /// sharded evaluation's scores are merged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tally: Option<Tally>,
}

/// Most classes a classification tally counts (a shard's per-class counts
/// go through the log).
pub const MAX_TALLY_CLASSES: usize = 1024;

/// One class's counts, for its F1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: i64,
    /// Rows of this class predicted as it.
    pub tp: u64,
    /// Rows of another class predicted as this one.
    pub fp: u64,
    /// Rows of this class predicted as another.
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// A model's sufficient statistics on some rows: every metric is computed
/// from these, so shards' tallies added together give the whole dataset's
/// scores exactly (not an average of averages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tally {
    Classification {
        rows: u64,
        correct: u64,
        /// By class, ascending; only classes seen in labels or predictions.
        classes: Vec<ClassCount>,
    },
    Regression {
        rows: u64,
        abs_error: f64,
        squared_error: f64,
    },
}

impl Tally {
    /// The tally of predictions against labels (classes compared as integers).
    pub fn of(task: EvalTask, pred: &[f64], labels: &[f64]) -> Self {
        let rows = labels.len().min(pred.len());
        let (pred, labels) = (&pred[..rows], &labels[..rows]);
        match task {
            EvalTask::Classification => {
                let mut classes: BTreeMap<i64, ClassCount> = BTreeMap::new();
                let mut correct = 0;
                for (p, l) in pred.iter().zip(labels) {
                    let (p, l) = (*p as i64, *l as i64);
                    if p == l {
                        correct += 1;
                        class_count(&mut classes, l).tp += 1;
                    } else {
                        class_count(&mut classes, p).fp += 1;
                        class_count(&mut classes, l).fn_ += 1;
                    }
                }
                Self::Classification {
                    rows: rows as u64,
                    correct,
                    classes: classes.into_values().collect(),
                }
            }
            EvalTask::Regression => {
                let (mut abs_error, mut squared_error) = (0.0, 0.0);
                for (p, l) in pred.iter().zip(labels) {
                    let e = p - l;
                    abs_error += e.abs();
                    squared_error += e * e;
                }
                Self::Regression {
                    rows: rows as u64,
                    abs_error,
                    squared_error,
                }
            }
        }
    }

    pub fn rows(&self) -> u64 {
        match self {
            Self::Classification { rows, .. } | Self::Regression { rows, .. } => *rows,
        }
    }

    pub fn task(&self) -> EvalTask {
        match self {
            Self::Classification { .. } => EvalTask::Classification,
            Self::Regression { .. } => EvalTask::Regression,
        }
    }

    /// Adds another tally of the same task (the rows of another shard).
    pub fn add(&mut self, other: &Tally) -> Result<(), ResultError> {
        match (self, other) {
            (
                Self::Classification {
                    rows,
                    correct,
                    classes,
                },
                Self::Classification {
                    rows: r,
                    correct: c,
                    classes: more,
                },
            ) => {
                *rows += r;
                *correct += c;
                let mut all: BTreeMap<i64, ClassCount> =
                    classes.iter().map(|c| (c.class, *c)).collect();
                for m in more {
                    let e = class_count(&mut all, m.class);
                    e.tp += m.tp;
                    e.fp += m.fp;
                    e.fn_ += m.fn_;
                }
                *classes = all.into_values().collect();
                Ok(())
            }
            (
                Self::Regression {
                    rows,
                    abs_error,
                    squared_error,
                },
                Self::Regression {
                    rows: r,
                    abs_error: a,
                    squared_error: s,
                },
            ) => {
                *rows += r;
                *abs_error += a;
                *squared_error += s;
                Ok(())
            }
            _ => Err(ResultError::Shard(
                "the shards' tallies are of different tasks".into(),
            )),
        }
    }

    /// One metric (accuracy, macro_f1, mse, mae), or none if it does not
    /// apply to the tally's task. No rows score 0.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let per_row = |sum: f64, rows: u64| if rows == 0 { 0.0 } else { sum / rows as f64 };
        match (self, name) {
            (Self::Classification { rows, correct, .. }, "accuracy") => {
                Some(per_row(*correct as f64, *rows))
            }
            // The unweighted mean of the F1 of every class in the labels or
            // the predictions.
            (Self::Classification { classes, .. }, "macro_f1") => {
                let f1 = |c: &ClassCount| {
                    let denom = (2 * c.tp + c.fp + c.fn_) as f64;
                    if denom == 0.0 {
                        0.0
                    } else {
                        2.0 * c.tp as f64 / denom
                    }
                };
                Some(per_row(classes.iter().map(f1).sum(), classes.len() as u64))
            }
            (
                Self::Regression {
                    rows, abs_error, ..
                },
                "mae",
            ) => Some(per_row(*abs_error, *rows)),
            (
                Self::Regression {
                    rows,
                    squared_error,
                    ..
                },
                "mse",
            ) => Some(per_row(*squared_error, *rows)),
            _ => None,
        }
    }

    /// The named metrics that apply.
    pub fn metrics<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, f64> {
        names
            .into_iter()
            .filter_map(|n| Some((n.to_string(), self.metric(n)?)))
            .collect()
    }

    fn validate(&self) -> Result<(), ResultError> {
        match self {
            Self::Classification {
                rows,
                correct,
                classes,
            } => {
                if classes.len() > MAX_TALLY_CLASSES {
                    return Err(ResultError::TooLarge);
                }
                let ascending = classes.windows(2).all(|w| w[0].class < w[1].class);
                let tp: u64 = classes.iter().map(|c| c.tp).sum();
                let fp: u64 = classes.iter().map(|c| c.fp).sum();
                let fn_: u64 = classes.iter().map(|c| c.fn_).sum();
                if !ascending || tp != *correct || fp != fn_ || correct + fp != *rows {
                    return Err(ResultError::Shard(
                        "a classification tally whose counts do not add up".into(),
                    ));
                }
            }
            Self::Regression {
                abs_error,
                squared_error,
                ..
            } => {
                if !abs_error.is_finite()
                    || !squared_error.is_finite()
                    || *abs_error < 0.0
                    || *squared_error < 0.0
                {
                    return Err(ResultError::Shard(
                        "a regression tally with a negative or non-finite sum".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn class_count(classes: &mut BTreeMap<i64, ClassCount>, class: i64) -> &mut ClassCount {
    classes.entry(class).or_insert(ClassCount {
        class,
        tp: 0,
        fp: 0,
        fn_: 0,
    })
}

/// Which rows of the dataset a shard of an evaluation scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPart {
    /// The shard's index, 0-based (its job's array index).
    pub index: u32,
    /// How many shards the evaluation has.
    pub of: u32,
    /// The first of its rows, counted from 0.
    pub first_row: u64,
    /// Every row of the dataset, across shards.
    pub dataset_rows: u64,
}

impl ShardPart {
    /// The rows `[start, end)` of `rows` that shard `index` of `of` scores:
    /// contiguous, in order, sizes differing by at most one.
    pub fn range(index: u32, of: u32, rows: u64) -> (u64, u64) {
        let of = u128::from(of.max(1));
        let at = |i: u64| (u128::from(i) * u128::from(rows) / of) as u64;
        (at(u64::from(index)), at(u64::from(index) + 1))
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// One file an inference job wrote: the model output it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The model output's name.
    pub name: String,
    /// Relative to the job's work dir.
    pub path: String,
    pub sha256: String,
}

/// Longest error a model score may carry.
pub const MAX_SCORE_ERROR_LEN: usize = 2048;
/// Most output files one inference may record.
pub const MAX_OUTPUT_FILES: usize = 64;

/// A model job's outcome, recorded through the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    Inference {
        rows: u64,
        seconds: f64,
        output: String,
        output_sha256: String,
        model_sha256: String,
        /// The engine that ran the model (tract or onnxruntime).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        engine: String,
        /// Every file written, one per model output.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<OutputFile>,
    },
    Evaluation {
        dataset: String,
        dataset_sha256: String,
        rows: u64,
        task: EvalTask,
        scores: Vec<ModelScore>,
        /// Majority vote (classification) or mean (regression), with several models.
        ensemble: Option<ModelScore>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        engine: String,
        /// For a shard of a sharded evaluation: which rows it scored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard: Option<ShardPart>,
    },
}

impl JobResult {
    /// Refuses absurd reports (NaN scores, hundreds of models) before they reach the state.
    pub fn validate(&self) -> Result<(), ResultError> {
        let check = |s: &ModelScore| -> Result<(), ResultError> {
            if s.metrics.len() > MAX_METRICS
                || s.model.len() > crate::job::MAX_URI_LEN
                || s.error
                    .as_ref()
                    .is_some_and(|e| e.len() > MAX_SCORE_ERROR_LEN)
            {
                return Err(ResultError::TooLarge);
            }
            if let Some(t) = &s.tally {
                t.validate()?;
            }
            if s.metrics.values().any(|v| !v.is_finite())
                || !s.seconds.is_finite()
                || s.seconds < 0.0
            {
                return Err(ResultError::NonFinite {
                    model: s.model.clone(),
                });
            }
            Ok(())
        };
        match self {
            JobResult::Inference {
                seconds, outputs, ..
            } => {
                if !seconds.is_finite() || *seconds < 0.0 {
                    return Err(ResultError::BadSeconds);
                }
                if outputs.len() > MAX_OUTPUT_FILES
                    || outputs.iter().any(|o| {
                        o.name.len() > crate::job::MAX_URI_LEN
                            || o.path.len() > crate::job::MAX_URI_LEN
                            || o.sha256.len() > 64
                    })
                {
                    return Err(ResultError::TooLarge);
                }
            }
            JobResult::Evaluation {
                scores,
                ensemble,
                shard,
                rows,
                task,
                ..
            } => {
                if scores.len() > MAX_EVAL_MODELS {
                    return Err(ResultError::TooLarge);
                }
                for s in scores.iter().chain(ensemble.iter()) {
                    check(s)?;
                    if let Some(t) = &s.tally {
                        if t.rows() != *rows || t.task() != *task {
                            return Err(ResultError::Shard(format!(
                                "the tally of {} is not of the result's {rows} rows and task",
                                s.model
                            )));
                        }
                    }
                }
                if let Some(p) = shard {
                    let (start, end) = ShardPart::range(p.index, p.of, p.dataset_rows);
                    if p.index >= p.of || p.first_row != start || *rows != end - start {
                        return Err(ResultError::Shard(format!(
                            "shard {} of {} must score rows {start}..{end} of {}",
                            p.index, p.of, p.dataset_rows
                        )));
                    }
                    // Each score is merged from its tally: one without
                    // would leave the whole evaluation unscorable.
                    if let Some(s) = scores
                        .iter()
                        .chain(ensemble.iter())
                        .find(|s| s.error.is_none() && s.tally.is_none())
                    {
                        return Err(ResultError::Shard(format!(
                            "the shard's score of {} has no tally",
                            s.model
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether this result fits the job it is reported for: a shard's
    /// result names the job's own shard, and only a shard's does.
    pub fn fits(&self, job: &crate::Job) -> Result<(), ResultError> {
        let JobResult::Evaluation { shard, .. } = self else {
            return Ok(());
        };
        let shards = match &job.spec.kind {
            crate::JobKind::Evaluation { options, .. } => options.shards,
            _ => 0,
        };
        let expected = job.array.filter(|_| shards > 0).map(|a| (a.index, shards));
        if shard.map(|p| (p.index, p.of)) != expected {
            return Err(ResultError::Shard(match expected {
                Some((i, n)) => format!("the result must be of shard {i} of {n}"),
                None => "a result for a job that is not a shard names a shard".into(),
            }));
        }
        Ok(())
    }
}

/// A sharded evaluation's shards' results, merged into the whole dataset's:
/// each model's tallies added in shard order and its metrics computed from
/// the sum. `parts` are the shards' results by index, every shard present.
/// A model that failed on any shard is a failure of the whole, naming the
/// shard; shards that read different files (a dataset or a model that
/// changed between them) cannot be merged.
pub fn merge_shards(parts: &[&JobResult]) -> Result<JobResult, ResultError> {
    let fail = |m: String| Err(ResultError::Shard(m));
    let Some(&first) = parts.first() else {
        return fail("no shards to merge".into());
    };
    // Shard 0 is the start of the sum; the others are added to it.
    let mut merged = first.clone();
    let JobResult::Evaluation {
        dataset_sha256: whole_sha,
        rows: whole_rows,
        task: whole_task,
        scores: whole_scores,
        ensemble: whole_ensemble,
        shard: whole_shard,
        ..
    } = &mut merged
    else {
        return fail("shard 0 is not an evaluation".into());
    };
    let Some(ShardPart { dataset_rows, .. }) = whole_shard.take() else {
        return fail("shard 0 has no shard part".into());
    };
    for s in whole_scores.iter_mut().chain(whole_ensemble.iter_mut()) {
        if let Some(e) = &mut s.error {
            *e = format!("on shard 0: {e}");
        }
    }
    *whole_rows = 0;
    for (i, part) in parts.iter().enumerate() {
        let JobResult::Evaluation {
            dataset_sha256,
            rows,
            task,
            scores,
            ensemble,
            shard: Some(shard),
            ..
        } = part
        else {
            return fail(format!("shard {i} has no evaluation shard result"));
        };
        if shard.index as usize != i
            || shard.of as usize != parts.len()
            || shard.first_row != *whole_rows
            || shard.dataset_rows != dataset_rows
        {
            return fail(format!(
                "the results are not shards 0..{} of one dataset's rows, in order",
                parts.len()
            ));
        }
        *whole_rows += rows;
        if i == 0 {
            continue;
        }
        if dataset_sha256 != whole_sha {
            return fail(format!(
                "shard {i} read a different dataset (sha256 {dataset_sha256}, shard 0 read {whole_sha})"
            ));
        }
        if task != whole_task || scores.len() != whole_scores.len() {
            return fail(format!("shard {i} scored a different task or models"));
        }
        for (whole, s) in whole_scores.iter_mut().zip(scores) {
            add_score(whole, s, i)?;
        }
        match (whole_ensemble.as_mut(), ensemble) {
            (Some(whole), Some(e)) => add_score(whole, e, i)?,
            (None, None) => {}
            (Some(whole), None) => {
                whole.error = Some(format!("shard {i} has no ensemble (a model failed there)"));
            }
            (None, Some(e)) => {
                let mut e = e.clone();
                e.error = Some("shard 0 has no ensemble (a model failed there)".into());
                *whole_ensemble = Some(e);
            }
        }
    }
    if *whole_rows != dataset_rows {
        return fail(format!(
            "the shards' {whole_rows} rows are not the dataset's {dataset_rows}"
        ));
    }
    for s in whole_scores.iter_mut().chain(whole_ensemble.iter_mut()) {
        if s.error.is_some() {
            s.metrics.clear();
            s.tally = None;
        } else if let Some(t) = &s.tally {
            let names: Vec<String> = s.metrics.keys().cloned().collect();
            s.metrics = t.metrics(names.iter().map(String::as_str));
        }
    }
    Ok(merged)
}

/// Adds shard `i`'s score of a model to the sum of the shards before it.
fn add_score(whole: &mut ModelScore, s: &ModelScore, i: usize) -> Result<(), ResultError> {
    if whole.model != s.model {
        return Err(ResultError::Shard(format!(
            "shard {i} scored {} where shard 0 scored {}",
            s.model, whole.model
        )));
    }
    whole.seconds += s.seconds;
    if whole.error.is_some() {
        return Ok(());
    }
    if let Some(e) = &s.error {
        whole.error = Some(format!("on shard {i}: {e}"));
        return Ok(());
    }
    if whole.sha256 != s.sha256 {
        whole.error = Some(format!(
            "shard {i} read a different file (sha256 {}, shard 0 read {})",
            s.sha256, whole.sha256
        ));
        return Ok(());
    }
    match (&mut whole.tally, &s.tally) {
        (Some(w), Some(t)) => w.add(t),
        _ => Err(ResultError::Shard(format!(
            "shard {i}'s score of {} has no tally",
            s.model
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_give_the_hand_computed_metrics() {
        let labels = [0.0, 1.0, 1.0, 2.0];
        let pred = [0.0, 1.0, 0.0, 2.0];
        let t = Tally::of(EvalTask::Classification, &pred, &labels);
        assert_eq!(t.metric("accuracy"), Some(0.75));
        // class 0: tp1 fp1 fn0 -> 2/3; class 1: tp1 fp0 fn1 -> 2/3; class 2: 1.
        let f1 = t.metric("macro_f1").unwrap();
        assert!((f1 - (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(
            t.metric("mse"),
            None,
            "a regression metric of a classification"
        );
        let r = Tally::of(EvalTask::Regression, &[1.0, 3.0], &[2.0, 1.0]);
        assert_eq!(r.metric("mse"), Some(2.5));
        assert_eq!(r.metric("mae"), Some(1.5));
        let none = Tally::of(EvalTask::Regression, &[], &[]);
        assert_eq!(none.metric("mse"), Some(0.0), "no rows score 0, not NaN");
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(r.validate(), Ok(()));
    }

    /// Labels and two models' predictions over `n` rows, varied enough that
    /// every class is hit and missed somewhere.
    fn data(n: usize, task: EvalTask) -> (Vec<f64>, Vec<Vec<f64>>) {
        let labels: Vec<f64> = (0..n)
            .map(|i| match task {
                EvalTask::Classification => ((i * 7) % 5) as f64,
                EvalTask::Regression => (i as f64 * 0.37).sin() * 10.0,
            })
            .collect();
        let preds = (1..=2)
            .map(|m| {
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| match task {
                        EvalTask::Classification if (i * m) % 4 == 0 => ((i + m) % 5) as f64,
                        EvalTask::Classification => *l,
                        EvalTask::Regression => l + ((i * m) as f64 * 0.11).cos(),
                    })
                    .collect()
            })
            .collect();
        (labels, preds)
    }

    /// The result a worker reports for the rows `[start, end)`, as shard
    /// `shard` (or the whole dataset).
    fn scored(
        task: EvalTask,
        labels: &[f64],
        preds: &[Vec<f64>],
        shard: Option<(u32, u32)>,
    ) -> JobResult {
        let (start, end) = match shard {
            Some((i, of)) => ShardPart::range(i, of, labels.len() as u64),
            None => (0, labels.len() as u64),
        };
        let (start, end) = (start as usize, end as usize);
        let names = task.metrics();
        let score = |model: &str, pred: &[f64]| {
            let tally = Tally::of(task, &pred[start..end], &labels[start..end]);
            ModelScore {
                model: model.into(),
                sha256: if model.starts_with("ensemble") {
                    String::new()
                } else {
                    format!("sha-of-{model}")
                },
                metrics: tally.metrics(names.iter().copied()),
                error: None,
                seconds: 1.0,
                tally: shard.is_some().then_some(tally),
            }
        };
        JobResult::Evaluation {
            dataset: "d.csv".into(),
            dataset_sha256: "d".repeat(64),
            rows: (end - start) as u64,
            task,
            scores: vec![score("a.onnx", &preds[0]), score("b.onnx", &preds[1])],
            ensemble: Some(score("ensemble of 2", &preds[0])),
            engine: "tract".into(),
            shard: shard.map(|(index, of)| ShardPart {
                index,
                of,
                first_row: start as u64,
                dataset_rows: labels.len() as u64,
            }),
        }
    }

    fn scores(r: &JobResult) -> Vec<BTreeMap<String, f64>> {
        match r {
            JobResult::Evaluation {
                scores, ensemble, ..
            } => scores
                .iter()
                .chain(ensemble.iter())
                .map(|s| s.metrics.clone())
                .collect(),
            _ => panic!("not an evaluation"),
        }
    }

    #[test]
    fn shards_merge_to_the_whole_datasets_scores() {
        for task in [EvalTask::Classification, EvalTask::Regression] {
            let (labels, preds) = data(103, task);
            let whole = scored(task, &labels, &preds, None);
            assert_eq!(whole.validate(), Ok(()));
            for of in [1, 2, 3, 7, 103, 110] {
                let parts: Vec<JobResult> = (0..of)
                    .map(|i| scored(task, &labels, &preds, Some((i, of))))
                    .collect();
                for p in &parts {
                    assert_eq!(p.validate(), Ok(()), "{task} shard of {of}");
                }
                let refs: Vec<&JobResult> = parts.iter().collect();
                let merged = merge_shards(&refs).unwrap();
                let JobResult::Evaluation { rows, shard, .. } = &merged else {
                    unreachable!()
                };
                assert_eq!((*rows, *shard), (103, None));
                for (m, w) in scores(&merged).iter().zip(scores(&whole)) {
                    assert_eq!(m.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
                    for (k, v) in m {
                        // Counts add exactly; sums of errors up to rounding.
                        assert!(
                            (v - w[k]).abs() <= 1e-12 * w[k].abs().max(1.0),
                            "{task} {of} {k}: {v} vs {}",
                            w[k]
                        );
                        if task == EvalTask::Classification {
                            assert_eq!(*v, w[k], "{k} with {of} shards");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_average_of_averages_is_not_what_merging_gives() {
        // Two shards of unequal size: the mean of their accuracies differs
        // from the accuracy over all rows, which is what the merge gives.
        let (labels, preds) = data(10, EvalTask::Classification);
        let parts: Vec<JobResult> = (0..3)
            .map(|i| scored(EvalTask::Classification, &labels, &preds, Some((i, 3))))
            .collect();
        let averaged: f64 = parts.iter().map(|p| scores(p)[0]["accuracy"]).sum::<f64>() / 3.0;
        let merged = merge_shards(&parts.iter().collect::<Vec<_>>()).unwrap();
        let whole = scored(EvalTask::Classification, &labels, &preds, None);
        assert_eq!(
            scores(&merged)[0]["accuracy"],
            scores(&whole)[0]["accuracy"]
        );
        assert_ne!(averaged, scores(&whole)[0]["accuracy"]);
    }

    #[test]
    fn a_model_failing_on_one_shard_and_shards_of_other_data_are_named() {
        let task = EvalTask::Regression;
        let (labels, preds) = data(20, task);
        let mut parts: Vec<JobResult> = (0..3)
            .map(|i| scored(task, &labels, &preds, Some((i, 3))))
            .collect();
        if let JobResult::Evaluation { scores, .. } = &mut parts[1] {
            scores[1].error = Some("out of memory".into());
            scores[1].tally = None;
        }
        let merged = merge_shards(&parts.iter().collect::<Vec<_>>()).unwrap();
        let JobResult::Evaluation { scores: s, .. } = &merged else {
            unreachable!()
        };
        assert_eq!(s[1].error.as_deref(), Some("on shard 1: out of memory"));
        // A model that failed on the first shard is named the same way.
        let mut first_failed: Vec<JobResult> = (0..3)
            .map(|i| scored(task, &labels, &preds, Some((i, 3))))
            .collect();
        if let JobResult::Evaluation { scores, .. } = &mut first_failed[0] {
            scores[0].error = Some("cannot load".into());
            scores[0].tally = None;
        }
        let merged = merge_shards(&first_failed.iter().collect::<Vec<_>>()).unwrap();
        let JobResult::Evaluation { scores: f, .. } = &merged else {
            unreachable!()
        };
        assert_eq!(f[0].error.as_deref(), Some("on shard 0: cannot load"));
        assert!(s[1].metrics.is_empty());
        assert!(s[0].error.is_none() && !s[0].metrics.is_empty());
        // A model file that changed between shards is not merged with itself.
        let mut parts: Vec<JobResult> = (0..3)
            .map(|i| scored(task, &labels, &preds, Some((i, 3))))
            .collect();
        if let JobResult::Evaluation { scores, .. } = &mut parts[2] {
            scores[0].sha256 = "another".into();
        }
        let merged = merge_shards(&parts.iter().collect::<Vec<_>>()).unwrap();
        let JobResult::Evaluation { scores: s, .. } = &merged else {
            unreachable!()
        };
        assert!(s[0]
            .error
            .as_ref()
            .unwrap()
            .contains("shard 2 read a different file"));
        // A dataset that changed between shards cannot be merged at all.
        if let JobResult::Evaluation { dataset_sha256, .. } = &mut parts[1] {
            *dataset_sha256 = "e".repeat(64);
        }
        let err = merge_shards(&parts.iter().collect::<Vec<_>>()).unwrap_err();
        assert!(
            err.to_string().contains("shard 1 read a different dataset"),
            "{err}"
        );
        // Shards that each cover their part of different row counts do not
        // add up to one dataset.
        let mut uneven: Vec<JobResult> = (0..2)
            .map(|i| scored(task, &labels, &preds, Some((i, 2))))
            .collect();
        let (more_labels, more_preds) = data(30, task);
        uneven[1] = scored(task, &more_labels, &more_preds, Some((1, 2)));
        if let JobResult::Evaluation { shard: Some(p), .. } = &mut uneven[1] {
            // 15 rows of a 30-row file, claimed to start where shard 0 ended.
            p.first_row = 5;
        }
        assert!(merge_shards(&uneven.iter().collect::<Vec<_>>()).is_err());
        // Missing or misordered shards are refused.
        let parts: Vec<JobResult> = (0..3)
            .map(|i| scored(task, &labels, &preds, Some((i, 3))))
            .collect();
        assert!(merge_shards(&[&parts[0], &parts[2]]).is_err());
        assert!(merge_shards(&[&parts[1], &parts[0], &parts[2]]).is_err());
        assert!(merge_shards(&[]).is_err());
    }

    #[test]
    fn a_shard_result_that_does_not_add_up_is_refused() {
        let task = EvalTask::Classification;
        let (labels, preds) = data(20, task);
        let good = scored(task, &labels, &preds, Some((1, 3)));
        // Its rows must be the shard's rows.
        let mut bad = good.clone();
        if let JobResult::Evaluation { shard: Some(p), .. } = &mut bad {
            p.first_row += 1;
        }
        assert!(matches!(bad.validate(), Err(ResultError::Shard(_))));
        // A tally whose counts contradict each other.
        let mut bad = good.clone();
        if let JobResult::Evaluation { scores, .. } = &mut bad {
            if let Some(Tally::Classification { correct, .. }) = &mut scores[0].tally {
                *correct += 1;
            }
        }
        assert!(matches!(bad.validate(), Err(ResultError::Shard(_))));
        // A shard's score without its tally.
        let mut bad = good.clone();
        if let JobResult::Evaluation { scores, .. } = &mut bad {
            scores[0].tally = None;
        }
        assert!(matches!(bad.validate(), Err(ResultError::Shard(_))));
        // Too many classes for the log.
        let mut bad = good;
        if let JobResult::Evaluation { scores, .. } = &mut bad {
            if let Some(Tally::Classification { classes, .. }) = &mut scores[0].tally {
                let c = classes[0];
                *classes = (0..=MAX_TALLY_CLASSES as i64)
                    .map(|k| ClassCount { class: k, ..c })
                    .collect();
            }
        }
        assert_eq!(bad.validate(), Err(ResultError::TooLarge));
    }

    #[test]
    fn shard_ranges_cover_every_row_once() {
        for rows in [0u64, 1, 5, 1000, u64::MAX / 3] {
            for of in [1u32, 2, 3, 1024] {
                let mut next = 0;
                for i in 0..of {
                    let (start, end) = ShardPart::range(i, of, rows);
                    assert_eq!(start, next);
                    assert!(end >= start && end - start <= rows / u64::from(of) + 1);
                    next = end;
                }
                assert_eq!(next, rows);
            }
        }
        // A forged index far past the count neither panics nor passes.
        let mut forged = scored(
            EvalTask::Regression,
            &[1.0],
            &[vec![1.0], vec![1.0]],
            Some((0, 1)),
        );
        if let JobResult::Evaluation { shard: Some(p), .. } = &mut forged {
            p.index = u32::MAX;
        }
        assert!(matches!(forged.validate(), Err(ResultError::Shard(_))));
    }
}

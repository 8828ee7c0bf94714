//! Model jobs: ONNX inference and evaluation with tract (pure Rust).
//!
//! The worker never loads a model itself: it writes the job to
//! `model-job.json` in the allocation's work dir and runs itself as a child
//! (`coop-worker run-model`), in the job's own process group with the same
//! limits as a command job, so a model that crashes or exhausts memory takes
//! down only its child. The child writes `result.json` (the core's
//! `JobResult`) or `error.txt` (the reason it failed).

pub mod artifact;
pub mod error;
pub mod examples;
pub mod formats;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::time::Instant;

use coop_core::{EvalTask, JobKind, JobResult, ModelScore};
use tract_onnx::prelude::*;

pub use error::ModelError;
use formats::Matrix;

pub const SPEC_FILE: &str = "model-job.json";
pub const RESULT_FILE: &str = "result.json";
pub const ERROR_FILE: &str = "error.txt";

/// A model job as the child process reads it: the core's job kind, so the
/// worker, the scheduler and the CLI share one definition.
pub type ModelJob = JobKind;

/// Whether a spec's kind is a model job (inference or evaluation).
pub fn is_model_job(kind: &JobKind) -> bool {
    !matches!(kind, JobKind::Command { .. })
}

/// The child's entry point: runs the job in `dir` and leaves `result.json`
/// or `error.txt` there. Returns the process exit code.
pub fn child_main(dir: &Path, cache: &Path) -> i32 {
    let outcome = std::fs::read(dir.join(SPEC_FILE))
        .map_err(|e| ModelError::Model(format!("read {SPEC_FILE}: {e}")))
        .and_then(|b| {
            serde_json::from_slice::<ModelJob>(&b)
                .map_err(|e| ModelError::Model(format!("parse {SPEC_FILE}: {e}")))
        })
        .and_then(|job| run(&job, dir, cache))
        .and_then(|result| {
            let bytes =
                serde_json::to_vec_pretty(&result).map_err(|e| ModelError::Model(e.to_string()))?;
            std::fs::write(dir.join(RESULT_FILE), bytes)
                .map_err(|e| ModelError::Model(format!("write {RESULT_FILE}: {e}")))
        });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("model job failed: {e}");
            let _ = std::fs::write(dir.join(ERROR_FILE), e.to_string());
            1
        }
    }
}

pub fn run(job: &ModelJob, dir: &Path, cache: &Path) -> Result<JobResult, ModelError> {
    match job {
        JobKind::Command { .. } => Err(ModelError::Job("a command is not a model job".into())),
        JobKind::Inference {
            model,
            input,
            output,
        } => {
            let (model_path, model_sha) = artifact::fetch(model, cache, "model")?;
            let (input_path, _) = artifact::fetch(input, cache, "input")?;
            let x = formats::read_input(&input_path)?;
            let started = Instant::now();
            let y = predict(&model_path, &x)?;
            let seconds = started.elapsed().as_secs_f64();
            let out_path = dir.join(output);
            if let Some(parent) = out_path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ModelError::Model(format!("create {}: {e}", parent.display())))?;
            }
            if output.ends_with(".npy") {
                formats::write_npy(&out_path, &y)?;
            } else {
                formats::write_jsonl(&out_path, &y)?;
            }
            println!("inference: {} rows in {:.3} s -> {output}", x.rows, seconds);
            Ok(JobResult::Inference {
                rows: x.rows as u64,
                seconds,
                output: output.clone(),
                output_sha256: artifact::sha256_file(&out_path)?,
                model_sha256: model_sha,
            })
        }
        JobKind::Evaluation {
            models,
            dataset,
            label_column,
            task,
            metrics,
        } => {
            let (data_path, data_sha) = artifact::fetch(dataset, cache, "dataset")?;
            let data = formats::read_dataset(&data_path, label_column)?;
            let classify = *task == EvalTask::Classification;
            let mut scores = Vec::new();
            let mut all_predictions = Vec::new();
            for m in models {
                let (path, sha) = artifact::fetch(m, cache, "model")?;
                let y = predict(&path, &data.features)
                    .map_err(|e| ModelError::Model(format!("model {}: {e}", m.uri)))?;
                let pred = to_predictions(&y, classify)
                    .map_err(|e| ModelError::Model(format!("model {}: {e}", m.uri)))?;
                let scored = metrics::compute(metrics, &pred, &data.labels);
                println!("{}: {:?}", m.uri, scored);
                scores.push(ModelScore {
                    model: m.uri.clone(),
                    sha256: sha,
                    metrics: scored,
                });
                all_predictions.push(pred);
            }
            let ensemble = (models.len() > 1).then(|| {
                let combined = if classify {
                    metrics::majority_vote(&all_predictions)
                } else {
                    metrics::mean(&all_predictions)
                };
                ModelScore {
                    model: format!("ensemble of {}", models.len()),
                    sha256: String::new(),
                    metrics: metrics::compute(metrics, &combined, &data.labels),
                }
            });
            Ok(JobResult::Evaluation {
                dataset: dataset.uri.clone(),
                dataset_sha256: data_sha,
                rows: data.labels.len() as u64,
                task: *task,
                scores,
                ensemble,
            })
        }
    }
}

/// Runs an ONNX model on a [rows, cols] f32 input; returns its first output as [rows, k].
pub fn predict(model: &Path, x: &Matrix) -> Result<Matrix, ModelError> {
    let plan = tract_onnx::onnx()
        .model_for_path(model)
        .map_err(|e| ModelError::Model(format!("cannot load ONNX model {}: {e}", model.display())))?
        .with_input_fact(0, f32::fact([x.rows, x.cols]).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| {
            ModelError::Model(format!(
                "the model does not accept input of shape [{}, {}]: {e:#}",
                x.rows, x.cols
            ))
        })?;
    let input = tract_ndarray::Array2::from_shape_vec((x.rows, x.cols), x.data.clone())
        .map_err(|e| ModelError::Model(e.to_string()))?
        .into_tensor();
    let outputs = plan
        .run(tvec!(input.into()))
        .map_err(|e| ModelError::Model(format!("running the model failed: {e:#}")))?;
    let out = outputs[0]
        .cast_to::<f32>()
        .map_err(|e| ModelError::Model(format!("model output is not numeric: {e}")))?;
    let view = out
        .to_plain_array_view::<f32>()
        .map_err(|e| ModelError::Model(e.to_string()))?;
    let shape = view.shape().to_vec();
    let rows = shape.first().copied().unwrap_or(1);
    if rows != x.rows {
        return Err(ModelError::Model(format!(
            "model output has {rows} rows for {} input rows",
            x.rows
        )));
    }
    let cols = shape.iter().skip(1).product::<usize>().max(1);
    Ok(Matrix {
        rows,
        cols,
        data: view.iter().copied().collect(),
    })
}

/// Class index (argmax of scores, or the single value rounded) or value.
fn to_predictions(y: &Matrix, classify: bool) -> Result<Vec<f64>, ModelError> {
    if !classify {
        if y.cols != 1 {
            return Err(ModelError::Task(format!(
                "a regression model must output one value per row, not {}",
                y.cols
            )));
        }
        return Ok(y.data.iter().map(|v| *v as f64).collect());
    }
    // One value per row that is not a whole number is a regressor's output:
    // rounding it into "classes" would score a wrong model, silently.
    if y.cols == 1 {
        if let Some(v) = y.data.iter().find(|v| v.fract() != 0.0) {
            return Err(ModelError::Task(format!(
                "the model outputs one continuous value per row (e.g. {v}), not class scores or labels: it looks like a regressor; evaluate it with --task regression"
            )));
        }
    }
    Ok((0..y.rows)
        .map(|i| {
            let row = y.row(i);
            if row.len() == 1 {
                return row[0] as f64;
            }
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (j, v)| {
                    if *v > best.1 {
                        (j, *v)
                    } else {
                        best
                    }
                })
                .0 as f64
        })
        .collect())
}

/// Where a worker keeps fetched artifacts.
pub fn cache_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("cache")
}

#[cfg(test)]
mod task_tests {
    use super::*;

    #[test]
    fn a_regressor_is_refused_under_classification() {
        let y = Matrix {
            rows: 2,
            cols: 1,
            data: vec![0.25, 3.7],
        };
        assert!(matches!(to_predictions(&y, true), Err(ModelError::Task(_))));
        assert_eq!(
            to_predictions(&y, false).unwrap(),
            vec![0.25, 3.700000047683716]
        );
        // Whole-number labels are a classifier's.
        let labels = Matrix {
            rows: 2,
            cols: 1,
            data: vec![1.0, 0.0],
        };
        assert_eq!(to_predictions(&labels, true).unwrap(), vec![1.0, 0.0]);
    }
}

//! Model jobs: ONNX inference and evaluation, on tract (pure Rust) or ONNX
//! Runtime (see `engine`).
//!
//! The worker never loads a model itself: it writes the job to
//! `model-job.json` in the allocation's work dir and runs itself as a child
//! (`coop-worker run-model`), in the job's own process group with the same
//! limits as a command job, so a model that crashes or exhausts memory takes
//! down only its child. The child writes `result.json` (the core's
//! `JobResult`) or `error.txt` (the reason it failed).

pub mod artifact;
pub mod engine;
pub mod error;
pub mod examples;
pub mod formats;
pub mod metrics;
pub mod onnx;

use std::path::{Path, PathBuf};
use std::time::Instant;

use coop_core::result::Tally;
use coop_core::{EvalTask, JobKind, JobResult, ModelScore};
use tract_onnx::prelude::*;

pub use error::ModelError;
use formats::Matrix;
use onnx::Elem;

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

/// The child commands of a worker's binary, when `args` is one: `run-model
/// DIR CACHE` (a model job) or `probe-onnxruntime LIB` (what the worker asks
/// of an ONNX Runtime library before offering it). Returns the exit code.
pub fn child_dispatch(args: &[String]) -> Option<i32> {
    match (args.get(1).map(String::as_str), args.len()) {
        (Some("run-model"), 4) => Some(child_main(Path::new(&args[2]), Path::new(&args[3]))),
        (Some(PROBE_COMMAND), 3) => Some(
            match engine::onnxruntime::OnnxRuntime::probe(Path::new(&args[2])) {
                Ok(p) => {
                    println!(
                        "cuda={} {}",
                        p.cuda,
                        p.build_info.lines().next().unwrap_or("")
                    );
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            },
        ),
        _ => None,
    }
}

pub const PROBE_COMMAND: &str = "probe-onnxruntime";

/// What a worker offers for model jobs: ONNX Runtime's library (if found
/// and it loads) and whether its CUDA provider is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Engines {
    pub onnxruntime: Option<PathBuf>,
    pub cuda: bool,
    /// The first line of the library's build info, or why it is not used.
    pub detail: String,
}

impl Engines {
    /// What the worker advertises in its signed registration, so the
    /// scheduler places jobs that need ONNX Runtime or CUDA only here.
    pub fn advertised(&self) -> coop_core::NodeEngines {
        let mut build = self.detail.clone();
        while build.len() > coop_core::node::MAX_ENGINE_INFO_LEN {
            build.pop();
        }
        coop_core::NodeEngines {
            onnxruntime: self.onnxruntime.as_ref().map(|_| build),
            cuda: self.onnxruntime.is_some() && self.cuda,
        }
    }
}

/// Finds ONNX Runtime (see `engine::onnxruntime::find_library`) and loads it
/// in a child of `runner`, so a library that crashes cannot take the worker
/// down with it.
pub fn detect_engines(runner: &Path, configured: Option<&Path>) -> Engines {
    let Some(lib) = engine::onnxruntime::find_library(configured) else {
        return Engines {
            detail: "no ONNX Runtime found (set onnxruntime_lib or COOP_ONNXRUNTIME_LIB, or install the onnxruntime wheel)".into(),
            ..Default::default()
        };
    };
    let out = std::process::Command::new(runner)
        .arg(PROBE_COMMAND)
        .arg(&lib)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Engines {
                cuda: text.starts_with("cuda=true"),
                detail: text
                    .split_once(' ')
                    .map_or(String::new(), |(_, build)| build.to_string()),
                onnxruntime: Some(lib),
            }
        }
        Ok(o) => Engines {
            detail: format!(
                "ONNX Runtime at {} does not load: {}",
                lib.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            ..Default::default()
        },
        Err(e) => Engines {
            detail: format!("cannot run {} to probe ONNX Runtime: {e}", runner.display()),
            ..Default::default()
        },
    }
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

/// Runs a model job with the engines the worker gave the child (see
/// `engine::Runtime::from_env`).
pub fn run(job: &ModelJob, dir: &Path, cache: &Path) -> Result<JobResult, ModelError> {
    let index = std::env::var(ARRAY_INDEX_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    run_shard(job, dir, cache, &engine::Runtime::from_env(), index)
}

/// The index of an array's job, set by the worker: a sharded evaluation's shard.
pub const ARRAY_INDEX_ENV: &str = "COOP_ARRAY_INDEX";

pub fn run_on(
    job: &ModelJob,
    dir: &Path,
    cache: &Path,
    runtime: &engine::Runtime,
) -> Result<JobResult, ModelError> {
    run_shard(job, dir, cache, runtime, None)
}

/// Runs a model job; `index` is its array index, which picks a sharded
/// evaluation's shard.
pub fn run_shard(
    job: &ModelJob,
    dir: &Path,
    cache: &Path,
    runtime: &engine::Runtime,
    index: Option<u32>,
) -> Result<JobResult, ModelError> {
    match job {
        JobKind::Command { .. } => Err(ModelError::Job("a command is not a model job".into())),
        JobKind::Inference {
            model,
            input,
            output,
            options,
        } => {
            let (model_path, model_sha) = artifact::fetch(model, cache, "model")?;
            let (input_path, _) = artifact::fetch(input, cache, "input")?;
            let prepared = onnx::prepare(&model_path)?;
            let engine = runtime.engine(options.engine)?;
            let inputs = if prepared.inputs.len() > 1 {
                formats::read_named_inputs(&input_path, &prepared.inputs)?
            } else {
                let x = formats::read_input(&input_path)?;
                let io = prepared
                    .inputs
                    .first()
                    .ok_or_else(|| ModelError::Model("the model declares no input".into()))?;
                vec![engine::input_tensor(x, io)?]
            };
            let rows = inputs.first().map(|t| t.shape()[0]).unwrap_or(0);
            let names = match &options.output_name {
                Some(name) => vec![prepared.output(name)?.name.clone()],
                None => prepared.output_names(),
            };
            let started = Instant::now();
            let mut session = engine.load(&prepared, &names)?;
            let ys = engine::run_batched(session.as_mut(), &inputs, &names)?;
            let seconds = started.elapsed().as_secs_f64();
            drop(inputs);
            let files = formats::write_outputs(dir, output, &names, &ys)?;
            println!(
                "inference ({}): {rows} rows in {seconds:.3} s -> {}",
                engine.name(),
                files
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let first = files
                .first()
                .cloned()
                .ok_or_else(|| ModelError::Model("the model has no output".into()))?;
            Ok(JobResult::Inference {
                rows: rows as u64,
                seconds,
                output: first.path,
                output_sha256: first.sha256,
                model_sha256: model_sha,
                engine: engine.name().into(),
                outputs: files,
            })
        }
        JobKind::Evaluation {
            models,
            dataset,
            label_column,
            task,
            metrics,
            options,
        } => {
            let shard = match (options.shards, index) {
                (0, _) => None,
                (of, Some(index)) if index < of => Some(formats::Shard { index, of }),
                (of, index) => {
                    return Err(ModelError::Job(format!(
                        "a shard of an evaluation split in {of} runs with {ARRAY_INDEX_ENV} \
                         below {of}, not {index:?}"
                    )))
                }
            };
            let (data_path, data_sha) = artifact::fetch(dataset, cache, "dataset")?;
            let data = formats::read_dataset_rows(
                &data_path,
                label_column,
                &formats::Columns {
                    features: &options.features,
                    drop: &options.drop,
                },
                shard,
            )?;
            let part = shard.map(|s| coop_core::result::ShardPart {
                index: s.index,
                of: s.of,
                first_row: data.first_row,
                dataset_rows: data.file_rows,
            });
            let engine = runtime.engine(options.engine)?;
            let classify = *task == EvalTask::Classification;
            if part.is_none() && data.labels.is_empty() {
                return Err(ModelError::Data(format!(
                    "{}: the dataset has no rows",
                    dataset.uri
                )));
            }
            let formats::Dataset {
                features,
                labels,
                feature_names,
                ..
            } = data;
            // Every metric comes from the tally; a shard records its tally so
            // the shards' scores merge exactly.
            let score = |pred: &[f64]| {
                let tally = Tally::of(*task, pred, &labels);
                let names = if metrics.is_empty() {
                    task.metrics().to_vec()
                } else {
                    metrics.iter().map(String::as_str).collect()
                };
                (tally.metrics(names), part.is_some().then_some(tally))
            };
            // The features are one tensor, moved and never copied: every
            // model whose input takes them as they are reads this one.
            let table = Table {
                x: features.into_tensor(),
                names: feature_names,
            };
            let mut scores = Vec::new();
            let mut all_predictions = Vec::new();
            for m in models {
                let started = Instant::now();
                let scored = artifact::fetch(m, cache, "model").and_then(|(path, sha)| {
                    // A shard may have no rows (more shards than rows): it
                    // scores nothing, and its tally adds nothing.
                    let pred = if labels.is_empty() {
                        Vec::new()
                    } else {
                        evaluate_one(engine.as_ref(), &path, &table, *task, options)?
                    };
                    Ok((sha, pred))
                });
                let seconds = started.elapsed().as_secs_f64();
                match scored {
                    Ok((sha, pred)) => {
                        let (scored, tally) = score(&pred);
                        println!("{}: {:?} in {seconds:.3} s", m.uri, scored);
                        scores.push(ModelScore {
                            model: m.uri.clone(),
                            sha256: sha,
                            metrics: scored,
                            error: None,
                            seconds,
                            tally,
                        });
                        all_predictions.push(pred);
                    }
                    // One model that cannot be scored is recorded with its
                    // reason; the others are still scored.
                    // A model evaluated alone fails the job with its reason.
                    Err(e) if models.len() == 1 => return Err(e),
                    Err(e) => {
                        eprintln!("{}: {e}", m.uri);
                        scores.push(ModelScore {
                            model: m.uri.clone(),
                            sha256: m.sha256.clone().unwrap_or_default(),
                            metrics: Default::default(),
                            error: Some(truncate(
                                &e.to_string(),
                                coop_core::result::MAX_SCORE_ERROR_LEN,
                            )),
                            seconds,
                            tally: None,
                        });
                    }
                }
            }
            if all_predictions.is_empty() {
                // Nothing scored: the job fails, with every model's reason.
                return Err(ModelError::Model(
                    scores
                        .iter()
                        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.model)))
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
            let ensemble = (all_predictions.len() > 1).then(|| {
                let combined = if classify {
                    metrics::majority_vote(&all_predictions)
                } else {
                    metrics::mean(&all_predictions)
                };
                let (scored, tally) = score(&combined);
                ModelScore {
                    model: format!("ensemble of {}", all_predictions.len()),
                    sha256: String::new(),
                    metrics: scored,
                    error: None,
                    seconds: 0.0,
                    tally,
                }
            });
            Ok(JobResult::Evaluation {
                dataset: dataset.uri.clone(),
                dataset_sha256: data_sha,
                rows: labels.len() as u64,
                task: *task,
                scores,
                ensemble,
                engine: engine.name().into(),
                shard: part,
            })
        }
    }
}

/// An evaluation's features: one `[rows, columns]` f32 tensor and the
/// columns' names.
struct Table {
    x: Tensor,
    names: Vec<String>,
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// One model's predictions on the dataset: its inputs fed by name (several
/// inputs, each a dataset column) or all features in order (one input),
/// and the output that fits the task turned into a class or a value per row.
fn evaluate_one(
    engine: &dyn engine::Engine,
    path: &Path,
    table: &Table,
    task: EvalTask,
    options: &coop_core::ModelOptions,
) -> Result<Vec<f64>, ModelError> {
    let prepared = onnx::prepare(path)?;
    let (rows, cols) = (table.x.shape()[0], table.x.shape()[1]);
    let values = engine::values::<f32>(&table.x).map_err(|e| ModelError::Data(e.to_string()))?;
    let owned: Vec<Tensor>;
    let inputs: &[Tensor] = match prepared.inputs.as_slice() {
        [io] if io.elem.is_none_or(|e| e == Elem::F32)
            && io.dims.as_ref().is_none_or(|d| d.len() == 2) =>
        {
            if let Some(width) = io.row_width().filter(|w| *w != cols) {
                return Err(ModelError::Data(format!(
                    "the model's input {:?} takes {width} features per row; the dataset has {cols} ({})",
                    io.name,
                    table.names.join(", ")
                )));
            }
            std::slice::from_ref(&table.x)
        }
        [io] => {
            owned = vec![engine::input_tensor_from(&table.x, io)?];
            &owned
        }
        many => {
            owned = many
                .iter()
                .map(|io| {
                    let col = table.names.iter().position(|n| *n == io.name).ok_or_else(|| {
                        ModelError::Data(format!(
                            "the model takes {} inputs, matched to dataset columns by name, and the dataset has no feature column {:?} (its feature columns: {})",
                            many.len(),
                            io.name,
                            table.names.join(", ")
                        ))
                    })?;
                    let column: Vec<f32> = (0..rows).map(|r| values[r * cols + col]).collect();
                    engine::input_tensor(Matrix::new(rows, 1, column)?, io)
                })
                .collect::<Result<_, _>>()?;
            &owned
        }
    };
    let output = scored_output(&prepared, task, options.output_name.as_deref())?;
    let mut session = engine.load(&prepared, std::slice::from_ref(&output))?;
    let mut ys = engine::run_batched(session.as_mut(), inputs, std::slice::from_ref(&output))?;
    let y = ys
        .pop()
        .ok_or_else(|| ModelError::Model("no output".into()))?;
    to_predictions(&output, &y, task, prepared.class_labels.get(&output))
}

/// The output a task scores: the one named, or for classification the
/// model's integer labels if it has them and else its first float output,
/// and for regression its first float output.
fn scored_output(
    model: &onnx::Prepared,
    task: EvalTask,
    named: Option<&str>,
) -> Result<String, ModelError> {
    if let Some(name) = named {
        return Ok(model.output(name)?.name.clone());
    }
    fn is(e: &'static [Elem]) -> impl Fn(&&onnx::Io) -> bool {
        move |o| o.elem.is_none_or(|x| e.contains(&x))
    }
    let found = match task {
        EvalTask::Classification => model
            .outputs
            .iter()
            .find(|o| matches!(o.elem, Some(Elem::I64 | Elem::I32)))
            .or_else(|| model.outputs.iter().find(is(&[Elem::F32, Elem::F64]))),
        EvalTask::Regression => model.outputs.iter().find(is(&[Elem::F32, Elem::F64])),
    };
    found.map(|o| o.name.clone()).ok_or_else(|| {
        ModelError::Task(format!(
            "the model has no output that a {task} can score (its outputs: {}); name one with --output-name",
            model
                .outputs
                .iter()
                .map(|o| format!("{} ({})", o.name, o.elem.map(Elem::name).unwrap_or("not a tensor".into())))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Class (an integer label, the argmax of scores mapped to the model's
/// class labels, or one whole number per row) or value per row; an output
/// that does not fit the task is refused, never scored.
fn to_predictions(
    name: &str,
    y: &Tensor,
    task: EvalTask,
    class_labels: Option<&Vec<i64>>,
) -> Result<Vec<f64>, ModelError> {
    let rows = y.shape().first().copied().unwrap_or(0);
    let cols: usize = y.shape().iter().skip(1).product();
    let integer = matches!(y.datum_type(), DatumType::I64 | DatumType::I32);
    let values = y
        .cast_to::<f64>()
        .map_err(|e| ModelError::Task(format!("output {name:?} is not numeric: {e}")))?;
    let values = engine::values::<f64>(&values).map_err(|e| ModelError::Task(e.to_string()))?;
    match task {
        EvalTask::Regression => {
            if cols != 1 {
                return Err(ModelError::Task(format!(
                    "output {name:?} has {cols} values per row: a regression scores one value per row (is it a classifier's class scores? evaluate it with --task classification)"
                )));
            }
            if integer {
                return Err(ModelError::Task(format!(
                    "output {name:?} holds integer class labels: it looks like a classifier; evaluate it with --task classification"
                )));
            }
            Ok(values.to_vec())
        }
        EvalTask::Classification if cols == 1 => {
            // One value per row that is not a whole number is a regressor's
            // output: rounding it into "classes" would score a wrong model.
            if let Some(v) = values.iter().find(|v| v.fract() != 0.0) {
                return Err(ModelError::Task(format!(
                    "output {name:?} holds one continuous value per row (e.g. {v}), not class scores or labels: it looks like a regressor; evaluate it with --task regression"
                )));
            }
            Ok(values.to_vec())
        }
        EvalTask::Classification => {
            if let Some(labels) = class_labels.filter(|l| l.len() != cols) {
                return Err(ModelError::Task(format!(
                    "output {name:?} has {cols} class scores per row but the model names {} classes",
                    labels.len()
                )));
            }
            Ok((0..rows)
                .map(|i| {
                    let row = &values[i * cols..(i + 1) * cols];
                    let best = row
                        .iter()
                        .enumerate()
                        .fold((0usize, f64::NEG_INFINITY), |best, (j, v)| {
                            if *v > best.1 {
                                (j, *v)
                            } else {
                                best
                            }
                        })
                        .0;
                    class_labels.map(|l| l[best] as f64).unwrap_or(best as f64)
                })
                .collect())
        }
    }
}

/// Runs a single-input ONNX model on a [rows, cols] f32 input with tract;
/// returns its first output as [rows, k] (the inference benchmark's path).
pub fn predict(model: &Path, x: &Matrix) -> Result<Matrix, ModelError> {
    let prepared = onnx::prepare(model)?;
    let io = prepared
        .inputs
        .first()
        .ok_or_else(|| ModelError::Model("the model declares no input".into()))?;
    let input = engine::input_tensor(x.clone(), io)?;
    let names: Vec<String> = prepared.output_names().into_iter().take(1).collect();
    let mut session = engine::Engine::load(&engine::tract::Tract, &prepared, &names)?;
    let y = engine::run_batched(session.as_mut(), &[input], &names)?
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::Model("the model declares no output".into()))?;
    let y = y
        .cast_to::<f32>()
        .map_err(|e| ModelError::Model(e.to_string()))?
        .into_owned();
    let rows = y.shape()[0];
    let cols = y.shape().iter().skip(1).product::<usize>().max(1);
    Matrix::new(
        rows,
        cols,
        engine::values::<f32>(&y)
            .map_err(|e| ModelError::Model(e.to_string()))?
            .to_vec(),
    )
}

/// Where a worker keeps fetched artifacts.
pub fn cache_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("cache")
}

#[cfg(test)]
mod task_tests {
    use super::*;

    fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
        tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(shape), data)
            .unwrap()
            .into()
    }

    #[test]
    fn a_regressor_is_refused_under_classification() {
        let y = tensor(&[2, 1], vec![0.25, 3.7]);
        let task = EvalTask::Classification;
        assert!(matches!(
            to_predictions("y", &y, task, None),
            Err(ModelError::Task(_))
        ));
        assert_eq!(
            to_predictions("y", &y, EvalTask::Regression, None).unwrap(),
            vec![0.25, 3.700000047683716]
        );
        // Whole-number labels are a classifier's.
        let labels = tensor(&[2, 1], vec![1.0, 0.0]);
        assert_eq!(
            to_predictions("y", &labels, task, None).unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn a_classifier_is_refused_under_regression() {
        let scores = tensor(&[1, 3], vec![0.1, 0.7, 0.2]);
        assert!(matches!(
            to_predictions("p", &scores, EvalTask::Regression, None),
            Err(ModelError::Task(_))
        ));
        let labels: Tensor = tract_ndarray::arr1(&[3i64, 1]).into_dyn().into();
        assert!(matches!(
            to_predictions("label", &labels, EvalTask::Regression, None),
            Err(ModelError::Task(_))
        ));
    }

    #[test]
    fn class_scores_map_to_the_models_class_labels() {
        let scores = tensor(&[2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.1, 0.4]);
        let task = EvalTask::Classification;
        assert_eq!(
            to_predictions("p", &scores, task, None).unwrap(),
            vec![1.0, 0.0]
        );
        let labels = vec![10, 20, 30];
        assert_eq!(
            to_predictions("p", &scores, task, Some(&labels)).unwrap(),
            vec![20.0, 10.0]
        );
    }
}

//! Real models no one here wrote: scikit-learn classifiers and regressors
//! exported by skl2onnx with its defaults (worker/testdata/models, made by
//! make_models.py there), scored on both engines and compared with what
//! scikit-learn and onnxruntime computed on the same rows.
//!
//! ONNX Runtime's half needs its library: found as a worker finds it
//! (COOP_ONNXRUNTIME_LIB, ORT_DYLIB_PATH or the onnxruntime Python wheel).
//! CI installs the wheel and sets COOP_REQUIRE_ONNXRUNTIME=1, so there a
//! missing library fails the test instead of skipping that half.

use std::path::PathBuf;

use coop_core::{Artifact as ArtifactRef, Engine, EvalTask, JobResult, ModelOptions};
use coop_worker::model::engine::{onnxruntime, Runtime};
use coop_worker::model::{self, formats, ModelError, ModelJob};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../worker/testdata/models")
        .join(name)
}

fn art(name: &str) -> ArtifactRef {
    ArtifactRef {
        uri: testdata(name).display().to_string(),
        sha256: None,
    }
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(testdata("expected.json")).unwrap()).unwrap()
}

fn tract() -> Runtime {
    Runtime {
        onnxruntime: None,
        threads: 1,
        gpus: 0,
    }
}

/// ONNX Runtime's library, or None where it is not installed (and not required).
fn onnxruntime() -> Option<Runtime> {
    let lib = onnxruntime::find_library(None);
    if lib.is_none() {
        assert!(
            std::env::var("COOP_REQUIRE_ONNXRUNTIME").is_err(),
            "COOP_REQUIRE_ONNXRUNTIME is set but no ONNX Runtime library was found"
        );
        eprintln!("no ONNX Runtime library here: its half of this test did not run");
    }
    lib.map(|lib| Runtime {
        onnxruntime: Some(lib),
        threads: 2,
        gpus: 0,
    })
}

fn evaluate(
    models: &[&str],
    dataset: &str,
    label: &str,
    task: EvalTask,
    options: ModelOptions,
    runtime: &Runtime,
) -> Result<JobResult, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    let job = ModelJob::Evaluation {
        models: models.iter().map(|m| art(m)).collect(),
        dataset: art(dataset),
        label_column: label.into(),
        task,
        metrics: task.metrics().iter().map(|m| m.to_string()).collect(),
        options,
    };
    model::run_on(&job, dir.path(), &dir.path().join("cache"), runtime)
}

/// The digits test rows (CSV), scored as a classification.
fn digits(
    models: &[&str],
    options: ModelOptions,
    runtime: &Runtime,
) -> Result<JobResult, ModelError> {
    let task = EvalTask::Classification;
    evaluate(models, "digits_test.csv", "label", task, options, runtime)
}

/// The diabetes test rows, scored as a regression.
fn diabetes(
    models: &[&str],
    options: ModelOptions,
    runtime: &Runtime,
) -> Result<JobResult, ModelError> {
    let task = EvalTask::Regression;
    evaluate(
        models,
        "diabetes_test.csv",
        "target",
        task,
        options,
        runtime,
    )
}

fn scores(
    result: &JobResult,
) -> Vec<(
    String,
    Option<String>,
    std::collections::BTreeMap<String, f64>,
)> {
    let JobResult::Evaluation { scores, .. } = result else {
        panic!("not an evaluation: {result:?}")
    };
    scores
        .iter()
        .map(|s| (s.model.clone(), s.error.clone(), s.metrics.clone()))
        .collect()
}

/// Our metrics against scikit-learn's for each model, to a relative
/// tolerance (the sums' order differs; for regression, the models run in
/// float32 and scikit-learn in float64).
fn assert_matches_sklearn(result: &JobResult, models: &[&str], tolerance: f64) {
    let want = expected();
    for ((uri, error, metrics), name) in scores(result).iter().zip(models) {
        assert!(error.is_none(), "{name}: {error:?}");
        assert!(uri.ends_with(name));
        for (metric, got) in metrics {
            let want = want[*name]["sklearn"][metric].as_f64().unwrap();
            assert!(
                (got - want).abs() <= tolerance * want.abs().max(1.0),
                "{name} {metric}: ours {got}, scikit-learn's {want}"
            );
        }
    }
}

const CLASSIFIERS: [&str; 3] = [
    "digits_logreg.onnx",
    "digits_mlp.onnx",
    "digits_forest.onnx",
];

#[test]
fn skl2onnx_classifiers_score_as_scikit_learn_does_on_tract() {
    // skl2onnx's default export ends in ZipMap, which tract lacks: the
    // probabilities are taken before it, and the labels scored.
    let task = EvalTask::Classification;
    let r = digits(&CLASSIFIERS, Default::default(), &tract()).unwrap();
    assert_matches_sklearn(&r, &CLASSIFIERS, 1e-12);
    // The same rows as JSONL objects (keys px0, px1, ..., px10, ...) score
    // the same: the columns keep the file's order.
    let jsonl = evaluate(
        &CLASSIFIERS,
        "digits_test.jsonl",
        "label",
        task,
        Default::default(),
        &tract(),
    )
    .unwrap();
    assert_eq!(scores(&r), scores(&jsonl));
}

#[test]
fn the_probabilities_score_like_the_labels() {
    // Scoring the probability output (argmax, mapped to ZipMap's class
    // labels) gives the labels' scores.
    let options = ModelOptions {
        output_name: Some("output_probability".into()),
        ..Default::default()
    };
    let models = ["digits_logreg.onnx", "digits_mlp.onnx"];
    let r = digits(&models, options, &tract()).unwrap();
    assert_matches_sklearn(&r, &models, 1e-12);
}

#[test]
fn regressors_score_as_scikit_learn_does_and_a_missing_operator_is_named() {
    let models = ["diabetes_linear.onnx", "diabetes_mlp.onnx"];
    let r = diabetes(&models, Default::default(), &tract()).unwrap();
    assert_matches_sklearn(&r, &models, 1e-4);
    // tract has no TreeEnsembleRegressor: the forest fails alone, named,
    // with what to do; the others are still scored beside it.
    let models = ["diabetes_linear.onnx", "diabetes_forest.onnx"];
    let r = diabetes(&models, Default::default(), &tract()).unwrap();
    let s = scores(&r);
    assert!(s[0].1.is_none());
    let error = s[1].1.as_deref().unwrap();
    assert!(
        error.contains("ai.onnx.ml:TreeEnsembleRegressor")
            && error.contains("--engine onnxruntime"),
        "{error}"
    );
    assert!(s[1].2.is_empty());
    // Alone, it fails the job with the same reason.
    let err = diabetes(&["diabetes_forest.onnx"], Default::default(), &tract()).unwrap_err();
    assert!(err.to_string().contains("TreeEnsembleRegressor"), "{err}");
}

#[test]
fn a_model_that_does_not_fit_the_task_is_refused() {
    let err = evaluate(
        &["diabetes_linear.onnx"],
        "diabetes_test.csv",
        "target",
        EvalTask::Classification,
        Default::default(),
        &tract(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--task regression"), "{err}");
    let err = evaluate(
        &["digits_logreg.onnx"],
        "digits_test.csv",
        "label",
        EvalTask::Regression,
        Default::default(),
        &tract(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--task classification"), "{err}");
}

#[test]
fn features_and_drop_choose_the_columns() {
    // The diabetes rows with an extra first column that is not a feature.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(testdata("diabetes_test.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut with_id = format!("id,{header}\n");
    for (i, l) in lines.enumerate() {
        with_id.push_str(&format!("{i},{l}\n"));
    }
    let path = dir.path().join("with_id.csv");
    std::fs::write(&path, with_id).unwrap();
    let job = |options: ModelOptions| ModelJob::Evaluation {
        models: vec![art("diabetes_linear.onnx")],
        dataset: ArtifactRef {
            uri: path.display().to_string(),
            sha256: None,
        },
        label_column: "target".into(),
        task: EvalTask::Regression,
        metrics: vec!["mse".into()],
        options,
    };
    let run = |options| model::run_on(&job(options), dir.path(), &dir.path().join("c"), &tract());
    // With the id, the model gets 11 columns for its 10 inputs: refused.
    let err = run(Default::default()).unwrap_err();
    assert!(
        err.to_string().contains("takes 10 features per row"),
        "{err}"
    );
    let dropped = run(ModelOptions {
        drop: vec!["id".into()],
        ..Default::default()
    })
    .unwrap();
    assert_matches_sklearn(&dropped, &["diabetes_linear.onnx"], 1e-4);
    let names: Vec<String> = header
        .split(',')
        .filter(|c| *c != "target")
        .map(String::from)
        .collect();
    let chosen = run(ModelOptions {
        features: names.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(scores(&dropped), scores(&chosen));
    // The features in another order are another model input: a different score.
    let mut reversed = names;
    reversed.reverse();
    let other = run(ModelOptions {
        features: reversed,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(scores(&dropped)[0].2, scores(&other)[0].2);
    let err = run(ModelOptions {
        features: vec!["nope".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("no column \"nope\""), "{err}");
}

#[test]
fn inference_writes_every_output_and_honours_declared_input_types() {
    let dir = tempfile::tempdir().unwrap();
    // The first five test rows, as .npy.
    let data = formats::read_dataset(
        &testdata("digits_test.csv"),
        "label",
        &formats::Columns::default(),
    )
    .unwrap();
    let input = dir.path().join("x.npy");
    formats::write_npy(
        &input,
        &formats::Matrix::new(5, 64, data.features.values()[..5 * 64].to_vec()).unwrap(),
    )
    .unwrap();
    let want = expected();
    for runtime in std::iter::once(tract()).chain(onnxruntime()) {
        let job = ModelJob::Inference {
            model: art("digits_logreg.onnx"),
            input: ArtifactRef {
                uri: input.display().to_string(),
                sha256: None,
            },
            output: "out.npy".into(),
            options: Default::default(),
        };
        let result = model::run_on(&job, dir.path(), &dir.path().join("c"), &runtime).unwrap();
        let JobResult::Inference {
            outputs, engine, ..
        } = &result
        else {
            panic!("{result:?}")
        };
        assert_eq!(
            engine,
            if runtime.onnxruntime.is_some() {
                "onnxruntime"
            } else {
                "tract"
            }
        );
        let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["output_label", "output_probability"]);
        let labels = formats::read_npy(&dir.path().join("out.output_label.npy")).unwrap();
        let probs = formats::read_npy(&dir.path().join("out.output_probability.npy")).unwrap();
        let ort = &want["digits_logreg.onnx"]["onnxruntime"];
        let want_labels: Vec<f32> = ort["output_label"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(labels.values(), want_labels);
        let want_probs: Vec<f32> = ort["output_probability"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!((probs.rows, probs.cols), (5, 10));
        let diff = probs
            .values()
            .iter()
            .zip(&want_probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "probabilities differ from onnxruntime's by {diff}"
        );
    }
    // An int32 input (as Magika's) is fed as int32: y = x . [1, 2, 3, 4].
    let x = dir.path().join("ints.jsonl");
    std::fs::write(&x, "[1, 2, 3, 4]\n[0, 0, 0, 10]\n").unwrap();
    for runtime in std::iter::once(tract()).chain(onnxruntime()) {
        let job = ModelJob::Inference {
            model: art("int_input.onnx"),
            input: ArtifactRef {
                uri: x.display().to_string(),
                sha256: None,
            },
            output: "y.jsonl".into(),
            options: ModelOptions {
                output_name: Some("y".into()),
                ..Default::default()
            },
        };
        model::run_on(&job, dir.path(), &dir.path().join("c"), &runtime).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("y.jsonl")).unwrap(),
            "[30.0]\n[40.0]\n"
        );
    }
}

#[test]
fn onnxruntime_scores_every_model_as_scikit_learn_does() {
    let Some(ort) = onnxruntime() else {
        return;
    };
    let r = digits(&CLASSIFIERS, Default::default(), &ort).unwrap();
    assert_matches_sklearn(&r, &CLASSIFIERS, 1e-12);
    let JobResult::Evaluation { engine, .. } = &r else {
        unreachable!()
    };
    assert_eq!(engine, "onnxruntime");
    // The forest regressor, which tract cannot run, runs here.
    let models = [
        "diabetes_linear.onnx",
        "diabetes_mlp.onnx",
        "diabetes_forest.onnx",
    ];
    let r = diabetes(&models, Default::default(), &ort).unwrap();
    assert_matches_sklearn(&r, &models, 1e-4);
    // Asking for tract on a worker with ONNX Runtime gets tract.
    let options = ModelOptions {
        engine: Engine::Tract,
        ..Default::default()
    };
    let r = diabetes(&["diabetes_linear.onnx"], options, &ort).unwrap();
    let JobResult::Evaluation { engine, .. } = &r else {
        unreachable!()
    };
    assert_eq!(engine, "tract");
}

#[test]
fn asking_for_onnxruntime_where_there_is_none_says_what_to_do() {
    let options = ModelOptions {
        engine: Engine::Onnxruntime,
        ..Default::default()
    };
    let err = diabetes(&["diabetes_linear.onnx"], options, &tract()).unwrap_err();
    assert!(err.to_string().contains("no ONNX Runtime"), "{err}");
}

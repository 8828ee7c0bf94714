//! Model jobs: the runner on its own (known answers, metrics, ensembles,
//! clear failures) and end to end through a cluster and a worker process.

mod sklearn;

use coop_e2e::Proc;
use coop_e2e::StateName;

use std::collections::BTreeMap;
use std::process::Stdio;

use coop_core::{Artifact as ArtifactRef, EvalTask, JobResult};
use coop_proto::api::*;
use coop_worker::model::examples as fixtures;
use coop_worker::model::{self, formats, ModelError, ModelJob};

fn art(path: &std::path::Path) -> ArtifactRef {
    ArtifactRef {
        uri: path.display().to_string(),
        sha256: None,
    }
}

fn eval_job(
    models: &[std::path::PathBuf],
    data: &std::path::Path,
    task: &str,
    metrics: &[&str],
) -> ModelJob {
    ModelJob::Evaluation {
        models: models.iter().map(|m| art(m)).collect(),
        dataset: art(data),
        label_column: "label".into(),
        task: EvalTask::parse(task).expect("a task"),
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
        options: Default::default(),
    }
}

#[test]
fn inference_output_matches_the_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let input = dir.path().join("in.npy");
    formats::write_npy(
        &input,
        &formats::Matrix::new(2, 2, vec![1.0, 0.5, 3.0, -1.0]).unwrap(),
    )
    .unwrap();
    let job = ModelJob::Inference {
        model: art(&models[0]),
        input: art(&input),
        output: "out/scores.npy".into(),
        options: Default::default(),
    };
    let result = model::run(&job, dir.path(), &dir.path().join("cache")).unwrap();
    // by_x scores (2x, 2y, 1).
    let out = formats::read_npy(&dir.path().join("out/scores.npy")).unwrap();
    assert_eq!((out.rows, out.cols), (2, 3));
    assert_eq!(out.values(), [2.0, 1.0, 1.0, 6.0, -2.0, 1.0]);
    match result {
        JobResult::Inference {
            rows,
            output,
            output_sha256,
            ..
        } => {
            assert_eq!((rows, output.as_str()), (2, "out/scores.npy"));
            assert_eq!(output_sha256.len(), 64);
        }
        other => panic!("{other:?}"),
    }
    // JSONL in, JSONL out.
    let rows = dir.path().join("in.jsonl");
    std::fs::write(&rows, "[0, 1]\n{\"input\": [2, 2]}\n").unwrap();
    let job = ModelJob::Inference {
        model: art(&models[2]),
        input: art(&rows),
        output: "scores.jsonl".into(),
        options: Default::default(),
    };
    model::run(&job, dir.path(), &dir.path().join("cache")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("scores.jsonl")).unwrap();
    assert_eq!(text, "[2.0,0.0,1.0]\n[4.0,4.0,1.0]\n");
}

#[test]
fn metrics_and_the_ensemble_match_hand_computed_values() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let data = fixtures::dataset(dir.path()).unwrap();
    let job = eval_job(&models, &data, "classification", &["accuracy", "macro_f1"]);
    let JobResult::Evaluation {
        scores,
        ensemble,
        rows,
        ..
    } = model::run(&job, dir.path(), &dir.path().join("c")).unwrap()
    else {
        panic!("not an evaluation")
    };
    assert_eq!(rows, 6);
    let acc: Vec<f64> = scores.iter().map(|s| s.metrics["accuracy"]).collect();
    // by_x is right on all 6; always_two on the 2 rows labelled 2; by_y on
    // those same 2 rows only (see fixtures::dataset).
    assert_eq!(acc, vec![1.0, 2.0 / 6.0, 2.0 / 6.0]);
    // always_two: F1 of class 2 = 2*2/(2*2+4+0) = 0.5, classes 0 and 1: 0.
    assert!((scores[1].metrics["macro_f1"] - 0.5 / 3.0).abs() < 1e-12);
    // The vote is 0,0,2,0,0,2 against 0,1,2,0,1,2: 4 of 6 right.
    let ensemble = ensemble.expect("three models make an ensemble");
    assert_eq!(ensemble.model, "ensemble of 3");
    assert!((ensemble.metrics["accuracy"] - 4.0 / 6.0).abs() < 1e-12);
    // class 0: tp2 fp2 fn0 -> 2/3; class 1: tp0 fp0 fn2 -> 0; class 2: 1.
    assert!((ensemble.metrics["macro_f1"] - (2.0 / 3.0 + 0.0 + 1.0) / 3.0).abs() < 1e-12);

    // Regression: y = x + 2y as one output; labels chosen so errors are 0, 1, -2.
    let reg = fixtures::linear_model(dir.path(), "reg", 2, 1, &[1.0, 2.0], &[0.0]).unwrap();
    let half = fixtures::linear_model(dir.path(), "half", 2, 1, &[0.5, 1.0], &[0.0]).unwrap();
    let rdata = dir.path().join("reg.csv");
    std::fs::write(&rdata, "x,y,label\n1,1,3\n2,0,1\n0,1,4\n").unwrap();
    let job = eval_job(&[reg, half], &rdata, "regression", &["mse", "mae"]);
    let JobResult::Evaluation {
        scores, ensemble, ..
    } = model::run(&job, dir.path(), &dir.path().join("c")).unwrap()
    else {
        panic!()
    };
    // reg predicts 3, 2, 2: errors 0, 1, -2 -> mse 5/3, mae 1.
    assert!((scores[0].metrics["mse"] - 5.0 / 3.0).abs() < 1e-9);
    assert!((scores[0].metrics["mae"] - 1.0).abs() < 1e-9);
    // Mean of reg and half (1.5, 1, 1): 2.25, 1.5, 1.5 -> errors .75, .5, 2.5.
    let e = ensemble.unwrap();
    assert!((e.metrics["mae"] - (0.75 + 0.5 + 2.5) / 3.0).abs() < 1e-9);
}

/// Each shard reads only its rows and reports their tally; the shards
/// merged score exactly what one job over every row scores, for CSV and
/// JSONL, whatever the number of shards (more shards than rows included).
#[test]
fn shards_merged_score_what_the_whole_dataset_scores() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let csv = fixtures::dataset(dir.path()).unwrap();
    let jsonl = dir.path().join("points.jsonl");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            format!("{{\"x\": {}, \"y\": {}, \"label\": {}}}", v[0], v[1], v[2])
        })
        .collect();
    // A blank line is not a row.
    std::fs::write(
        &jsonl,
        format!("{}\n\n{}\n", lines[..3].join("\n"), lines[3..].join("\n")),
    )
    .unwrap();
    let runtime = model::engine::Runtime::default();
    for data in [&csv, &jsonl] {
        let whole = model::run(
            &eval_job(&models, data, "classification", &[]),
            dir.path(),
            &dir.path().join("c"),
        )
        .unwrap();
        for of in [1u32, 2, 4, 9] {
            let mut job = eval_job(&models, data, "classification", &[]);
            if let ModelJob::Evaluation { options, .. } = &mut job {
                options.shards = of;
            }
            let parts: Vec<JobResult> = (0..of)
                .map(|i| {
                    model::run_shard(&job, dir.path(), &dir.path().join("c"), &runtime, Some(i))
                        .unwrap()
                })
                .collect();
            let merged =
                coop_core::result::merge_shards(&parts.iter().collect::<Vec<_>>()).unwrap();
            let (
                JobResult::Evaluation {
                    scores: m,
                    ensemble: me,
                    rows: mr,
                    ..
                },
                JobResult::Evaluation {
                    scores: w,
                    ensemble: we,
                    rows: wr,
                    ..
                },
            ) = (&merged, &whole)
            else {
                panic!("not evaluations")
            };
            assert_eq!(mr, wr, "{} in {of}", data.display());
            let metrics = |s: &[coop_core::ModelScore]| {
                s.iter().map(|s| s.metrics.clone()).collect::<Vec<_>>()
            };
            assert_eq!(metrics(m), metrics(w), "{} in {of}", data.display());
            assert_eq!(
                me.as_ref().map(|e| &e.metrics),
                we.as_ref().map(|e| &e.metrics)
            );
        }
        // A shard needs its index, below the count.
        let mut job = eval_job(&models, data, "classification", &[]);
        if let ModelJob::Evaluation { options, .. } = &mut job {
            options.shards = 2;
        }
        for index in [None, Some(2)] {
            let err = model::run_shard(&job, dir.path(), &dir.path().join("c"), &runtime, index)
                .unwrap_err();
            assert!(err.to_string().contains("COOP_ARRAY_INDEX"), "{err}");
        }
    }
}

#[test]
fn bad_inputs_fail_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let data = fixtures::dataset(dir.path()).unwrap();
    let cache = dir.path().join("cache");
    // A corrupt model.
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not protobuf at all \xff\xfe").unwrap();
    let err = model::run(
        &eval_job(&[corrupt], &data, "classification", &["accuracy"]),
        dir.path(),
        &cache,
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Model(_)), "{err:?}");
    assert!(err.to_string().contains("cannot load ONNX model"), "{err}");
    // A wrong sha256.
    let mut job = eval_job(&models[..1], &data, "classification", &["accuracy"]);
    if let ModelJob::Evaluation { models, .. } = &mut job {
        models[0].sha256 = Some("0".repeat(64));
    }
    let err = model::run(&job, dir.path(), &cache).unwrap_err();
    assert!(matches!(err, ModelError::Artifact(_)), "{err:?}");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    // Missing labels.
    let holes = dir.path().join("holes.csv");
    std::fs::write(&holes, "x,y,label\n1,0,0\n0,1,\n").unwrap();
    let err = model::run(
        &eval_job(&models[..1], &holes, "classification", &["accuracy"]),
        dir.path(),
        &cache,
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Data(_)), "{err:?}");
    assert!(err.to_string().contains("row 2: missing label"), "{err}");
    // A shape mismatch: three features for a two-feature model.
    let wide = dir.path().join("wide.csv");
    std::fs::write(&wide, "x,y,z,label\n1,0,0,0\n").unwrap();
    let err = model::run(
        &eval_job(&models[..1], &wide, "classification", &["accuracy"]),
        dir.path(),
        &cache,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("takes 2 features per row; the dataset has 3 (x, y, z)"),
        "{err}"
    );
}

// ---- end to end ----

fn model_spec(inference: Option<InferenceSpec>, evaluation: Option<EvaluationSpec>) -> JobSpec {
    JobSpec {
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            gpus: 0,
        }),
        inference,
        evaluation,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluations_run_on_a_worker_and_make_a_leaderboard() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let data = fixtures::dataset(dir.path()).unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |c| c.heartbeat_interval_ms = 100).await;
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "ana", "w1").await;
    let _worker = Proc(
        coop_e2e::worker("w1", "ana", "2", &addrs, dir.path().join("w"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = coop_e2e::client(&addrs[0]);
    let artifact = |p: &std::path::Path| Artifact {
        uri: p.display().to_string(),
        sha256: None,
    };
    // A classification of `models` on the points dataset.
    let evaluation = |models: &[&std::path::Path], options: Option<ModelOptions>| EvaluationSpec {
        models: models.iter().map(|m| artifact(m)).collect(),
        dataset: Some(artifact(&data)),
        label_column: "label".into(),
        task: coop_proto::api::EvalTask::Classification as i32,
        metrics: vec![],
        options,
    };
    let models: Vec<&std::path::Path> = models.iter().map(|m| m.as_path()).collect();
    let submit = |spec: JobSpec, req: &str| {
        let c = c.clone();
        let req = coop_e2e::submit_request("ana", req, spec);
        async move { coop_e2e::submit(&c, req).await.unwrap() }
    };
    // A corrupt model fails with its reason, and the worker carries on.
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"garbage").unwrap();
    let bad = submit(model_spec(None, Some(evaluation(&[&corrupt], None))), "bad").await;
    let j = coop_e2e::wait_job(&addrs[..1], bad, |j| {
        matches!(j.state_name(), "succeeded" | "failed")
    })
    .await;
    assert_eq!(j.state_name(), "failed");
    assert!(j.message.contains("cannot load ONNX model"), "{j:?}");

    let good = submit(model_spec(None, Some(evaluation(&models, None))), "good").await;
    let j = coop_e2e::wait_job(&addrs[..1], good, |j| {
        matches!(j.state_name(), "succeeded" | "failed")
    })
    .await;
    assert_eq!(j.state_name(), "succeeded", "{j:?}");
    let ensemble = match j.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Evaluation(e)) => e.ensemble.as_ref().map(|s| s.model.clone()),
        other => panic!("not an evaluation result: {other:?}"),
    };
    assert_eq!(ensemble.as_deref(), Some("ensemble of 3"));
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, "[1, 0]\n[0, 1]\n").unwrap();
    let infer = submit(
        model_spec(
            Some(InferenceSpec {
                model: Some(artifact(models[0])),
                input: Some(artifact(&rows)),
                output: "pred.jsonl".into(),
                options: None,
            }),
            None,
        ),
        "infer",
    )
    .await;
    let j = coop_e2e::wait_job(&addrs[..1], infer, |j| {
        matches!(j.state_name(), "succeeded" | "failed")
    })
    .await;
    assert_eq!(j.state_name(), "succeeded", "{j:?}");
    match j.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Inference(i)) => assert_eq!(i.rows, 2),
        other => panic!("not an inference result: {other:?}"),
    }
    // The output comes back through the scheduler from the worker, for
    // the job's member only, byte for byte what the result's digest says.
    let fetch = |member: &str, path: &str, offset: u64, max_bytes: u32| {
        let c = coop_e2e::client_as(&addrs[0], Some(member));
        let req = FetchRequest {
            job_id: infer,
            path: path.into(),
            offset,
            max_bytes,
        };
        async move { c.clone().fetch(req).await }
    };
    let listing = fetch("ana", "", 0, 0).await.unwrap().into_inner();
    let names: Vec<&str> = listing.files.iter().map(|f| f.path.as_str()).collect();
    assert!(names.contains(&"pred.jsonl"), "{names:?}");
    assert!(!names.contains(&".reader"), "{names:?}");
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        // Small chunks, so the offsets are exercised.
        let r = fetch("ana", "pred.jsonl", offset, 7)
            .await
            .unwrap()
            .into_inner();
        out.extend_from_slice(&r.data);
        offset = r.next_offset;
        if offset >= r.size {
            break;
        }
    }
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "[2.0,0.0,1.0]\n[0.0,2.0,1.0]\n"
    );
    use sha2::Digest;
    match j.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Inference(i)) => {
            assert_eq!(i.output_sha256, hex::encode(sha2::Sha256::digest(&out)))
        }
        other => panic!("not an inference result: {other:?}"),
    }
    let denied = fetch("bo", "pred.jsonl", 0, 1024).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    for bad in ["../w/node.key", "/etc/passwd", ".reader", "missing.npy"] {
        let refused = fetch("ana", bad, 0, 1024).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{bad}: {refused:?}"
        );
    }

    // The same evaluation split in 4: four jobs, one array, merged into
    // one entry per model once every shard has succeeded.
    let sharded = submit(
        JobSpec {
            array: Some(ArrayRange { first: 0, last: 3 }),
            max_retries: 2,
            ..model_spec(
                None,
                Some(evaluation(
                    &models,
                    Some(ModelOptions {
                        shards: 4,
                        ..Default::default()
                    }),
                )),
            )
        },
        "sharded",
    )
    .await;
    let parent = coop_e2e::wait_job(&addrs[..1], sharded, |j| {
        j.array
            .as_ref()
            .is_some_and(|a| a.merged.is_some() || a.failed > 0 || !a.merge_error.is_empty())
    })
    .await;
    let array = parent.array.clone().unwrap();
    assert_eq!((array.total, array.succeeded), (4, 4), "{array:?}");
    let rows = |r: &Option<JobResult>| match r {
        Some(JobResult::Evaluation { rows, .. }) => *rows,
        _ => panic!("not an evaluation: {r:?}"),
    };
    let merged = array
        .merged
        .as_ref()
        .map(|r| JobResult::try_from(r).unwrap());
    assert_eq!(rows(&merged), 6);
    // Each shard's own result is its rows only.
    let shard = coop_e2e::job(&addrs[..1], sharded + 3).await;
    let shard_result = shard
        .result
        .as_ref()
        .map(|r| JobResult::try_from(r).unwrap());
    assert_eq!(
        rows(&shard_result),
        2,
        "shard 3 of 4 over 6 rows: rows 4..6"
    );

    let boards = c
        .clone()
        .list_evaluations(ListEvaluationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leaderboards;
    assert_eq!(boards.len(), 1);
    let (whole, split): (Vec<&EvalEntry>, Vec<&EvalEntry>) =
        boards[0].entries.iter().partition(|e| e.shards == 0);
    assert_eq!(split.len(), 4, "three models and the ensemble, once each");
    for e in &split {
        assert_eq!((e.job_id, e.shards, e.rows), (sharded, 4, 6));
        let unsharded = whole
            .iter()
            .find(|w| w.job_id == good && w.model == e.model)
            .unwrap();
        assert_eq!(e.metrics, unsharded.metrics, "{}", e.model);
    }
    let order: Vec<(String, f64)> = whole
        .iter()
        .filter(|e| e.job_id == good)
        .map(|e| {
            (
                e.model.rsplit('/').next().unwrap().to_string(),
                e.metrics["accuracy"],
            )
        })
        .collect();
    assert_eq!(order[0], ("by_x.onnx".to_string(), 1.0));
    assert_eq!(order[1].0, "ensemble of 3");
    let metrics: BTreeMap<_, _> = whole[0].metrics.clone().into_iter().collect();
    assert!(metrics.contains_key("macro_f1"));
    cluster.stop_all().await;
}

/// Workers advertise their engines in their registration; a job that
/// asks for ONNX Runtime runs only where it is, and one that needs an
/// engine no node has is refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_jobs_go_where_the_engine_is() {
    let Some(lib) = coop_worker::model::engine::onnxruntime::find_library(None) else {
        assert!(
            std::env::var("COOP_REQUIRE_ONNXRUNTIME").is_err(),
            "COOP_REQUIRE_ONNXRUNTIME is set but no ONNX Runtime library was found"
        );
        eprintln!("no ONNX Runtime library here: this test did not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 1, |c| c.heartbeat_interval_ms = 100).await;
    let addrs = cluster.addrs();
    let mut workers = Vec::new();
    // w1 is first in the node order, so a job that can run anywhere would
    // go there; its ONNX Runtime is a path with no library, so it has tract only.
    for (node, lib) in [("w1", dir.path().join("no-such-lib.so")), ("w2", lib)] {
        coop_e2e::add_node(&addrs, "ana", node).await;
        let work = dir.path().join(node);
        std::fs::create_dir_all(&work).unwrap();
        workers.push(Proc(
            coop_e2e::worker(node, "ana", "2", &addrs, work)
                .env("COOP_ONNXRUNTIME_LIB", lib)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let c = coop_e2e::client(&addrs[0]);
    let nodes = loop {
        let nodes = c
            .clone()
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        if nodes.len() == 2 {
            break nodes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let engines = |id: &str| {
        let n = nodes.iter().find(|n| n.id == id).unwrap();
        n.engines.clone().unwrap_or_default()
    };
    assert!(engines("w1").onnxruntime.is_empty(), "{nodes:?}");
    assert!(!engines("w2").onnxruntime.is_empty(), "{nodes:?}");
    assert!(!engines("w1").cuda && !engines("w2").cuda, "{nodes:?}");

    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, "[1, 0]\n[0, 1]\n").unwrap();
    let inference = |engine: Engine, gpus: u32| {
        let mut spec = model_spec(
            Some(InferenceSpec {
                model: Some(Artifact {
                    uri: models[0].display().to_string(),
                    sha256: None,
                }),
                input: Some(Artifact {
                    uri: rows.display().to_string(),
                    sha256: None,
                }),
                output: "pred.npy".into(),
                options: Some(ModelOptions {
                    engine: engine as i32,
                    ..Default::default()
                }),
            }),
            None,
        );
        spec.resources.as_mut().unwrap().gpus = gpus;
        spec
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let req = coop_e2e::submit_request(
            "ana",
            &format!("ort-{i}"),
            inference(Engine::Onnxruntime, 0),
        );
        ids.push(coop_e2e::submit(&c, req).await.unwrap());
    }
    for id in ids {
        let j = coop_e2e::wait_job(&addrs, id, coop_e2e::ended).await;
        assert_eq!(j.state_name(), "succeeded", "{j:?}");
        assert_eq!(j.node, "w2", "{j:?}");
        match j.result.as_ref().and_then(|r| r.kind.as_ref()) {
            Some(job_result::Kind::Inference(i)) => assert_eq!(i.engine, "onnxruntime"),
            other => panic!("not an inference result: {other:?}"),
        }
    }
    // A model job with a GPU needs ONNX Runtime's CUDA provider: no node has it.
    let req = coop_e2e::submit_request("ana", "cuda", inference(Engine::Auto, 1));
    let refused = coop_e2e::submit(&c, req).await.unwrap_err();
    assert!(
        refused
            .message()
            .contains("no node in the pool has ONNX Runtime with its CUDA execution provider"),
        "{refused:?}"
    );
    cluster.stop_all().await;
}

/// Serves one file over plain HTTP/1.1 on loopback, counting requests.
fn serve_file(bytes: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&bytes);
        }
    });
    (format!("http://{addr}/model.onnx"), hits)
}

#[test]
fn http_artifacts_are_checked_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixtures::classifiers(dir.path()).unwrap();
    let data = fixtures::dataset(dir.path()).unwrap();
    let bytes = std::fs::read(&models[0]).unwrap();
    let sha = model::artifact::sha256_file(&models[0]).unwrap();
    let (url, hits) = serve_file(bytes);
    let cache = dir.path().join("cache");
    let job = |sha256: Option<String>| ModelJob::Evaluation {
        models: vec![ArtifactRef {
            uri: url.clone(),
            sha256,
        }],
        dataset: art(&data),
        label_column: "label".into(),
        task: EvalTask::Classification,
        metrics: vec!["accuracy".into()],
        options: Default::default(),
    };
    let first = model::run(&job(Some(sha.clone())), dir.path(), &cache).unwrap();
    let JobResult::Evaluation { scores, .. } = first else {
        panic!()
    };
    assert_eq!(scores[0].metrics["accuracy"], 1.0);
    assert_eq!(scores[0].sha256, sha);
    assert!(cache.join(&sha).is_file(), "stored under its digest");
    // Cached: no second download.
    model::run(&job(Some(sha.clone())), dir.path(), &cache).unwrap();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A wrong digest fails with the reason, and nothing is cached under it.
    let wrong = "1".repeat(64);
    let err = model::run(&job(Some(wrong.clone())), dir.path(), &cache).unwrap_err();
    assert!(matches!(err, ModelError::Artifact(_)), "{err:?}");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(!cache.join(&wrong).exists());
    // An unreachable server is a clear error too.
    let gone = ModelJob::Evaluation {
        models: vec![ArtifactRef {
            uri: "http://127.0.0.1:1/none.onnx".into(),
            sha256: None,
        }],
        dataset: art(&data),
        label_column: "label".into(),
        task: EvalTask::Classification,
        metrics: vec![],
        options: Default::default(),
    };
    let err = model::run(&gone, dir.path(), &cache).unwrap_err();
    assert!(err.to_string().contains("fetch failed"), "{err}");
}

//! Rows per second of each engine on the scikit-learn models in
//! worker/testdata/models, over the digits test rows repeated to ROWS rows:
//! `cargo run --release -p coop-worker --example engine_rows -- [ROWS]`.
//! ONNX Runtime's figures need its library (COOP_ONNXRUNTIME_LIB or the
//! onnxruntime wheel); `worker/testdata/models/bench_onnxruntime.py` measures
//! onnxruntime called directly from Python on the same rows.

use std::path::PathBuf;
use std::time::Instant;

use coop_worker::model::engine::{self, onnxruntime, tract, Engine};
use coop_worker::model::{formats, onnx};

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/models");
    let digits = formats::read_dataset(
        &dir.join("digits_test.csv"),
        "label",
        &formats::Columns::default(),
    )
    .expect("digits");
    let diabetes = formats::read_dataset(
        &dir.join("diabetes_test.csv"),
        "target",
        &formats::Columns::default(),
    )
    .expect("diabetes");
    let repeat = |m: &formats::Matrix| -> Vec<f32> {
        m.values()
            .iter()
            .copied()
            .cycle()
            .take(rows * m.cols)
            .collect()
    };
    let ort = onnxruntime::find_library(None)
        .map(|lib| onnxruntime::OnnxRuntime::new(&lib, 1, 0).expect("ONNX Runtime loads"));
    if ort.is_none() {
        eprintln!("no ONNX Runtime library found: its rows are missing");
    }
    let mut engines: Vec<&dyn Engine> = vec![&tract::Tract];
    if let Some(o) = &ort {
        engines.push(o);
    }
    println!("{rows} rows, one thread");
    println!(
        "{:<24} {:<12} {:>12} {:>10}",
        "model", "engine", "rows/s", "seconds"
    );
    for (name, data) in [
        ("digits_mlp.onnx", &digits.features),
        ("digits_logreg.onnx", &digits.features),
        ("digits_forest.onnx", &digits.features),
        ("diabetes_forest.onnx", &diabetes.features),
    ] {
        let model = onnx::prepare(&dir.join(name)).expect("model");
        let x = formats::Matrix::new(rows, data.cols, repeat(data)).expect("rows");
        let x = engine::input_tensor(x, &model.inputs[0]).expect("input");
        let outputs = vec![model.outputs[0].name.clone()];
        for e in &engines {
            let started = Instant::now();
            let run = e.load(&model, &outputs).and_then(|mut s| {
                engine::run_batched(s.as_mut(), std::slice::from_ref(&x), &outputs)
            });
            let seconds = started.elapsed().as_secs_f64();
            match run {
                Ok(_) => println!(
                    "{name:<24} {:<12} {:>12.0} {seconds:>10.3}",
                    e.name(),
                    rows as f64 / seconds
                ),
                Err(err) => println!("{name:<24} {:<12} {:>12} ({err})", e.name(), "-"),
            }
        }
    }
}

//! Inference throughput of the model runner on a small model: a linear
//! layer of 64 features to 10 classes (built on the spot), over batches of
//! rows, as `coop-worker run-model` runs it (load, optimize, run).
//! Run: `cargo bench -p coop-worker --bench inference`.

use coop_worker::model::{examples, formats::Matrix, predict};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, outputs) = (64, 10);
    let w: Vec<f32> = (0..inputs * outputs)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let b: Vec<f32> = (0..outputs).map(|i| i as f32 / 10.0).collect();
    let model = examples::linear_model(dir.path(), "bench", inputs, outputs, &w, &b).unwrap();
    let mut group = c.benchmark_group("inference");
    group.sample_size(10);
    for rows in [1_000usize, 100_000] {
        let x = Matrix::new(
            rows,
            inputs,
            (0..rows * inputs).map(|i| (i % 17) as f32 / 17.0).collect(),
        )
        .unwrap();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(
            format!("linear 64->10, {rows} rows (load + run)"),
            |bench| bench.iter(|| predict(&model, &x).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

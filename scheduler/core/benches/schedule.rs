//! One scheduling pass over 100,000 pending jobs, 10,000 nodes and 1,000
//! members with mixed GPU/CPU demands. Run: `cargo bench -p coop-core`.

// A benchmark measures time; the core it measures still reads no clock.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use coop_core::testkit;
use coop_core::*;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let built = Instant::now();
    let state = testkit::bench_cluster(10_000, 1_000, 100_000);
    let snapshot = state.to_snapshot_bytes();
    println!(
        "setup: {} nodes, {} members, {} pending jobs in {:.1} s; snapshot {} bytes = {} bytes per pending job",
        state.nodes().len(),
        state.members().len(),
        state.pending().len(),
        built.elapsed().as_secs_f64(),
        snapshot.len(),
        snapshot.len() / state.pending().len()
    );
    let plan = state.plan();
    let t = Instant::now();
    let mut applied = state.clone();
    let outcome = applied.apply(&Command::Schedule { now_ms: 2_000 }).unwrap();
    let secs = t.elapsed().as_secs_f64();
    if let Outcome::Scheduled { placements, .. } = outcome {
        println!(
            "one applied pass: {} placements in {:.1} ms = {:.0} placements/s ({} still pending)",
            placements.len(),
            secs * 1000.0,
            placements.len() as f64 / secs,
            applied.pending().len()
        );
    }
    println!(
        "plan: {} placements, {} preemptions",
        plan.placements.len(),
        plan.preemptions.len()
    );
    let mut group = c.benchmark_group("schedule");
    group.sample_size(10);
    group.bench_function("plan: 100k pending, 10k nodes, 1k members", |b| {
        b.iter(|| state.plan())
    });
    // The same pass when the pool is already full: the common steady state.
    group.bench_function("plan: 100k pending on a full pool", |b| {
        b.iter(|| applied.plan())
    });
    // `coop why` for the oldest waiting job on the full pool: the pass it
    // reads its reasons off, plus one pass per change it tries.
    let oldest = *applied.pending().first().expect("jobs still wait");
    let e = applied.explain(oldest).expect("a known job");
    println!(
        "why job {oldest}: {} reasons, {} changes that place it",
        e.reasons.len(),
        e.would_start.len()
    );
    group.bench_function("why: the oldest waiting job on a full pool", |b| {
        b.iter(|| applied.explain(oldest))
    });
    for pending in [25_000usize, 50_000] {
        let smaller = testkit::bench_cluster(10_000, 1_000, pending);
        group.bench_function(
            format!("plan: {}k pending, 10k nodes, 1k members", pending / 1000),
            |b| b.iter(|| smaller.plan()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

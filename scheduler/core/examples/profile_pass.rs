//! One scheduling pass over the benchmark's state (100k pending, 10k nodes,
//! 1k members), repeated for a profiler to sample:
//!
//! ```text
//! cargo build --release -p coop-core --example profile_pass
//! perf record -g ./target/release/examples/profile_pass empty 20 /tmp/pass.snap
//! ```
//!
//! `empty` plans on the empty pool, `full` after one applied pass, `why`
//! explains the oldest waiting job on the full pool. The third argument
//! caches the built state as a snapshot (building it signs 110k requests).

// A profiling harness measures time and reads its cache; the core it runs
// still reads no clock and no disk.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use coop_core::{testkit, ClusterState, Command};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case = args.first().map(String::as_str).unwrap_or("empty");
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let cache = args.get(2);
    let cached = cache
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| ClusterState::from_snapshot_bytes(&b).ok());
    let mut state = cached.unwrap_or_else(|| {
        let s = testkit::bench_cluster(10_000, 1_000, 100_000);
        if let Some(p) = cache {
            std::fs::write(p, s.to_snapshot_bytes()).expect("cache written");
        }
        s
    });
    if case != "empty" {
        state
            .apply(&Command::Schedule { now_ms: 2_000 })
            .expect("a pass applies");
    }
    let oldest = *state.pending().first().expect("jobs wait");
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut runs, started) = (0u32, Instant::now());
    while Instant::now() < until {
        match case {
            "why" => drop(state.explain(oldest)),
            _ => drop(state.plan()),
        }
        runs += 1;
    }
    let per = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
    println!("{case}: {runs} runs, {per:.1} ms each");
}

//! A seeded, deterministic simulation of the whole system: three replicas
//! and two workers running the real scheduler and worker code (Raft on
//! redb, TLS, gRPC, the worker's actor) over turmoil's simulated network
//! and clock, with simulated disks and job processes (`os.rs`), under a
//! load of submits, retries and cancels, with crashes and restarts,
//! partitions (the leader from the followers while workers still reach
//! it; a worker from every replica; held segments are delivered when a
//! partition heals, as TCP would), delayed messages, slow disks, and
//! clocks skewed and jumping. Each invariant is in its own file under
//! `invariants/`.
//!
//! `cargo test` runs `COOP_SIM_SEEDS` seeds (200 unless set) from
//! `COOP_SIM_FIRST` (0); `COOP_SIM_SEED=N` runs one and prints its
//! fingerprint (`COOP_SIM_DUMP=DIR` writes the whole run there). A failing
//! seed prints the command that replays it; a seed replays the same run on
//! any machine.

mod history;
mod invariants;
mod os;
mod world;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one seed; the first broken invariant, if any.
fn judge(seed: u64) -> Result<(), String> {
    let h = world::run(seed)?;
    let top = h.samples.iter().map(|s| s.applied).max().unwrap_or(0);
    let finals: Vec<String> = h
        .finals
        .iter()
        .map(|f| format!("{} at {}", f.replica, f.applied))
        .collect();
    let summary = format!(
        "{} acks, {} repeats, {} cancels, {} runs, highest applied index {top}, replicas at the end {finals:?}, faults ended at {:?}, settled at {:?}, load at {}",
        h.acks.len(), h.repeats.len(), h.cancelled.len(), h.runs.len(), h.faults_ended, h.settled, h.load_at
    );
    if std::env::var_os("COOP_SIM_SEED").is_some() {
        use sha2::Digest;
        let print = hex::encode(&sha2::Sha256::digest(h.fingerprint())[..8]);
        println!("seed {seed}: {summary}, fingerprint {print}");
        if let Some(dir) = std::env::var_os("COOP_SIM_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("seed-{seed}-{print}.txt"));
            let _ = std::fs::write(path, h.fingerprint());
        }
    }
    for (name, check) in invariants::ALL {
        check(&h).map_err(|e| {
            format!(
                "{name}: {e}\n  ({summary})\n  faults:\n    {}",
                h.faults.join("\n    ")
            )
        })?;
    }
    Ok(())
}

/// Installs the subscriber that records the workers' run events (and, with
/// `COOP_SIM_LOG`, prints what the hosts log), once per process.
fn subscribe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        let log = std::env::var("COOP_SIM_LOG").ok().map(|f| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(f))
        });
        let subscriber = tracing_subscriber::registry()
            .with(history::RunEvents)
            .with(log);
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    });
}

/// The seeds this process runs: `COOP_SIM_SEED`, or `COOP_SIM_SEEDS`
/// (200) from `COOP_SIM_FIRST` (0), split between the two tests below
/// (one simulation per thread; the machine has two cores).
fn seeds(half: u64) -> Vec<u64> {
    match env("COOP_SIM_SEED") {
        Some(seed) if seed % 2 == half => vec![seed],
        Some(_) => Vec::new(),
        None => {
            let first = env("COOP_SIM_FIRST").unwrap_or(0);
            (first..first + env("COOP_SIM_SEEDS").unwrap_or(200))
                .filter(|s| s % 2 == half)
                .collect()
        }
    }
}

fn run_seeds(half: u64) {
    subscribe();
    let seeds = seeds(half);
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for &seed in &seeds {
        if let Err(e) = judge(seed) {
            println!("seed {seed}: {e}\n  replay: COOP_SIM_SEED={seed} cargo test -p coop-e2e --test sim -- --nocapture");
            failed.push(seed);
        }
    }
    println!(
        "{} seeds in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "seeds {failed:?} broke an invariant (replay commands above)"
    );
}

/// A seed replays the same run: the same faults, acknowledgements, runs
/// (to the simulated millisecond), applied indices and state digests.
#[test]
fn a_seed_replays_the_same_run() {
    subscribe();
    let seed = env("COOP_SIM_SEED").unwrap_or(7);
    let first = world::run(seed).expect("the first run").fingerprint();
    let second = world::run(seed).expect("the second run").fingerprint();
    if first != second {
        if let Some(dir) = std::env::var_os("COOP_SIM_DUMP") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::write(dir.join(format!("seed-{seed}-first.txt")), &first);
            let _ = std::fs::write(dir.join(format!("seed-{seed}-second.txt")), &second);
        }
        let diff = first
            .lines()
            .zip(second.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("first run:  {a}\nsecond run: {b}"))
            .unwrap_or_else(|| "one run went on longer".into());
        panic!("seed {seed} ran differently the second time:\n{diff}");
    }
}

#[test]
fn the_invariants_hold_in_every_even_seed() {
    run_seeds(0);
}

#[test]
fn the_invariants_hold_in_every_odd_seed() {
    run_seeds(1);
}

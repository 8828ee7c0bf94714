//! The `coop-worker` command line: flags over the TOML config, then the
//! worker until Ctrl-C. In the library so that the binary and the
//! end-to-end tests' copy of it run the same code.

use std::path::PathBuf;

use clap::Parser;

use crate::error::WorkerError;
use crate::{Worker, WorkerConfig};

/// Joins this machine to a Coop pool and runs the jobs placed on it.
#[derive(Parser, Debug)]
#[command(name = "coop-worker", version)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long, env = "COOP_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Scheduler replica addresses, HOST:PORT, comma separated.
    #[arg(long = "scheduler", value_delimiter = ',', env = "COOP_SCHEDULERS")]
    schedulers: Option<Vec<String>>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_id: Option<String>,
    /// The member contributing this machine.
    #[arg(long)]
    owner: Option<String>,
    /// Address to serve job logs on.
    #[arg(long)]
    listen: Option<String>,
    /// Address schedulers reach this worker at, when not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Directory for job work dirs and logs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Offer this many CPUs instead of all (e.g. 2 or 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Offer this much memory in bytes instead of all.
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Run each job as its own uid from this base on (the worker must be root).
    #[arg(long)]
    job_uid_base: Option<u32>,
    /// Remove a finished job's work dir this many seconds after it ended.
    #[arg(long)]
    retention_secs: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// The node's secret key file (default: node.key in the work dir,
    /// created at first start).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The cluster CA's certificate (default: cluster-ca.pem in the work
    /// dir, pinned from the first replica that answers when absent).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Talk to replicas started with --plaintext (local experiments only).
    #[arg(long)]
    plaintext: bool,
    /// Print the node's public key (creating the key if there is none) and
    /// exit: its owner authorizes it with `coop node add NODE --key KEY`.
    #[arg(long)]
    show_key: bool,
}

/// Runs the worker (or a model job's child, `run-model DIR CACHE`) and
/// returns the process exit code.
pub fn main() -> i32 {
    // A model job runs in a child process of the worker: `run-model DIR CACHE`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = crate::model::child_dispatch(&args) {
        return code;
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::io("start the runtime"))
        .and_then(|rt| rt.block_on(run()));
    // One clear line for a bad start, not a backtrace.
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("coop-worker: {e}");
            1
        }
    }
}

async fn run() -> Result<(), WorkerError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(WorkerError::io(format!("read config {}", path.display())))?;
            WorkerConfig::from_toml(&path.display().to_string(), &text)?
        }
        None => WorkerConfig::default(),
    };
    if let Some(s) = args.schedulers {
        config.schedulers = s;
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(o) = args.owner {
        config.owner = o;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(a) = args.advertise {
        config.advertise = Some(a);
    }
    if let Some(w) = args.work_dir {
        config.work_dir = w;
    }
    if let Some(c) = args.cpus {
        if !(c > 0.0 && c.is_finite()) {
            return Err(WorkerError::Config(
                "--cpus must be a positive number".into(),
            ));
        }
        config.cpu_millis = Some((c * 1000.0).round() as u64);
    }
    if let Some(m) = args.memory_bytes {
        config.memory_bytes = Some(m);
    }
    if let Some(b) = args.job_uid_base {
        config.job_uid_base = Some(b);
    }
    if let Some(r) = args.retention_secs {
        config.retention_secs = r;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(k) = args.key_file {
        config.key_file = Some(k);
    }
    if let Some(c) = args.ca_file {
        config.ca_file = Some(c);
    }
    if args.plaintext {
        config.plaintext = true;
    }
    if args.show_key {
        let key = coop_proto::keyfile::load_or_create(&config.key_path())
            .map_err(|e| WorkerError::Config(format!("node key: {e}")))?;
        println!("{}", key.public_key());
        return Ok(());
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(WorkerError::io(format!("listen on {}", config.listen)))?;
    let worker = Worker::start(config, listener).await?;
    println!("worker {} serving logs on {}", worker.node_id, worker.addr);
    if let Some(m) = &worker.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(WorkerError::io("wait for Ctrl-C"))?;
    worker.stop();
    Ok(())
}

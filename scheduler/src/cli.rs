//! `coop-scheduler`'s command line: runs one replica of Coop's scheduler.
//! In the library so the end-to-end tests can run it as a real process.

use std::path::PathBuf;

use crate::{Config, Replica};
use anyhow::Context;
use clap::Parser;

/// One replica of Coop's Raft-replicated scheduler.
///
/// Start every replica of the cluster with the same --peers, then run
/// `coop cluster init` once against any of them.
#[derive(Parser, Debug)]
#[command(name = "coop-scheduler", version)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long, env = "COOP_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// This replica's id (a positive number, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address to listen on, HOST:PORT.
    #[arg(long)]
    listen: Option<String>,
    /// Address others reach this replica at, when not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Every voter as ID=HOST:PORT, comma separated, this one included.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Directory for the Raft log and snapshots.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// The genesis policy, a TOML file (overrides a `[policy]` table in --config).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The cluster's id, named by every member signature (used at genesis).
    #[arg(long)]
    cluster_id: Option<String>,
    /// A founding member, NAME=PUBLIC_KEY (hex, from `coop key new`);
    /// repeat for each, or give them comma separated in COOP_FOUNDERS.
    /// Used once, at genesis.
    #[arg(
        long = "member",
        value_name = "NAME=KEY",
        env = "COOP_FOUNDERS",
        value_delimiter = ','
    )]
    members: Vec<String>,
    /// A directory with this replica's TLS files: ca.pem (the cluster CA),
    /// replica.pem and replica.key (`coop cluster cert` writes them).
    #[arg(long, env = "COOP_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve without TLS: for an experiment on one machine only.
    #[arg(long)]
    plaintext: bool,
    /// Initialize the cluster with --peers at start if it never was (run on
    /// one replica only; `coop cluster init` does the same afterwards).
    #[arg(long)]
    init: bool,
}

/// Runs the command line; returns the process's exit status.
pub fn main() -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coop-scheduler: cannot start a runtime: {e}");
            return 1;
        }
    };
    // One clear line for a bad start (a malformed config, a data dir of
    // another replica), not a backtrace.
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("coop-scheduler: {e:#}");
        return 1;
    }
    0
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config {}", path.display()))?;
            Config::from_toml(&path.display().to_string(), &text)?
        }
        None => Config::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(advertise) = args.advertise {
        config.advertise = Some(advertise);
    }
    if let Some(peers) = args.peers {
        config.peers = peers;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read policy {}", path.display()))?;
        config.policy = Some(
            coop_core::Policy::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    if let Some(id) = args.cluster_id {
        config.cluster_id = id;
    }
    for m in &args.members {
        let (name, key) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--member {m:?} is not NAME=PUBLIC_KEY"))?;
        config.members.push(coop_core::Founder {
            name: coop_core::MemberId::new(name),
            key: coop_core::PublicKey::parse(key)
                .map_err(|e| anyhow::anyhow!("--member {name}: {e}"))?,
        });
    }
    if let Some(dir) = &args.tls_dir {
        config.tls = Some(crate::config::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("replica.pem"),
            key: dir.join("replica.key"),
        });
    }
    if args.plaintext {
        config.plaintext = true;
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let mut replica = Replica::start(config, listener).await?;
    if args.init {
        match replica.initialize().await {
            Ok(()) => tracing::info!("cluster initialized"),
            Err(crate::error::StartError::AlreadyInitialized) => {
                tracing::info!("cluster already initialized")
            }
            Err(e) => return Err(e.into()),
        }
    }
    tokio::select! {
        _ = replica.wait() => {}
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            replica.stop().await;
        }
    }
    Ok(())
}

//! `coop`: every member and operator command.

mod bench;
mod client;
mod cmd;
mod demo;
mod identity;
mod local;
mod output;
mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use output::Format;

/// Coop: a cooperative's shared GPU/CPU pool, scheduled by published rules.
#[derive(Parser, Debug)]
#[command(name = "coop", version)]
pub struct Cli {
    /// A scheduler replica, HOST:PORT (any replica will do); default: the
    /// context's, else 127.0.0.1:7001.
    #[arg(long, global = true, env = "COOP_ADDR")]
    addr: Option<String>,
    /// A context of ~/.config/coop/config.toml (default: its `current`).
    #[arg(long, global = true, env = "COOP_CONTEXT")]
    context: Option<String>,
    /// Your member key file (default: the context's, else ~/.config/coop/key).
    #[arg(long, global = true, env = "COOP_KEY")]
    key: Option<PathBuf>,
    /// The cluster CA certificate (default: the context's, else the one the
    /// replica presented on first contact, pinned in ~/.config/coop/known_cas).
    #[arg(long, global = true, env = "COOP_CA")]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Submit a job: `coop submit --cpu 1 --memory 512Mi -- python eval.py`.
    Submit(Box<cmd::submit::SubmitArgs>),
    /// Show one job: state, placement, history, and every reason it waits.
    Status { job: u64 },
    /// Why a job waits: every reason, its queue position, its member's share
    /// against entitlement, and what would let it start.
    Why { job: u64 },
    /// Per member: entitlement, allocation, dominant share, usage, contribution, jobs.
    Share,
    /// The quota rules in force.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this state (pending, assigned, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this member's jobs.
        #[arg(long)]
        member: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel one of your jobs; a running one is stopped.
    Cancel {
        job: u64,
        /// The member you act as.
        #[arg(long, env = "COOP_MEMBER")]
        member: Option<String>,
        /// Every unfinished job of the array JOB belongs to.
        #[arg(long)]
        array: bool,
    },
    /// Download the files an ended job of yours left on its worker: every
    /// one into ./job-JOB (or --to DIR), or the one PATH names (--to FILE,
    /// or --to - for standard output). A model job's outputs are checked
    /// against the SHA-256s in its result.
    Fetch {
        job: u64,
        /// A file relative to the job's work dir, e.g. out.npy.
        path: Option<String>,
        /// Where to write it (a directory for every file).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Only list the files, with their sizes.
        #[arg(long)]
        list: bool,
    },
    /// Print a job's output (kept on the worker that ran it).
    Logs {
        job: u64,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
        /// Keep printing until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Propose a change of the policy or the member set, for a member vote.
    Propose {
        #[command(subcommand)]
        change: ProposeCmd,
    },
    /// Vote on a proposal: one member, one vote.
    Vote {
        proposal: u64,
        /// yes or no.
        answer: String,
    },
    /// Every proposal with its tally, outcome and (for an open policy
    /// proposal) its what-if.
    Proposals,
    /// Contest a decision about one of your jobs (a preemption, a loss, a
    /// wait): the members vote; upheld, the policy's remedy applies.
    Appeal {
        job: u64,
        #[arg(long)]
        reason: String,
    },
    /// The appeals, with their outcomes and remedies.
    Appeals,
    /// Recompute every decision from the decision log's journal.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// List the pool's nodes.
    Nodes,
    /// Authorize a machine of yours to join the pool as your node.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Live view of members' shares against entitlements, the queue and the nodes.
    Top {
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Evaluation leaderboards, one per dataset, best first.
    Evals {
        /// Only this dataset (URI or sha256).
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Replicas, leader, term and log indices.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Your member key: create one, or show its public half.
    Key {
        #[command(subcommand)]
        command: KeyCmd,
    },
    /// Named clusters and identities (address, member, key), like kubectl contexts.
    Context {
        #[command(subcommand)]
        command: ContextCmd,
    },
    /// Run one replica and one worker here, on a temporary data dir, until Ctrl-C.
    Dev {
        /// Keep data here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Port for the replica (0 picks a free one).
        #[arg(long, default_value_t = 7001)]
        port: u16,
    },
    /// Start a local 3-replica cluster and 2 workers, run jobs from two
    /// members, kill the leader midway, and show that nothing was lost.
    Demo,
    /// Measure submit throughput and submit-to-start latency.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create a key pair: the secret half in the key file (mode 0600), the
    /// public half printed for the cooperative.
    New {
        /// Replace an existing key file (its identity is lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of your key file.
    Show,
}

#[derive(Subcommand, Debug)]
enum ContextCmd {
    /// Create or update a context (and make it current if none is).
    Set {
        name: String,
        #[arg(long = "server")]
        server: Option<String>,
        #[arg(long)]
        member: Option<String>,
        #[arg(long = "key-file")]
        key_file: Option<PathBuf>,
        /// The cluster CA certificate to trust for this context.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Make a context current.
    Use { name: String },
    /// List the contexts; * marks the current one.
    List,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Print the policy document in force.
    Show,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Write the replica's journal (and what it claims: size, root, state
    /// digest) to FILE.
    Export { file: PathBuf },
    /// Replay the journal from genesis (streamed from the replica, or
    /// --journal FILE offline), check every signature, recompute every
    /// decision, and compare the root and state digest with a checkpoint a
    /// majority of the replicas signed.
    Verify {
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Start from a state an earlier `--save-state` wrote (its
        /// checkpoint is checked) instead of from genesis.
        #[arg(long)]
        from_state: Option<PathBuf>,
        /// After verifying, save the state reached with its checkpoint.
        #[arg(long)]
        save_state: Option<PathBuf>,
    },
    /// The latest checkpoint a majority of the replicas signed, checked for
    /// forks and against the one this CLI verified last time (consistency proof).
    Checkpoint,
    /// The leaves recording a job's decisions, with inclusion proofs checked.
    Prove { job: u64 },
}

#[derive(Subcommand, Debug)]
enum ProposeCmd {
    /// A new policy (a TOML file whose version is the next one).
    Policy { file: PathBuf },
    /// Admit a new member with this public key.
    Admit {
        name: String,
        #[arg(long)]
        key: String,
    },
    /// Remove a member.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Authorize node NAME's key (`coop-worker --show-key` prints it): the
    /// node joins as yours and only that key can act as it. Run it again
    /// with a new key to replace a lost or leaked one.
    Add {
        name: String,
        /// The node's public key, 64 hex digits.
        #[arg(long)]
        key: String,
        /// The member you act as.
        #[arg(long, env = "COOP_MEMBER")]
        member: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Show the cluster as the replica at --addr sees it.
    Status,
    /// Form the cluster from the replicas' --peers (once, ever).
    Init,
    /// Add a replica (started with the same --peers plus itself, and a
    /// certificate from the cluster CA); signed by you and recorded.
    AddReplica {
        #[arg(long)]
        id: u64,
        /// Its address, HOST:PORT.
        #[arg(long = "replica-addr")]
        replica_addr: String,
    },
    /// Remove a replica from the group; signed by you and recorded.
    RemoveReplica {
        #[arg(long)]
        id: u64,
    },
    /// Create the cluster's CA: ca.pem (give it to members and workers, or
    /// let them pin it on first contact) and ca.key (keep it offline: it
    /// admits replicas).
    Ca {
        /// Where to write ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a replica certificate from the cluster CA into --out
    /// (replica.pem, replica.key and a copy of ca.pem): start the replica
    /// with `coop-scheduler --tls-dir OUT`.
    Cert {
        /// The CA directory (`coop cluster ca --dir`).
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    // In-process workers (`coop dev`, `coop demo`) run model jobs as child
    // processes of this binary: `coop run-model DIR CACHE`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = coop_worker::model::child_dispatch(&args) {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    // A command whose output is piped into `head` ends quietly when the
    // reader goes, as Unix tools do, instead of panicking on the write; the
    // in-process servers of `dev` and `demo` keep Rust's default (ignored),
    // so a peer that hangs up never kills them.
    if !matches!(cli.command, Cmd::Dev { .. } | Cmd::Demo) {
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COOP_LOG")
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coop: {e:#}");
            1
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let fmt = cli.output;
    let settings = identity::Settings::resolve(cli.addr, cli.context, cli.key, cli.ca)?;
    if let Some(ca) = &settings.ca {
        client::trust_ca_file(ca.clone());
    }
    let addr = settings.addr.clone();
    // Reads are signed as you when you have a key; without one, a replica
    // answers only what needs no member (coop cluster status).
    match settings.signer(None) {
        Ok(signer) => signer.read_as(),
        Err(e) => client::no_reader(format!("{e:#}")),
    }
    match cli.command {
        Cmd::Key { command } => match command {
            KeyCmd::New { force } => cmd::keys::key_new(&settings, fmt, force),
            KeyCmd::Show => cmd::keys::key_show(&settings, fmt),
        },
        Cmd::Context { command } => match command {
            ContextCmd::Set {
                name,
                server,
                member,
                key_file,
                ca,
            } => cmd::keys::context_set(&name, server, member, key_file, ca),
            ContextCmd::Use { name } => cmd::keys::context_use(&name),
            ContextCmd::List => cmd::keys::context_list(fmt),
        },
        Cmd::Submit(args) => cmd::jobs::submit(&settings, fmt, *args).await,
        Cmd::Status { job } => cmd::jobs::status(&addr, fmt, job).await,
        Cmd::Jobs {
            state,
            member,
            limit,
        } => cmd::jobs::jobs(&addr, fmt, state, member, limit).await,
        Cmd::Cancel { job, member, array } => {
            cmd::jobs::cancel(&settings, fmt, job, member, array).await
        }
        Cmd::Logs {
            job,
            stderr,
            follow,
        } => cmd::jobs::logs(&addr, job, stderr, follow).await,
        Cmd::Fetch {
            job,
            path,
            to,
            list,
        } => cmd::jobs::fetch(&addr, job, path, to, list).await,
        Cmd::Nodes => cmd::cluster::nodes(&addr, fmt).await,
        Cmd::Propose { change } => {
            use cmd::governance::Change;
            let change = match change {
                ProposeCmd::Policy { file } => Change::Policy(file),
                ProposeCmd::Admit { name, key } => Change::Admit { name, key },
                ProposeCmd::Remove { name } => Change::Remove(name),
            };
            cmd::governance::propose(&settings, fmt, change).await
        }
        Cmd::Vote { proposal, answer } => {
            cmd::governance::vote(&settings, fmt, proposal, &answer).await
        }
        Cmd::Proposals => cmd::governance::proposals(&addr, fmt, false).await,
        Cmd::Appeal { job, reason } => {
            cmd::governance::propose(
                &settings,
                fmt,
                cmd::governance::Change::Appeal { job, reason },
            )
            .await
        }
        Cmd::Appeals => cmd::governance::proposals(&addr, fmt, true).await,
        Cmd::Audit { command } => match command {
            AuditCmd::Export { file } => cmd::audit::export(&addr, fmt, &file).await,
            AuditCmd::Verify {
                journal,
                from_state,
                save_state,
            } => {
                let opts = cmd::audit::VerifyOptions {
                    journal: journal.as_deref(),
                    from_state: from_state.as_deref(),
                    save_state: save_state.as_deref(),
                };
                cmd::audit::verify(&addr, fmt, opts).await
            }
            AuditCmd::Checkpoint => cmd::audit::checkpoint(&addr, fmt).await,
            AuditCmd::Prove { job } => cmd::audit::prove(&addr, fmt, job).await,
        },
        Cmd::Node {
            command: NodeCmd::Add { name, key, member },
        } => cmd::cluster::node_add(&settings, fmt, &name, &key, member).await,
        Cmd::Top { once, interval } => {
            top::run(&addr, once, std::time::Duration::from_secs(interval.max(1))).await
        }
        Cmd::Evals { dataset } => cmd::models::evals(&addr, fmt, dataset).await,
        Cmd::Why { job } => cmd::fairness::why(&addr, fmt, job).await,
        Cmd::Share => cmd::fairness::share(&addr, fmt).await,
        Cmd::Policy {
            command: PolicyCmd::Show,
        } => cmd::fairness::policy_show(&addr, fmt).await,
        Cmd::Cluster { command } => match command {
            ClusterCmd::Status => cmd::cluster::cluster_status(&addr, fmt).await,
            ClusterCmd::Init => cmd::cluster::cluster_init(&addr, fmt).await,
            ClusterCmd::AddReplica { id, replica_addr } => {
                cmd::cluster::add_replica(&settings, fmt, id, replica_addr).await
            }
            ClusterCmd::RemoveReplica { id } => {
                cmd::cluster::remove_replica(&settings, fmt, id).await
            }
            ClusterCmd::Ca { dir } => cmd::cluster::ca_new(&dir),
            ClusterCmd::Cert { ca_dir, out } => cmd::cluster::cert_issue(&ca_dir, &out),
        },
        Cmd::Dev { data_dir, port } => demo::dev(&settings, data_dir, port).await,
        Cmd::Demo => demo::demo().await,
        Cmd::Bench(args) => bench::run(&settings, args).await,
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand: two arguments
    /// of one name (a subcommand's `-o` against the global one) fail here,
    /// not in a member's hands.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Each command of the README's reference parses; a subcommand's
    /// argument clashing with a global one (`-o`) panics here.
    #[test]
    fn the_documented_commands_parse() {
        use clap::Parser;
        for line in [
            "submit --cpu 0.5 --memory 128Mi --retries 2 -- sh -c true",
            "jobs --state pending -o json",
            "status 12",
            "status 12 -o json",
            "why 12",
            "share",
            "policy show",
            "submit --cpu 1 --memory 1Gi --evaluate a.onnx --evaluate b.onnx --dataset test.csv --label y",
            "submit --engine onnxruntime --infer m.onnx --input x.npy --out out.npy",
            "evals",
            "logs 12 --follow",
            "fetch 12",
            "fetch 12 --list",
            "fetch 12 out.npy --to -",
            "fetch 12 --to results -o json",
            "nodes -o json",
            "cancel 12",
            "cluster status --addr 127.0.0.1:7002",
            "key show",
            "top --once",
        ] {
            let argv = std::iter::once("coop").chain(line.split_whitespace());
            if let Err(e) = super::Cli::try_parse_from(argv) {
                panic!("coop {line}: {e}");
            }
        }
    }
}

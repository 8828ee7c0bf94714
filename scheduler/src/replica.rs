//! A running replica: Raft, the services on one listener, and the driver.
//! `start` takes an already bound listener, so tests bind `127.0.0.1:0`.

use crate::error::StartError;
use std::sync::Arc;

use coop_proto::api::coop_server::CoopServer;
use coop_proto::raft::raft_transport_server::RaftTransportServer;
use coop_proto::worker::worker_gateway_server::WorkerGatewayServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::CoopService;
use crate::config::{prepare_data_dir, Config};
use crate::gateway::GatewayService;
use crate::raft::{RaftNode, RaftTiming, RaftTransportService};
use crate::shared::Shared;

/// Largest public API request: a job spec is at most 64 KiB, so this leaves
/// room while refusing anything absurd before it is parsed.
pub const MAX_API_REQUEST_BYTES: usize = 1024 * 1024;

/// tonic answers an oversized request OUT_OF_RANGE and an undecodable one
/// INTERNAL; the gRPC conventions are RESOURCE_EXHAUSTED (too large: do
/// not retry as is) and INVALID_ARGUMENT (the caller's fault, not ours).
fn honest_refusals(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let code = match headers.get("grpc-status").and_then(|s| s.to_str().ok()) {
        Some("11") if message.contains("message length too large") => "8",
        Some("13") if message.contains("failed to decode Protobuf message") => "3",
        _ => return response,
    };
    headers.insert("grpc-status", http::HeaderValue::from_static(code));
    response
}

pub struct Replica {
    pub node: RaftNode,
    pub addr: String,
    /// Where `/metrics` is served, when configured.
    pub metrics_addr: Option<String>,
    metrics_task: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    stop_tx: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    driver: JoinHandle<()>,
    witness_tasks: [JoinHandle<()>; 2],
}

/// The replica's witness: it signs checkpoints with the key of its
/// certificate from the cluster CA, so the CA vouches for its signatures.
/// Without TLS (or with a certificate that is not Ed25519) it signs with a
/// key of its own in the data dir, which nothing vouches for.
fn witness(
    config: &Config,
    identity: Option<&coop_proto::tls::ReplicaIdentity>,
) -> Result<crate::witness::Witness, StartError> {
    let vouched = identity.and_then(|i| i.signing_key().map(|k| (k, i)));
    let (key, cert_pem, ca_pem) = match vouched {
        Some((key, i)) => (key, i.cert_pem.clone(), Some(i.ca_pem.clone())),
        None => {
            if identity.is_some() {
                tracing::warn!("this replica's certificate is not Ed25519: its checkpoint signatures are not vouched for by the cluster CA; issue a new one with `coop cluster cert`");
            }
            let path = config.data_dir.join("checkpoint.key");
            let key = coop_proto::keyfile::load_or_create(&path)
                .map_err(|e| StartError::Tls(format!("{}: {e}", path.display())))?;
            (key, String::new(), identity.map(|i| i.ca_pem.clone()))
        }
    };
    Ok(crate::witness::Witness::new(
        config.id,
        key,
        cert_pem,
        ca_pem,
        &config.data_dir,
    ))
}

impl Replica {
    pub async fn start(
        config: Config,
        listener: impl Into<coop_proto::net::Listener>,
    ) -> Result<Replica, StartError> {
        Self::start_with_clock(config, listener, crate::clock::Clock::system()).await
    }

    /// Like `start`, stamping commands with `clock` (the simulation's).
    pub async fn start_with_clock(
        config: Config,
        listener: impl Into<coop_proto::net::Listener>,
        clock: crate::clock::Clock,
    ) -> Result<Replica, StartError> {
        let listener = listener.into();
        config.validate()?;
        prepare_data_dir(&config.data_dir, config.id)?;
        let timing = RaftTiming {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_min_ms: config.election_timeout_min_ms,
            election_max_ms: config.election_timeout_max_ms,
            snapshot_every: config.snapshot_every,
        };
        let identity = match &config.tls {
            Some(files) => Some(
                coop_proto::tls::ReplicaIdentity::load(&files.ca, &files.cert, &files.key)
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            ),
            None => {
                tracing::warn!("serving without TLS (plaintext = true): anyone who reaches this port reaches the Raft transport");
                None
            }
        };
        let replica_tls = identity.as_ref().map(|i| i.client());
        let network = crate::raft::Network {
            tls: replica_tls.clone(),
        };
        let node = RaftNode::start(config.id, &config.data_dir, &timing, network).await?;
        let addr = config.advertise_addr().to_string();
        let witness = Arc::new(witness(&config, identity.as_ref())?);
        if let Some(dir) = &config.journal_archive_dir {
            node.state_machine().journal().set_archive(dir.clone());
        }
        let metrics = Arc::new(crate::metrics::SchedulerMetrics::new());
        let observer = metrics.clone();
        let (heads_tx, heads_rx) = tokio::sync::mpsc::unbounded_channel();
        node.state_machine()
            .set_observer(Box::new(move |outcome, state| {
                observer.observe(outcome, state);
                if let coop_core::Outcome::Checkpointed { .. } = outcome {
                    // A copy: the digest is computed off the apply path.
                    let _ = heads_tx.send(state.clone());
                }
            }));
        let metrics_server = match &config.metrics_listen {
            Some(listen) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .map_err(StartError::io(format!("metrics listen on {listen}")))?;
                let metrics_addr = listener
                    .local_addr()
                    .map_err(StartError::io("metrics address"))?
                    .to_string();
                let (m, n) = (metrics.clone(), node.clone());
                let render = Arc::new(move || {
                    let status = n.status();
                    let applied = n.state_machine().read();
                    m.render(&applied.state, &status)
                });
                Some((
                    metrics_addr,
                    tokio::spawn(coop_proto::metrics_http::serve(listener, render)),
                ))
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(
            node.clone(),
            config,
            metrics,
            replica_tls,
            witness.clone(),
            clock,
        ));
        let witness_tasks = [
            tokio::spawn(crate::witness::sign_heads(witness, heads_rx)),
            tokio::spawn(crate::witness::collect(shared.clone())),
        ];
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some(identity) = &identity {
            builder = builder
                .tls_config(identity.server())
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let router = builder
            .layer(tower::util::MapResponseLayer::new(honest_refusals))
            .add_service(
                CoopServer::new(CoopService::new(shared.clone()))
                    .max_decoding_message_size(MAX_API_REQUEST_BYTES)
                    .max_encoding_message_size(coop_proto::MAX_MESSAGE_BYTES),
            )
            .add_service(
                WorkerGatewayServer::new(GatewayService::new(shared.clone()))
                    .max_decoding_message_size(MAX_API_REQUEST_BYTES),
            )
            .add_service(
                RaftTransportServer::new(RaftTransportService::new(
                    node.raft().clone(),
                    identity.is_some(),
                ))
                .max_decoding_message_size(coop_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(coop_proto::MAX_MESSAGE_BYTES),
            );
        let incoming = listener.incoming();
        let server = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "server stopped");
            }
        });
        let driver = tokio::spawn(crate::driver::run(shared.clone()));
        tracing::info!(id = node.id, addr = %addr, "replica started");
        let (metrics_addr, metrics_task) = match metrics_server {
            Some((a, t)) => (Some(a), Some(t)),
            None => (None, None),
        };
        Ok(Replica {
            node,
            addr,
            metrics_addr,
            metrics_task,
            shared,
            stop_tx: Some(stop_tx),
            server,
            driver,
            witness_tasks,
        })
    }

    /// One-time cluster formation with the configured peers (or this
    /// replica alone when none are configured).
    pub async fn initialize(&self) -> Result<(), StartError> {
        let mut peers = self.shared.config.peer_map()?;
        if peers.is_empty() {
            peers.insert(self.node.id, self.addr.clone());
        }
        self.node.initialize(&peers).await
    }

    /// Stops serving and shuts Raft down; the data dir stays for a restart.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.driver.abort();
        for t in &self.witness_tasks {
            t.abort();
        }
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        self.node.shutdown().await;
        self.server.abort();
        let _ = (&mut self.server).await;
        let _ = (&mut self.driver).await;
    }

    /// Waits until the server stops (it stops only through `stop`).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

//! `WorkerGateway`: how workers join, heartbeat, receive their allocations
//! and report. Heartbeats and the assignment stream are leader-only (a
//! follower answers UNAVAILABLE naming the leader); registration and reports
//! are writes, forwarded like any other.
//!
//! Every call is the node's own: registration and reports are signed with
//! the node key its owner authorized and enter the log signed (every
//! replica verifies them in `apply`); heartbeats and the assignment stream
//! carry the node's session credential, checked here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use coop_core::{AllocId, Command, CoreError, ExitStatus, MemberId, NodeId, NodeState, Outcome};
use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
use coop_proto::worker::worker_gateway_server::WorkerGateway;
use coop_proto::worker::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::assignment_to_proto;
use crate::error::{core_status, not_leader};
use crate::shared::{forwarded, signed, unexpected, Route, Shared, VerifiedCredentials};

pub struct GatewayService {
    shared: Arc<Shared>,
    verified_sessions: VerifiedCredentials,
}

impl GatewayService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            verified_sessions: Default::default(),
        }
    }

    /// Checks a node's session credential against its authorized key.
    fn session(
        &self,
        node: &NodeId,
        incarnation: u64,
        issued_at_ms: u64,
        signature: &[u8],
    ) -> Result<(), Status> {
        let auth = signed(issued_at_ms, signature)?;
        let now = self.shared.now_ms();
        let who = format!("{node}/{incarnation}");
        let applied = self.shared.node.state_machine().read();
        let key = applied
            .state
            .node_grants()
            .get(node)
            .map(|g| g.key)
            .ok_or_else(|| {
                core_status(&CoreError::Auth(coop_core::AuthError::UnknownNode {
                    node: node.clone(),
                }))
            })?;
        if let Some(known) = self.verified_sessions.recall(&auth, &who, &key, now) {
            return known;
        }
        applied
            .state
            .verify_node_session(node, incarnation, &auth, now)
            .map_err(|e| core_status(&e))?;
        self.verified_sessions.remember(&auth, &who, key, now);
        Ok(())
    }

    /// Checks a report's signature before it is proposed (apply checks it
    /// again on every replica): a forged report costs no log entry.
    fn check_report(
        &self,
        node: &NodeId,
        incarnation: u64,
        auth: &coop_core::Auth,
        report: &coop_core::NodeReport<'_>,
    ) -> Result<(), Status> {
        self.shared.precheck(|state| {
            state.verify_node_report(node, incarnation, auth, report, self.shared.now_ms())
        })
    }

    /// Heartbeats and assignments are served only by a leader a quorum
    /// acknowledged within the election timeout (see `leads_with_quorum`):
    /// a cut-off old leader turns its workers away, so they find the new
    /// one before it declares them lost.
    fn require_leader(&self) -> Result<(), Status> {
        require_leader_with_quorum(&self.shared)
    }

    async fn report(&self, cmd: Command) -> Result<Response<ReportResponse>, Status> {
        match self.shared.write_result(cmd).await? {
            Ok(_) => Ok(Response::new(ReportResponse::default())),
            // The fencing token at work: a report about an allocation that is
            // no longer live is dropped, and the worker is told so.
            Err(e @ (CoreError::StaleAllocation { .. } | CoreError::BadAllocTransition { .. })) => {
                Ok(Response::new(ReportResponse {
                    stale: true,
                    message: e.to_string(),
                }))
            }
            Err(e) => Err(core_status(&e)),
        }
    }
}

macro_rules! via_leader {
    ($self:ident, $request:ident, $method:ident) => {
        let _timer = $self.shared.metrics.timer(stringify!($method));
        if let Route::Forward(channel) = $self.shared.route(&$request).await? {
            return WorkerGatewayClient::new(channel)
                .$method(forwarded(&$request))
                .await
                .map_err(crate::shared::forward_failed);
        }
    };
}

fn require_leader_with_quorum(shared: &Shared) -> Result<(), Status> {
    let lease = Duration::from_millis(shared.config.election_timeout_min_ms);
    if shared.node.leads_with_quorum(lease) {
        Ok(())
    } else if shared.node.is_leader() {
        Err(Status::unavailable(
            "this replica leads but has not heard from a quorum within the election timeout: it may be cut off; try another replica",
        ))
    } else {
        Err(not_leader(shared.node.leader().map(|(_, a)| a).as_deref()))
    }
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerGateway for GatewayService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        via_leader!(self, request, register);
        let req = request.get_ref();
        let node = NodeId::new(req.node_id.clone());
        let owner = MemberId::new(req.owner.clone());
        let capacity = coop_proto::convert::resources(req.capacity.as_ref());
        let gpus: Vec<coop_core::GpuInfo> = req.gpus.iter().map(coop_core::GpuInfo::from).collect();
        let engines: coop_core::NodeEngines =
            req.engines.as_ref().map(Into::into).unwrap_or_default();
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared.precheck(|state| {
            state.check_register(
                &coop_core::Registration {
                    node: &node,
                    owner: &owner,
                    capacity,
                    addr: &req.addr,
                    incarnation: req.incarnation,
                    gpus: &gpus,
                    engines: &engines,
                    auth: &auth,
                },
                now,
            )
        })?;
        let cmd = Command::RegisterNode {
            node: node.clone(),
            owner,
            capacity,
            addr: req.addr.clone(),
            incarnation: req.incarnation,
            now_ms: now,
            gpus,
            engines,
            auth,
        };
        match self.shared.write(cmd).await? {
            Outcome::NodeRegistered { requeued, .. } => {
                if !requeued.is_empty() {
                    tracing::info!(node = %node, requeued = requeued.len(), "worker restarted; its old allocations requeued");
                }
                self.shared
                    .heartbeats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node, (req.incarnation, Instant::now()));
                Ok(Response::new(RegisterResponse {
                    heartbeat_interval_ms: self.shared.config.heartbeat_interval_ms,
                    heartbeat_timeout_ms: self.shared.config.heartbeat_timeout_ms,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let node = NodeId::new(req.node_id);
        self.session(&node, req.incarnation, req.issued_at_ms, &req.signature)?;
        let known =
            {
                let applied = self.shared.node.state_machine().read();
                applied.state.nodes().get(&node).is_some_and(|n| {
                    n.incarnation == req.incarnation && n.state == NodeState::Ready
                })
            };
        if known {
            self.shared
                .heartbeats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node, (req.incarnation, Instant::now()));
        }
        Ok(Response::new(HeartbeatResponse { reregister: !known }))
    }

    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        request: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let node = NodeId::new(req.node_id);
        self.session(&node, req.incarnation, req.issued_at_ms, &req.signature)?;
        // A new leader may not have applied all it committed before it
        // led: no set leaves before its state is at least that new, or it
        // could send an older set than the last leader did.
        self.shared.read_barrier().await?;
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let sm = shared.node.state_machine().clone();
            let mut applied_rx = sm.subscribe();
            let mut last_sent: Option<Vec<Assignment>> = None;
            loop {
                if let Err(status) = require_leader_with_quorum(&shared) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let view = {
                    let applied = sm.read();
                    let ready = applied.state.nodes().get(&node).is_some_and(|n| {
                        n.incarnation == req.incarnation && n.state == NodeState::Ready
                    });
                    ready.then(|| {
                        let set: Vec<Assignment> = applied
                            .state
                            .node_allocations(&node)
                            .into_iter()
                            .map(|a| assignment_to_proto(&applied.state, a))
                            .collect();
                        (set, applied.last_applied.map(|l| l.index).unwrap_or(0))
                    })
                };
                let Some((set, index)) = view else {
                    let _ = tx
                        .send(Err(Status::failed_precondition(format!(
                            "node {node} incarnation {} is not registered: register again",
                            req.incarnation
                        ))))
                        .await;
                    return;
                };
                if last_sent.as_ref() != Some(&set) {
                    let msg = AssignmentSet {
                        allocations: set.clone(),
                        applied_index: index,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last_sent = Some(set);
                }
                tokio::select! {
                    changed = applied_rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_started(
        &self,
        request: Request<ReportStartedRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        via_leader!(self, request, report_started);
        let req = request.get_ref();
        let (alloc, node) = (AllocId(req.alloc_id), NodeId::new(req.node_id.clone()));
        let auth = signed(req.issued_at_ms, &req.signature)?;
        self.check_report(
            &node,
            req.incarnation,
            &auth,
            &coop_core::NodeReport::Started { alloc },
        )?;
        self.report(Command::AllocStarted {
            alloc,
            node,
            incarnation: req.incarnation,
            auth,
            now_ms: self.shared.now_ms(),
        })
        .await
    }

    async fn report_finished(
        &self,
        request: Request<ReportFinishedRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        via_leader!(self, request, report_finished);
        let req = request.get_ref();
        // A result that does not convert is refused whole rather than dropped.
        let result = req
            .result
            .as_ref()
            .map(coop_core::JobResult::try_from)
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("result: {e}")))?;
        let (alloc, node) = (AllocId(req.alloc_id), NodeId::new(req.node_id.clone()));
        let exit = ExitStatus {
            code: req.exit_code,
            signal: req.signal,
            error: req.error.clone(),
        };
        let auth = signed(req.issued_at_ms, &req.signature)?;
        self.check_report(
            &node,
            req.incarnation,
            &auth,
            &coop_core::NodeReport::Finished {
                alloc,
                exit: &exit,
                result: result.as_ref(),
            },
        )?;
        self.report(Command::AllocFinished {
            alloc,
            node,
            exit,
            now_ms: self.shared.now_ms(),
            result,
            incarnation: req.incarnation,
            auth,
        })
        .await
    }
}

//! The public `Coop` service. Any replica accepts every call: calls that
//! need the leader (writes, linearizable reads) are forwarded to it.

use std::sync::Arc;

use coop_core::{AllocId, Command, JobId, JobState, MemberId, NodeId, Outcome, PublicKey};
use coop_proto::api::coop_client::CoopClient;
use coop_proto::api::coop_server::Coop;
use coop_proto::api::*;
use coop_proto::convert::FromWire;
use coop_proto::worker::worker_agent_client::WorkerAgentClient;
use coop_proto::worker::{ReadFileRequest, ReadLogsRequest};
use tonic::{Request, Response, Status};

use crate::convert::job_to_proto;
use crate::error::core_status;
use crate::shared::{forwarded, signed, unexpected, Route, Shared, VerifiedCredentials};

/// Largest log chunk one `Logs` call returns.
const MAX_LOG_CHUNK: u32 = 1024 * 1024;

/// Job's last run, as `ApiService::last_run` finds it.
struct LastRun {
    alloc: AllocId,
    node: NodeId,
    addr: String,
    node_key: coop_core::PublicKey,
    /// The job has ended and no allocation of it is live.
    ended: bool,
    /// The reader (the job's member) and its read credential.
    reader: MemberId,
    auth: coop_core::Auth,
}

impl LastRun {
    /// The reader's credential as the worker's requests carry it.
    fn passed_on(&self) -> (String, u64, Vec<u8>) {
        (
            self.reader.to_string(),
            self.auth.issued_at_ms,
            self.auth.signature.0.to_vec(),
        )
    }

    /// A worker's refusal, saying which worker.
    fn worker_error(&self, s: Status) -> Status {
        Status::new(
            s.code(),
            format!("worker at {}: {}", self.addr, s.message()),
        )
    }
}

pub struct CoopService {
    shared: Arc<Shared>,
    verified_reads: VerifiedCredentials,
}

impl CoopService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            verified_reads: Default::default(),
        }
    }

    /// Runs a query that runs the allocator's pass (`why`, a job's
    /// reasons). On a state large enough that a pass takes long it runs on
    /// a copy, off the async threads, so the apply path (and the Raft
    /// heartbeats behind it) never waits for it.
    async fn on_state<T: Send + 'static>(
        &self,
        query: impl FnOnce(&coop_core::ClusterState) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let sm = self.shared.node.state_machine();
        if !sm.long_pass() {
            return Ok(query(&sm.read().state));
        }
        let state = sm.read().state.clone();
        tokio::task::spawn_blocking(move || query(&state))
            .await
            .map_err(|e| Status::internal(format!("query: {e}")))
    }

    /// Where job `job`'s last run was, for its member only (the reader of
    /// `request`): what `logs` and `fetch` read from its worker, with the
    /// reader's own credential to pass on.
    async fn last_run<T>(
        &self,
        request: &Request<T>,
        job: u64,
        what: &str,
    ) -> Result<LastRun, Status> {
        let reader = self.reader(request)?;
        // The worker checks the reader's own credential against the job's
        // member's key: a replica cannot read a member's logs or files by itself.
        let (_, auth) = coop_proto::read_auth::credential(request.metadata())
            .ok_or_else(|| Status::unauthenticated("reads are for members"))?;
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        let id = JobId(job);
        let job = applied
            .state
            .job(id)
            .ok_or_else(|| Status::not_found(format!("unknown job {id}")))?;
        // A job's output is its member's alone.
        if job.member != reader {
            return Err(Status::permission_denied(format!(
                "job {id}'s {what} are {}'s alone",
                job.member
            )));
        }
        let Some((alloc, node)) = &job.last_run else {
            return Err(Status::failed_precondition(format!(
                "job {id} has not run yet: no {what}"
            )));
        };
        let addr = applied
            .state
            .nodes()
            .get(node)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Status::not_found(format!("node {node} is unknown")))?;
        let node_key = applied
            .state
            .node_grants()
            .get(node)
            .map(|g| g.key)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "node {node} is no longer authorized: its {what} cannot be fetched"
                ))
            })?;
        Ok(LastRun {
            alloc: *alloc,
            node: node.clone(),
            addr,
            node_key,
            ended: job.state().is_terminal() && job.alloc.is_none(),
            reader,
            auth,
        })
    }

    /// The agent of the worker that ran `run`, over TLS pinned to its node key.
    fn worker(
        &self,
        run: &LastRun,
    ) -> Result<WorkerAgentClient<tonic::transport::Channel>, Status> {
        Ok(WorkerAgentClient::new(
            self.shared.worker_channel(&run.addr, &run.node_key)?,
        ))
    }

    /// The member a read is from: its credential must verify against the
    /// member's key. What makes the pool transparent any member may read;
    /// a job's env, logs and outputs only its own member.
    fn reader<T>(&self, request: &Request<T>) -> Result<MemberId, Status> {
        let (member, auth) =
            coop_proto::read_auth::credential(request.metadata()).ok_or_else(|| {
                Status::unauthenticated(
                "reads are for members: sign them with your key (coop does; see docs/security.md)",
            )
            })?;
        let now = self.shared.now_ms();
        let key = {
            let applied = self.shared.node.state_machine().read();
            let key = applied.state.members().get(&member).map(|m| m.public_key);
            if let Some(k) = &key {
                if let Some(known) = self.verified_reads.recall(&auth, member.as_str(), k, now) {
                    return known.map(|()| member);
                }
            }
            applied
                .state
                .verify_read(&member, &auth, now)
                .map_err(|e| core_status(&e))?;
            key
        };
        if let Some(key) = key {
            self.verified_reads
                .remember(&auth, member.as_str(), key, now);
        }
        Ok(member)
    }
}

/// Sends the call to the leader unless this replica leads.
macro_rules! via_leader {
    ($self:ident, $request:ident, $method:ident) => {
        let _timer = $self.shared.metrics.timer(stringify!($method));
        if let Route::Forward(channel) = $self.shared.route(&$request).await? {
            return CoopClient::new(channel)
                .max_decoding_message_size(coop_proto::MAX_MESSAGE_BYTES)
                .$method(forwarded(&$request))
                .await
                .map_err(crate::shared::forward_failed);
        }
    };
}

/// The replica group as this replica sees it now.
fn current_replicas(shared: &Shared) -> Vec<Replica> {
    let status = shared.node.status();
    replicas_to_proto(&status, &shared.node.state_machine().read().state)
}

fn replicas_to_proto(
    status: &crate::raft::RaftStatus,
    state: &coop_core::ClusterState,
) -> Vec<Replica> {
    status
        .replicas
        .iter()
        .map(|r| Replica {
            added_by: state
                .replica_changes()
                .iter()
                .rev()
                .find(|a| a.id == r.id && a.added)
                .map(|a| a.member.to_string())
                .unwrap_or_default(),
            id: r.id,
            addr: r.addr.clone(),
            voter: r.voter,
            leader: status.leader_id == Some(r.id),
            matched_index: r.matched_index,
        })
        .collect()
}

type JournalStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<JournalChunk, Status>> + Send>>;

/// Leaves per exported chunk (each at most a few KiB).
const JOURNAL_CHUNK: usize = 256;

#[tonic::async_trait]
impl Coop for CoopService {
    type ExportJournalStream = JournalStream;

    /// Served by the replica asked, from its own journal: any member can
    /// compare what several replicas hold.
    async fn export_journal(
        &self,
        request: Request<ExportJournalRequest>,
    ) -> Result<Response<Self::ExportJournalStream>, Status> {
        self.reader(&request)?;
        let req = request.into_inner();
        let to = if req.to == 0 { u64::MAX } else { req.to };
        let sm = self.shared.node.state_machine().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut from = req.from;
            loop {
                let sm = sm.clone();
                let chunk =
                    tokio::task::spawn_blocking(move || sm.journal().read(from, to, JOURNAL_CHUNK))
                        .await;
                let chunk = match chunk {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("journal: {e}"))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let Some(last) = chunk.last().map(|(i, _)| *i) else {
                    return;
                };
                let entries = chunk
                    .into_iter()
                    .map(|(index, leaf)| JournalEntry { index, leaf })
                    .collect();
                if tx.send(Ok(JournalChunk { entries })).await.is_err() {
                    return;
                }
                from = last + 1;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn why(&self, request: Request<WhyRequest>) -> Result<Response<Explanation>, Status> {
        via_leader!(self, request, why);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let id = JobId(request.get_ref().job_id);
        let e = self
            .on_state(move |state| state.explain(id))
            .await?
            .ok_or_else(|| Status::not_found(format!("unknown job {id}")))?;
        Ok(Response::new(Explanation::from(&e)))
    }

    async fn share(
        &self,
        request: Request<ShareRequest>,
    ) -> Result<Response<ShareResponse>, Status> {
        via_leader!(self, request, share);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        // Accrued to the time of the read: display only, nothing is written.
        let at_ms = self.shared.now_ms().max(applied.state.now_ms());
        let shares = applied.state.shares_at(at_ms);
        let fairness = coop_core::fairness::compute(&shares);
        let members = shares
            .members
            .values()
            .map(|m| MemberShare {
                member: m.member.to_string(),
                entitlement: m.entitlement,
                floor_part: m.floor_part,
                contribution_part: m.contribution_part,
                allocated: Some((&m.allocated).into()),
                gpu_share: m.share[0],
                cpu_share: m.share[1],
                memory_share: m.share[2],
                dominant_share: m.dominant_share,
                usage_gpu_seconds: m.usage.gpu,
                usage_cpu_seconds: m.usage.cpu,
                usage_memory_gib_seconds: m.usage.mem,
                usage_share: m.usage_share,
                contribution: m.contribution,
                pending: m.pending as u32,
                running: m.running as u32,
                key: if m.key.is_finite() { m.key } else { f64::MAX },
            })
            .collect();
        Ok(Response::new(ShareResponse {
            pool: Some((&shares.pool).into()),
            members,
            policy_version: applied.state.policy().version,
            jain_index: fairness.jain_index,
            at_ms,
        }))
    }

    async fn list_evaluations(
        &self,
        request: Request<ListEvaluationsRequest>,
    ) -> Result<Response<ListEvaluationsResponse>, Status> {
        via_leader!(self, request, list_evaluations);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let filter = &request.get_ref().dataset;
        let applied = self.shared.node.state_machine().read();
        let boards = applied
            .state
            .leaderboards((!filter.is_empty()).then_some(filter.as_str()));
        Ok(Response::new(ListEvaluationsResponse {
            leaderboards: boards.iter().map(Leaderboard::from).collect(),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<PolicyResponse>, Status> {
        via_leader!(self, request, get_policy);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        Ok(Response::new(PolicyResponse {
            version: applied.state.policy().version,
            toml: applied.state.policy().to_toml(),
            genesis_adopted: applied.state.genesis_adopted(),
        }))
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        via_leader!(self, request, submit);
        let req = request.get_ref();
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("missing job spec"))
            .and_then(|s| {
                coop_core::JobSpec::try_from(s)
                    .map_err(|e| Status::invalid_argument(format!("invalid job: {e}")))
            })?;
        let member = MemberId::new(req.member.clone());
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let env_salt = match req.env_salt.as_slice() {
            [] => None,
            bytes => Some(
                coop_core::EnvSalt::try_from(bytes)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
        };
        let now = self.shared.now_ms();
        // Refuse bad input (and bad signatures) before it reaches the log;
        // apply checks again on every replica (what the public record
        // shows; the env values themselves are checked here).
        spec.validate()
            .map_err(|e| Status::invalid_argument(format!("invalid job: {e}")))?;
        self.shared.precheck(|state| {
            state.check_submit(
                &req.request_id,
                &member,
                &spec,
                env_salt.as_ref(),
                &auth,
                now,
            )
        })?;
        let cmd = Command::Submit {
            request_id: req.request_id.clone(),
            member,
            spec,
            auth,
            now_ms: now,
            env_salt,
        };
        match self.shared.write(cmd).await? {
            Outcome::Submitted { job, existing } => Ok(Response::new(SubmitResponse {
                job_id: job.0,
                existing,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        via_leader!(self, request, get_job);
        let reader = self.reader(&request)?;
        self.shared.read_barrier().await?;
        let id = JobId(request.get_ref().job_id);
        let detail = !request.get_ref().brief;
        let job = if detail {
            // The reasons run the allocator's pass.
            self.on_state(move |state| {
                state
                    .job(id)
                    .map(|job| job_to_proto(state, job, Some(&reader), true))
            })
            .await?
        } else {
            let applied = self.shared.node.state_machine().read();
            let state = &applied.state;
            state
                .job(id)
                .map(|job| job_to_proto(state, job, Some(&reader), false))
        };
        job.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("unknown job {id}")))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        via_leader!(self, request, list_jobs);
        self.reader(&request)?;
        let req = request.get_ref();
        let state_filter = match req.state {
            0 => None,
            s => Some(JobState::from_wire(s).map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let jobs = applied
            .state
            .jobs()
            .values()
            .rev()
            .filter(|j| state_filter.is_none_or(|s| j.state() == s))
            .filter(|j| req.member.is_empty() || j.member.as_str() == req.member)
            .take(limit)
            .map(|j| job_to_proto(&applied.state, j, None, false))
            .collect();
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        via_leader!(self, request, cancel);
        let req = request.get_ref();
        let (job, member) = (JobId(req.job_id), MemberId::new(req.member.clone()));
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        // An unsigned, unknown, foreign or ended job is refused here, not in the log.
        let cmd = if req.array {
            self.shared.precheck(|state| {
                state
                    .check_cancel_array(job, &member, &req.request_id, &auth, now)
                    .map(|_| ())
            })?;
            Command::CancelArray {
                job,
                member,
                request_id: req.request_id.clone(),
                auth,
                now_ms: now,
            }
        } else {
            self.shared
                .precheck(|state| state.check_cancel(job, &member, &req.request_id, &auth, now))?;
            Command::Cancel {
                job,
                member,
                request_id: req.request_id.clone(),
                auth,
                now_ms: now,
            }
        };
        match self.shared.write(cmd).await? {
            Outcome::Cancelled { stopping, .. } => Ok(Response::new(CancelResponse {
                stopping: stopping.is_some(),
                cancelled: 1,
            })),
            Outcome::ArrayCancelled {
                cancelled,
                stopping,
                ..
            } => Ok(Response::new(CancelResponse {
                stopping: !stopping.is_empty(),
                cancelled: cancelled.len() as u32,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogsResponse>, Status> {
        via_leader!(self, request, logs);
        let req = request.get_ref().clone();
        if req.stream != "stdout" && req.stream != "stderr" {
            return Err(Status::invalid_argument("stream must be stdout or stderr"));
        }
        let run = self.last_run(&request, req.job_id, "logs").await?;
        let (member, issued_at_ms, signature) = run.passed_on();
        let reply = self
            .worker(&run)?
            .read_logs(ReadLogsRequest {
                alloc_id: run.alloc.0,
                stream: req.stream,
                offset: req.offset,
                max_bytes: req.max_bytes.clamp(1, MAX_LOG_CHUNK),
                member,
                issued_at_ms,
                signature,
            })
            .await
            .map_err(|s| run.worker_error(s))?
            .into_inner();
        Ok(Response::new(LogsResponse {
            complete: run.ended && !reply.running && reply.data.is_empty(),
            data: reply.data,
            next_offset: reply.next_offset,
        }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        via_leader!(self, request, fetch);
        let req = request.get_ref().clone();
        let run = self.last_run(&request, req.job_id, "files").await?;
        if !run.ended {
            return Err(Status::failed_precondition(format!(
                "job {} has not ended: its files can be fetched once it does (coop logs follows it meanwhile)",
                req.job_id
            )));
        }
        let (member, issued_at_ms, signature) = run.passed_on();
        let reply = self
            .worker(&run)?
            .read_file(ReadFileRequest {
                alloc_id: run.alloc.0,
                path: req.path,
                offset: req.offset,
                max_bytes: req.max_bytes.clamp(1, MAX_LOG_CHUNK),
                member,
                issued_at_ms,
                signature,
            })
            .await
            .map_err(|s| run.worker_error(s))?
            .into_inner();
        Ok(Response::new(FetchResponse {
            data: reply.data,
            next_offset: reply.next_offset,
            size: reply.size,
            files: reply.files,
            node: run.node.to_string(),
            alloc_id: run.alloc.0,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        via_leader!(self, request, list_nodes);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        let nodes = applied.state.nodes().values().map(Node::from).collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        via_leader!(self, request, add_node);
        let req = request.get_ref();
        let (node, member) = (
            coop_core::NodeId::new(req.node_id.clone()),
            MemberId::new(req.member.clone()),
        );
        let key = PublicKey::parse(&req.key)
            .map_err(|e| Status::invalid_argument(format!("node key: {e}")))?;
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared.precheck(|state| {
            state.check_add_node(&node, &member, &key, &req.request_id, &auth, now)
        })?;
        let cmd = Command::AddNode {
            node,
            member,
            key,
            request_id: req.request_id.clone(),
            auth,
            now_ms: now,
        };
        match self.shared.write(cmd).await? {
            Outcome::NodeAdded { owner, .. } => Ok(Response::new(AddNodeResponse {
                owner: owner.to_string(),
            })),
            other => Err(unexpected(other)),
        }
    }

    /// Answered by the replica asked, from its own view: that is the point
    /// of asking several.
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let status = self.shared.node.status();
        let leader_addr = self
            .shared
            .node
            .leader()
            .map(|(_, a)| a)
            .unwrap_or_default();
        let applied = self.shared.node.state_machine().read();
        let state = &applied.state;
        Ok(Response::new(ClusterStatusResponse {
            answered_by: status.id,
            leader_id: status.leader_id,
            leader_addr,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_log_index: status.last_log_index,
            snapshot_index: status.snapshot_index,
            replicas: replicas_to_proto(&status, state),
            jobs: state.jobs().len() as u64,
            pending: state.pending().len() as u64,
            running: state.running_jobs() as u64,
            nodes_ready: state.ready_nodes() as u64,
            state_digest: state.digest(),
            cluster_id: state.cluster_id().to_string(),
            log_size: state.log_size(),
            log_root: hex::encode(state.log_root()),
        }))
    }

    async fn init_cluster(
        &self,
        _request: Request<InitClusterRequest>,
    ) -> Result<Response<InitClusterResponse>, Status> {
        let peers = self
            .shared
            .config
            .peer_map()
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let peers = if peers.is_empty() {
            [(
                self.shared.node.id,
                self.shared.config.advertise_addr().to_string(),
            )]
            .into()
        } else {
            peers
        };
        self.shared
            .node
            .initialize(&peers)
            .await
            .map_err(|e| match e {
                crate::error::StartError::AlreadyInitialized => {
                    Status::already_exists(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
        self.shared
            .node
            .wait_for_leader(std::time::Duration::from_secs(10))
            .await;
        Ok(Response::new(InitClusterResponse {
            replicas: current_replicas(&self.shared),
        }))
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<AddReplicaResponse>, Status> {
        via_leader!(self, request, add_replica);
        let req = request.get_ref();
        let member = MemberId::new(req.member.clone());
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared.precheck(|state| {
            state.check_add_replica(req.id, &req.addr, &member, &req.request_id, &auth, now)
        })?;
        let status = self.shared.node.status();
        if let Some(r) = status.replicas.iter().find(|r| r.id == req.id) {
            return Err(Status::already_exists(format!(
                "replica {} is already a member at {}",
                r.id, r.addr
            )));
        }
        // A voter that cannot be reached would cost the group its quorum:
        // the new replica must answer first, as a replica of this cluster
        // (mutual TLS: its certificate is from the cluster CA).
        let probe = async {
            let channel = self.shared.channel(&req.addr)?;
            CoopClient::new(channel)
                .cluster_status(ClusterStatusRequest {})
                .await
                .map(Response::into_inner)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
            Ok(Ok(s)) if s.answered_by == req.id => {}
            Ok(Ok(s)) => {
                return Err(Status::failed_precondition(format!(
                    "the replica at {} is replica {}, not {}",
                    req.addr, s.answered_by, req.id
                )))
            }
            Ok(Err(e)) => {
                return Err(Status::failed_precondition(format!(
                    "no replica of this cluster answers at {} ({}): start it with a certificate from the cluster CA first",
                    req.addr,
                    e.message()
                )))
            }
            Err(_) => {
                return Err(Status::failed_precondition(format!(
                    "no replica answers at {} within 3 s: start it first",
                    req.addr
                )))
            }
        }
        let cmd = Command::AddReplica {
            id: req.id,
            addr: req.addr.clone(),
            member,
            request_id: req.request_id.clone(),
            auth,
            now_ms: now,
        };
        self.shared.write(cmd).await?;
        self.shared
            .node
            .add_replica(req.id, &req.addr)
            .await
            .map_err(|e| crate::error::write_status(&e))?;
        Ok(Response::new(AddReplicaResponse {
            replicas: current_replicas(&self.shared),
        }))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        via_leader!(self, request, remove_replica);
        let req = request.get_ref();
        let member = MemberId::new(req.member.clone());
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared.precheck(|state| {
            state.check_remove_replica(req.id, &member, &req.request_id, &auth, now)
        })?;
        let status = self.shared.node.status();
        let voters = status.voters();
        let Some(replica) = status.replicas.iter().find(|r| r.id == req.id && r.voter) else {
            return Err(Status::not_found(format!(
                "replica {} is not a voter of this group",
                req.id
            )));
        };
        if voters <= 1 {
            return Err(Status::failed_precondition(
                "the last voter cannot be removed: the group would be gone",
            ));
        }
        let cmd = Command::RemoveReplica {
            id: req.id,
            addr: replica.addr.clone(),
            member,
            request_id: req.request_id.clone(),
            auth,
            now_ms: now,
        };
        self.shared.write(cmd).await?;
        self.shared
            .node
            .remove_replica(req.id)
            .await
            .map_err(|e| crate::error::write_status(&e))?;
        Ok(Response::new(RemoveReplicaResponse {
            replicas: current_replicas(&self.shared),
        }))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        via_leader!(self, request, propose);
        let req = request.get_ref();
        let kind = proposal_kind(req)?;
        let member = MemberId::new(req.member.clone());
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared
            .precheck(|state| state.check_propose(&member, &req.request_id, &kind, &auth, now))?;
        let cmd = Command::Propose {
            member,
            request_id: req.request_id.clone(),
            kind,
            auth,
            now_ms: now,
        };
        match self.shared.write(cmd).await? {
            Outcome::Proposed { proposal, existing } => Ok(Response::new(ProposeResponse {
                proposal_id: proposal,
                existing,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteResponse>, Status> {
        via_leader!(self, request, vote);
        let req = request.get_ref();
        let member = MemberId::new(req.member.clone());
        let auth = signed(req.issued_at_ms, &req.signature)?;
        let now = self.shared.now_ms();
        self.shared.precheck(|state| {
            state.check_vote(
                &member,
                &req.request_id,
                req.proposal_id,
                req.yes,
                &auth,
                now,
            )
        })?;
        let cmd = Command::Vote {
            member,
            request_id: req.request_id.clone(),
            proposal: req.proposal_id,
            yes: req.yes,
            auth,
            now_ms: now,
        };
        match self.shared.write(cmd).await? {
            Outcome::Voted { status, .. } => Ok(Response::new(VoteResponse {
                status: status.as_str().into(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_proposals(
        &self,
        request: Request<ListProposalsRequest>,
    ) -> Result<Response<ListProposalsResponse>, Status> {
        via_leader!(self, request, list_proposals);
        self.reader(&request)?;
        self.shared.read_barrier().await?;
        let applied = self.shared.node.state_machine().read();
        let state = &applied.state;
        let at_ms = self.shared.now_ms().max(state.now_ms());
        let proposals = state
            .proposals()
            .values()
            .rev()
            .map(|p| {
                let tally = state.tally(p);
                let (what_if, would_place, would_preempt) = match &p.kind {
                    coop_core::governance::ProposalKind::Policy { policy }
                        if p.status == coop_core::governance::ProposalStatus::Open =>
                    {
                        let w = state.what_if(policy, at_ms);
                        (
                            w.entitlements
                                .into_iter()
                                .map(|(m, before, after)| WhatIf {
                                    member: m.to_string(),
                                    entitlement_before: before,
                                    entitlement_after: after,
                                })
                                .collect(),
                            w.would_place as u32,
                            w.would_preempt as u32,
                        )
                    }
                    _ => (Vec::new(), 0, 0),
                };
                ProposalInfo {
                    id: p.id,
                    change: p.kind.describe(),
                    proposer: p.proposer.to_string(),
                    created_at_ms: p.created_at_ms,
                    deadline_ms: p.deadline_ms,
                    status: p.status.as_str().into(),
                    outcome: p.outcome.clone(),
                    yes: tally.yes as u32,
                    no: tally.no as u32,
                    eligible: tally.eligible as u32,
                    quorum: tally.quorum(state.policy()) as u32,
                    votes: p
                        .votes
                        .iter()
                        .map(|(m, y)| VoteCast {
                            member: m.to_string(),
                            yes: *y,
                        })
                        .collect(),
                    what_if,
                    would_place,
                    would_preempt,
                    kind: p.kind.name().into(),
                }
            })
            .collect();
        Ok(Response::new(ListProposalsResponse { proposals }))
    }

    /// Public, like the cluster's status: a checkpoint says only how big
    /// the log is and what its root and state digest are, and any member's
    /// CLI must be able to collect the signatures to check its history.
    async fn checkpoints(
        &self,
        _request: Request<CheckpointsRequest>,
    ) -> Result<Response<CheckpointsResponse>, Status> {
        let status = self.shared.node.status();
        let witness = &self.shared.witness;
        Ok(Response::new(CheckpointsResponse {
            signed: witness.signed().into_iter().map(Into::into).collect(),
            conflicts: witness
                .conflicts()
                .into_iter()
                .map(|c| CheckpointConflict {
                    a: Some(c.a.into()),
                    b: Some(c.b.into()),
                })
                .collect(),
            voters: status.voters() as u64,
            answered_by: status.id,
        }))
    }

    async fn consistency_proof(
        &self,
        request: Request<ConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProofResponse>, Status> {
        self.reader(&request)?;
        let req = request.into_inner();
        let size = self.shared.node.state_machine().read().state.log_size();
        if req.from_size > req.to_size || req.to_size > size {
            return Err(Status::invalid_argument(format!(
                "need 0 <= from_size <= to_size <= {size} (this replica's log)"
            )));
        }
        let sm = self.shared.node.state_machine().clone();
        let (from, to) = (req.from_size, req.to_size);
        let reply = tokio::task::spawn_blocking(move || {
            let leaves = sm.journal().leaf_hashes(to)?;
            let from_root = coop_core::merkle::root_of(&leaves[..from as usize]);
            let to_root = coop_core::merkle::root_of(&leaves);
            let proof = coop_core::merkle::consistency_proof(&leaves, from as usize);
            Ok::<_, std::io::Error>(ConsistencyProofResponse {
                proof: proof.iter().map(|h| h.to_vec()).collect(),
                from_root: from_root.to_vec(),
                to_root: to_root.to_vec(),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(reply))
    }

    async fn prove_job(
        &self,
        request: Request<ProveJobRequest>,
    ) -> Result<Response<ProveJobResponse>, Status> {
        self.reader(&request)?;
        let req = request.into_inner();
        let (indices, size) = {
            let applied = self.shared.node.state_machine().read();
            let job = applied
                .state
                .job(JobId(req.job_id))
                .ok_or_else(|| Status::not_found(format!("unknown job {}", req.job_id)))?;
            (job.leaves.clone(), applied.state.log_size())
        };
        let tree_size = if req.tree_size == 0 {
            size
        } else {
            req.tree_size
        };
        if tree_size > size {
            return Err(Status::invalid_argument(format!(
                "tree_size {tree_size} is beyond this replica's log ({size})"
            )));
        }
        let sm = self.shared.node.state_machine().clone();
        let reply = tokio::task::spawn_blocking(move || {
            let hashes = sm.journal().leaf_hashes(tree_size)?;
            let mut leaves = Vec::new();
            for index in indices.into_iter().filter(|i| *i < tree_size) {
                let leaf = sm.journal().leaf(index)?.unwrap_or_default();
                let proof = coop_core::merkle::inclusion_proof(&hashes, index as usize);
                leaves.push(ProvenLeaf {
                    index,
                    leaf,
                    proof: proof.iter().map(|h| h.to_vec()).collect(),
                });
            }
            Ok::<_, std::io::Error>(ProveJobResponse {
                leaves,
                root: coop_core::merkle::root_of(&hashes).to_vec(),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(reply))
    }
}

/// The core change a proposal request names.
fn proposal_kind(req: &ProposeRequest) -> Result<coop_core::governance::ProposalKind, Status> {
    use coop_core::governance::ProposalKind;
    match &req.change {
        Some(propose_request::Change::PolicyToml(text)) => coop_core::Policy::from_toml(text)
            .map(|policy| ProposalKind::Policy { policy })
            .map_err(|e| Status::invalid_argument(e.to_string())),
        Some(propose_request::Change::Admit(a)) => Ok(ProposalKind::Admit {
            member: MemberId::new(a.name.clone()),
            key: PublicKey::parse(&a.key)
                .map_err(|e| Status::invalid_argument(format!("key: {e}")))?,
        }),
        Some(propose_request::Change::Remove(name)) => Ok(ProposalKind::Remove {
            member: MemberId::new(name.clone()),
        }),
        Some(propose_request::Change::Appeal(a)) => Ok(ProposalKind::Appeal {
            job: JobId(a.job_id),
            reason: a.reason.clone(),
        }),
        None => Err(Status::invalid_argument(
            "say what to change: a policy, an admission or a removal",
        )),
    }
}

//! The authorization matrix: every RPC of every service, called by each
//! kind of caller, is allowed or denied as the table says. The table must
//! name every RPC the protos define (`coop_proto::RPCS`): a new RPC
//! without a row fails this test.
//!
//! "Denied" is UNAUTHENTICATED or PERMISSION_DENIED (or, for a certificate
//! the cluster CA did not issue, no connection at all). "Allowed" is any
//! other answer: the caller got past authorization, and the call may still
//! fail for what it asked (an ended job, a stale report, a dead address).

use std::collections::BTreeMap;
use std::process::Stdio;

use coop_core::testkit;
use coop_core::{MemberId, MemberRequest, NodeId, NodeReport, PublicKey};
use coop_e2e::{Proc, StateName};
use coop_proto::api::coop_client::CoopClient;
use coop_proto::api::*;
use coop_proto::raft::raft_transport_client::RaftTransportClient;
use coop_proto::raft::{RaftPayload, SnapshotChunk};
use coop_proto::worker::worker_agent_client::WorkerAgentClient;
use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
use coop_proto::worker::*;
use coop_scheduler::raft::TypeConfig;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use tonic::transport::Channel;
use tonic::Code;

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// ana: the job's member, and owner of node `ana-box` (holds both keys).
    Owner,
    /// bo: another member, with its own node `bo-box`.
    OtherMember,
    /// mallory: a key that is no member's and no node's.
    NonMember,
    /// `bo-box`'s node key, acting on ana's job and node.
    ForeignNode,
    /// TLS, but nothing signed.
    NoCredentials,
    /// A replica certificate from the cluster CA and no member or node key:
    /// what whoever runs a replica holds.
    Replica,
}

const WHO: [Who; 6] = [
    Who::Owner,
    Who::OtherMember,
    Who::NonMember,
    Who::ForeignNode,
    Who::NoCredentials,
    Who::Replica,
];

/// The matrix, one row per RPC, one letter per caller in `WHO` order:
/// A = allowed, D = denied.
const MATRIX: &[(&str, &str)] = &[
    // Transparency: any member reads the pool; nobody else.
    ("coop.api.v1.Coop/Why", "AADDDD"),
    ("coop.api.v1.Coop/Share", "AADDDD"),
    ("coop.api.v1.Coop/GetPolicy", "AADDDD"),
    ("coop.api.v1.Coop/ListEvaluations", "AADDDD"),
    ("coop.api.v1.Coop/GetJob", "AADDDD"),
    ("coop.api.v1.Coop/ListJobs", "AADDDD"),
    ("coop.api.v1.Coop/ListNodes", "AADDDD"),
    ("coop.api.v1.Coop/ListProposals", "AADDDD"),
    // The public record: env values are commitments in it, so any member
    // may replay it.
    ("coop.api.v1.Coop/ExportJournal", "AADDDD"),
    ("coop.api.v1.Coop/ConsistencyProof", "AADDDD"),
    ("coop.api.v1.Coop/ProveJob", "AADDDD"),
    // A job's logs are its member's alone.
    ("coop.api.v1.Coop/Logs", "ADDDDD"),
    ("coop.api.v1.Coop/Fetch", "ADDDDD"),
    // Members act in their own name only.
    ("coop.api.v1.Coop/Submit", "AADDDD"),
    ("coop.api.v1.Coop/Cancel", "ADDDDD"),
    ("coop.api.v1.Coop/AddNode", "ADDDDD"),
    // One member, one vote: any member proposes and votes, in its own name.
    ("coop.api.v1.Coop/Propose", "AADDDD"),
    ("coop.api.v1.Coop/Vote", "AADDDD"),
    ("coop.api.v1.Coop/AddReplica", "AADDDD"),
    ("coop.api.v1.Coop/RemoveReplica", "AADDDD"),
    // Anyone: the cluster id and the Raft view, nothing private.
    ("coop.api.v1.Coop/ClusterStatus", "AAAAAA"),
    // Anyone, like CT's signed tree heads: sizes, roots and digests say
    // nothing private, and replicas collect each other's signatures.
    ("coop.api.v1.Coop/Checkpoints", "AAAAAA"),
    // Anyone, and harmless: it forms the cluster once, from the replica's
    // own configured peers; afterwards it only says so.
    ("coop.api.v1.Coop/InitCluster", "AAAAAA"),
    // A node's calls are its own key's alone.
    ("coop.worker.v1.WorkerGateway/Register", "ADDDDD"),
    ("coop.worker.v1.WorkerGateway/Heartbeat", "ADDDDD"),
    ("coop.worker.v1.WorkerGateway/Assignments", "ADDDDD"),
    ("coop.worker.v1.WorkerGateway/ReportStarted", "ADDDDD"),
    ("coop.worker.v1.WorkerGateway/ReportFinished", "ADDDDD"),
    // The worker serves logs to the job's member's own credential only.
    ("coop.worker.v1.WorkerAgent/ReadLogs", "ADDDDD"),
    ("coop.worker.v1.WorkerAgent/ReadFile", "ADDDDD"),
    // The Raft transport is the replicas' alone.
    ("coop.raft.v1.RaftTransport/AppendEntries", "DDDDDA"),
    ("coop.raft.v1.RaftTransport/Vote", "DDDDDA"),
    ("coop.raft.v1.RaftTransport/InstallSnapshot", "DDDDDA"),
];

/// What the calls need to know about the running cluster.
struct Ctx {
    /// The leader (heartbeats and assignments are served there only).
    leader: String,
    worker_addr: String,
    job: u64,
    alloc: u64,
    /// An open proposal to vote on.
    proposal: u64,
}

fn channel(who: Who, addr: &str) -> Channel {
    match who {
        Who::Replica => coop_e2e::replica_channel(addr),
        _ => coop_e2e::channel(addr),
    }
}

/// The member name a caller signs as, with the key it signs with.
fn member_key(who: Who) -> Option<(&'static str, coop_core::SecretKey)> {
    match who {
        Who::Owner => Some(("ana", testkit::secret("ana"))),
        Who::OtherMember => Some(("bo", testkit::secret("bo"))),
        Who::NonMember => Some(("mallory", testkit::secret("mallory"))),
        Who::ForeignNode => Some(("bo-box", testkit::node_secret("bo-box"))),
        Who::NoCredentials | Who::Replica => None,
    }
}

/// The node key a caller signs node calls for `ana-box` with.
fn node_key(who: Who) -> Option<coop_core::SecretKey> {
    match who {
        Who::Owner => Some(testkit::node_secret("ana-box")),
        Who::OtherMember | Who::ForeignNode => Some(testkit::node_secret("bo-box")),
        Who::NonMember => Some(testkit::node_secret("stray")),
        Who::NoCredentials | Who::Replica => None,
    }
}

/// A read request carrying the caller's read credential, if it has one.
fn read<T>(who: Who, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some((member, key)) = member_key(who) {
        let m = MemberId::new(member);
        let auth = key.sign_read(testkit::CLUSTER, &m, coop_e2e::now_ms());
        coop_proto::read_auth::attach(req.metadata_mut(), &m, &auth);
    }
    req
}

/// Signs a member request as the caller would (or not at all).
fn signed(who: Who, request_id: &str, request: &MemberRequest<'_>) -> (String, u64, Vec<u8>) {
    match member_key(who) {
        Some((member, key)) => {
            let auth = key.sign_request(
                testkit::CLUSTER,
                &MemberId::new(member),
                request_id,
                coop_e2e::now_ms(),
                request,
            );
            (
                member.to_string(),
                auth.issued_at_ms,
                auth.signature.0.to_vec(),
            )
        }
        None => ("ana".into(), coop_e2e::now_ms(), Vec::new()),
    }
}

/// Signs a node report for `ana-box` as the caller would (or not at all).
fn node_signed(who: Who, report: &NodeReport<'_>) -> (u64, Vec<u8>) {
    let now = coop_e2e::now_ms();
    match node_key(who) {
        Some(key) => {
            let auth =
                key.sign_node_report(testkit::CLUSTER, &NodeId::new("ana-box"), 1, now, report);
            (auth.issued_at_ms, auth.signature.0.to_vec())
        }
        None => (now, Vec::new()),
    }
}

fn node_session(who: Who) -> (u64, Vec<u8>) {
    let now = coop_e2e::now_ms();
    match node_key(who) {
        Some(key) => {
            let auth = key.sign_node_session(testkit::CLUSTER, &NodeId::new("ana-box"), 1, now);
            (auth.issued_at_ms, auth.signature.0.to_vec())
        }
        None => (now, Vec::new()),
    }
}

fn raft_payload<T: serde::Serialize>(v: &T) -> RaftPayload {
    RaftPayload {
        data: serde_json::to_vec(v).unwrap(),
    }
}

/// Calls `rpc` as `who`; the answer's status, if it was an error.
async fn call(rpc: &str, who: Who, ctx: &Ctx) -> Result<(), tonic::Status> {
    let coop = || CoopClient::new(channel(who, &ctx.leader));
    let gateway = || WorkerGatewayClient::new(channel(who, &ctx.leader));
    let raft = || RaftTransportClient::new(channel(who, &ctx.leader));
    let unique = format!("{rpc}-{who:?}-{}", coop_e2e::now_ms());
    let ana_box = NodeId::new("ana-box");
    let box_key: PublicKey = testkit::node_secret("ana-box").public_key();
    match rpc {
        "coop.api.v1.Coop/Why" => {
            coop()
                .why(read(who, WhyRequest { job_id: ctx.job }))
                .await?;
        }
        "coop.api.v1.Coop/Share" => {
            coop().share(read(who, ShareRequest {})).await?;
        }
        "coop.api.v1.Coop/GetPolicy" => {
            coop().get_policy(read(who, GetPolicyRequest {})).await?;
        }
        "coop.api.v1.Coop/ListEvaluations" => {
            coop()
                .list_evaluations(read(who, ListEvaluationsRequest::default()))
                .await?;
        }
        "coop.api.v1.Coop/GetJob" => {
            coop()
                .get_job(read(
                    who,
                    GetJobRequest {
                        job_id: ctx.job,
                        brief: false,
                    },
                ))
                .await?;
        }
        "coop.api.v1.Coop/ListJobs" => {
            coop()
                .list_jobs(read(who, ListJobsRequest::default()))
                .await?;
        }
        "coop.api.v1.Coop/ListNodes" => {
            coop().list_nodes(read(who, ListNodesRequest {})).await?;
        }
        "coop.api.v1.Coop/Logs" => {
            let req = LogsRequest {
                job_id: ctx.job,
                stream: "stdout".into(),
                offset: 0,
                max_bytes: 1024,
            };
            coop().logs(read(who, req)).await?;
        }
        "coop.api.v1.Coop/Fetch" => {
            let req = FetchRequest {
                job_id: ctx.job,
                path: String::new(),
                offset: 0,
                max_bytes: 1024,
            };
            coop().fetch(read(who, req)).await?;
        }
        "coop.api.v1.Coop/Submit" => {
            let spec = coop_e2e::small_job();
            let core = coop_core::JobSpec::try_from(&spec).unwrap();
            let (member, issued_at_ms, signature) =
                signed(who, &unique, &MemberRequest::Submit { spec: &core });
            coop()
                .submit(SubmitRequest {
                    member,
                    request_id: unique,
                    spec: Some(spec),
                    issued_at_ms,
                    signature,
                    // No env: signed as it is.
                    env_salt: vec![],
                })
                .await?;
        }
        "coop.api.v1.Coop/Cancel" => {
            let job = coop_core::JobId(ctx.job);
            let (member, issued_at_ms, signature) =
                signed(who, &unique, &MemberRequest::Cancel { job });
            // Signed as itself, for ana's job.
            coop()
                .cancel(CancelRequest {
                    job_id: ctx.job,
                    member,
                    request_id: unique,
                    issued_at_ms,
                    signature,
                    array: false,
                })
                .await?;
        }
        "coop.api.v1.Coop/AddNode" => {
            let (member, issued_at_ms, signature) = signed(
                who,
                &unique,
                &MemberRequest::AddNode {
                    node: &ana_box,
                    key: &box_key,
                },
            );
            coop()
                .add_node(AddNodeRequest {
                    node_id: "ana-box".into(),
                    member,
                    key: box_key.to_string(),
                    request_id: unique,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.api.v1.Coop/AddReplica" => {
            // Nothing answers there: an allowed caller is told so.
            let addr = "127.0.0.1:1";
            let (member, issued_at_ms, signature) =
                signed(who, &unique, &MemberRequest::AddReplica { id: 9, addr });
            coop()
                .add_replica(AddReplicaRequest {
                    id: 9,
                    addr: addr.into(),
                    member,
                    request_id: unique,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.api.v1.Coop/RemoveReplica" => {
            // Replica 9 is no voter: an allowed caller is told so.
            let (member, issued_at_ms, signature) =
                signed(who, &unique, &MemberRequest::RemoveReplica { id: 9 });
            coop()
                .remove_replica(RemoveReplicaRequest {
                    id: 9,
                    member,
                    request_id: unique,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.api.v1.Coop/ExportJournal" => {
            let mut s = coop()
                .export_journal(read(who, ExportJournalRequest { from: 0, to: 5 }))
                .await?
                .into_inner();
            s.message().await?;
        }
        "coop.api.v1.Coop/ConsistencyProof" => {
            coop()
                .consistency_proof(read(
                    who,
                    ConsistencyProofRequest {
                        from_size: 1,
                        to_size: 2,
                    },
                ))
                .await?;
        }
        "coop.api.v1.Coop/ProveJob" => {
            coop()
                .prove_job(read(
                    who,
                    ProveJobRequest {
                        job_id: ctx.job,
                        tree_size: 0,
                    },
                ))
                .await?;
        }
        "coop.api.v1.Coop/ListProposals" => {
            coop()
                .list_proposals(read(who, ListProposalsRequest {}))
                .await?;
        }
        "coop.api.v1.Coop/Propose" => {
            let text = "version = 2\nfloor = 0.6\n";
            let kind = coop_core::governance::ProposalKind::Policy {
                policy: coop_core::Policy::from_toml(text).unwrap(),
            };
            let (member, issued_at_ms, signature) =
                signed(who, &unique, &MemberRequest::Propose { kind: &kind });
            coop()
                .propose(ProposeRequest {
                    member,
                    request_id: unique,
                    issued_at_ms,
                    signature,
                    change: Some(propose_request::Change::PolicyToml(text.into())),
                })
                .await?;
        }
        "coop.api.v1.Coop/Vote" => {
            let (member, issued_at_ms, signature) = signed(
                who,
                &unique,
                &MemberRequest::Vote {
                    proposal: ctx.proposal,
                    yes: true,
                },
            );
            coop()
                .vote(VoteRequest {
                    member,
                    request_id: unique,
                    proposal_id: ctx.proposal,
                    yes: true,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.api.v1.Coop/ClusterStatus" => {
            coop().cluster_status(ClusterStatusRequest {}).await?;
        }
        "coop.api.v1.Coop/Checkpoints" => {
            coop().checkpoints(CheckpointsRequest {}).await?;
        }
        "coop.api.v1.Coop/InitCluster" => {
            coop().init_cluster(InitClusterRequest {}).await?;
        }
        "coop.worker.v1.WorkerGateway/Register" => {
            let capacity = Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                gpus: 0,
            };
            let owner = MemberId::new("ana");
            let addr = "127.0.0.1:1".to_string();
            let (issued_at_ms, signature) = node_signed(
                who,
                &NodeReport::Register {
                    owner: &owner,
                    capacity: &coop_core::Resources::from(&capacity),
                    addr: &addr,
                    gpus: &[],
                    engines: &Default::default(),
                },
            );
            // Incarnation 1 is older than the running worker's: an allowed
            // caller is told it is stale, and the worker keeps its node.
            gateway()
                .register(RegisterRequest {
                    node_id: "ana-box".into(),
                    owner: "ana".into(),
                    capacity: Some(capacity),
                    addr,
                    incarnation: 1,
                    gpus: vec![],
                    engines: None,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.worker.v1.WorkerGateway/Heartbeat" => {
            let (issued_at_ms, signature) = node_session(who);
            gateway()
                .heartbeat(HeartbeatRequest {
                    node_id: "ana-box".into(),
                    incarnation: 1,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.worker.v1.WorkerGateway/Assignments" => {
            let (issued_at_ms, signature) = node_session(who);
            gateway()
                .assignments(AssignmentsRequest {
                    node_id: "ana-box".into(),
                    incarnation: 1,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.worker.v1.WorkerGateway/ReportStarted" => {
            let alloc = coop_core::AllocId(u64::MAX);
            let (issued_at_ms, signature) = node_signed(who, &NodeReport::Started { alloc });
            gateway()
                .report_started(ReportStartedRequest {
                    node_id: "ana-box".into(),
                    alloc_id: alloc.0,
                    incarnation: 1,
                    issued_at_ms,
                    signature,
                })
                .await?;
        }
        "coop.worker.v1.WorkerGateway/ReportFinished" => {
            // For ana's allocation, which already ended: an allowed caller
            // is told the report is stale.
            let alloc = coop_core::AllocId(ctx.alloc);
            let exit = coop_core::ExitStatus {
                code: Some(0),
                signal: None,
                error: String::new(),
            };
            let (issued_at_ms, signature) = node_signed(
                who,
                &NodeReport::Finished {
                    alloc,
                    exit: &exit,
                    result: None,
                },
            );
            gateway()
                .report_finished(ReportFinishedRequest {
                    node_id: "ana-box".into(),
                    alloc_id: alloc.0,
                    exit_code: Some(0),
                    incarnation: 1,
                    issued_at_ms,
                    signature,
                    ..Default::default()
                })
                .await?;
        }
        "coop.worker.v1.WorkerAgent/ReadLogs" | "coop.worker.v1.WorkerAgent/ReadFile" => {
            let (member, issued_at_ms, signature) = match member_key(who) {
                Some((member, key)) => {
                    let auth =
                        key.sign_read(testkit::CLUSTER, &MemberId::new(member), coop_e2e::now_ms());
                    (
                        member.to_string(),
                        auth.issued_at_ms,
                        auth.signature.0.to_vec(),
                    )
                }
                None => (String::new(), 0, Vec::new()),
            };
            let agent = coop_proto::tls::node_channel(
                &ctx.worker_addr,
                testkit::node_secret("ana-box").public_key().0,
            )
            .unwrap();
            let mut agent = WorkerAgentClient::new(agent);
            if rpc.ends_with("ReadLogs") {
                agent
                    .read_logs(ReadLogsRequest {
                        alloc_id: ctx.alloc,
                        stream: "stdout".into(),
                        offset: 0,
                        max_bytes: 1024,
                        member,
                        issued_at_ms,
                        signature,
                    })
                    .await?;
            } else {
                agent
                    .read_file(ReadFileRequest {
                        alloc_id: ctx.alloc,
                        path: "stdout.log".into(),
                        offset: 0,
                        max_bytes: 1024,
                        member,
                        issued_at_ms,
                        signature,
                    })
                    .await?;
            }
        }
        // Harmless Raft messages (term 0 never wins anything; the snapshot
        // does not decode): only who may send them is tested.
        "coop.raft.v1.RaftTransport/AppendEntries" => {
            let rpc = openraft::raft::AppendEntriesRequest::<TypeConfig> {
                vote: VoteOf::<TypeConfig>::new_committed(0, 9),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            };
            raft().append_entries(raft_payload(&rpc)).await?;
        }
        "coop.raft.v1.RaftTransport/Vote" => {
            let rpc = openraft::raft::VoteRequest::<TypeConfig> {
                vote: VoteOf::<TypeConfig>::new(0, 9),
                last_log_id: None,
                leadership_transfer: false,
            };
            raft().vote(raft_payload(&rpc)).await?;
        }
        "coop.raft.v1.RaftTransport/InstallSnapshot" => {
            let header = serde_json::to_vec(&(
                VoteOf::<TypeConfig>::new_committed(0, 9),
                SnapshotMetaOf::<TypeConfig>::default(),
            ))
            .unwrap();
            let chunks = vec![SnapshotChunk {
                header,
                data: b"not a state".to_vec(),
            }];
            raft()
                .install_snapshot(futures::stream::iter(chunks))
                .await?;
        }
        other => panic!("no call for {other}: add one to `call` and a row to MATRIX"),
    }
    Ok(())
}

fn denied(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
}

#[test]
fn the_matrix_has_a_row_for_every_rpc() {
    let rows: BTreeMap<&str, &str> = MATRIX.iter().copied().collect();
    assert_eq!(rows.len(), MATRIX.len(), "an RPC has two rows");
    for rpc in coop_proto::RPCS {
        let row = rows
            .get(rpc)
            .unwrap_or_else(|| panic!("{rpc} has no row in the authorization matrix"));
        assert_eq!(row.len(), WHO.len(), "{rpc}: one letter per caller");
    }
    for rpc in rows.keys() {
        assert!(coop_proto::RPCS.contains(rpc), "{rpc} is not an RPC");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_allows_exactly_whom_the_matrix_says() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 1, |c| c.heartbeat_interval_ms = 100).await;
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "ana", "ana-box").await;
    coop_e2e::add_node(&addrs, "bo", "bo-box").await;
    let _worker = Proc(
        coop_e2e::worker("ana-box", "ana", "2", &addrs, dir.path().join("w"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = coop_e2e::client(&addrs[0]);
    let mut spec = coop_e2e::small_job();
    spec.argv = vec!["echo".into(), "ana's output".into()];
    let job = coop_e2e::submit(&c, coop_e2e::submit_request("ana", "j1", spec))
        .await
        .unwrap();
    let j = coop_e2e::wait_job(&addrs, job, coop_e2e::ended).await;
    assert_eq!(j.state_name(), "succeeded", "{j:?}");
    let worker_addr = c
        .clone()
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == "ana-box")
        .unwrap()
        .addr;
    let ctx = Ctx {
        leader: addrs[0].clone(),
        worker_addr,
        job,
        alloc: j.alloc_id,
        proposal: propose_as_dan(&addrs[0]).await,
    };
    let mut wrong = Vec::new();
    for (rpc, row) in MATRIX {
        for (who, want) in WHO.iter().zip(row.chars()) {
            let got = call(rpc, *who, &ctx).await;
            let allowed = match &got {
                Ok(()) => true,
                Err(s) => !denied(s),
            };
            if allowed != (want == 'A') {
                wrong.push(format!(
                    "{rpc} as {who:?}: wanted {}, got {got:?}",
                    if want == 'A' { "allowed" } else { "denied" }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing the matrix sent changed what ana's job is.
    let after = coop_e2e::job(&addrs, job).await;
    assert_eq!(after.state_name(), "succeeded");
    cluster.stop_all().await;
}

/// Dan proposes a policy change (left open: nobody else votes for it).
async fn propose_as_dan(addr: &str) -> u64 {
    let text = "version = 2\nfloor = 0.4\n";
    let kind = coop_core::governance::ProposalKind::Policy {
        policy: coop_core::Policy::from_toml(text).unwrap(),
    };
    let auth = testkit::secret("dan").sign_request(
        testkit::CLUSTER,
        &MemberId::new("dan"),
        "dan-p",
        coop_e2e::now_ms(),
        &MemberRequest::Propose { kind: &kind },
    );
    coop_e2e::client(addr)
        .propose(ProposeRequest {
            member: "dan".into(),
            request_id: "dan-p".into(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
            change: Some(propose_request::Change::PolicyToml(text.into())),
        })
        .await
        .unwrap()
        .into_inner()
        .proposal_id
}

//! Hostile input from a peer, each once refused: a replica answers with a
//! clear error, stays healthy, and the cluster keeps accepting work.
//! (Issue: "members are keys", the findings that crashed or stalled replicas.)

use coop_e2e::StateName;

use coop_proto::api::{ClusterStatusRequest, Resources};
use coop_proto::raft::raft_transport_client::RaftTransportClient;
use coop_proto::raft::{RaftPayload, SnapshotChunk};
use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
use coop_scheduler::raft::TypeConfig;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::VoteRequest;
use tonic::transport::Channel;

/// Raft messages come from an authenticated peer (a replica certificate):
/// what these tests show is that even such a peer cannot break a replica.
fn peer(addr: &str) -> Channel {
    coop_e2e::replica_channel(addr)
}

fn channel(addr: &str) -> Channel {
    coop_e2e::channel(addr)
}

/// The cluster still commits a write through every replica.
async fn still_serves(addrs: &[String], tag: &str) {
    for (i, addr) in addrs.iter().enumerate() {
        let c = coop_e2e::client(addr);
        let id = coop_e2e::submit(
            &c,
            coop_e2e::submit_request("ana", &format!("{tag}-{i}"), coop_e2e::small_job()),
        )
        .await
        .unwrap_or_else(|s| panic!("replica {addr} stopped serving after {tag}: {s}"));
        assert!(id > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_with_a_huge_term_is_refused_and_nothing_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    for addr in &addrs {
        let rpc: VoteRequest<TypeConfig> = VoteRequest {
            vote: VoteOf::<TypeConfig>::new(u64::MAX, 9),
            last_log_id: None,
            leadership_transfer: true,
        };
        let err = RaftTransportClient::new(peer(addr))
            .vote(RaftPayload {
                data: serde_json::to_vec(&rpc).unwrap(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("term"), "{err}");
    }
    still_serves(&addrs, "after-vote").await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_decode_is_refused_and_the_replica_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    let leader = cluster
        .leader(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let follower = (leader + 1) % addrs.len();
    let header = serde_json::to_vec(&(
        VoteOf::<TypeConfig>::new_committed(1_000, 1),
        SnapshotMetaOf::<TypeConfig>::default(),
    ))
    .unwrap();
    let chunks = vec![SnapshotChunk {
        header,
        data: b"this is not a cluster state".to_vec(),
    }];
    let err = RaftTransportClient::new(peer(&addrs[follower]))
        .install_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("corrupt snapshot"), "{err}");
    still_serves(&addrs, "after-snapshot").await;
    // The follower still applies what the leader commits.
    let status = coop_e2e::client(&addrs[follower])
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.applied_index > 0);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_with_absurd_capacity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    // Properly authorized and signed: the capacity alone is what is refused.
    coop_e2e::add_node(&addrs, "olga", "huge").await;
    let huge = coop_e2e::register_request(
        "huge",
        "huge",
        "olga",
        Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: u32::MAX,
        },
    );
    // A replica that does not know the leader yet answers UNAVAILABLE: retry.
    let err = coop_e2e::retry_unavailable(|| {
        let mut c = WorkerGatewayClient::new(channel(&addrs[0]));
        let huge = huge.clone();
        async move { c.register(huge).await }
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    still_serves(&addrs, "after-register").await;
    cluster.stop_all().await;
}

/// Refusals that can be decided from the applied state cost no log entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_of_unknown_or_foreign_jobs_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    still_serves(&addrs[..1], "own").await;
    let c = coop_e2e::client(&addrs[0]);
    let before = coop_e2e::last_log_index(&addrs[0]).await;
    for job_id in 0..50 {
        let err = c
            .clone()
            .cancel(coop_e2e::cancel_request(
                "ana",
                &format!("c{job_id}"),
                1000 + job_id,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }
    let err = c
        .clone()
        .cancel(coop_e2e::cancel_request("bo", "c-bo", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert_eq!(
        coop_e2e::last_log_index(&addrs[0]).await,
        before,
        "a refused cancel was logged"
    );
    let job = c
        .clone()
        .get_job(coop_proto::api::GetJobRequest {
            job_id: 1,
            brief: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state_name(), "pending");
    cluster.stop_all().await;
}

/// Members are keys: a request in a member's name signed with another key,
/// one from a non-member, and one without a signature are refused with
/// UNAUTHENTICATED by the replica that receives them, before the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_signed_by_the_member_are_refused_before_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    still_serves(&addrs[..1], "first").await;
    let c = coop_e2e::client(&addrs[1]);
    let before = coop_e2e::last_log_index(&addrs[0]).await;
    // Signed by bo, claimed as ana.
    let mut forged = coop_e2e::submit_request("bo", "forged", coop_e2e::small_job());
    forged.member = "ana".into();
    // Signed by a key no member holds.
    let outsider = coop_e2e::submit_request("mallory", "outsider", coop_e2e::small_job());
    // No signature at all.
    let mut unsigned = coop_e2e::submit_request("ana", "unsigned", coop_e2e::small_job());
    unsigned.signature.clear();
    // A genuine request whose spec was changed on the way.
    let mut altered = coop_e2e::submit_request("ana", "altered", coop_e2e::small_job());
    altered.spec.as_mut().unwrap().argv = vec!["rm".into(), "-rf".into(), "/".into()];
    for req in [forged, outsider, unsigned, altered] {
        let err = c.clone().submit(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    }
    let forged_cancel = {
        let mut r = coop_e2e::cancel_request("bo", "c", 1);
        r.member = "ana".into();
        r
    };
    let err = c.clone().cancel(forged_cancel).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(
        coop_e2e::last_log_index(&addrs[0]).await,
        before,
        "a refused request was logged"
    );
    cluster.stop_all().await;
}

/// Reads are for members, and a job's env and logs are its member's alone:
/// no credential, a forged one, or a non-member get UNAUTHENTICATED; another
/// member sees the job without its env values and may not read its logs;
/// lists never carry env values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_authenticated_and_private_data_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    let mut spec = coop_e2e::small_job();
    spec.env.insert("API_TOKEN".into(), "s3cret".into());
    let id = coop_e2e::submit(
        &coop_e2e::client(&addrs[0]),
        coop_e2e::submit_request("ana", "secret-job", spec),
    )
    .await
    .unwrap();
    let get = coop_proto::api::GetJobRequest {
        job_id: id,
        brief: false,
    };
    for anonymous in [
        coop_e2e::client_as(&addrs[1], None),
        coop_e2e::client_as(&addrs[1], Some("mallory")),
    ] {
        let err = anonymous.clone().get_job(get).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        let err = anonymous
            .clone()
            .list_jobs(coop_proto::api::ListJobsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    }
    let env_of = |j: &coop_proto::api::Job| j.spec.clone().unwrap_or_default().env;
    let own = coop_e2e::client_as(&addrs[1], Some("ana"))
        .get_job(get)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        env_of(&own).get("API_TOKEN").map(String::as_str),
        Some("s3cret")
    );
    let other = coop_e2e::client_as(&addrs[1], Some("bo"));
    let seen = other.clone().get_job(get).await.unwrap().into_inner();
    assert!(env_of(&seen).is_empty(), "bo saw ana's env: {seen:?}");
    assert_eq!(seen.member, "ana");
    let listed = coop_e2e::client_as(&addrs[2], Some("ana"))
        .list_jobs(coop_proto::api::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        listed.iter().all(|j| env_of(j).is_empty()),
        "a list carried env values"
    );
    let err = other
        .clone()
        .logs(coop_proto::api::LogsRequest {
            job_id: id,
            stream: "stdout".into(),
            offset: 0,
            max_bytes: 1024,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    cluster.stop_all().await;
}

/// A replica remembers read credentials it verified, but a remembered one
/// still proves only who signed it: the same signature claimed for another
/// member is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_read_credential_cannot_be_claimed_by_another_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    let id = coop_e2e::submit(
        &coop_e2e::client(&addrs[0]),
        coop_e2e::submit_request("ana", "mine", coop_e2e::small_job()),
    )
    .await
    .unwrap();
    let leader = cluster
        .leader(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let plain = coop_e2e::client_as(&addrs[leader], None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let auth = coop_core::testkit::read("ana", now);
    let ask = |member: &str| {
        let mut req = tonic::Request::new(coop_proto::api::GetJobRequest {
            job_id: id,
            brief: false,
        });
        coop_proto::read_auth::attach(req.metadata_mut(), &coop_core::MemberId::new(member), &auth);
        let mut c = plain.clone();
        async move { c.get_job(req).await }
    };
    // Twice as ana: verified, then remembered.
    ask("ana").await.unwrap();
    ask("ana").await.unwrap();
    let err = ask("bo").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    cluster.stop_all().await;
}

/// Workers are their owners' nodes: only a key its owner authorized can
/// register a node, report for it or receive its assignments, and only the
/// owner can authorize it. Every refusal comes before the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_key_its_owner_authorized_acts_as_the_node() {
    use coop_proto::worker::{AssignmentsRequest, HeartbeatRequest, ReportFinishedRequest};
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    still_serves(&addrs[..1], "first").await;
    let gw = || WorkerGatewayClient::new(channel(&addrs[0]));
    let cap = Resources {
        cpu_millis: 4000,
        memory_bytes: 1 << 30,
        gpus: 0,
    };
    let before = coop_e2e::last_log_index(&addrs[0]).await;
    // Nobody authorized "box": its own key does not make it a node.
    let err = gw()
        .register(coop_e2e::register_request("box", "box", "olga", cap))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    coop_e2e::add_node(&addrs, "olga", "box").await;
    let granted = coop_e2e::last_log_index(&addrs[0]).await;
    assert!(granted > before, "the authorization was not logged");
    // Another member cannot take the node over by authorizing its own key.
    let err = coop_e2e::client(&addrs[0])
        .add_node(coop_e2e::add_node_request("bo", "box"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A forger's key cannot register it, nor can it join as another's.
    let err = gw()
        .register(coop_e2e::register_request("box", "forger", "olga", cap))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = gw()
        .register(coop_e2e::register_request("box", "box", "bo", cap))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // No session credential, or a forged one: no heartbeat, no assignments
    // (asked of the leader, which alone serves them).
    let leader = coop_e2e::client(&addrs[0])
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .leader_addr;
    let lgw = || WorkerGatewayClient::new(channel(&leader));
    let err = lgw()
        .heartbeat(HeartbeatRequest {
            node_id: "box".into(),
            incarnation: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let forged = coop_core::testkit::node_secret("forger").sign_node_session(
        coop_core::testkit::CLUSTER,
        &coop_core::NodeId::new("box"),
        1,
        coop_e2e::now_ms(),
    );
    let err = lgw()
        .assignments(AssignmentsRequest {
            node_id: "box".into(),
            incarnation: 1,
            issued_at_ms: forged.issued_at_ms,
            signature: forged.signature.0.to_vec(),
        })
        .await
        .expect_err("a forged session is refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // A report for the node signed by someone else.
    let err = gw()
        .report_finished(ReportFinishedRequest {
            node_id: "box".into(),
            alloc_id: 1,
            exit_code: Some(0),
            incarnation: 1,
            issued_at_ms: forged.issued_at_ms,
            signature: forged.signature.0.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(
        coop_e2e::last_log_index(&addrs[0]).await,
        granted,
        "a refused node request was logged"
    );
    // The node's own key registers it as olga's.
    coop_e2e::retry_unavailable(|| {
        let mut c = gw();
        async move {
            c.register(coop_e2e::register_request("box", "box", "olga", cap))
                .await
        }
    })
    .await
    .unwrap();
    cluster.stop_all().await;
}

/// The replica group is closed: the Raft transport answers only callers
/// with a replica certificate from the cluster CA, a client without one
/// (or speaking plaintext) gets nothing, and a certificate from another CA
/// is refused in the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_transport_is_for_replicas_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |_| {}).await;
    let addrs = cluster.addrs();
    still_serves(&addrs[..1], "first").await;
    let before = coop_e2e::last_log_index(&addrs[0]).await;
    // A harmless vote (term 0 never wins): only who may send it is tested.
    let rpc: VoteRequest<TypeConfig> = VoteRequest {
        vote: VoteOf::<TypeConfig>::new(0, 9),
        last_log_id: None,
        leadership_transfer: false,
    };
    let payload = RaftPayload {
        data: serde_json::to_vec(&rpc).unwrap(),
    };
    // TLS, but no client certificate: a member's client, or anyone.
    let err = RaftTransportClient::new(channel(&addrs[0]))
        .vote(payload.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A replica certificate from another CA does not get through TLS.
    let other = coop_proto::tls::ClusterCa::generate()
        .unwrap()
        .issue_replica()
        .unwrap();
    let foreign = Channel::from_shared(format!("https://{}", addrs[0]))
        .unwrap()
        .tls_config(
            coop_proto::tls::client(&coop_e2e::test_ca().cert_pem).identity(
                tonic::transport::Identity::from_pem(&other.cert_pem, &other.key_pem),
            ),
        )
        .unwrap()
        .connect_lazy();
    let err = RaftTransportClient::new(foreign)
        .vote(payload.clone())
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok, "{err}");
    // Plaintext to the TLS port: nothing is served.
    let plain = Channel::from_shared(format!("http://{}", addrs[0]))
        .unwrap()
        .connect_lazy();
    assert!(RaftTransportClient::new(plain).vote(payload).await.is_err());
    // A client cannot pose as a replica by marking its call forwarded: the
    // mark is ignored and the call is served (or forwarded) as any other.
    let follower = cluster
        .replicas
        .iter()
        .flatten()
        .find(|r| !r.node.is_leader())
        .unwrap()
        .addr
        .clone();
    let mut req = tonic::Request::new(coop_proto::api::ListNodesRequest {});
    req.metadata_mut().insert(
        "coop-forwarded",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let auth = coop_core::testkit::read("ana", coop_e2e::now_ms());
    coop_proto::read_auth::attach(req.metadata_mut(), &coop_core::MemberId::new("ana"), &auth);
    coop_proto::api::coop_client::CoopClient::new(channel(&follower))
        .list_nodes(req)
        .await
        .expect("a forwarded mark from a client is ignored, not obeyed");
    assert_eq!(coop_e2e::last_log_index(&addrs[0]).await, before);
    cluster.stop_all().await;
}

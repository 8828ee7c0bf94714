//! Raft server side: the tonic service peers call. Every message is checked
//! before openraft sees it, so that no peer can make a replica panic or stop:
//! terms beyond any real cluster's are refused, the leadership-transfer flag
//! (which overrides the leader lease, and which Coop never uses) is cleared,
//! and a snapshot is size-checked while it streams and decoded before it is
//! installed.

use coop_proto::raft::raft_transport_server::RaftTransport;
use coop_proto::raft::{RaftPayload, SnapshotChunk};
use futures::StreamExt;
use openraft::errors::RaftError;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::{Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// The largest term accepted from a peer. At ten elections a second a
/// cluster needs 900,000 years to reach it; a term near `u64::MAX` would
/// overflow openraft's `term + 1` and stop every replica.
pub const MAX_TERM: u64 = 1 << 48;

/// The largest snapshot accepted: far above the state of a million pending
/// jobs (about 0.5 GB), far below what would exhaust a replica's memory.
pub const MAX_SNAPSHOT_BYTES: usize = 4 << 30;

/// Refuses any `term` in a message above `MAX_TERM`, wherever openraft's
/// serde shape puts it (votes, leader ids, log ids). A scan of the raw JSON
/// for the key, not a second parse: AppendEntries is the hot path. Inside a
/// JSON string every quote is escaped, so `"term":` only ever matches a key.
fn check_terms(bytes: &[u8]) -> Result<(), Status> {
    const KEY: &[u8] = b"\"term\":";
    let mut rest = bytes;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let digits = rest
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .take_while(|b| b.is_ascii_digit())
            .count();
        let start = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let text = std::str::from_utf8(&rest[start..start + digits]).unwrap_or("");
        if text.parse::<u64>().map_or(true, |t| t > MAX_TERM) {
            return Err(Status::invalid_argument(format!(
                "raft message with term {text:?}: terms above {MAX_TERM} are refused"
            )));
        }
    }
    Ok(())
}

pub struct RaftTransportService {
    raft: Raft,
    /// Whether callers must be replicas (a client certificate from the
    /// cluster CA): always, except in plaintext experiments.
    replicas_only: bool,
}

impl RaftTransportService {
    pub fn new(raft: Raft, replicas_only: bool) -> Self {
        Self {
            raft,
            replicas_only,
        }
    }

    /// The Raft transport is the replicas' alone: a caller without a
    /// replica certificate is refused before anything is read.
    fn check_peer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.replicas_only && !coop_proto::tls::from_replica(request) {
            return Err(Status::permission_denied(
                "the Raft transport is for replicas: present a certificate from the cluster CA",
            ));
        }
        Ok(())
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    check_terms(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_peer(&request)?;
        let rpc = parse(&request.into_inner().data)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_peer(&request)?;
        let mut rpc: openraft::raft::VoteRequest<TypeConfig> = parse(&request.into_inner().data)?;
        // Coop never transfers leadership, so no candidate may claim the
        // current leader's authorization to override its lease.
        rpc.leadership_transfer = false;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_peer(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = parse(&first.header)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?.data;
            if data.len() + chunk.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {MAX_SNAPSHOT_BYTES} bytes refused"
                )));
            }
            data.extend_from_slice(&chunk);
        }
        // A snapshot openraft cannot install would stop this replica's Raft:
        // refuse one whose state does not decode before openraft sees it.
        coop_core::ClusterState::from_snapshot_bytes(&data)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        let result: Result<_, RaftError<TypeConfig>> = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(RaftError::Fatal);
        reply(&result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_bounded_wherever_they_appear() {
        assert!(check_terms(br#"{"vote":{"leader_id":{"term":5,"node_id":1}}}"#).is_ok());
        assert!(check_terms(br#"{"a":[{"term": 7}],"b":{"term":281474976710656}}"#).is_ok());
        let huge = format!(
            r#"{{"vote":{{"leader_id":{{"term":{},"node_id":1}}}}}}"#,
            u64::MAX
        );
        assert!(check_terms(huge.as_bytes()).is_err());
        assert!(check_terms(br#"{"x":{"term":281474976710657}}"#).is_err());
        assert!(check_terms(br#"{"x":{"term":"5"}}"#).is_err());
        // Inside a string the quote is escaped: not a key.
        assert!(check_terms(br#"{"argv":["\"term\":99999999999999999999"]}"#).is_ok());
    }
}

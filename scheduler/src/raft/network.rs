//! Raft client side: sends openraft's messages to peers over tonic.

use std::future::Future;
use std::time::Duration;

use coop_proto::raft::raft_transport_client::RaftTransportClient;
use coop_proto::raft::{RaftPayload, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig};

use super::{Snapshot, SnapshotData, TypeConfig, Vote};

/// Bytes per snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// The most entry bytes one AppendEntries carries: openraft bounds a batch
/// in entries only, and a batch of large specs (JSON escaping can make a
/// 64 KiB spec several times larger) would pass the 16 MiB message limit
/// and fail the same way forever. A larger batch is sent as several
/// consecutive messages instead.
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// Splits an AppendEntries whose entries pass `max` encoded bytes into
/// consecutive requests, each continuing from the last entry of the one
/// before and committing no further than its own last entry.
pub fn split_append(
    rpc: AppendEntriesRequest<TypeConfig>,
    sizes: &[usize],
    max: usize,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let mut out = Vec::new();
    let mut prev = rpc.prev_log_id;
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    let finish =
        |chunk: Vec<_>, prev: Option<_>, out: &mut Vec<AppendEntriesRequest<TypeConfig>>| {
            let last = chunk.last().map(|e: &super::Entry| e.log_id);
            out.push(AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: prev,
                leader_commit: std::cmp::min(rpc.leader_commit, last),
                entries: chunk,
            });
            last
        };
    for (entry, size) in rpc.entries.into_iter().zip(sizes.iter().copied()) {
        if !chunk.is_empty() && chunk_bytes + size > max {
            prev = finish(std::mem::take(&mut chunk), prev, &mut out);
            chunk_bytes = 0;
        }
        chunk_bytes += size;
        chunk.push(entry);
    }
    finish(chunk, prev, &mut out);
    out
}

/// Creates one connection per peer: mutual TLS with this replica's
/// certificate when the cluster has TLS (it always does outside plaintext
/// experiments).
#[derive(Clone, Default)]
pub struct Network {
    pub tls: Option<ClientTlsConfig>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerConn {
            target,
            client: connect_lazy(&node.addr, self.tls.clone()),
        }
    }
}

pub(crate) fn connect_lazy(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Option<RaftTransportClient<Channel>> {
    let endpoint = crate::shared::endpoint(addr, tls)
        .ok()?
        .connect_timeout(Duration::from_secs(1));
    Some(
        RaftTransportClient::new(coop_proto::net::lazy_channel(endpoint))
            .max_decoding_message_size(coop_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(coop_proto::MAX_MESSAGE_BYTES),
    )
}

pub struct PeerConn {
    target: u64,
    client: Option<RaftTransportClient<Channel>>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    serde_json::to_vec(v).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn status_err(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerConn {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "bad address for replica {}",
                self.target
            )))
        })
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        self.call_encoded(encode(req)?, ttl, f).await
    }

    async fn call_encoded<Resp, F, Fut>(
        &self,
        data: Vec<u8>,
        ttl: Duration,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let payload = RaftPayload { data };
        let fut = f(self.client()?, payload);
        let reply = tokio::time::timeout(ttl, fut)
            .await
            .map_err(|_| {
                RPCError::Unreachable(Unreachable::from_string(format!(
                    "replica {} timed out",
                    self.target
                )))
            })?
            .map_err(status_err)?;
        // The peer answers Result<T, RaftError>; a RaftError there is fatal on
        // the peer (it stopped), which to us means it cannot be reached.
        let result: Result<Resp, openraft::errors::RaftError<TypeConfig>> =
            decode(&reply.into_inner().data)?;
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // The common case costs nothing extra: only a batch whose encoding
        // is too large is measured entry by entry and split.
        let encoded = encode(&rpc)?;
        if encoded.len() <= MAX_APPEND_BYTES || rpc.entries.len() < 2 {
            return self
                .call_encoded(encoded, option.soft_ttl(), |mut c, p| async move {
                    c.append_entries(p).await
                })
                .await;
        }
        let sizes: Vec<usize> = rpc
            .entries
            .iter()
            .map(|e| encode(e).map(|b| b.len()))
            .collect::<Result<_, _>>()?;
        for part in split_append(rpc, &sizes, MAX_APPEND_BYTES) {
            let reply = self
                .call(&part, option.soft_ttl(), |mut c, p| async move {
                    c.append_entries(p).await
                })
                .await?;
            if !matches!(reply, AppendEntriesResponse::Success) {
                return Ok(reply);
            }
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = encode(&(vote, snapshot.meta.clone()))?;
        let data = snapshot.snapshot.into_inner();
        let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK + 1);
        chunks.push(SnapshotChunk {
            header,
            data: Vec::new(),
        });
        for piece in data.chunks(SNAPSHOT_CHUNK) {
            chunks.push(SnapshotChunk {
                header: Vec::new(),
                data: piece.to_vec(),
            });
        }
        let mut client = self.client()?;
        let send = async move { client.install_snapshot(tokio_stream::iter(chunks)).await };
        tokio::pin!(cancel);
        let reply = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply.map_err(status_err)?,
        };
        let result: Result<SnapshotResponse<TypeConfig>, openraft::errors::RaftError<TypeConfig>> =
            decode(&reply.into_inner().data)?;
        result.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coop_core::Command;
    use openraft::EntryPayload;

    fn entry(index: u64) -> super::super::Entry {
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(super::super::Request(Command::Schedule {
                now_ms: index,
            })),
        }
    }

    #[test]
    fn a_large_batch_is_split_into_consecutive_messages() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::alias::VoteOf::<TypeConfig>::new_committed(1, 1),
            prev_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 9)),
            entries: (10..15).map(entry).collect(),
            leader_commit: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 14)),
        };
        // Sizes 3, 3, 3, 3, 3 with a bound of 7: chunks of 2, 2 and 1 entries.
        let parts = split_append(rpc, &[3; 5], 7);
        let shape: Vec<(Option<u64>, Vec<u64>, Option<u64>)> = parts
            .iter()
            .map(|p| {
                (
                    p.prev_log_id.map(|l| l.index),
                    p.entries.iter().map(|e| e.log_id.index).collect(),
                    p.leader_commit.map(|l| l.index),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some(9), vec![10, 11], Some(11)),
                (Some(11), vec![12, 13], Some(13)),
                (Some(13), vec![14], Some(14)),
            ]
        );
    }
}

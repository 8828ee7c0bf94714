//! Members are keys. Every state-changing member request carries an
//! Ed25519 signature over a canonical message, and `apply` on every replica
//! verifies it against the member's registered key, so neither a client
//! nor whoever runs a replica can act in a member's name.
//!
//! ```text
//!  message = "coop/v1/member-request\0"           domain separation
//!            || u32be(len) cluster_id               one cluster's signature is worthless in another
//!            || u32be(len) member
//!            || u32be(len) request_id               the dedup key: a replay is the same request
//!            || u64be issued_at_ms                  refused outside MAX_CLOCK_SKEW_MS of the log's now
//!            || sha256(payload JSON)                what is asked: coop-core's serde JSON of the payload
//! ```
//!
//! Verification is strict (RFC 8032 with the checks of `verify_strict`:
//! no small-order keys, canonical `S`), so every replica and auditor reaches
//! the same verdict. Signing is here too (pure arithmetic on the caller's
//! secret key); generating keys, which needs randomness, is left to the CLI.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::ExitStatus;
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::JobSpec;
use crate::node::GpuInfo;
use crate::resources::Resources;
use crate::result::JobResult;

/// Domain-separation tag of member requests.
pub const REQUEST_DOMAIN: &[u8] = b"coop/v1/member-request\0";

/// Domain-separation tag of authenticated reads.
pub const READ_DOMAIN: &[u8] = b"coop/v1/member-read\0";

/// Domain-separation tag of what a node reports into the log (its
/// registration, an allocation started, an allocation finished).
pub const NODE_REPORT_DOMAIN: &[u8] = b"coop/v1/node-report\0";

/// Domain-separation tag of a node's session credential (heartbeats and
/// the assignment stream, which never enter the log).
pub const NODE_SESSION_DOMAIN: &[u8] = b"coop/v1/node-session\0";

/// How far a request's issued-at may be from the log's `now`, either way.
/// Together with request-id dedup this refuses replays: a request older
/// than this is refused, and a younger one is deduplicated.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a signed request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthError {
    #[error("{member} is not a member of this cooperative")]
    UnknownMember { member: MemberId },
    #[error("the signature does not verify against {member}'s key")]
    BadSignature { member: MemberId },
    #[error("the request was issued at {issued_at_ms} ms, more than {MAX_CLOCK_SKEW_MS} ms from the cluster's time {now_ms} ms: check your clock and send it again")]
    Stale { issued_at_ms: u64, now_ms: u64 },
    #[error("node {node} is not authorized: its owner adds it with `coop node add {node} --key <its node key>`")]
    UnknownNode { node: NodeId },
    #[error("the signature does not verify against node {node}'s authorized key")]
    BadNodeSignature { node: NodeId },
    #[error("not a valid Ed25519 public key: {reason}")]
    BadKey { reason: String },
}

/// An Ed25519 public key, shown and stored as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses 64 hex digits and checks the point is a usable key.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let bytes = hex::decode(text.trim()).map_err(|e| AuthError::BadKey {
            reason: e.to_string(),
        })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| AuthError::BadKey {
            reason: "a public key is 32 bytes (64 hex digits)".into(),
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| AuthError::BadKey {
            reason: e.to_string(),
        })?;
        if key.is_weak() {
            return Err(AuthError::BadKey {
                reason: "a small-order point is not a key".into(),
            });
        }
        Ok(Self(bytes))
    }

    fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signature, stored as 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))?;
        Ok(Self(bytes))
    }
}

impl TryFrom<&[u8]> for Signature {
    type Error = AuthError;

    fn try_from(bytes: &[u8]) -> Result<Self, AuthError> {
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| AuthError::BadKey {
            reason: "a signature is 64 bytes".into(),
        })?;
        Ok(Self(bytes))
    }
}

/// What a member asks for: the payload its signature covers. It borrows
/// what it names: it exists only to be hashed, on the hot path of every
/// submit, and serializes exactly as the owned values would.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum MemberRequest<'a> {
    Submit {
        spec: &'a JobSpec,
    },
    Cancel {
        job: JobId,
    },
    /// Every unfinished job of the array `job` belongs to.
    CancelArray {
        job: JobId,
    },
    /// The member authorizes a node of its own to join with this key.
    AddNode {
        node: &'a NodeId,
        key: &'a PublicKey,
    },
    /// The member adds a replica (which must hold a certificate from the
    /// cluster CA) to the replica group.
    AddReplica {
        id: u64,
        addr: &'a str,
    },
    /// The member removes a replica from the replica group.
    RemoveReplica {
        id: u64,
    },
    /// The member proposes a change.
    Propose {
        kind: &'a crate::governance::ProposalKind,
    },
    /// The member votes on a proposal.
    Vote {
        proposal: u64,
        yes: bool,
    },
}

/// What a node reports into the log, signed with its node key: the payload
/// of `node_report_message`. Like `MemberRequest` it borrows what it names.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum NodeReport<'a> {
    Register {
        owner: &'a MemberId,
        capacity: &'a Resources,
        addr: &'a str,
        gpus: &'a [GpuInfo],
        /// Omitted from the signed bytes when the worker has only tract.
        #[serde(skip_serializing_if = "crate::node::NodeEngines::is_none")]
        engines: &'a crate::node::NodeEngines,
    },
    Started {
        alloc: AllocId,
    },
    Finished {
        alloc: AllocId,
        exit: &'a ExitStatus,
        result: Option<&'a JobResult>,
    },
}

impl NodeReport<'_> {
    /// SHA-256 of the payload as coop-core serializes it.
    pub fn hash(&self) -> [u8; 32] {
        let bytes = serde_json::to_vec(self).expect("a node report always serializes");
        Sha256::digest(bytes).into()
    }
}

impl MemberRequest<'_> {
    /// SHA-256 of the payload as coop-core serializes it (struct fields in
    /// declaration order, maps sorted, no whitespace).
    pub fn hash(&self) -> [u8; 32] {
        let bytes = serde_json::to_vec(self).expect("a member request always serializes");
        Sha256::digest(bytes).into()
    }
}

/// The signature and the time it claims, carried next to the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub issued_at_ms: u64,
    pub signature: Signature,
}

/// The exact bytes a member signs (see the module docs).
pub fn request_message(
    cluster_id: &str,
    member: &MemberId,
    request_id: &str,
    issued_at_ms: u64,
    payload_hash: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_DOMAIN.len() + 128);
    m.extend_from_slice(REQUEST_DOMAIN);
    for part in [cluster_id, member.as_str(), request_id] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&issued_at_ms.to_be_bytes());
    m.extend_from_slice(payload_hash);
    m
}

/// The bytes a member signs to read: a short-lived credential (valid while
/// its issued-at is within `MAX_CLOCK_SKEW_MS` of the replica's clock) that
/// says who asks, so a replica can answer with what that member may see.
pub fn read_message(cluster_id: &str, member: &MemberId, issued_at_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(READ_DOMAIN.len() + 64);
    m.extend_from_slice(READ_DOMAIN);
    for part in [cluster_id, member.as_str()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&issued_at_ms.to_be_bytes());
    m
}

/// The bytes a node signs to report (see `NodeReport`): like a member
/// request, but the node and its incarnation (the worker process) in place
/// of the member and the request id; the allocation ids the reports name
/// are the fencing tokens that make a replay harmless.
pub fn node_report_message(
    cluster_id: &str,
    node: &NodeId,
    incarnation: u64,
    issued_at_ms: u64,
    payload_hash: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NODE_REPORT_DOMAIN.len() + 128);
    m.extend_from_slice(NODE_REPORT_DOMAIN);
    for part in [cluster_id, node.as_str()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&incarnation.to_be_bytes());
    m.extend_from_slice(&issued_at_ms.to_be_bytes());
    m.extend_from_slice(payload_hash);
    m
}

/// The bytes a node signs for a session credential: who it is, which
/// process, and when (valid within `MAX_CLOCK_SKEW_MS`).
pub fn node_session_message(
    cluster_id: &str,
    node: &NodeId,
    incarnation: u64,
    issued_at_ms: u64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NODE_SESSION_DOMAIN.len() + 64);
    m.extend_from_slice(NODE_SESSION_DOMAIN);
    for part in [cluster_id, node.as_str()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&incarnation.to_be_bytes());
    m.extend_from_slice(&issued_at_ms.to_be_bytes());
    m
}

/// A member's secret key, held by its CLI (never by the cluster).
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs a member request for `cluster_id`.
    pub fn sign_request(
        &self,
        cluster_id: &str,
        member: &MemberId,
        request_id: &str,
        issued_at_ms: u64,
        request: &MemberRequest<'_>,
    ) -> Auth {
        let message = request_message(
            cluster_id,
            member,
            request_id,
            issued_at_ms,
            &request.hash(),
        );
        self.sign(&message, issued_at_ms)
    }
}

impl SecretKey {
    /// Signs a node's report (this key is the node key).
    pub fn sign_node_report(
        &self,
        cluster_id: &str,
        node: &NodeId,
        incarnation: u64,
        issued_at_ms: u64,
        report: &NodeReport<'_>,
    ) -> Auth {
        let message =
            node_report_message(cluster_id, node, incarnation, issued_at_ms, &report.hash());
        self.sign(&message, issued_at_ms)
    }

    /// Signs a node's session credential (this key is the node key).
    pub fn sign_node_session(
        &self,
        cluster_id: &str,
        node: &NodeId,
        incarnation: u64,
        issued_at_ms: u64,
    ) -> Auth {
        let message = node_session_message(cluster_id, node, incarnation, issued_at_ms);
        self.sign(&message, issued_at_ms)
    }

    fn sign(&self, message: &[u8], issued_at_ms: u64) -> Auth {
        Auth {
            issued_at_ms,
            signature: Signature(self.0.sign(message).to_bytes()),
        }
    }

    /// Signs a read credential for `cluster_id`.
    pub fn sign_read(&self, cluster_id: &str, member: &MemberId, issued_at_ms: u64) -> Auth {
        let message = read_message(cluster_id, member, issued_at_ms);
        self.sign(&message, issued_at_ms)
    }
}

/// Checks a read credential against the member's key and the replica's time.
pub fn verify_read(
    key: &PublicKey,
    cluster_id: &str,
    member: &MemberId,
    auth: &Auth,
    now_ms: u64,
) -> Result<(), AuthError> {
    let message = read_message(cluster_id, member, auth.issued_at_ms);
    verify_signed(key, member, &message, auth, now_ms)
}

/// Checks a signed request against the member's key and the log's time.
pub fn verify_request(
    key: &PublicKey,
    cluster_id: &str,
    member: &MemberId,
    request_id: &str,
    auth: &Auth,
    request: &MemberRequest<'_>,
    now_ms: u64,
) -> Result<(), AuthError> {
    let message = request_message(
        cluster_id,
        member,
        request_id,
        auth.issued_at_ms,
        &request.hash(),
    );
    verify_signed(key, member, &message, auth, now_ms)
}

/// Checks a node's signed report against its authorized key and the log's time.
pub fn verify_node_report(
    key: &PublicKey,
    cluster_id: &str,
    node: &NodeId,
    incarnation: u64,
    auth: &Auth,
    report: &NodeReport<'_>,
    now_ms: u64,
) -> Result<(), AuthError> {
    let message = node_report_message(
        cluster_id,
        node,
        incarnation,
        auth.issued_at_ms,
        &report.hash(),
    );
    check_signature(key, &message, auth, || AuthError::BadNodeSignature {
        node: node.clone(),
    })?;
    check_window(auth, now_ms)
}

/// Checks a node's session credential against its key and the replica's clock.
pub fn verify_node_session(
    key: &PublicKey,
    cluster_id: &str,
    node: &NodeId,
    incarnation: u64,
    auth: &Auth,
    now_ms: u64,
) -> Result<(), AuthError> {
    let message = node_session_message(cluster_id, node, incarnation, auth.issued_at_ms);
    check_signature(key, &message, auth, || AuthError::BadNodeSignature {
        node: node.clone(),
    })?;
    check_window(auth, now_ms)
}

/// Strict Ed25519 verification of `message`, then the issued-at window.
fn verify_signed(
    key: &PublicKey,
    member: &MemberId,
    message: &[u8],
    auth: &Auth,
    now_ms: u64,
) -> Result<(), AuthError> {
    check_signature(key, message, auth, || AuthError::BadSignature {
        member: member.clone(),
    })?;
    check_window(auth, now_ms)
}

fn check_signature(
    key: &PublicKey,
    message: &[u8],
    auth: &Auth,
    bad: impl Fn() -> AuthError,
) -> Result<(), AuthError> {
    let verifying = key.verifying_key().ok_or_else(&bad)?;
    let signature = ed25519_dalek::Signature::from_bytes(&auth.signature.0);
    verifying
        .verify_strict(message, &signature)
        .map_err(|_| bad())
}

fn check_window(auth: &Auth, now_ms: u64) -> Result<(), AuthError> {
    if auth.issued_at_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
        return Err(AuthError::Stale {
            issued_at_ms: auth.issued_at_ms,
            now_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_verifies_only_for_what_was_signed() {
        let ana = MemberId::new("ana");
        let req = MemberRequest::Cancel { job: JobId(7) };
        let auth = key(1).sign_request("c1", &ana, "r1", 1_000, &req);
        let pk = key(1).public_key();
        assert_eq!(
            verify_request(&pk, "c1", &ana, "r1", &auth, &req, 1_000),
            Ok(())
        );
        let bad = Err(AuthError::BadSignature {
            member: ana.clone(),
        });
        // Another cluster, request id, payload, time or key: refused.
        assert_eq!(
            verify_request(&pk, "c2", &ana, "r1", &auth, &req, 1_000),
            bad
        );
        assert_eq!(
            verify_request(&pk, "c1", &ana, "r2", &auth, &req, 1_000),
            bad
        );
        let other = MemberRequest::Cancel { job: JobId(8) };
        assert_eq!(
            verify_request(&pk, "c1", &ana, "r1", &auth, &other, 1_000),
            bad
        );
        let mut moved = auth.clone();
        moved.issued_at_ms += 1;
        assert_eq!(
            verify_request(&pk, "c1", &ana, "r1", &moved, &req, 1_000),
            bad
        );
        let bo = key(2).public_key();
        assert_eq!(
            verify_request(&bo, "c1", &ana, "r1", &auth, &req, 1_000),
            bad
        );
        // Too far from the log's time.
        assert!(matches!(
            verify_request(
                &pk,
                "c1",
                &ana,
                "r1",
                &auth,
                &req,
                1_000 + MAX_CLOCK_SKEW_MS + 1
            ),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn a_read_credential_is_not_a_request_signature() {
        let ana = MemberId::new("ana");
        let read = key(1).sign_read("c1", &ana, 1_000);
        let pk = key(1).public_key();
        assert_eq!(verify_read(&pk, "c1", &ana, &read, 1_000), Ok(()));
        assert!(verify_read(&pk, "c2", &ana, &read, 1_000).is_err());
        assert!(verify_read(&key(2).public_key(), "c1", &ana, &read, 1_000).is_err());
        // Domain separation: a read credential never passes as a request.
        let req = MemberRequest::Cancel { job: JobId(1) };
        assert!(verify_request(&pk, "c1", &ana, "", &read, &req, 1_000).is_err());
    }

    #[test]
    fn keys_round_trip_as_hex_and_weak_keys_are_refused() {
        let pk = key(3).public_key();
        assert_eq!(PublicKey::parse(&pk.to_string()), Ok(pk));
        assert!(PublicKey::parse("abcd").is_err());
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::parse(&hex::encode(identity)).is_err());
    }
}

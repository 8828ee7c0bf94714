//! Authenticated reads: a member's read credential travels in gRPC metadata
//! (`coop-member`, `coop-issued-at`, `coop-read-signature`), so every read
//! RPC carries it without a field of its own. The replica that answers
//! checks it against the member's key and answers with what that member
//! may see.

use coop_core::{Auth, MemberId, Signature};
use tonic::metadata::{MetadataMap, MetadataValue};

pub const MEMBER: &str = "coop-member";
pub const ISSUED_AT: &str = "coop-issued-at";
pub const SIGNATURE: &str = "coop-read-signature";

/// Puts a read credential on a request.
pub fn attach(meta: &mut MetadataMap, member: &MemberId, auth: &Auth) {
    let pairs = [
        (MEMBER, member.to_string()),
        (ISSUED_AT, auth.issued_at_ms.to_string()),
        (SIGNATURE, hex::encode(auth.signature.0)),
    ];
    for (key, value) in pairs {
        if let Ok(v) = MetadataValue::try_from(value.as_str()) {
            meta.insert(key, v);
        }
    }
}

/// The read credential a request carries, if it carries a well-formed one.
pub fn credential(meta: &MetadataMap) -> Option<(MemberId, Auth)> {
    let get = |k: &str| meta.get(k).and_then(|v| v.to_str().ok());
    let member = MemberId::new(get(MEMBER)?);
    let issued_at_ms = get(ISSUED_AT)?.parse().ok()?;
    let bytes = hex::decode(get(SIGNATURE)?).ok()?;
    let signature = Signature::try_from(bytes.as_slice()).ok()?;
    Some((
        member,
        Auth {
            issued_at_ms,
            signature,
        },
    ))
}

/// Copies a read credential from one request's metadata to another's (a
/// replica forwarding a read to the leader).
pub fn copy(from: &MetadataMap, to: &mut MetadataMap) {
    for key in [MEMBER, ISSUED_AT, SIGNATURE] {
        if let Some(v) = from.get(key) {
            to.insert(key, v.clone());
        }
    }
}

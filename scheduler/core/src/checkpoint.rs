//! Checkpoints: replicas' signed statements of the decision log's head,
//! the signed tree heads of Certificate Transparency (RFC 9162 §4.10).
//!
//! ```text
//!  log:      ... ─ Checkpoint{now} ─ ...        the leader proposes one at an interval
//!  replica:  after applying it, signs Head{cluster, size, root, state digest,
//!            policy version, at}                every replica signs the same head
//!  valid:    one head signed by a majority of the replicas (distinct keys)
//!  evidence: two heads of one size, each validly signed: a forked history
//! ```
//!
//! The `Checkpoint` command makes every replica sign at the same size, so
//! their signatures can be counted together. What vouches for a replica's
//! key (its certificate from the cluster CA) is checked outside the core.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::identity::{PublicKey, SecretKey, Signature};
use crate::state::ClusterState;

/// What a checkpoint signature covers, so it is never taken for another kind.
pub const CHECKPOINT_DOMAIN: &[u8] = b"coop/v1/checkpoint\0";

/// The decision log's head at one size, with the state it produced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Head {
    pub cluster_id: String,
    pub size: u64,
    /// The Merkle root, hex.
    pub root: String,
    /// `ClusterState::digest` after the `size` entries, hex.
    pub state_digest: String,
    pub policy_version: u64,
    /// The log's time at the checkpoint.
    pub at_ms: u64,
}

impl Head {
    /// The head of `state`'s log, with the digest computed by the caller
    /// (it is the costly part; a replica computes it off the apply path).
    pub fn of(state: &ClusterState, state_digest: String) -> Head {
        Head {
            cluster_id: state.cluster_id().to_string(),
            size: state.log_size(),
            root: hex::encode(state.log_root()),
            state_digest,
            policy_version: state.policy().version,
            at_ms: state.now_ms(),
        }
    }

    /// The bytes a replica signs: the domain, then each field length-prefixed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        for part in [
            self.cluster_id.as_str(),
            self.root.as_str(),
            self.state_digest.as_str(),
        ] {
            m.extend_from_slice(&(part.len() as u32).to_be_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        for n in [self.size, self.policy_version, self.at_ms] {
            m.extend_from_slice(&n.to_be_bytes());
        }
        m
    }
}

/// One replica's signature over a head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub head: Head,
    pub replica: u64,
    pub key: PublicKey,
    pub signature: Signature,
    /// The replica's certificate chain (PEM) that vouches for `key`: empty
    /// on a cluster run without TLS, where nothing vouches for it.
    #[serde(default)]
    pub cert_pem: String,
}

impl Signed {
    pub fn sign(head: Head, replica: u64, key: &SecretKey, cert_pem: String) -> Signed {
        let signing = ed25519_dalek::SigningKey::from_bytes(&key.to_bytes());
        let signature = Signature(signing.sign(&head.signing_bytes()).to_bytes());
        Signed {
            head,
            replica,
            key: key.public_key(),
            signature,
            cert_pem,
        }
    }

    /// Whether the signature verifies against `key` (strictly).
    pub fn verifies(&self) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.key.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature.0);
        key.verify(&self.head.signing_bytes(), &sig).is_ok() && !key.is_weak()
    }
}

/// Two validly signed heads of one size that differ: proof that the log
/// forked (or that a replica signed what it did not compute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub a: Signed,
    pub b: Signed,
}

/// The newest head signed by a majority of `replicas` distinct keys, with
/// the replicas that signed it. `signed` must hold only signatures the
/// caller verified (and whose keys it trusts).
pub fn latest_valid(signed: &[Signed], replicas: usize) -> Option<(Head, Vec<u64>)> {
    let majority = replicas / 2 + 1;
    let mut by_head: BTreeMap<&Head, BTreeMap<PublicKey, u64>> = BTreeMap::new();
    for s in signed {
        by_head.entry(&s.head).or_default().insert(s.key, s.replica);
    }
    by_head
        .into_iter()
        .filter(|(_, keys)| keys.len() >= majority)
        .max_by_key(|(head, _)| head.size)
        .map(|(head, keys)| {
            let mut who: Vec<u64> = keys.into_values().collect();
            who.sort_unstable();
            who.dedup();
            (head.clone(), who)
        })
}

/// Every pair of signatures over different heads of one size (the first
/// signature seen for each head stands for it).
pub fn conflicts(signed: &[Signed]) -> Vec<Conflict> {
    let mut first: BTreeMap<(u64, &Head), &Signed> = BTreeMap::new();
    for s in signed {
        first.entry((s.head.size, &s.head)).or_insert(s);
    }
    let mut by_size: BTreeMap<u64, Vec<&Signed>> = BTreeMap::new();
    for ((size, _), s) in first {
        by_size.entry(size).or_default().push(s);
    }
    let mut out = Vec::new();
    for heads in by_size.values() {
        for (i, a) in heads.iter().enumerate() {
            for b in &heads[i + 1..] {
                out.push(Conflict {
                    a: (*a).clone(),
                    b: (*b).clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64, root: &str) -> Head {
        Head {
            cluster_id: "c".into(),
            size,
            root: root.into(),
            state_digest: "d".into(),
            policy_version: 1,
            at_ms: 5,
        }
    }

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_signature_covers_every_field() {
        let s = Signed::sign(head(3, "aa"), 1, &key(1), String::new());
        assert!(s.verifies());
        let mut changed = Vec::new();
        let mut t = s.clone();
        t.head.size = 4;
        changed.push(t);
        let mut t = s.clone();
        t.head.root = "ab".into();
        changed.push(t);
        let mut t = s.clone();
        t.head.state_digest = "e".into();
        changed.push(t);
        let mut t = s.clone();
        t.head.policy_version = 2;
        changed.push(t);
        let mut t = s.clone();
        t.head.at_ms = 6;
        changed.push(t);
        let mut t = s.clone();
        t.head.cluster_id = "other".into();
        changed.push(t);
        let mut t = s.clone();
        t.key = key(2).public_key();
        changed.push(t);
        for t in changed {
            assert!(!t.verifies(), "{t:?}");
        }
    }

    #[test]
    fn valid_takes_a_majority_of_distinct_keys() {
        let a = Signed::sign(head(10, "aa"), 1, &key(1), String::new());
        let a_again = Signed::sign(head(10, "aa"), 1, &key(1), String::new());
        let b = Signed::sign(head(10, "aa"), 2, &key(2), String::new());
        let newer = Signed::sign(head(20, "bb"), 1, &key(1), String::new());
        // One key twice is one signature.
        assert_eq!(latest_valid(&[a.clone(), a_again], 3), None);
        assert_eq!(
            latest_valid(&[a.clone(), b.clone(), newer.clone()], 3),
            Some((head(10, "aa"), vec![1, 2]))
        );
        // Of five replicas, two are not a majority.
        assert_eq!(latest_valid(&[a, b, newer], 5), None);
    }

    #[test]
    fn two_heads_of_one_size_are_a_conflict() {
        let a = Signed::sign(head(10, "aa"), 1, &key(1), String::new());
        let b = Signed::sign(head(10, "ff"), 2, &key(2), String::new());
        let c = Signed::sign(head(10, "aa"), 3, &key(3), String::new());
        let other_size = Signed::sign(head(11, "ff"), 2, &key(2), String::new());
        let found = conflicts(&[a.clone(), b.clone(), c, other_size]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].a.head.root, "aa");
        assert_eq!(found[0].b.head.root, "ff");
        assert!(conflicts(&[a]).is_empty());
    }
}

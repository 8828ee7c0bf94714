//! The replica as a witness of the decision log: it signs the log's head
//! at every `Checkpoint` it applies, collects the other replicas' signatures
//! over the same heads, and keeps any two heads of one size that differ as
//! evidence (`coop_core::checkpoint`).
//!
//! ```text
//!  apply Checkpoint ─▶ state copy ─▶ digest (off the apply path) ─▶ sign ─┐
//!  every COLLECT: ask each other replica's `Checkpoints` ─▶ verify ───────┴▶ book
//!  book: recent signatures by size; conflicts (also written to evidence/)
//! ```
//!
//! A signature counts only if it verifies and, on a cluster with TLS, the
//! signer's certificate chains to the cluster CA: the CA is what says a key
//! is a replica's, as it is for the Raft transport.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coop_core::checkpoint::{self, Conflict, Head, Signed};
use coop_core::{ClusterState, SecretKey};
use tokio::sync::mpsc;

use crate::shared::Shared;

/// How many recent sizes the book keeps signatures for.
const KEEP_SIZES: usize = 32;

/// How often the other replicas' signatures are collected.
const COLLECT: Duration = Duration::from_secs(2);

pub struct Witness {
    replica: u64,
    key: SecretKey,
    cert_pem: String,
    /// The cluster CA; `None` on a cluster without TLS.
    ca_pem: Option<String>,
    evidence_dir: PathBuf,
    /// The data directory, naming the disk to `coop_proto::disk`.
    disk: String,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// size -> signatures over heads of that size.
    by_size: BTreeMap<u64, Vec<Signed>>,
    conflicts: Vec<Conflict>,
}

impl Witness {
    pub fn new(
        replica: u64,
        key: SecretKey,
        cert_pem: String,
        ca_pem: Option<String>,
        data_dir: &std::path::Path,
    ) -> Self {
        Self {
            replica,
            key,
            cert_pem,
            ca_pem,
            evidence_dir: data_dir.join("evidence"),
            disk: data_dir.display().to_string(),
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `head` as this replica and records the signature.
    pub fn sign(&self, head: Head) -> Signed {
        let signed = Signed::sign(head, self.replica, &self.key, self.cert_pem.clone());
        self.record(signed.clone());
        signed
    }

    /// Checks a signature another replica made and records it. Refused:
    /// one that does not verify, one for another cluster, and (with TLS)
    /// one whose key no certificate from the cluster CA vouches for.
    pub fn accept(&self, signed: Signed, cluster_id: &str) -> Result<(), String> {
        coop_proto::tls::check_checkpoint(&signed, cluster_id, self.ca_pem.as_deref())?;
        self.record(signed);
        Ok(())
    }

    fn record(&self, signed: Signed) {
        let mut book = self.book();
        let size = signed.head.size;
        let here = book.by_size.entry(size).or_default();
        if here
            .iter()
            .any(|s| s.key == signed.key && s.head == signed.head)
        {
            return;
        }
        // A head already seen at this size was already set against the others.
        let new_head = !here.iter().any(|s| s.head == signed.head);
        here.push(signed.clone());
        let new_conflicts: Vec<Conflict> = if new_head {
            checkpoint::conflicts(here)
                .into_iter()
                .filter(|c| c.a.head == signed.head || c.b.head == signed.head)
                .collect()
        } else {
            Vec::new()
        };
        while book.by_size.len() > KEEP_SIZES {
            book.by_size.pop_first();
        }
        for c in new_conflicts {
            tracing::error!(
                size,
                a = c.a.replica,
                b = c.b.replica,
                "two replicas signed different heads for one size: a forked history"
            );
            self.keep_evidence(&c);
            book.conflicts.push(c);
        }
    }

    /// Writes a conflict to `evidence/` in the data dir: both signed heads,
    /// which anyone can check without trusting this replica.
    fn keep_evidence(&self, c: &Conflict) {
        let file = self.evidence_dir.join(format!(
            "size-{}-replicas-{}-{}.json",
            c.a.head.size, c.a.replica, c.b.replica
        ));
        let write = std::fs::create_dir_all(&self.evidence_dir)
            .and_then(|()| std::fs::write(&file, serde_json::to_vec_pretty(c).unwrap_or_default()));
        if let Err(e) = write {
            tracing::error!(file = %file.display(), error = %e, "could not keep the evidence");
        }
    }

    /// Every signature in the book, oldest size first.
    pub fn signed(&self) -> Vec<Signed> {
        self.book().by_size.values().flatten().cloned().collect()
    }

    /// The size of the newest head this replica signed (0 when none).
    pub fn latest_own_size(&self) -> u64 {
        self.book()
            .by_size
            .iter()
            .rev()
            .find(|(_, v)| v.iter().any(|s| s.replica == self.replica))
            .map(|(size, _)| *size)
            .unwrap_or(0)
    }

    pub fn conflicts(&self) -> Vec<Conflict> {
        self.book().conflicts.clone()
    }

    /// The newest head a majority of `voters` signed, and who signed it.
    pub fn latest_valid(&self, voters: usize) -> Option<(Head, Vec<u64>)> {
        checkpoint::latest_valid(&self.signed(), voters)
    }
}

/// Signs each head handed over by the state machine (a copy of the state
/// right after a `Checkpoint`), computing the digest off the apply path.
pub async fn sign_heads(witness: Arc<Witness>, mut states: mpsc::UnboundedReceiver<ClusterState>) {
    while let Some(state) = states.recv().await {
        let signer = witness.clone();
        let signed = coop_proto::disk::blocking(&witness.disk, move || {
            let digest = state.digest();
            Ok(signer.sign(Head::of(&state, digest)))
        })
        .await;
        if let Ok(s) = signed {
            tracing::debug!(size = s.head.size, root = %s.head.root, "signed a checkpoint");
        }
    }
}

/// Collects the other replicas' signatures every `COLLECT`, and keeps the
/// checkpoint metrics current.
pub async fn collect(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(COLLECT).await;
        let (peers, cluster_id) = {
            let status = shared.node.status();
            let applied = shared.node.state_machine().read();
            let peers: Vec<(u64, String)> = status
                .replicas
                .iter()
                .filter(|r| r.id != status.id && r.voter)
                .map(|r| (r.id, r.addr.clone()))
                .collect();
            (peers, applied.state.cluster_id().to_string())
        };
        for (id, addr) in peers {
            let channel = match shared.channel(&addr) {
                Ok(c) => c,
                Err(_) => continue,
            };
            let mut client = coop_proto::api::coop_client::CoopClient::new(channel);
            let mut request = tonic::Request::new(coop_proto::api::CheckpointsRequest {});
            request.set_timeout(Duration::from_secs(2));
            let Ok(reply) = client.checkpoints(request).await else {
                continue;
            };
            for s in reply.into_inner().signed {
                // Only what the peer signed itself: what it collected, we
                // collect from its signer directly.
                if s.replica != id {
                    continue;
                }
                match Signed::try_from(s) {
                    Ok(s) => {
                        if let Err(e) = shared.witness.accept(s, &cluster_id) {
                            tracing::warn!(replica = id, error = %e, "refused a checkpoint signature");
                        }
                    }
                    Err(e) => tracing::warn!(replica = id, error = %e, "malformed checkpoint"),
                }
            }
        }
        let voters = shared.node.status().voters();
        let valid = shared.witness.latest_valid(voters);
        shared.metrics.observe_checkpoints(
            valid.as_ref().map(|(h, _)| h),
            shared.witness.conflicts().len(),
        );
        // Sealed journal segments a valid checkpoint covers may go to the
        // archive (when one is configured).
        if let Some((head, _)) = valid {
            let node = shared.node.clone();
            let archived = coop_proto::disk::blocking(&shared.witness.disk, move || {
                node.state_machine().journal().archive_covered(head.size)
            })
            .await;
            if let Err(e) = archived {
                tracing::warn!(error = %e, "archiving journal segments failed");
            }
        }
    }
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
            at_ms: 1,
        }
    }

    #[test]
    fn signatures_the_ca_does_not_vouch_for_are_refused_and_a_fork_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = coop_proto::tls::ClusterCa::generate().unwrap();
        let ours = ca.issue_replica().unwrap();
        let theirs = ca.issue_replica().unwrap();
        let w = Witness::new(
            1,
            ours.signing_key().unwrap(),
            ours.cert_pem.clone(),
            Some(ca.cert_pem.clone()),
            dir.path(),
        );
        w.sign(head(10, "aa"));
        let key = theirs.signing_key().unwrap();
        // Their agreeing signature makes the head valid for two of three.
        w.accept(
            Signed::sign(head(10, "aa"), 2, &key, theirs.cert_pem.clone()),
            "c",
        )
        .unwrap();
        assert_eq!(
            w.latest_valid(3).map(|(h, who)| (h.size, who)),
            Some((10, vec![1, 2]))
        );
        // A key without a certificate from the CA is refused; so is a
        // head of another cluster.
        let stranger = coop_core::SecretKey::from_bytes(&[7; 32]);
        let err = w
            .accept(
                Signed::sign(head(10, "ff"), 3, &stranger, theirs.cert_pem.clone()),
                "c",
            )
            .unwrap_err();
        assert!(err.contains("not the certificate's key"), "{err}");
        let mut other = head(10, "aa");
        other.cluster_id = "other".into();
        assert!(w
            .accept(Signed::sign(other, 2, &key, theirs.cert_pem.clone()), "c")
            .is_err());
        assert!(w.conflicts().is_empty());
        // A vouched signature over another root of the same size is a fork:
        // kept, and written down as evidence.
        w.accept(
            Signed::sign(head(10, "ff"), 2, &key, theirs.cert_pem.clone()),
            "c",
        )
        .unwrap();
        let conflicts = w.conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            (
                conflicts[0].a.head.root.as_str(),
                conflicts[0].b.head.root.as_str()
            ),
            ("aa", "ff")
        );
        let evidence: Vec<_> = std::fs::read_dir(dir.path().join("evidence"))
            .unwrap()
            .collect();
        assert_eq!(evidence.len(), 1);
    }
}

//! The decision log catches a rewritten history: flipping any byte of a
//! leaf, reordering two leaves, dropping one, or forging a signature is
//! detected by replaying the journal against the root the replicas agreed
//! on (the first entry that does not recompute is named, and otherwise the
//! root differs).

use coop_core::decision_log::{Replay, ReplayError};
use coop_core::merkle;
use coop_core::testkit;
use coop_core::*;

fn res(cpu: u64) -> Resources {
    Resources::new(cpu, 256 << 20, 0)
}

/// A small history touching every kind of decision, as leaves.
fn journal() -> (Vec<Vec<u8>>, ClusterState) {
    let mut s = ClusterState::new();
    let ok = ExitStatus {
        code: Some(0),
        signal: None,
        error: String::new(),
    };
    let spec = |cpu| JobSpec::command(vec!["true".into()], res(cpu));
    let mut cmds = vec![
        testkit::genesis(&["ana", "bo"], Policy::default(), 0),
        testkit::add_node("ana", "box", 1),
        testkit::register("box", "ana", res(1000), 1, vec![], 2),
        testkit::submit("ana", "a1", spec(600), 3),
        testkit::submit("bo", "b1", spec(600), 4),
        Command::Schedule { now_ms: 5 },
    ];
    let mut leaves = Vec::new();
    for c in &cmds {
        leaves.push(s.apply_logged(c).1);
    }
    let alloc = *s.allocs().keys().next().unwrap();
    let box_id = NodeId::new("box");
    let more = vec![
        testkit::started(alloc, &box_id, 6),
        testkit::finished(alloc, &box_id, ok, None, 7),
        Command::Schedule { now_ms: 8 },
        // A refused command is a leaf too: its refusal is recorded.
        testkit::cancel("bo", "c1", JobId(1), 9),
        Command::NodeLost {
            node: box_id,
            incarnation: 1,
            now_ms: 10,
        },
    ];
    for c in &more {
        leaves.push(s.apply_logged(c).1);
    }
    cmds.extend(more);
    (leaves, s)
}

/// Replays `leaves`; Ok(root) if every entry recomputes.
fn replay(leaves: &[Vec<u8>]) -> Result<merkle::Hash, ReplayError> {
    let mut r = Replay::new();
    for (i, leaf) in leaves.iter().enumerate() {
        r.step(i as u64, leaf)?;
    }
    Ok(r.root())
}

/// Detected: the replay stops at an entry, or ends at another root.
fn detected(leaves: &[Vec<u8>], trusted_root: &merkle::Hash) -> bool {
    match replay(leaves) {
        Err(_) => true,
        Ok(root) => root != *trusted_root,
    }
}

#[test]
fn an_honest_journal_replays_to_the_agreed_root_and_state() {
    let (leaves, live) = journal();
    let mut r = Replay::new();
    for (i, leaf) in leaves.iter().enumerate() {
        r.step(i as u64, leaf).unwrap();
    }
    assert_eq!(r.root(), live.log_root());
    assert_eq!(r.state.digest(), live.digest());
    assert!(r.decisions >= 2, "placements were recomputed");
    // The root is what RFC 9162 computes over the leaves.
    let hashes: Vec<_> = leaves.iter().map(|l| merkle::leaf_hash(l)).collect();
    assert_eq!(merkle::root_of(&hashes), live.log_root());
}

#[test]
fn flipping_any_byte_of_any_leaf_is_detected() {
    let (leaves, live) = journal();
    let root = live.log_root();
    let mut tried = 0;
    for i in 0..leaves.len() {
        for b in 0..leaves[i].len() {
            let mut forged = leaves.clone();
            forged[i][b] ^= 0x01;
            assert!(
                detected(&forged, &root),
                "leaf {i} byte {b} flipped went unnoticed"
            );
            tried += 1;
        }
    }
    assert!(tried > 1000);
}

#[test]
fn reordering_dropping_or_forging_is_detected_and_the_entry_named() {
    let (leaves, live) = journal();
    let root = live.log_root();
    // Two leaves swapped.
    for i in 1..leaves.len() - 1 {
        let mut swapped = leaves.clone();
        swapped.swap(i, i + 1);
        if swapped != leaves {
            assert!(detected(&swapped, &root), "swap of {i} and {}", i + 1);
        }
    }
    // One dropped.
    for i in 0..leaves.len() {
        let mut dropped = leaves.clone();
        dropped.remove(i);
        assert!(detected(&dropped, &root), "drop of {i}");
    }
    // A submit re-signed by another key, its outcome left as recorded:
    // the replay refuses the signature and names the entry.
    let (cmd, tail) = {
        let parsed = decision_log::parse_leaf(&leaves[3]).unwrap();
        let cmd: Command = serde_json::from_slice(parsed.command).unwrap();
        (cmd, parsed.outcome_digest.to_vec())
    };
    let forged_cmd = match cmd {
        Command::Submit {
            request_id,
            member,
            spec,
            auth,
            now_ms,
            env_salt,
        } => {
            let auth = testkit::secret("mallory").sign_request(
                testkit::CLUSTER,
                &member,
                &request_id,
                auth.issued_at_ms,
                &MemberRequest::Submit { spec: &spec },
            );
            Command::Submit {
                request_id,
                member,
                spec,
                auth,
                now_ms,
                env_salt,
            }
        }
        other => panic!("leaf 3 is {other:?}"),
    };
    let json = serde_json::to_vec(&forged_cmd).unwrap();
    let mut leaf = decision_log::LEAF_DOMAIN.to_vec();
    leaf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    leaf.extend_from_slice(&json);
    leaf.extend_from_slice(&tail);
    let mut forged = leaves.clone();
    forged[3] = leaf;
    match replay(&forged) {
        Err(ReplayError::Outcome {
            index: 3, detail, ..
        }) => {
            assert!(detail.contains("signature"), "{detail}")
        }
        other => panic!("forged signature not named at entry 3: {other:?}"),
    }
    // A forger who also records the refusal gets through the replay, but
    // not past the root the replicas agreed on.
    let mut r = Replay::new();
    for (i, leaf) in forged.iter().enumerate().take(3) {
        r.step(i as u64, leaf).unwrap();
    }
    let (_, honest_about_refusal) = r.state.clone().apply_logged(&forged_cmd);
    forged[3] = honest_about_refusal;
    assert!(detected(&forged, &root));
}

#[test]
fn env_values_never_enter_the_public_record_and_the_replay_still_agrees() {
    let mut live = ClusterState::new();
    let mut leaves = Vec::new();
    leaves.push(
        live.apply_logged(&testkit::genesis(&["ana"], Policy::default(), 0))
            .1,
    );
    let mut spec = JobSpec::command(vec!["true".into()], res(100));
    if let JobKind::Command { env, .. } = &mut spec.kind {
        env.insert("TOKEN".into(), "hunter2".into());
    }
    let (result, leaf) = live.apply_logged(&testkit::submit("ana", "s1", spec.clone(), 1));
    result.unwrap();
    leaves.push(leaf);
    // The replica holds the value (the worker needs it)...
    match &live.jobs()[&JobId(1)].spec.kind {
        JobKind::Command { env, .. } => assert_eq!(env["TOKEN"], "hunter2"),
        other => panic!("{other:?}"),
    }
    // ...the public record holds only its commitment...
    for leaf in &leaves {
        let text = String::from_utf8_lossy(leaf);
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert!(String::from_utf8_lossy(&leaves[1]).contains("sha256:"));
    // ...and a replay of it reaches the same root and public digest.
    let mut r = Replay::new();
    for (i, leaf) in leaves.iter().enumerate() {
        r.step(i as u64, leaf).unwrap();
    }
    assert_eq!(r.root(), live.log_root());
    assert_eq!(r.state.digest(), live.digest());
    // A retry of the same request is recognized as the same job.
    let again = live.apply(&testkit::submit("ana", "s1", spec, 2)).unwrap();
    assert_eq!(
        again,
        Outcome::Submitted {
            job: JobId(1),
            existing: true
        }
    );
}

//! Deterministic members for tests, benchmarks and examples: keys derived
//! from names, a genesis listing them, and signed requests. Behind the
//! `testkit` feature; a key anyone can derive from a name is never a real
//! member's.

use sha2::{Digest, Sha256};

use crate::command::{Command, Founder};
use crate::identity::{MemberRequest, SecretKey};
use crate::ids::{JobId, MemberId};
use crate::job::JobSpec;
use crate::policy::Policy;

/// The cluster id tests use.
pub const CLUSTER: &str = "test-cluster";

/// The same key for the same name, always.
pub fn secret(name: &str) -> SecretKey {
    let seed: [u8; 32] = Sha256::digest(format!("coop-testkit:{name}")).into();
    SecretKey::from_bytes(&seed)
}

pub fn founders(names: &[&str]) -> Vec<Founder> {
    names
        .iter()
        .map(|n| Founder {
            name: MemberId::new(*n),
            key: secret(n).public_key(),
        })
        .collect()
}

/// Genesis of `CLUSTER` with these founders and this policy.
pub fn genesis(names: &[&str], policy: Policy, now_ms: u64) -> Command {
    Command::Genesis {
        cluster_id: CLUSTER.into(),
        policy,
        members: founders(names),
        now_ms,
    }
}

/// A submit signed by `member`'s testkit key, issued at `now_ms`.
pub fn submit(member: &str, request_id: &str, spec: JobSpec, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Submit { spec: &spec },
    );
    Command::Submit {
        request_id: request_id.into(),
        member: m,
        spec,
        auth,
        now_ms,
    }
}

/// A cancel signed by `member`'s testkit key, issued at `now_ms`.
pub fn cancel(member: &str, request_id: &str, job: JobId, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Cancel { job },
    );
    Command::Cancel {
        job,
        member: m,
        request_id: request_id.into(),
        auth,
        now_ms,
    }
}

/// A read credential of `member`'s testkit key, issued at `now_ms`.
pub fn read(member: &str, now_ms: u64) -> crate::identity::Auth {
    secret(member).sign_read(CLUSTER, &MemberId::new(member), now_ms)
}

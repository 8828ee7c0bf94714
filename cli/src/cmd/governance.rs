//! Governance: `coop propose`, `coop vote`, `coop proposals`. Every
//! proposal and vote is signed by the member; the cluster decides in its
//! log (docs/governance.md).

use anyhow::{anyhow, Result};
use coop_core::governance::ProposalKind;
use coop_core::{MemberId, MemberRequest, PublicKey};
use coop_proto::api::*;
use serde_json::json;

use crate::client::{call, connect};
use crate::identity::{now_ms, Settings};
use crate::output::{print_json, table, Format};

use super::{new_request_id, pct};

/// What `coop propose` was asked to change.
pub enum Change {
    Policy(std::path::PathBuf),
    Admit { name: String, key: String },
    Remove(String),
    Appeal { job: u64, reason: String },
}

pub async fn propose(settings: &Settings, fmt: Format, change: Change) -> Result<i32> {
    let (kind, wire) = match change {
        Change::Policy(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow!("read {}: {e}", path.display()))?;
            let policy = coop_core::Policy::from_toml(&text)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (
                ProposalKind::Policy { policy },
                propose_request::Change::PolicyToml(text),
            )
        }
        Change::Admit { name, key } => {
            let parsed = PublicKey::parse(&key).map_err(|e| anyhow!("--key: {e}"))?;
            (
                ProposalKind::Admit {
                    member: MemberId::new(name.clone()),
                    key: parsed,
                },
                propose_request::Change::Admit(AdmitChange { name, key }),
            )
        }
        Change::Remove(name) => (
            ProposalKind::Remove {
                member: MemberId::new(name.clone()),
            },
            propose_request::Change::Remove(name),
        ),
        Change::Appeal { job, reason } => (
            ProposalKind::Appeal {
                job: coop_core::JobId(job),
                reason: reason.clone(),
            },
            propose_request::Change::Appeal(AppealChange {
                job_id: job,
                reason,
            }),
        ),
    };
    let signer = settings.signer(None)?;
    let client = connect(&settings.addr).await?;
    let request_id = new_request_id();
    let auth = signer
        .sign(
            &client,
            &request_id,
            &MemberRequest::Propose { kind: &kind },
        )
        .await?;
    let req = ProposeRequest {
        member: signer.member.to_string(),
        request_id,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
        change: Some(wire),
    };
    let reply = call(
        &client,
        req,
        |mut c, req| async move { c.propose(req).await },
    )
    .await?;
    match fmt {
        Format::Json => print_json(&json!({"proposal": reply.proposal_id})),
        Format::Table => {
            println!("proposal {}: {}", reply.proposal_id, kind.describe());
            println!(
                "members vote with: coop vote {} yes|no   (see it with coop proposals)",
                reply.proposal_id
            );
        }
    }
    Ok(0)
}

pub async fn vote(settings: &Settings, fmt: Format, id: u64, answer: &str) -> Result<i32> {
    let yes = match answer {
        "yes" | "y" => true,
        "no" | "n" => false,
        other => return Err(anyhow!("vote yes or no, not {other:?}")),
    };
    let signer = settings.signer(None)?;
    let client = connect(&settings.addr).await?;
    let request_id = new_request_id();
    let auth = signer
        .sign(
            &client,
            &request_id,
            &MemberRequest::Vote { proposal: id, yes },
        )
        .await?;
    let req = VoteRequest {
        member: signer.member.to_string(),
        request_id,
        proposal_id: id,
        yes,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
    };
    let reply = call(&client, req, |mut c, req| async move { c.vote(req).await }).await?;
    match fmt {
        Format::Json => print_json(&json!({"proposal": id, "status": reply.status})),
        Format::Table => println!(
            "voted {} on proposal {id}; it is {}",
            if yes { "yes" } else { "no" },
            reply.status
        ),
    }
    Ok(0)
}

/// Every proposal; `appeals_only` keeps the appeals.
pub async fn proposals(addr: &str, fmt: Format, appeals_only: bool) -> Result<i32> {
    let client = connect(addr).await?;
    let mut reply = call(&client, (), |mut c, ()| async move {
        c.list_proposals(ListProposalsRequest {}).await
    })
    .await?;
    if appeals_only {
        reply.proposals.retain(|p| p.kind == "appeal");
    }
    if fmt == Format::Json {
        let list: Vec<_> = reply
            .proposals
            .iter()
            .map(|p| {
                json!({"id": p.id, "kind": p.kind, "change": p.change, "proposer": p.proposer, "status": p.status,
                       "outcome": p.outcome, "yes": p.yes, "no": p.no, "eligible": p.eligible,
                       "quorum": p.quorum, "deadline_ms": p.deadline_ms,
                       "votes": p.votes.iter().map(|v| json!({"member": v.member, "yes": v.yes})).collect::<Vec<_>>(),
                       "what_if": p.what_if.iter().map(|w| json!({"member": w.member,
                           "entitlement_before": w.entitlement_before, "entitlement_after": w.entitlement_after})).collect::<Vec<_>>(),
                       "would_place": p.would_place, "would_preempt": p.would_preempt})
            })
            .collect();
        print_json(&json!(list));
        return Ok(0);
    }
    if reply.proposals.is_empty() {
        println!("none yet: coop propose policy|admit|remove, coop appeal JOB --reason TEXT");
        return Ok(0);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = reply
        .proposals
        .iter()
        .map(|p| {
            let when = if p.status == "open" {
                format!("{}h left", p.deadline_ms.saturating_sub(now) / 3_600_000)
            } else {
                p.outcome.clone()
            };
            vec![
                p.id.to_string(),
                p.change.clone(),
                p.proposer.clone(),
                p.status.clone(),
                format!("{}/{} (quorum {})", p.yes, p.no, p.quorum),
                when,
            ]
        })
        .collect();
    let mut t = table(&["ID", "CHANGE", "PROPOSER", "STATUS", "YES/NO", "OUTCOME"]);
    for row in rows {
        t.add_row(row);
    }
    println!("{t}");
    for p in reply.proposals.iter().filter(|p| !p.what_if.is_empty()) {
        println!(
            "what-if of proposal {} (next pass would place {}, preempt {}):",
            p.id, p.would_place, p.would_preempt
        );
        for w in &p.what_if {
            println!(
                "  {:<12} entitlement {} -> {}",
                w.member,
                pct(w.entitlement_before),
                pct(w.entitlement_after)
            );
        }
    }
    Ok(0)
}

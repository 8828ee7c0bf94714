//! Fairness: why a job waits, everyone's share, the policy in force.

use anyhow::Result;
use coop_proto::api::*;
use serde_json::json;

use super::pct;
use crate::client::{call, connect};
use crate::output::{job_state, print_json, res, res_json, table, Format};

pub async fn why(addr: &str, fmt: Format, job: u64) -> Result<i32> {
    let client = connect(addr).await?;
    let e = call(&client, (), |mut c, ()| async move {
        c.why(WhyRequest { job_id: job }).await
    })
    .await?;
    if fmt == Format::Json {
        print_json(&json!({
            "job_id": e.job_id, "member": e.member, "state": job_state(e.state),
            "reasons": e.reasons.iter().map(|r| json!({"code": r.code, "text": r.text})).collect::<Vec<_>>(),
            "queue_position": e.queue_position, "queue_length": e.queue_length,
            "dominant_share": e.dominant_share, "entitlement": e.entitlement,
            "usage_share": e.usage_share, "key": e.key,
            "reserved": (!e.reserved_node.is_empty()).then(|| json!({
                "node": e.reserved_node,
                "expected_start_in_ms": e.reserved_start_ms.saturating_sub(e.at_ms),
            })),
            "would_start": e.would_start, "policy_version": e.policy_version,
        }));
        return Ok(0);
    }
    if job_state(e.state) != "pending" {
        println!(
            "job {} is {}, not waiting (coop status {} shows its history)",
            e.job_id,
            job_state(e.state),
            e.job_id
        );
        return Ok(0);
    }
    println!(
        "job {} of {} waits (policy v{})",
        e.job_id, e.member, e.policy_version
    );
    println!(
        "  queue      position {} of {} in {}'s queue",
        e.queue_position, e.queue_length, e.member
    );
    println!(
        "  share      {} has {} of the pool (dominant share); entitled to {}; decayed usage {}; key {:.3} (lower is served first)",
        e.member,
        pct(e.dominant_share),
        pct(e.entitlement),
        pct(e.usage_share),
        e.key
    );
    if !e.reserved_node.is_empty() {
        println!(
            "  reserved   room on {} is held for it; expected to start in {} s",
            e.reserved_node,
            e.reserved_start_ms.saturating_sub(e.at_ms).div_ceil(1000)
        );
    }
    println!("  because:");
    for r in &e.reasons {
        println!("    - {}", r.text);
    }
    let next_pass = e.reasons.iter().any(|r| r.code == "room_free_now");
    if e.would_start.is_empty() && !next_pass {
        println!("  it starts when: no single change to the running jobs lets the next pass place it (see the reasons)");
    } else if !e.would_start.is_empty() {
        println!("  it starts when (any one of these; each checked by running the scheduling pass with it):");
        for w in &e.would_start {
            println!("    - {w}");
        }
    }
    Ok(0)
}

pub async fn share(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let s = call(&client, (), |mut c, ()| async move {
        c.share(ShareRequest {}).await
    })
    .await?;
    if fmt == Format::Json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({
                    "member": m.member, "entitlement": m.entitlement, "floor_part": m.floor_part,
                    "contribution_part": m.contribution_part, "allocated": res_json(m.allocated.as_ref()),
                    "gpu_share": m.gpu_share, "cpu_share": m.cpu_share, "memory_share": m.memory_share,
                    "dominant_share": m.dominant_share, "usage_gpu_seconds": m.usage_gpu_seconds,
                    "usage_cpu_seconds": m.usage_cpu_seconds, "usage_memory_gib_seconds": m.usage_memory_gib_seconds,
                    "usage_share": m.usage_share, "contribution_gpu_eq_seconds": m.contribution,
                    "key": m.key, "pending": m.pending, "running": m.running,
                })
            })
            .collect();
        print_json(
            &json!({"pool": res_json(s.pool.as_ref()), "policy_version": s.policy_version,
                    "jain_index": s.jain_index, "at_ms": s.at_ms, "members": members}),
        );
        return Ok(0);
    }
    println!(
        "pool: {} · policy v{}",
        res(s.pool.as_ref()),
        s.policy_version
    );
    let mut t = table(&[
        "MEMBER",
        "ENTITLED",
        "= FLOOR",
        "+ CONTRIB",
        "DOMINANT",
        "GPU",
        "CPU",
        "MEM",
        "USAGE (cpu·s / gpu·s)",
        "USAGE SHARE",
        "KEY",
        "CONTRIBUTION (GPU-eq·s)",
        "RUNNING",
        "PENDING",
    ]);
    for m in &s.members {
        t.add_row(vec![
            m.member.clone(),
            pct(m.entitlement),
            pct(m.floor_part),
            pct(m.contribution_part),
            pct(m.dominant_share),
            pct(m.gpu_share),
            pct(m.cpu_share),
            pct(m.memory_share),
            format!("{:.0} / {:.0}", m.usage_cpu_seconds, m.usage_gpu_seconds),
            pct(m.usage_share),
            if m.key >= f64::MAX {
                "-".into()
            } else {
                format!("{:.3}", m.key)
            },
            format!("{:.1}", m.contribution),
            m.running.to_string(),
            m.pending.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "lowest key is served first: key = (dominant share + usage_weight x usage share) / entitlement; usage and contribution accrued to now"
    );
    Ok(0)
}

pub async fn policy_show(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let p = call(&client, (), |mut c, ()| async move {
        c.get_policy(GetPolicyRequest {}).await
    })
    .await?;
    match fmt {
        Format::Json => print_json(
            &json!({"version": p.version, "toml": p.toml, "genesis_adopted": p.genesis_adopted}),
        ),
        Format::Table => {
            println!(
                "# policy version {}{}",
                p.version,
                if p.genesis_adopted {
                    ""
                } else {
                    " (built-in defaults; genesis not adopted yet)"
                }
            );
            print!("{}", p.toml);
        }
    }
    Ok(0)
}

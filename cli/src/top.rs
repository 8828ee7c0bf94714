//! `coop top`: members' shares against their entitlements, the queue and
//! the nodes, refreshed in the terminal, for people without Grafana.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use coop_core::resources::{format_bytes, format_cpu};
use coop_proto::api::*;

use crate::client::{connect, explain, Client};

const BAR: usize = 40;

/// One member's bar: filled to its dominant share, `│` at its entitlement.
fn bar(share: f64, entitlement: f64) -> String {
    let filled = ((share.clamp(0.0, 1.0)) * BAR as f64).round() as usize;
    let mark = ((entitlement.clamp(0.0, 1.0)) * BAR as f64).round() as usize;
    (0..BAR)
        .map(|i| {
            if i == mark && mark < BAR {
                '│'
            } else if i < filled {
                '█'
            } else {
                '░'
            }
        })
        .collect()
}

async fn frame(client: &Client) -> Result<String> {
    let mut c = client.clone();
    let share = c
        .share(ShareRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let nodes = c
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(explain)?
        .into_inner()
        .nodes;
    let status = c
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    // Computed by the core on the replica, as the dashboard shows it.
    let jain = share.jain_index;
    let mut out = String::new();
    let leader = status
        .leader_id
        .map(|l| format!("replica {l}"))
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(
        out,
        "coop top · leader {leader} (term {}) · {} pending, {} running · {} nodes ready · policy v{} · Jain's index {jain:.2}",
        status.term, status.pending, status.running, status.nodes_ready, share.policy_version
    );
    let pool = share.pool.unwrap_or_default();
    let _ = writeln!(
        out,
        "pool: {} cpu · {} memory · {} gpu",
        format_cpu(pool.cpu_millis),
        format_bytes(pool.memory_bytes),
        pool.gpus
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8}  {:<w$}  {:>7} {:>7}",
        "MEMBER",
        "HAS",
        "ENTITLED",
        "DOMINANT SHARE (│ = entitlement)",
        "RUNNING",
        "PENDING",
        w = BAR
    );
    for m in &share.members {
        let _ = writeln!(
            out,
            "{:<12} {:>7.1}% {:>7.1}%  {}  {:>7} {:>7}",
            m.member,
            m.dominant_share * 100.0,
            m.entitlement * 100.0,
            bar(m.dominant_share, m.entitlement),
            m.running,
            m.pending
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:<6} {:>11} {:>17} {:>5} {:>6}",
        "NODE", "OWNER", "STATE", "CPU", "MEMORY", "GPU", "ALLOCS"
    );
    for n in &nodes {
        let (cap, used) = (
            n.capacity.unwrap_or_default(),
            n.allocated.unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<6} {:>11} {:>17} {:>5} {:>6}",
            n.id,
            n.owner,
            crate::output::node_state(n.state),
            format!(
                "{}/{}",
                format_cpu(used.cpu_millis),
                format_cpu(cap.cpu_millis)
            ),
            format!(
                "{}/{}",
                format_bytes(used.memory_bytes),
                format_bytes(cap.memory_bytes)
            ),
            format!("{}/{}", used.gpus, cap.gpus),
            n.allocations
        );
    }
    Ok(out)
}

pub async fn run(addr: &str, once: bool, interval: Duration) -> Result<i32> {
    let client = connect(addr).await?;
    if once {
        print!("{}", frame(&client).await?);
        return Ok(0);
    }
    loop {
        let text = match frame(&client).await {
            Ok(t) => t,
            Err(e) => format!("coop top: {e:#} (retrying)\n"),
        };
        // Clear the screen and home the cursor, then draw the frame.
        print!(
            "\x1b[2J\x1b[H{text}\n(refreshing every {:?}; Ctrl-C quits)\n",
            interval
        );
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_show_share_and_entitlement() {
        let b = super::bar(0.25, 0.5);
        assert_eq!(b.chars().count(), super::BAR);
        assert_eq!(b.chars().filter(|c| *c == '█').count(), 10);
        assert_eq!(b.chars().position(|c| c == '│'), Some(20));
    }
}

//! The pool and the replica group: nodes, cluster status, init, add replica.

use anyhow::Result;
use coop_core::resources::{format_bytes, format_cpu};
use coop_proto::api::*;
use serde_json::json;

use crate::client::{call, connect, explain};
use crate::output::{node_state, print_json, res_json, table, Format};

/// `coop node add NAME --key KEY`: the member authorizes its node's key.
pub async fn node_add(
    settings: &crate::identity::Settings,
    fmt: Format,
    name: &str,
    key: &str,
    member: Option<String>,
) -> Result<i32> {
    let key = coop_core::PublicKey::parse(key).map_err(|e| {
        anyhow::anyhow!("--key: {e} (`coop-worker --show-key` prints a node's key)")
    })?;
    let signer = settings.signer(member)?;
    let client = connect(&settings.addr).await?;
    let req = signer
        .add_node(&client, &super::new_request_id(), name, &key)
        .await?;
    let reply = call(
        &client,
        req,
        |mut c, req| async move { c.add_node(req).await },
    )
    .await?;
    match fmt {
        Format::Json => {
            print_json(&json!({"node": name, "owner": reply.owner, "key": key.to_string()}))
        }
        Format::Table => println!(
            "node {name} is {}'s: it may join with key {key}",
            reply.owner
        ),
    }
    Ok(0)
}

pub async fn nodes(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let reply = call(&client, (), |mut c, ()| async move {
        c.list_nodes(ListNodesRequest {}).await
    })
    .await?;
    if fmt == Format::Json {
        let nodes: Vec<_> = reply
            .nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "owner": n.owner, "state": node_state(n.state), "addr": n.addr,
                       "capacity": res_json(n.capacity.as_ref()), "allocated": res_json(n.allocated.as_ref()),
                       "allocations": n.allocations, "engines": engines_json(n.engines.as_ref())})
            })
            .collect();
        print_json(&json!(nodes));
        return Ok(0);
    }
    let mut t = table(&[
        "NODE",
        "OWNER",
        "STATE",
        "CPU USED/TOTAL",
        "MEMORY USED/TOTAL",
        "GPUS",
        "ALLOCS",
        "ENGINES",
    ]);
    for n in &reply.nodes {
        let c = n.capacity.unwrap_or_default();
        let a = n.allocated.unwrap_or_default();
        t.add_row(vec![
            n.id.clone(),
            n.owner.clone(),
            node_state(n.state).to_string(),
            format!("{}/{}", format_cpu(a.cpu_millis), format_cpu(c.cpu_millis)),
            format!(
                "{}/{}",
                format_bytes(a.memory_bytes),
                format_bytes(c.memory_bytes)
            ),
            format!("{}/{}", a.gpus, c.gpus),
            n.allocations.to_string(),
            engines_of(n.engines.as_ref()).describe(),
        ]);
    }
    println!("{t}");
    Ok(0)
}

/// The engines a node's worker advertised, as the core names them.
fn engines_of(e: Option<&coop_proto::api::NodeEngines>) -> coop_core::NodeEngines {
    e.map(Into::into).unwrap_or_default()
}

fn engines_json(e: Option<&coop_proto::api::NodeEngines>) -> serde_json::Value {
    let e = engines_of(e);
    json!({"tract": true, "onnxruntime": e.onnxruntime, "cuda": e.cuda})
}

fn print_replicas(replicas: &[Replica]) {
    let mut t = table(&["REPLICA", "ADDRESS", "ROLE", "MATCHED INDEX"]);
    for r in replicas {
        t.add_row(vec![
            r.id.to_string(),
            r.addr.clone(),
            format!(
                "{}{}",
                if r.leader {
                    "leader"
                } else if r.voter {
                    "voter"
                } else {
                    "learner"
                },
                ""
            ),
            r.matched_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
}

fn replicas_json(replicas: &[Replica]) -> serde_json::Value {
    json!(replicas
        .iter()
        .map(|r| json!({"id": r.id, "addr": r.addr, "voter": r.voter, "leader": r.leader, "matched_index": r.matched_index}))
        .collect::<Vec<_>>())
}

pub async fn cluster_status(addr: &str, fmt: Format) -> Result<i32> {
    let mut client = connect(addr).await?;
    let s = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&json!({
            "answered_by": s.answered_by, "leader_id": s.leader_id, "leader_addr": s.leader_addr,
            "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
            "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
            "replicas": replicas_json(&s.replicas), "jobs": s.jobs, "pending": s.pending,
            "running": s.running, "nodes_ready": s.nodes_ready, "state_digest": s.state_digest,
            "log_size": s.log_size, "log_root": s.log_root,
        }));
        return Ok(0);
    }
    println!("answered by replica {}", s.answered_by);
    match s.leader_id {
        Some(l) => println!("leader       replica {l} at {}", s.leader_addr),
        None => println!("leader       none (election in progress, or the cluster is not initialized: coop cluster init)"),
    }
    println!("term         {}", s.term);
    println!(
        "log          last {} · committed {} · applied {} · snapshot {}",
        s.last_log_index, s.commit_index, s.applied_index, s.snapshot_index
    );
    println!(
        "jobs         {} ({} pending, {} running)",
        s.jobs, s.pending, s.running
    );
    println!("nodes ready  {}", s.nodes_ready);
    println!("state digest {}", s.state_digest);
    println!("decision log {} entries, root {}", s.log_size, s.log_root);
    print_replicas(&s.replicas);
    Ok(0)
}

pub async fn cluster_init(addr: &str, fmt: Format) -> Result<i32> {
    let mut client = connect(addr).await?;
    let reply = client
        .init_cluster(InitClusterRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    match fmt {
        Format::Json => {
            print_json(&json!({"initialized": true, "replicas": replicas_json(&reply.replicas)}))
        }
        Format::Table => {
            println!("cluster initialized");
            print_replicas(&reply.replicas);
        }
    }
    Ok(0)
}

pub async fn add_replica(
    settings: &crate::identity::Settings,
    fmt: Format,
    id: u64,
    replica_addr: String,
) -> Result<i32> {
    let signer = settings.signer(None)?;
    let client = connect(&settings.addr).await?;
    let req = signer
        .add_replica(&client, &super::new_request_id(), id, &replica_addr)
        .await?;
    let reply = call(&client, req, |mut c, req| async move {
        c.add_replica(req).await
    })
    .await?;
    match fmt {
        Format::Json => print_json(&json!({"replicas": replicas_json(&reply.replicas)})),
        Format::Table => {
            println!("replica {id} added");
            print_replicas(&reply.replicas);
        }
    }
    Ok(0)
}

/// `coop cluster ca --dir DIR`: a new cluster CA.
pub fn ca_new(dir: &std::path::Path) -> Result<i32> {
    let ca = coop_proto::tls::ClusterCa::generate()?;
    ca.save(dir)?;
    println!("cluster CA written to {} (ca.pem, ca.key)", dir.display());
    println!(
        "fingerprint {}",
        coop_proto::tls::fingerprint(&ca.cert_pem)?
    );
    println!("keep ca.key offline: whoever holds it can admit a replica");
    Ok(0)
}

/// `coop cluster cert --ca-dir DIR --out OUT`: a replica certificate.
pub fn cert_issue(ca_dir: &std::path::Path, out: &std::path::Path) -> Result<i32> {
    let ca = coop_proto::tls::ClusterCa::load(ca_dir)?;
    ca.issue_replica()?.save(out)?;
    let ca_copy = out.join(coop_proto::tls::CA_CERT_FILE);
    if !ca_copy.exists() {
        std::fs::write(&ca_copy, &ca.cert_pem)?;
    }
    println!(
        "replica certificate written to {} (replica.pem, replica.key, ca.pem): coop-scheduler --tls-dir {}",
        out.display(),
        out.display()
    );
    Ok(0)
}

/// `coop cluster remove-replica --id N`.
pub async fn remove_replica(
    settings: &crate::identity::Settings,
    fmt: Format,
    id: u64,
) -> Result<i32> {
    let signer = settings.signer(None)?;
    let client = connect(&settings.addr).await?;
    let req = signer
        .remove_replica(&client, &super::new_request_id(), id)
        .await?;
    let reply = call(&client, req, |mut c, req| async move {
        c.remove_replica(req).await
    })
    .await?;
    match fmt {
        Format::Json => print_json(&json!({"replicas": replicas_json(&reply.replicas)})),
        Format::Table => {
            println!("replica {id} removed");
            print_replicas(&reply.replicas);
        }
    }
    Ok(0)
}

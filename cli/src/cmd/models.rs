//! Model results: evaluation leaderboards, and a model job's result as
//! `coop status` prints it.

use anyhow::Result;
use coop_core::JobResult;
use coop_proto::api::*;
use serde_json::json;

use crate::client::{call, connect};
use crate::output::{eval_task, print_json, table, Format};

pub async fn evals(addr: &str, fmt: Format, dataset: Option<String>) -> Result<i32> {
    let client = connect(addr).await?;
    let req = ListEvaluationsRequest {
        dataset: dataset.unwrap_or_default(),
    };
    let boards = call(&client, req, |mut c, req| async move {
        c.list_evaluations(req).await
    })
    .await?
    .leaderboards;
    if fmt == Format::Json {
        let out: Vec<_> = boards
            .iter()
            .map(|b| {
                json!({
                    "dataset": b.dataset, "dataset_sha256": b.dataset_sha256, "task": eval_task(b.task),
                    "entries": b.entries.iter().map(|e| json!({
                        "job_id": e.job_id, "member": e.member, "model": e.model, "model_sha256": e.model_sha256,
                        "metrics": e.metrics, "rows": e.rows, "seconds": e.seconds, "error": e.error,
                        "shards": e.shards,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!(out));
        return Ok(0);
    }
    if boards.is_empty() {
        println!("no evaluations yet: coop submit --evaluate MODEL --dataset DATA.csv");
    }
    for b in &boards {
        println!(
            "dataset {} ({}, sha256 {}…)",
            b.dataset,
            eval_task(b.task),
            &b.dataset_sha256[..b.dataset_sha256.len().min(12)]
        );
        let names: Vec<String> = {
            let mut n: Vec<String> = b
                .entries
                .iter()
                .flat_map(|e| e.metrics.keys().cloned())
                .collect();
            n.sort();
            n.dedup();
            n
        };
        let mut header = vec!["RANK", "MODEL", "JOB", "MEMBER", "ROWS", "SECONDS"];
        let upper: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
        header.extend(upper.iter().map(String::as_str));
        let failures = b.entries.iter().any(|e| e.error.is_some());
        if failures {
            header.push("ERROR");
        }
        let mut t = table(&header);
        for (i, e) in b.entries.iter().enumerate() {
            // A model that could not be scored has no rank, and says why.
            let mut row = vec![
                if e.error.is_some() {
                    "-".to_string()
                } else {
                    (i + 1).to_string()
                },
                model_label(e, &b.entries),
                // A sharded evaluation is named by its first shard's job.
                if e.shards > 0 {
                    format!("{} ({} shards)", e.job_id, e.shards)
                } else {
                    e.job_id.to_string()
                },
                e.member.clone(),
                e.rows.to_string(),
                if e.seconds > 0.0 {
                    format!("{:.3}", e.seconds)
                } else {
                    String::new()
                },
            ];
            row.extend(names.iter().map(|n| {
                e.metrics
                    .get(n)
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default()
            }));
            if failures {
                row.push(e.error.clone().unwrap_or_default());
            }
            t.add_row(row);
        }
        println!("{t}");
    }
    Ok(0)
}

/// A model as a person reads it on a leaderboard: its file name and the
/// start of its digest; an ensemble with the models it combines.
fn model_label(e: &EvalEntry, entries: &[EvalEntry]) -> String {
    let short = |uri: &str| uri.rsplit('/').next().unwrap_or(uri).to_string();
    if e.model_sha256.is_empty() {
        let members: Vec<String> = entries
            .iter()
            .filter(|o| o.job_id == e.job_id && !o.model_sha256.is_empty() && o.error.is_none())
            .map(|o| short(&o.model))
            .collect();
        return format!("{} ({})", e.model, members.join(", "));
    }
    format!(
        "{} ({}…)",
        short(&e.model),
        &e.model_sha256[..e.model_sha256.len().min(8)]
    )
}

/// A model job's result, for `coop status`.
pub fn print_result(r: &JobResult) {
    match r {
        JobResult::Inference {
            rows,
            seconds,
            output,
            output_sha256,
            engine,
            outputs,
            ..
        } => {
            let rate = if *seconds > 0.0 {
                *rows as f64 / seconds
            } else {
                0.0
            };
            let on = if engine.is_empty() {
                String::new()
            } else {
                format!(" on {engine}")
            };
            println!("  result     {rows} rows in {seconds:.3} s{on} ({rate:.0} rows/s)");
            if outputs.is_empty() {
                println!("             {output} (sha256 {output_sha256})");
            }
            for o in outputs {
                println!(
                    "             {} -> {} (sha256 {})",
                    o.name, o.path, o.sha256
                );
            }
        }
        JobResult::Evaluation {
            dataset,
            rows,
            task,
            scores,
            ensemble,
            engine,
            shard,
            ..
        } => {
            let on = if engine.is_empty() {
                String::new()
            } else {
                format!(", on {engine}")
            };
            match shard {
                Some(p) => println!(
                    "  result     shard {} of {}: rows {}..{} of {} in {dataset} ({task}{on})",
                    p.index,
                    p.of,
                    p.first_row,
                    p.first_row + rows,
                    p.dataset_rows
                ),
                None => println!("  result     {rows} rows of {dataset} ({task}{on})"),
            }
            for s in scores.iter().chain(ensemble.iter()) {
                if let Some(error) = &s.error {
                    println!("             {}: not scored: {error}", s.model);
                    continue;
                }
                let metrics: Vec<String> = s
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                let took = if s.seconds > 0.0 {
                    format!(" ({:.3} s)", s.seconds)
                } else {
                    String::new()
                };
                println!("             {}: {}{took}", s.model, metrics.join(", "));
            }
        }
    }
}

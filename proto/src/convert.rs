//! Conversions between coop-core's types and the wire messages: one place,
//! so a field added on one side and not the other is a compile error here
//! rather than a result dropped at run time.
//!
//! Core to wire is infallible (`From`); wire to core is checked
//! (`TryFrom`, `ConvertError`), because it comes from a peer.

use coop_core as core;

use crate::api;

/// A wire message that does not make a core value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field}: unknown value {value}")]
    BadEnum { field: &'static str, value: i32 },
    #[error("a signature is 64 bytes, not {0}")]
    BadSignature(usize),
    #[error("a job is an inference or an evaluation, not both")]
    TwoKinds,
    #[error("a model job takes no command")]
    ModelWithCommand,
}

/// A core enum from its wire number; UNSPECIFIED and unknown numbers are refused.
pub trait FromWire: Sized {
    fn from_wire(v: i32) -> Result<Self, ConvertError>;
}

macro_rules! enum_table {
    ($core:ty, $wire:ty, $field:literal, $($c:ident <=> $w:ident),+ $(,)?) => {
        impl From<$core> for $wire {
            fn from(v: $core) -> Self {
                match v { $(<$core>::$c => <$wire>::$w),+ }
            }
        }
        impl FromWire for $core {
            fn from_wire(v: i32) -> Result<Self, ConvertError> {
                match <$wire>::try_from(v) {
                    $(Ok(<$wire>::$w) => Ok(<$core>::$c),)+
                    _ => Err(ConvertError::BadEnum { field: $field, value: v }),
                }
            }
        }
    };
}

enum_table!(core::JobState, api::JobState, "job state",
    Pending <=> Pending, Assigned <=> Assigned, Running <=> Running,
    Succeeded <=> Succeeded, Failed <=> Failed, Cancelled <=> Cancelled);
enum_table!(core::AllocState, api::AllocState, "allocation state",
    Assigned <=> Assigned, Running <=> Running, Stopping <=> Stopping);
enum_table!(core::NodeState, api::NodeState, "node state", Ready <=> Ready, Lost <=> Lost);
enum_table!(core::DecisionKind, api::DecisionKind, "decision kind",
    Place <=> Place, Preempt <=> Preempt);
enum_table!(core::Rule, api::Rule, "rule",
    FairShare <=> FairShare, WorkConserving <=> WorkConserving, OwnerFirst <=> OwnerFirst,
    Reclaim <=> Reclaim, OwnerReclaim <=> OwnerReclaim);
enum_table!(core::EvalTask, api::EvalTask, "task",
    Classification <=> Classification, Regression <=> Regression);
enum_table!(core::Engine, api::Engine, "engine",
    Auto <=> Auto, Tract <=> Tract, Onnxruntime <=> Onnxruntime);

impl From<&core::ModelOptions> for api::ModelOptions {
    fn from(o: &core::ModelOptions) -> Self {
        Self {
            engine: wire::<api::Engine, _>(o.engine),
            output_name: o.output_name.clone(),
            features: o.features.clone(),
            drop: o.drop.clone(),
            shards: o.shards,
        }
    }
}

fn model_options(o: Option<&api::ModelOptions>) -> Result<core::ModelOptions, ConvertError> {
    let Some(o) = o else {
        return Ok(core::ModelOptions::default());
    };
    Ok(core::ModelOptions {
        engine: core::Engine::from_wire(o.engine)?,
        output_name: o.output_name.clone(),
        features: o.features.clone(),
        drop: o.drop.clone(),
        shards: o.shards,
    })
}

/// A core enum as its wire number.
pub fn wire<W: Into<i32>, C: Into<W>>(c: C) -> i32 {
    c.into().into()
}

impl From<&core::Resources> for api::Resources {
    fn from(r: &core::Resources) -> Self {
        Self {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpus,
        }
    }
}

impl From<&api::Resources> for core::Resources {
    fn from(r: &api::Resources) -> Self {
        core::Resources::new(r.cpu_millis, r.memory_bytes, r.gpus)
    }
}

/// Resources from an optional field; absent means none.
pub fn resources(r: Option<&api::Resources>) -> core::Resources {
    r.map(core::Resources::from).unwrap_or_default()
}

impl From<&core::GpuInfo> for api::GpuInfo {
    fn from(g: &core::GpuInfo) -> Self {
        Self {
            index: g.index,
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            memory_bytes: g.memory_bytes,
        }
    }
}

impl From<&api::GpuInfo> for core::GpuInfo {
    fn from(g: &api::GpuInfo) -> Self {
        Self {
            index: g.index,
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            memory_bytes: g.memory_bytes,
        }
    }
}

impl From<&core::NodeEngines> for api::NodeEngines {
    fn from(e: &core::NodeEngines) -> Self {
        Self {
            onnxruntime: e.onnxruntime.clone().unwrap_or_default(),
            cuda: e.cuda,
        }
    }
}

impl From<&api::NodeEngines> for core::NodeEngines {
    fn from(e: &api::NodeEngines) -> Self {
        Self {
            onnxruntime: (!e.onnxruntime.is_empty()).then(|| e.onnxruntime.clone()),
            cuda: e.cuda,
        }
    }
}

impl From<&core::Artifact> for api::Artifact {
    fn from(a: &core::Artifact) -> Self {
        Self {
            uri: a.uri.clone(),
            sha256: a.sha256.clone(),
        }
    }
}

fn artifact(a: Option<&api::Artifact>) -> core::Artifact {
    a.map(|a| core::Artifact {
        uri: a.uri.clone(),
        sha256: a.sha256.clone().filter(|h| !h.is_empty()),
    })
    .unwrap_or(core::Artifact {
        uri: String::new(),
        sha256: None,
    })
}

impl From<&core::JobSpec> for api::JobSpec {
    fn from(spec: &core::JobSpec) -> Self {
        let mut out = api::JobSpec {
            name: spec.name.clone(),
            resources: Some((&spec.resources).into()),
            max_retries: spec.max_retries,
            preemptible: spec.preemptible,
            gpu_model: spec.gpu_model.clone(),
            gpu_min_memory_bytes: spec.gpu_min_memory_bytes,
            timeout_secs: spec.timeout_secs,
            array: spec.array.map(|r| api::ArrayRange {
                first: r.first,
                last: r.last,
            }),
            ..Default::default()
        };
        match &spec.kind {
            core::JobKind::Command { argv, env } => {
                out.argv = argv.clone();
                out.env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            core::JobKind::Inference {
                model,
                input,
                output,
                options,
            } => {
                out.inference = Some(api::InferenceSpec {
                    model: Some(model.into()),
                    input: Some(input.into()),
                    output: output.clone(),
                    options: (!options.is_default()).then(|| options.into()),
                });
            }
            core::JobKind::Evaluation {
                models,
                dataset,
                label_column,
                task,
                metrics,
                options,
            } => {
                out.evaluation = Some(api::EvaluationSpec {
                    models: models.iter().map(api::Artifact::from).collect(),
                    dataset: Some(dataset.into()),
                    label_column: label_column.clone(),
                    task: wire::<api::EvalTask, _>(*task),
                    metrics: metrics.clone(),
                    options: (!options.is_default()).then(|| options.into()),
                });
            }
        }
        out
    }
}

impl TryFrom<&api::JobSpec> for core::JobSpec {
    type Error = ConvertError;

    /// The core spec for a request; the kind-specific checks happen in the core.
    fn try_from(spec: &api::JobSpec) -> Result<Self, ConvertError> {
        let kind = match (&spec.inference, &spec.evaluation) {
            (Some(_), Some(_)) => return Err(ConvertError::TwoKinds),
            (Some(_), None) | (None, Some(_)) if !spec.argv.is_empty() => {
                return Err(ConvertError::ModelWithCommand)
            }
            (Some(i), None) => core::JobKind::Inference {
                model: artifact(i.model.as_ref()),
                input: artifact(i.input.as_ref()),
                output: i.output.clone(),
                options: model_options(i.options.as_ref())?,
            },
            (None, Some(e)) => {
                let task = core::EvalTask::from_wire(e.task)?;
                core::JobKind::Evaluation {
                    models: e.models.iter().map(|a| artifact(Some(a))).collect(),
                    dataset: artifact(e.dataset.as_ref()),
                    label_column: e.label_column.clone(),
                    task,
                    metrics: if e.metrics.is_empty() {
                        task.metrics().iter().map(|m| m.to_string()).collect()
                    } else {
                        e.metrics.clone()
                    },
                    options: model_options(e.options.as_ref())?,
                }
            }
            (None, None) => core::JobKind::Command {
                argv: spec.argv.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
        };
        Ok(core::JobSpec {
            name: spec.name.clone(),
            kind,
            resources: resources(spec.resources.as_ref()),
            max_retries: spec.max_retries,
            preemptible: spec.preemptible,
            gpu_model: spec.gpu_model.clone(),
            gpu_min_memory_bytes: spec.gpu_min_memory_bytes,
            timeout_secs: spec.timeout_secs,
            array: spec.array.as_ref().map(|r| core::ArrayRange {
                first: r.first,
                last: r.last,
            }),
        })
    }
}

impl From<&core::ModelScore> for api::ModelScore {
    fn from(s: &core::ModelScore) -> Self {
        Self {
            model: s.model.clone(),
            sha256: s.sha256.clone(),
            metrics: s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            error: s.error.clone(),
            seconds: s.seconds,
            tally: s.tally.as_ref().map(api::Tally::from),
        }
    }
}

impl From<&api::ModelScore> for core::ModelScore {
    fn from(s: &api::ModelScore) -> Self {
        Self {
            model: s.model.clone(),
            sha256: s.sha256.clone(),
            metrics: s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            error: s.error.clone(),
            seconds: s.seconds,
            // A tally without its kind is none: the core refuses a shard's
            // score that lacks one.
            tally: s.tally.as_ref().and_then(tally),
        }
    }
}

impl From<&core::Tally> for api::Tally {
    fn from(t: &core::Tally) -> Self {
        use api::tally::Kind;
        let kind = match t {
            core::Tally::Classification {
                rows,
                correct,
                classes,
            } => Kind::Classification(api::ClassificationTally {
                rows: *rows,
                correct: *correct,
                classes: classes
                    .iter()
                    .map(|c| api::ClassCount {
                        class: c.class,
                        true_positives: c.tp,
                        false_positives: c.fp,
                        false_negatives: c.fn_,
                    })
                    .collect(),
            }),
            core::Tally::Regression {
                rows,
                abs_error,
                squared_error,
            } => Kind::Regression(api::RegressionTally {
                rows: *rows,
                abs_error: *abs_error,
                squared_error: *squared_error,
            }),
        };
        Self { kind: Some(kind) }
    }
}

fn tally(t: &api::Tally) -> Option<core::Tally> {
    use api::tally::Kind;
    Some(match t.kind.as_ref()? {
        Kind::Classification(c) => core::Tally::Classification {
            rows: c.rows,
            correct: c.correct,
            classes: c
                .classes
                .iter()
                .map(|c| core::ClassCount {
                    class: c.class,
                    tp: c.true_positives,
                    fp: c.false_positives,
                    fn_: c.false_negatives,
                })
                .collect(),
        },
        Kind::Regression(r) => core::Tally::Regression {
            rows: r.rows,
            abs_error: r.abs_error,
            squared_error: r.squared_error,
        },
    })
}

impl From<&core::ShardPart> for api::ShardPart {
    fn from(p: &core::ShardPart) -> Self {
        Self {
            index: p.index,
            of: p.of,
            first_row: p.first_row,
            dataset_rows: p.dataset_rows,
        }
    }
}

impl From<&api::ShardPart> for core::ShardPart {
    fn from(p: &api::ShardPart) -> Self {
        Self {
            index: p.index,
            of: p.of,
            first_row: p.first_row,
            dataset_rows: p.dataset_rows,
        }
    }
}

impl From<&core::OutputFile> for api::OutputFile {
    fn from(o: &core::OutputFile) -> Self {
        Self {
            name: o.name.clone(),
            path: o.path.clone(),
            sha256: o.sha256.clone(),
        }
    }
}

impl From<&api::OutputFile> for core::OutputFile {
    fn from(o: &api::OutputFile) -> Self {
        Self {
            name: o.name.clone(),
            path: o.path.clone(),
            sha256: o.sha256.clone(),
        }
    }
}

impl From<&core::JobResult> for api::JobResult {
    fn from(r: &core::JobResult) -> Self {
        use api::job_result::Kind;
        let kind = match r {
            core::JobResult::Inference {
                rows,
                seconds,
                output,
                output_sha256,
                model_sha256,
                engine,
                outputs,
            } => Kind::Inference(api::InferenceResult {
                rows: *rows,
                seconds: *seconds,
                output: output.clone(),
                output_sha256: output_sha256.clone(),
                model_sha256: model_sha256.clone(),
                engine: engine.clone(),
                outputs: outputs.iter().map(api::OutputFile::from).collect(),
            }),
            core::JobResult::Evaluation {
                dataset,
                dataset_sha256,
                rows,
                task,
                scores,
                ensemble,
                engine,
                shard,
            } => Kind::Evaluation(api::EvaluationResult {
                shard: shard.as_ref().map(api::ShardPart::from),
                engine: engine.clone(),
                dataset: dataset.clone(),
                dataset_sha256: dataset_sha256.clone(),
                rows: *rows,
                task: wire::<api::EvalTask, _>(*task),
                scores: scores.iter().map(api::ModelScore::from).collect(),
                ensemble: ensemble.as_ref().map(api::ModelScore::from),
            }),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<&api::JobResult> for core::JobResult {
    type Error = ConvertError;

    fn try_from(r: &api::JobResult) -> Result<Self, ConvertError> {
        use api::job_result::Kind;
        Ok(
            match r
                .kind
                .as_ref()
                .ok_or(ConvertError::Missing("result kind"))?
            {
                Kind::Inference(i) => core::JobResult::Inference {
                    rows: i.rows,
                    seconds: i.seconds,
                    output: i.output.clone(),
                    output_sha256: i.output_sha256.clone(),
                    model_sha256: i.model_sha256.clone(),
                    engine: i.engine.clone(),
                    outputs: i.outputs.iter().map(core::OutputFile::from).collect(),
                },
                Kind::Evaluation(e) => core::JobResult::Evaluation {
                    dataset: e.dataset.clone(),
                    dataset_sha256: e.dataset_sha256.clone(),
                    rows: e.rows,
                    task: core::EvalTask::from_wire(e.task)?,
                    scores: e.scores.iter().map(core::ModelScore::from).collect(),
                    ensemble: e.ensemble.as_ref().map(core::ModelScore::from),
                    engine: e.engine.clone(),
                    shard: e.shard.as_ref().map(core::ShardPart::from),
                },
            },
        )
    }
}

impl From<&core::PendingReason> for api::PendingReason {
    fn from(r: &core::PendingReason) -> Self {
        Self {
            code: r.code().to_string(),
            text: r.to_string(),
        }
    }
}

impl From<&core::Decision> for api::Decision {
    fn from(d: &core::Decision) -> Self {
        Self {
            at_ms: d.at_ms,
            kind: wire::<api::DecisionKind, _>(d.kind),
            job_id: d.job.0,
            member: d.member.to_string(),
            alloc_id: d.alloc.0,
            node: d.node.to_string(),
            rule: wire::<api::Rule, _>(d.rule),
            policy_version: d.policy_version,
        }
    }
}

impl From<&core::Node> for api::Node {
    fn from(node: &core::Node) -> Self {
        Self {
            id: node.id.to_string(),
            owner: node.owner.to_string(),
            capacity: Some((&node.capacity).into()),
            allocated: Some((&node.allocated()).into()),
            state: wire::<api::NodeState, _>(node.state),
            addr: node.addr.clone(),
            allocations: node.allocs().len() as u32,
            incarnation: node.incarnation,
            gpus: node.gpus.iter().map(api::GpuInfo::from).collect(),
            engines: Some((&node.engines).into()),
        }
    }
}

impl From<&core::Explanation> for api::Explanation {
    fn from(e: &core::Explanation) -> Self {
        Self {
            job_id: e.job.0,
            member: e.member.to_string(),
            state: wire::<api::JobState, _>(e.state),
            reasons: e.reasons.iter().map(api::PendingReason::from).collect(),
            queue_position: e.queue_position as u32,
            queue_length: e.queue_length as u32,
            dominant_share: e.dominant_share,
            entitlement: e.entitlement,
            would_start: e.would_start.iter().map(ToString::to_string).collect(),
            policy_version: e.policy_version,
            usage_share: e.usage_share,
            key: if e.key.is_finite() { e.key } else { f64::MAX },
            reserved_node: e
                .reserved
                .as_ref()
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
            reserved_start_ms: e.reserved.as_ref().map(|(_, t)| *t).unwrap_or(0),
            at_ms: e.at_ms,
        }
    }
}

impl From<&core::Leaderboard> for api::Leaderboard {
    fn from(b: &core::Leaderboard) -> Self {
        Self {
            dataset: b.dataset.clone(),
            dataset_sha256: b.dataset_sha256.clone(),
            task: wire::<api::EvalTask, _>(b.task),
            entries: b
                .entries
                .iter()
                .map(|e| api::EvalEntry {
                    job_id: e.job.0,
                    member: e.member.to_string(),
                    model: e.score.model.clone(),
                    model_sha256: e.score.sha256.clone(),
                    metrics: e
                        .score
                        .metrics
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    rows: e.rows,
                    finished_at_ms: e.finished_at_ms,
                    error: e.score.error.clone(),
                    seconds: e.score.seconds,
                    shards: e.shards,
                })
                .collect(),
        }
    }
}

/// The signature and time a signed request carries, as the core checks them.
pub fn auth(issued_at_ms: u64, signature: &[u8]) -> Result<core::Auth, ConvertError> {
    Ok(core::Auth {
        issued_at_ms,
        signature: core::Signature::try_from(signature)
            .map_err(|_| ConvertError::BadSignature(signature.len()))?,
    })
}

impl From<core::checkpoint::Signed> for api::SignedCheckpoint {
    fn from(s: core::checkpoint::Signed) -> Self {
        let h = s.head;
        Self {
            head: Some(api::CheckpointHead {
                cluster_id: h.cluster_id,
                size: h.size,
                root: h.root,
                state_digest: h.state_digest,
                policy_version: h.policy_version,
                at_ms: h.at_ms,
            }),
            replica: s.replica,
            key: s.key.to_string(),
            signature: s.signature.0.to_vec(),
            cert_pem: s.cert_pem,
        }
    }
}

impl TryFrom<api::SignedCheckpoint> for core::checkpoint::Signed {
    type Error = ConvertError;

    fn try_from(s: api::SignedCheckpoint) -> Result<Self, ConvertError> {
        let h = s.head.ok_or(ConvertError::Missing("head"))?;
        let key =
            core::PublicKey::parse(&s.key).map_err(|_| ConvertError::Missing("a valid key"))?;
        let signature: [u8; 64] = s
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ConvertError::BadSignature(s.signature.len()))?;
        Ok(Self {
            head: core::checkpoint::Head {
                cluster_id: h.cluster_id,
                size: h.size,
                root: h.root,
                state_digest: h.state_digest,
                policy_version: h.policy_version,
                at_ms: h.at_ms,
            },
            replica: s.replica,
            key,
            signature: core::Signature(signature),
            cert_pem: s.cert_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let result = core::JobResult::Evaluation {
            dataset: "d.csv".into(),
            dataset_sha256: "ab".repeat(32),
            rows: 10,
            task: core::EvalTask::Regression,
            scores: vec![
                core::ModelScore {
                    model: "m.onnx".into(),
                    sha256: "cd".repeat(32),
                    metrics: [("mse".to_string(), 0.5)].into_iter().collect(),
                    error: None,
                    seconds: 0.25,
                    tally: Some(core::Tally::Regression {
                        rows: 10,
                        abs_error: 2.0,
                        squared_error: 5.0,
                    }),
                },
                core::ModelScore {
                    model: "broken.onnx".into(),
                    sha256: String::new(),
                    metrics: Default::default(),
                    error: Some("the tract engine does not implement operator X".into()),
                    seconds: 0.0,
                    tally: None,
                },
            ],
            ensemble: Some(core::ModelScore {
                model: "ensemble of 2".into(),
                sha256: String::new(),
                metrics: Default::default(),
                error: None,
                seconds: 0.0,
                tally: Some(core::Tally::Classification {
                    rows: 4,
                    correct: 3,
                    classes: vec![
                        core::ClassCount {
                            class: -1,
                            tp: 1,
                            fp: 1,
                            fn_: 0,
                        },
                        core::ClassCount {
                            class: 7,
                            tp: 2,
                            fp: 0,
                            fn_: 1,
                        },
                    ],
                }),
            }),
            engine: "onnxruntime".into(),
            shard: Some(core::ShardPart {
                index: 1,
                of: 3,
                first_row: 3,
                dataset_rows: 10,
            }),
        };
        let wire = api::JobResult::from(&result);
        assert_eq!(core::JobResult::try_from(&wire), Ok(result));
        let inference = core::JobResult::Inference {
            rows: 3,
            seconds: 0.5,
            output: "out.label.npy".into(),
            output_sha256: "ef".repeat(32),
            model_sha256: "01".repeat(32),
            engine: "tract".into(),
            outputs: vec![core::OutputFile {
                name: "label".into(),
                path: "out.label.npy".into(),
                sha256: "ef".repeat(32),
            }],
        };
        let wire = api::JobResult::from(&inference);
        assert_eq!(core::JobResult::try_from(&wire), Ok(inference));
        assert_eq!(
            core::JobResult::try_from(&api::JobResult { kind: None }),
            Err(ConvertError::Missing("result kind"))
        );
    }

    #[test]
    fn enums_round_trip_and_unspecified_is_refused() {
        for s in core::JobState::ALL {
            assert_eq!(
                core::JobState::from_wire(wire::<api::JobState, _>(s)),
                Ok(s)
            );
        }
        for r in core::Rule::ALL {
            assert_eq!(core::Rule::from_wire(wire::<api::Rule, _>(r)), Ok(r));
        }
        assert!(core::JobState::from_wire(0).is_err());
        assert!(core::EvalTask::from_wire(99).is_err());
    }
}

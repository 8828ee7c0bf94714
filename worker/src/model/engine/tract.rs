//! tract: pure Rust, built into every worker. A plan is optimised for the
//! exact shape of a batch (and kept for the next batch of that size), with
//! the outputs chosen by name before optimisation so that parts of the
//! graph no output needs are never typed.

use std::collections::HashMap;
use std::ops::Range;

use tract_onnx::prelude::*;

use super::super::error::ModelError;
use super::super::onnx::Prepared;
use super::{Engine, Session};

pub struct Tract;

type Plan = std::sync::Arc<TypedRunnableModel>;

struct TractSession {
    proto: std::sync::Arc<tract_onnx::pb::ModelProto>,
    outputs: Vec<String>,
    /// One plan per batch size (every batch but the last has the same).
    plans: HashMap<usize, Plan>,
}

impl Engine for Tract {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, model: &Prepared, outputs: &[String]) -> Result<Box<dyn Session>, ModelError> {
        let register = &tract_onnx::onnx().op_register.0;
        let missing = model.ops_missing(|op| register.contains_key(op));
        if !missing.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "the tract engine does not implement {} {}: run the job with --engine onnxruntime \
                 (on a worker that has ONNX Runtime)",
                if missing.len() == 1 {
                    "operator"
                } else {
                    "operators"
                },
                missing.join(", ")
            )));
        }
        Ok(Box::new(TractSession {
            proto: model.proto.clone(),
            outputs: outputs.to_vec(),
            plans: HashMap::new(),
        }))
    }
}

impl TractSession {
    fn plan(&self, inputs: &[(DatumType, Vec<usize>)]) -> Result<Plan, ModelError> {
        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&self.proto)
            .map_err(|e| ModelError::Model(format!("cannot load the ONNX model: {e:#}")))?;
        for (i, (dt, shape)) in inputs.iter().enumerate() {
            model = model
                .with_input_fact(i, InferenceFact::dt_shape(*dt, shape.clone()))
                .map_err(|e| ModelError::Model(format!("input {i}: {e:#}")))?;
        }
        model
            .with_outputs_by_name(&self.outputs)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                ModelError::Model(format!(
                    "tract cannot run the model on inputs of shape {:?}: {e:#}",
                    inputs.iter().map(|i| &i.1).collect::<Vec<_>>()
                ))
            })
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: &[Tensor], rows: Range<usize>) -> Result<Vec<Tensor>, ModelError> {
        let batch: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.slice(0, rows.start, rows.end))
            .collect::<TractResult<_>>()
            .map_err(|e| ModelError::Model(e.to_string()))?;
        let key = rows.len();
        if !self.plans.contains_key(&key) {
            let facts: Vec<(DatumType, Vec<usize>)> = batch
                .iter()
                .map(|t| (t.datum_type(), t.shape().to_vec()))
                .collect();
            let plan = self.plan(&facts)?;
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        let out = plan
            .run(batch.into_iter().map(TValue::from).collect())
            .map_err(|e| ModelError::Model(format!("running the model failed: {e:#}")))?;
        // tract computes integer shapes and labels as TDim; outside it they
        // are the int64 the model declares.
        out.into_iter()
            .map(|v| {
                let t = v.into_tensor();
                if t.datum_type() == DatumType::TDim {
                    t.cast_to::<i64>()
                        .map(|c| c.into_owned())
                        .map_err(|e| ModelError::Model(e.to_string()))
                } else {
                    Ok(t)
                }
            })
            .collect()
    }
}

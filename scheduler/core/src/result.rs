//! What a model job produced, recorded through the log: one definition
//! that the worker writes, the scheduler stores and the CLI prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{EvalTask, MAX_EVAL_MODELS};

/// Most metrics one model score may carry.
pub const MAX_METRICS: usize = 16;

/// Why a worker's result report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultError {
    #[error("result too large")]
    TooLarge,
    #[error("result for {model} has a non-finite metric")]
    NonFinite { model: String },
    #[error("inference seconds must be finite")]
    BadSeconds,
}

/// Scores of one model (or of the ensemble) on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelScore {
    /// The model's URI, or "ensemble".
    pub model: String,
    /// SHA-256 of the model file (empty for the ensemble).
    pub sha256: String,
    pub metrics: BTreeMap<String, f64>,
    /// Why this model could not be scored (the others still are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the model took over the whole dataset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seconds: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// One file an inference job wrote: the model output it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The model output's name.
    pub name: String,
    /// Relative to the job's work dir.
    pub path: String,
    pub sha256: String,
}

/// Longest error a model score may carry.
pub const MAX_SCORE_ERROR_LEN: usize = 2048;
/// Most output files one inference may record.
pub const MAX_OUTPUT_FILES: usize = 64;

/// A model job's outcome, recorded through the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    Inference {
        rows: u64,
        seconds: f64,
        output: String,
        output_sha256: String,
        model_sha256: String,
        /// The engine that ran the model (tract or onnxruntime).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        engine: String,
        /// Every file written, one per model output.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<OutputFile>,
    },
    Evaluation {
        dataset: String,
        dataset_sha256: String,
        rows: u64,
        task: EvalTask,
        scores: Vec<ModelScore>,
        /// Majority vote (classification) or mean (regression), with several models.
        ensemble: Option<ModelScore>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        engine: String,
    },
}

impl JobResult {
    /// Refuses absurd reports (NaN scores, hundreds of models) before they reach the state.
    pub fn validate(&self) -> Result<(), ResultError> {
        let check = |s: &ModelScore| -> Result<(), ResultError> {
            if s.metrics.len() > MAX_METRICS
                || s.model.len() > crate::job::MAX_URI_LEN
                || s.error
                    .as_ref()
                    .is_some_and(|e| e.len() > MAX_SCORE_ERROR_LEN)
            {
                return Err(ResultError::TooLarge);
            }
            if s.metrics.values().any(|v| !v.is_finite())
                || !s.seconds.is_finite()
                || s.seconds < 0.0
            {
                return Err(ResultError::NonFinite {
                    model: s.model.clone(),
                });
            }
            Ok(())
        };
        match self {
            JobResult::Inference {
                seconds, outputs, ..
            } => {
                if !seconds.is_finite() || *seconds < 0.0 {
                    return Err(ResultError::BadSeconds);
                }
                if outputs.len() > MAX_OUTPUT_FILES
                    || outputs.iter().any(|o| {
                        o.name.len() > crate::job::MAX_URI_LEN
                            || o.path.len() > crate::job::MAX_URI_LEN
                            || o.sha256.len() > 64
                    })
                {
                    return Err(ResultError::TooLarge);
                }
            }
            JobResult::Evaluation {
                scores, ensemble, ..
            } => {
                if scores.len() > MAX_EVAL_MODELS {
                    return Err(ResultError::TooLarge);
                }
                for s in scores.iter().chain(ensemble.iter()) {
                    check(s)?;
                }
            }
        }
        Ok(())
    }
}

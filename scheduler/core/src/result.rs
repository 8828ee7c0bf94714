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
}

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
    },
    Evaluation {
        dataset: String,
        dataset_sha256: String,
        rows: u64,
        task: EvalTask,
        scores: Vec<ModelScore>,
        /// Majority vote (classification) or mean (regression), with several models.
        ensemble: Option<ModelScore>,
    },
}

impl JobResult {
    /// Refuses absurd reports (NaN scores, hundreds of models) before they reach the state.
    pub fn validate(&self) -> Result<(), ResultError> {
        let check = |s: &ModelScore| -> Result<(), ResultError> {
            if s.metrics.len() > MAX_METRICS || s.model.len() > crate::job::MAX_URI_LEN {
                return Err(ResultError::TooLarge);
            }
            if s.metrics.values().any(|v| !v.is_finite()) {
                return Err(ResultError::NonFinite {
                    model: s.model.clone(),
                });
            }
            Ok(())
        };
        match self {
            JobResult::Inference { seconds, .. } => {
                if !seconds.is_finite() || *seconds < 0.0 {
                    return Err(ResultError::BadSeconds);
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

//! `ModelError`: why a model job failed, by what failed, so the worker and
//! its tests can tell a bad dataset from a bad model or a bad artifact.

/// A model job's failure. The message is what the member reads in
/// `coop status`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a dataset, an input or an output.
    #[error("{0}")]
    Data(String),
    /// Fetching an artifact or checking its digest.
    #[error("{0}")]
    Artifact(String),
    /// Loading or running the model.
    #[error("{0}")]
    Model(String),
    /// The engine cannot run the model (an operator it lacks); another may.
    #[error("{0}")]
    Unsupported(String),
    /// The engine the job asked for is not on this worker or did not start.
    #[error("{0}")]
    Engine(String),
    /// The model's output does not fit the job's task.
    #[error("{0}")]
    Task(String),
    /// The job file the worker wrote could not be read or the result written.
    #[error("{0}")]
    Job(String),
}

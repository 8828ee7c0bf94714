//! `WorkerError`: why the worker could not start, or could not launch a job.

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("empty command")]
    EmptyCommand,
}

impl WorkerError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
        let what = what.into();
        move |source| WorkerError::Io { what, source }
    }
}

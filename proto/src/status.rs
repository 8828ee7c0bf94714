//! What a failed call's status says about the call, for the one rule of
//! what may be sent again (the CLI, a forwarding replica, the tests).

use tonic::{Code, Status};

/// Whether the connection failed under the call (a reset stream, an h2
/// protocol error as a replica died): tonic made the status from a
/// transport error, so it has a source; one a peer sent has none.
pub fn broke(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Whether a call ran past its deadline: the peer said so, or tonic gave
/// up waiting (it reports that as CANCELLED "Timeout expired").
pub fn timed_out(status: &Status) -> bool {
    status.code() == Code::DeadlineExceeded
        || (status.code() == Code::Cancelled && status.message().contains("Timeout expired"))
}

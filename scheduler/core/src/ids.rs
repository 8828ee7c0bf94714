//! Identifiers of the things the replicated state tracks.
//!
//! Job and allocation ids are assigned by `apply` from counters in the state,
//! so every replica assigns the same id to the same command. Member and node
//! ids are names chosen by people (a member's handle, a machine's hostname).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member of the cooperative, named by its handle.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub String);

/// A worker machine in the pool, named by the worker (its hostname by default).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

/// A job, numbered in submission (log) order starting at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

/// One placement of a job on a node. It is the fencing token for worker
/// reports: a report naming an allocation that is no longer live is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllocId(pub u64);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_inner!(MemberId, NodeId, JobId, AllocId);

impl MemberId {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl NodeId {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest member or node name.
pub const MAX_ID_LEN: usize = 64;

/// Why a member or node name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: String },
    #[error("{what} name is longer than {MAX_ID_LEN} characters")]
    TooLong { what: String },
    #[error("{what} name {name:?} has the character {ch:?}; use letters, digits, '.', '_' or '-'")]
    BadChar {
        what: String,
        name: String,
        ch: char,
    },
}

/// Checks a member or node name: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn validate_name(what: &str, name: &str) -> Result<(), NameError> {
    let what = what.to_string();
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_ID_LEN {
        return Err(NameError::TooLong { what });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_string(),
            ch,
        });
    }
    Ok(())
}

//! Wire error codes (DESIGN.md) and the reply envelope for errors.
//!
//! Every layer maps its own failures onto [`ErrorKind`]; clients match on the code, never on
//! the message.

use serde::{Deserialize, Serialize};

/// The error codes of the wire contract, serialized as snake_case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    InvalidKey,
    ValueTooLarge,
    BadRequest,
    Unauthorized,
    Busy,
    NoSpace,
    ClusterNotReady,
    Timeout,
    Internal,
    /// A condition of the command did not hold (the error's `reason` says which).
    Conflict,
    /// The requested revision is older than the change log keeps (`compact_revision`).
    Compacted,
}

impl ErrorKind {
    /// Every code, in declaration order: metrics label by it, and a new code is counted
    /// under its own name the moment it is declared.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidKey,
        ErrorKind::ValueTooLarge,
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Busy,
        ErrorKind::NoSpace,
        ErrorKind::ClusterNotReady,
        ErrorKind::Timeout,
        ErrorKind::Internal,
        ErrorKind::Conflict,
        ErrorKind::Compacted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Busy => "busy",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::ClusterNotReady => "cluster_not_ready",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Compacted => "compacted",
        }
    }

    /// Whether a client may resend the same request without knowing its outcome.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Busy | ErrorKind::ClusterNotReady)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire: a code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorKind,
    pub message: String,
    /// Which condition failed (`conflict` only): `revision`, `request_id`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current state the condition was checked against (`conflict` only), e.g. the
    /// key's revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Where the store stood when a read found nothing (`not_found` of a get).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_revision: Option<u64>,
    /// The current value the condition was checked against (`conflict` of an incr: `bound`,
    /// `not_integer`), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<serde_json::Value>>,
    /// The key whose condition failed, when the request names more than one (a txn op).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The change log's compact revision (`compacted` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<u64>,
    /// The lock holder's fence, 0 when the lock is free (`conflict` with reason `fence` or
    /// `lock_held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

impl WireError {
    pub fn new(code: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            reason: None,
            revision: None,
            store_revision: None,
            value: None,
            key: None,
            compact_revision: None,
            fence: None,
        }
    }

    /// A `compacted` refusal: the change log no longer holds revisions up to
    /// `compact_revision`.
    pub fn compacted(compact_revision: u64, message: impl Into<String>) -> Self {
        WireError {
            compact_revision: Some(compact_revision),
            ..WireError::new(ErrorKind::Compacted, message)
        }
    }

    /// This error with the store revision a read saw.
    pub fn at_store_revision(mut self, store_revision: u64) -> Self {
        self.store_revision = Some(store_revision);
        self
    }

    /// A `conflict` for `reason`, with the current revision when it is part of the answer.
    pub fn conflict(reason: &str, message: impl Into<String>, revision: Option<u64>) -> Self {
        WireError {
            reason: Some(reason.to_string()),
            revision,
            ..WireError::new(ErrorKind::Conflict, message)
        }
    }

    /// This error with the current value a condition was checked against.
    pub fn with_value(mut self, value: Option<serde_json::Value>) -> Self {
        self.value = value.map(Box::new);
        self
    }

    /// A `conflict` about a lock (`fence`, `lock_held`), with the holder's fence.
    pub fn lock_conflict(reason: &str, message: impl Into<String>, fence: u64) -> Self {
        WireError {
            fence: Some(fence),
            ..WireError::conflict(reason, message, None)
        }
    }

    /// This error naming the key whose condition failed.
    pub fn with_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }
}

/// Shorthand constructors, one per code used by the server.
macro_rules! ctor {
    ($name:ident, $kind:ident) => {
        pub fn $name(message: impl Into<String>) -> WireError {
            WireError::new(ErrorKind::$kind, message)
        }
    };
}

ctor!(not_found, NotFound);
ctor!(invalid_key, InvalidKey);
ctor!(value_too_large, ValueTooLarge);
ctor!(bad_request, BadRequest);
ctor!(unauthorized, Unauthorized);
ctor!(busy, Busy);
ctor!(no_space, NoSpace);
ctor!(cluster_not_ready, ClusterNotReady);
ctor!(timeout, Timeout);
ctor!(internal, Internal);

//! The single error type of the OVSDB client.
//!
//! The reconciler needs one decision from every failure: retry the same request later, or give up
//! and re-plan. [`OvsdbError::is_transient`] answers that, and every message names the op, table,
//! row or column involved so a log line is enough to find the cause.

use std::io;

use serde_json::Value as Json;

/// Everything that can go wrong talking to an OVSDB server.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The endpoint string is not `unix:<path>` or `tcp:<host>:<port>`.
    #[error("invalid OVSDB endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// The server could not be reached (refused, missing socket, ...).
    #[error("cannot connect to OVSDB at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },

    /// The connection dropped (or was not up) while the request was outstanding. A transact that
    /// fails this way may or may not have been committed; re-read before acting again.
    #[error("OVSDB connection lost: {0}")]
    ConnectionLost(String),

    /// Reading or writing the socket failed.
    #[error("OVSDB socket I/O error: {0}")]
    Io(#[from] io::Error),

    /// No reply arrived within the configured request timeout.
    #[error("OVSDB request {method} timed out after {after_ms} ms")]
    Timeout { method: String, after_ms: u128 },

    /// The client's connection task has stopped; this handle is no longer usable.
    #[error("OVSDB client is shut down")]
    Closed,

    /// The server sent bytes that are not a JSON-RPC object.
    #[error("malformed JSON from OVSDB server near {snippet:?}: {reason}")]
    Decode { snippet: String, reason: String },

    /// A well-formed JSON message that does not follow JSON-RPC 1.0 / RFC 7047.
    #[error("OVSDB protocol error: {0}")]
    Protocol(String),

    /// The server answered a request with a JSON-RPC `error`.
    #[error("OVSDB {method} failed: {error}")]
    Rpc { method: String, error: Json },

    /// One operation of a transaction failed; the whole transaction was rolled back. `index` is the
    /// position in the submitted op list, or `ops.len()` for a commit-time failure (`op` = "commit").
    #[error("transaction op #{index} ({op}) failed: {error}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    OpFailed { index: usize, op: String, error: String, details: Option<String> },

    /// A row in a reply does not have the shape the typed row expects.
    #[error("bad {table} row {row} column {column:?}: {reason}")]
    Row { table: String, row: String, column: String, reason: String },

    /// A JSON value is not a valid OVSDB atom/set/map/uuid.
    #[error("invalid OVSDB value {value}: {reason}")]
    Value { value: String, reason: String },
}

impl OvsdbError {
    /// True when repeating the same request later may succeed without anyone changing it: the
    /// server was unreachable or the connection broke. Protocol, parse and constraint errors (and a
    /// failed `wait` precondition) are permanent: the request or the caller's view must change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectionLost(_) | Self::Io(_) | Self::Timeout { .. }
        )
    }
}

/// Convenient result alias for the OVSDB module.
pub type Result<T, E = OvsdbError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let refused = OvsdbError::Connect {
            endpoint: "unix:/x".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(refused.is_transient());
        assert!(OvsdbError::ConnectionLost("eof".into()).is_transient());
        let op = OvsdbError::OpFailed {
            index: 1,
            op: "update".into(),
            error: "constraint violation".into(),
            details: Some("5000 is not in the valid range".into()),
        };
        assert!(!op.is_transient());
        assert_eq!(
            op.to_string(),
            "transaction op #1 (update) failed: constraint violation: 5000 is not in the valid range"
        );
        assert!(!OvsdbError::Protocol("x".into()).is_transient());
        assert!(!OvsdbError::Closed.is_transient());
    }
}

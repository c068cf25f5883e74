//! Why a client request failed, and its SPEC §2 error code.

/// A failed client request. Becomes `{success:false, error, code}` in an ack,
/// or an `error` event when the client asked for no ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Validation(String),
    #[error("authenticate first")]
    Unauthenticated,
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("not in room {0:?}")]
    NotInRoom(String),
    #[error("user {0:?} is offline")]
    UserOffline(String),
    #[error("too many requests: slow down")]
    RateLimited,
    #[error("{0}")]
    LimitExceeded(String),
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
}

impl RequestError {
    /// Every code of SPEC §2.
    pub const CODES: [&'static str; 8] = [
        "VALIDATION_ERROR",
        "UNAUTHENTICATED",
        "AUTH_FAILED",
        "NOT_IN_ROOM",
        "USER_OFFLINE",
        "RATE_LIMITED",
        "LIMIT_EXCEEDED",
        "UNKNOWN_EVENT",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Validation(_) => "VALIDATION_ERROR",
            RequestError::Unauthenticated => "UNAUTHENTICATED",
            RequestError::AuthFailed(_) => "AUTH_FAILED",
            RequestError::NotInRoom(_) => "NOT_IN_ROOM",
            RequestError::UserOffline(_) => "USER_OFFLINE",
            RequestError::RateLimited => "RATE_LIMITED",
            RequestError::LimitExceeded(_) => "LIMIT_EXCEEDED",
            RequestError::UnknownEvent(_) => "UNKNOWN_EVENT",
        }
    }

    /// The failure ack body.
    pub fn ack_body(&self) -> serde_json::Value {
        serde_json::json!({ "success": false, "error": self.to_string(), "code": self.code() })
    }

    /// The `error` event body for a request named `event`.
    pub fn event_body(&self, event: &str) -> serde_json::Value {
        serde_json::json!({ "event": event, "code": self.code(), "message": self.to_string() })
    }
}

//! Checks on client payloads (SPEC §2 rules), with messages that say which
//! field is wrong and why.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::errors::RequestError;

/// Longest name (user id, room name, custom event) in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Event names the Socket.IO client keeps for itself: emitting them would
/// break the client.
pub const CLIENT_RESERVED_EVENTS: &[&str] =
    &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Event names the server emits; a custom event may not impersonate them
/// (nor use [`CLIENT_RESERVED_EVENTS`]).
pub const SERVER_EVENTS: &[&str] = &[
    "connected",
    "authenticated",
    "room-joined",
    "room-left",
    "user-joined",
    "user-left",
    "private-message",
    "message-sent",
    "user-online",
    "user-offline",
    "pong",
    "error",
];

pub const MESSAGE_TYPES: &[&str] = &["text", "image", "file", "notification"];

/// Parses the first event argument as a JSON object into `T` (whose fields
/// are raw values checked one by one afterwards).
pub fn object<'a, T: Deserialize<'a>>(payload: Option<&'a RawValue>) -> Result<T, RequestError> {
    let Some(raw) = payload else {
        return Err(RequestError::Validation("payload must be a JSON object, got nothing".into()));
    };
    json_object("payload", raw.get())
}

/// Parses JSON text that must be an object into `T`; `what` names it in
/// the error ("payload", "body").
pub fn json_object<'a, T: Deserialize<'a>>(what: &str, text: &'a str) -> Result<T, RequestError> {
    if !text.trim_start().starts_with('{') {
        return Err(RequestError::Validation(format!("{what} must be a JSON object, got {}", json_kind(text))));
    }
    serde_json::from_str(text).map_err(|e| RequestError::Validation(format!("invalid {what}: {e}")))
}

/// A required name field: non-empty string, at most 128 bytes, no control characters.
pub fn name(field: &str, value: Option<&RawValue>) -> Result<String, RequestError> {
    let text = string(field, value)?;
    check_name(field, &text)?;
    Ok(text)
}

pub fn check_name(field: &str, text: &str) -> Result<(), RequestError> {
    if text.is_empty() {
        return Err(RequestError::Validation(format!("{field} must not be empty")));
    }
    if text.len() > MAX_NAME_BYTES {
        return Err(RequestError::Validation(format!(
            "{field} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            text.len()
        )));
    }
    if text.chars().any(|c| c.is_ascii_control()) {
        return Err(RequestError::Validation(format!("{field} must not contain control characters")));
    }
    Ok(())
}

/// A required string field.
pub fn string(field: &str, value: Option<&RawValue>) -> Result<String, RequestError> {
    let Some(raw) = value else {
        return Err(RequestError::Validation(format!("{field} is required")));
    };
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| RequestError::Validation(format!("{field} must be a string, got {}", json_kind(raw.get()))))
}

/// For a field that may be absent but, when present, is kept as written:
/// serde's `Option` would read `null` as absent.
pub fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(value).map(Some)
}

/// The required `message`: any JSON value but `null` and the empty string
/// (chat clients send rich objects), passed on exactly as sent.
pub fn message(value: Option<&RawValue>) -> Result<&RawValue, RequestError> {
    let Some(raw) = value else {
        return Err(RequestError::Validation("message is required".into()));
    };
    match raw.get() {
        "null" => Err(RequestError::Validation("message must not be null".into())),
        "\"\"" => Err(RequestError::Validation("message must not be empty".into())),
        _ => Ok(raw),
    }
}

/// `messageType`: one of [`MESSAGE_TYPES`], `text` when absent (`null` is
/// not absent: it is refused like any other value outside the list).
pub fn message_type(value: Option<&RawValue>) -> Result<&'static str, RequestError> {
    let Some(raw) = value else { return Ok("text") };
    let text = string("messageType", Some(raw))?;
    MESSAGE_TYPES.iter().copied().find(|t| *t == text).ok_or_else(|| {
        RequestError::Validation(format!("messageType must be one of {}", MESSAGE_TYPES.join(", ")))
    })
}

/// A custom event name: a valid name that is not reserved.
pub fn custom_event_name(value: Option<&RawValue>) -> Result<String, RequestError> {
    let event = name("event", value)?;
    if SERVER_EVENTS.contains(&event.as_str()) || CLIENT_RESERVED_EVENTS.contains(&event.as_str()) {
        return Err(RequestError::Validation(format!("event {event:?} is reserved")));
    }
    Ok(event)
}

fn json_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(_) => "something that is not JSON",
        None => "nothing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    fn err_text(r: Result<impl std::fmt::Debug, RequestError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(name("roomName", Some(&raw("\"general\""))).unwrap(), "general");
        assert_eq!(name("roomName", Some(&raw(&format!("\"{}\"", "é".repeat(64))))).unwrap().len(), 128);
        assert!(err_text(name("roomName", None)).contains("roomName is required"));
        assert!(err_text(name("roomName", Some(&raw("\"\"")))).contains("roomName must not be empty"));
        assert!(err_text(name("roomName", Some(&raw("42")))).contains("roomName must be a string"));
        assert!(err_text(name("userId", Some(&raw(&format!("\"{}\"", "a".repeat(129)))))).contains("userId is 129 bytes"));
        assert!(err_text(name("userId", Some(&raw("\"a\\u0007b\"")))).contains("control characters"));
        assert!(err_text(name("userId", Some(&raw("\"a\\u007fb\"")))).contains("control characters"));
    }

    #[test]
    fn null_is_a_value_not_an_absence() {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            field: Option<&'a RawValue>,
        }
        let absent: P = serde_json::from_str("{}").unwrap();
        assert!(absent.field.is_none());
        let null: P = serde_json::from_str("{\"field\":null}").unwrap();
        assert_eq!(null.field.unwrap().get(), "null");
    }

    #[test]
    fn payload_must_be_an_object() {
        #[derive(Deserialize, Debug)]
        struct P {}
        assert!(err_text(object::<P>(None)).contains("got nothing"));
        assert!(err_text(object::<P>(Some(&raw("\"x\"")))).contains("got a string"));
        assert!(err_text(object::<P>(Some(&raw("[1]")))).contains("got an array"));
        assert!(err_text(object::<P>(Some(&raw("null")))).contains("got null"));
        assert!(object::<P>(Some(&raw("{\"any\":1}"))).is_ok());
    }

    #[test]
    fn message_type_and_custom_events() {
        assert_eq!(message_type(None).unwrap(), "text");
        assert_eq!(message_type(Some(&raw("\"image\""))).unwrap(), "image");
        assert!(err_text(message_type(Some(&raw("\"video\"")))).contains("messageType must be one of"));
        assert!(err_text(message_type(Some(&raw("null")))).contains("messageType must be a string, got null"));
        assert!(err_text(message(Some(&raw("\"\"")))).contains("message must not be empty"));
        assert!(err_text(message(Some(&raw("null")))).contains("message must not be null"));
        assert!(err_text(message(None)).contains("message is required"));
        for rich in ["{\"text\":\"hi\",\"attachments\":[]}", "[1,2]", "0", "false", "\"hi\""] {
            assert_eq!(message(Some(&raw(rich))).unwrap().get(), rich);
        }
        assert!(err_text(custom_event_name(Some(&raw("\"user-joined\"")))).contains("reserved"));
        assert_eq!(custom_event_name(Some(&raw("\"typing\""))).unwrap(), "typing");
    }
}

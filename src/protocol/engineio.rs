//! Engine.IO protocol v4 packets, without I/O.
//!
//! An Engine.IO packet is one type digit followed by data: `0` open, `1`
//! close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop. Over
//! WebSocket each packet is one frame; text frames carry the type digit,
//! binary frames are binary messages with no prefix.

use fastwebsockets::OpCode;

use super::wsframe::{FrameBuilder, OutFrame};

/// A packet from the client, borrowing its data from the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Open,
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty Engine.IO packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    UnknownType(char),
    #[error("binary packet is not valid base64")]
    BadBase64,
}

pub fn decode(text: &str) -> Result<Packet<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError::Empty)?;
    let data = chars.as_str();
    Ok(match kind {
        '0' => Packet::Open,
        '1' => Packet::Close,
        '2' => Packet::Ping(data),
        '3' => Packet::Pong(data),
        '4' => Packet::Message(data),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        other => return Err(PacketError::UnknownType(other)),
    })
}

/// The handshake values sent in the open packet.
#[derive(Debug, Clone)]
pub struct OpenInfo<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_payload: usize,
}

/// The open packet, `0{"sid":…}`, as a WebSocket text frame.
pub fn open_frame(info: &OpenInfo<'_>) -> OutFrame {
    let mut builder = FrameBuilder::with_capacity(128);
    let buf = builder.buf();
    buf.push(b'0');
    // A struct rather than `json!`, which would build a map per handshake;
    // fields in the order `json!` wrote them (alphabetical).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        max_payload: usize,
        ping_interval: u64,
        ping_timeout: u64,
        sid: &'a str,
        upgrades: &'a [&'a str],
    }
    let body = Body {
        max_payload: info.max_payload,
        ping_interval: info.ping_interval_ms,
        ping_timeout: info.ping_timeout_ms,
        sid: info.sid,
        upgrades: info.upgrades,
    };
    serde_json::to_writer(&mut *buf, &body).expect("writing JSON to a Vec cannot fail");
    builder.finish(OpCode::Text)
}

/// A message packet whose body the caller writes after the `4` prefix.
pub fn message_builder(capacity_hint: usize) -> FrameBuilder {
    let mut builder = FrameBuilder::with_capacity(capacity_hint + 1);
    builder.buf().push(b'4');
    builder
}

/// A control packet with optional data (`2`, `3probe`, `6`…).
pub fn control_frame(kind: u8, data: &str) -> OutFrame {
    let mut builder = FrameBuilder::with_capacity(1 + data.len());
    builder.buf().push(kind);
    builder.buf().extend_from_slice(data.as_bytes());
    builder.finish(OpCode::Text)
}

/// Separates packets in a long-polling payload.
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// A long-polling response body: the packets joined by the record separator.
pub fn encode_payload(packets: &[bytes::Bytes]) -> bytes::Bytes {
    let len = packets.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            body.push(RECORD_SEPARATOR as u8);
        }
        body.extend_from_slice(packet);
    }
    bytes::Bytes::from(body)
}

/// One packet of a long-polling request body.
#[derive(Debug, PartialEq, Eq)]
pub enum PayloadPacket<'a> {
    Text(&'a str),
    /// A `b`-prefixed, base64-encoded binary packet.
    Binary(Vec<u8>),
}

/// Splits a long-polling request body into its packets.
pub fn decode_payload(body: &str) -> Result<Vec<PayloadPacket<'_>>, PacketError> {
    use base64::Engine;
    body.split(RECORD_SEPARATOR)
        .map(|packet| match packet.strip_prefix('b') {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(PayloadPacket::Binary)
                .map_err(|_| PacketError::BadBase64),
            None if packet.is_empty() => Err(PacketError::Empty),
            None => Ok(PayloadPacket::Text(packet)),
        })
        .collect()
}

pub const PING: u8 = b'2';
pub const PONG: u8 = b'3';

/// The JSON body of an Engine.IO HTTP error response, as the reference
/// server sends it (`{"code":3,"message":"Bad request"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedProtocolVersion,
}

impl HandshakeError {
    pub fn code(self) -> u8 {
        match self {
            HandshakeError::UnknownTransport => 0,
            HandshakeError::UnknownSid => 1,
            HandshakeError::BadHandshakeMethod => 2,
            HandshakeError::BadRequest => 3,
            HandshakeError::Forbidden => 4,
            HandshakeError::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HandshakeError::UnknownTransport => "Transport unknown",
            HandshakeError::UnknownSid => "Session ID unknown",
            HandshakeError::BadHandshakeMethod => "Bad handshake method",
            HandshakeError::BadRequest => "Bad request",
            HandshakeError::Forbidden => "Forbidden",
            HandshakeError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    pub fn to_json(self) -> String {
        serde_json::json!({ "code": self.code(), "message": self.message() }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_packet_type() {
        assert_eq!(decode("0"), Ok(Packet::Open));
        assert_eq!(decode("1"), Ok(Packet::Close));
        assert_eq!(decode("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(decode("3"), Ok(Packet::Pong("")));
        assert_eq!(decode("42[\"x\"]"), Ok(Packet::Message("2[\"x\"]")));
        assert_eq!(decode("5"), Ok(Packet::Upgrade));
        assert_eq!(decode("6"), Ok(Packet::Noop));
    }

    #[test]
    fn rejects_empty_and_unknown_packets() {
        assert_eq!(decode(""), Err(PacketError::Empty));
        assert_eq!(decode("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(decode("é"), Err(PacketError::UnknownType('é')));
    }

    #[test]
    fn open_packet_carries_handshake_values() {
        let frame = open_frame(&OpenInfo {
            sid: "abc",
            upgrades: &[],
            ping_interval_ms: 25000,
            ping_timeout_ms: 20000,
            max_payload: 1000000,
        });
        let payload = frame.payload();
        assert_eq!(payload[0], b'0');
        let json: serde_json::Value = serde_json::from_slice(&payload[1..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000})
        );
    }

    #[test]
    fn polling_payloads_round_trip() {
        let body = encode_payload(&[bytes::Bytes::from_static(b"2"), bytes::Bytes::from_static(b"42[\"a\"]")]);
        assert_eq!(&body[..], b"2\x1e42[\"a\"]");
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(decode_payload(text).unwrap(), vec![PayloadPacket::Text("2"), PayloadPacket::Text("42[\"a\"]")]);
        assert_eq!(decode_payload("bAQID").unwrap(), vec![PayloadPacket::Binary(vec![1, 2, 3])]);
        assert_eq!(decode_payload("b!!"), Err(PacketError::BadBase64));
        assert_eq!(decode_payload("3\x1e"), Err(PacketError::Empty));
        assert_eq!(&encode_payload(&[])[..], b"");
    }

    #[test]
    fn handshake_errors_match_the_reference_server() {
        assert_eq!(HandshakeError::BadRequest.to_json(), r#"{"code":3,"message":"Bad request"}"#);
        assert_eq!(HandshakeError::UnknownTransport.to_json(), r#"{"code":0,"message":"Transport unknown"}"#);
    }
}

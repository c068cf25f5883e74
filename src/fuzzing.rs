//! Every decoder a client can reach, fed arbitrary bytes, with the
//! properties each must keep: what the `fuzz/` targets (cargo-fuzz) and the
//! property tests of `cargo test` (`src/tests/properties.rs`, proptest)
//! both run. Each function panics when a property fails; a decoder that
//! panics on its own fails the same way. Not a stable API.
//!
//! The decoders, in the order the server runs them on a client's bytes:
//! - the HTTP head of a connection's first request ([`upgrade_head`]);
//! - WebSocket frames into messages ([`websocket_frames`]);
//! - a long-polling request body into Engine.IO packets ([`polling_body`]);
//! - an Engine.IO packet ([`engineio_packet`]), the Socket.IO packet inside
//!   it ([`socketio_packet`]), and an event's arguments through the
//!   payload checks of SPEC §2 and the JWT check ([`client_event`]).

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::auth::Authenticator;
use crate::app::validate;
use crate::protocol::engineio::{self, PayloadPacket};
use crate::protocol::http_upgrade::{self, Head};
use crate::protocol::socketio::{self, PacketType};
use crate::protocol::wsframe::{FrameDecoder, FrameError, Message, RESERVE_AHEAD};

/// WebSocket frames from arbitrary bytes. The first two bytes choose the
/// message size limit (1 B to 4 KiB, or 1 MiB when the first is `0xFF`), the
/// third the size of the pieces the rest arrives in.
///
/// Properties: the same messages and the same error whether the bytes
/// arrive at once or in pieces; every message within the limit (control
/// messages within 125 bytes), text messages valid UTF-8; the buffer never
/// grows past twice what was received plus [`RESERVE_AHEAD`] — a length
/// field, however large (the limit allowing), costs no more than that.
pub fn websocket_frames(data: &[u8]) {
    let [a, b, c, rest @ ..] = data else { return };
    let selector = u16::from_le_bytes([*a, *b]);
    let limit = if *a == 0xFF { 1 << 20 } else { (selector as usize % 4096) + 1 };
    let piece = *c as usize % 64 + 1;
    let whole = decode_stream(limit, &[rest]);
    let pieces: Vec<&[u8]> = rest.chunks(piece).collect();
    let split = decode_stream(limit, &pieces);
    assert_eq!(whole, split, "decoding depends on how the bytes were split (pieces of {piece})");
}

/// What a decoder with `limit` makes of a stream that arrives in `pieces`:
/// the messages, then the error that ended the stream, if any. Checks the
/// bounds of [`websocket_frames`] after every step.
pub fn decode_stream(limit: usize, pieces: &[&[u8]]) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limit);
    let mut buf = BytesMut::new();
    let mut received = 0;
    let mut messages = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        received += piece.len();
        loop {
            let step = decoder.decode(&mut buf);
            let bound = 2 * (received + RESERVE_AHEAD);
            assert!(
                buf.capacity() <= bound,
                "read buffer of {} bytes after receiving {received} (limit {limit})",
                buf.capacity()
            );
            match step {
                Ok(Some(message)) => {
                    check_message(&message, limit);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => return (messages, Some(error)),
            }
        }
    }
    (messages, None)
}

fn check_message(message: &Message, limit: usize) {
    match message {
        Message::Text(text) => {
            assert!(text.len() <= limit, "text message of {} bytes over the limit {limit}", text.len());
            assert!(std::str::from_utf8(text).is_ok(), "text message that is not UTF-8");
        }
        Message::Binary(data) => assert!(data.len() <= limit, "binary message of {} bytes over the limit {limit}", data.len()),
        Message::Ping(data) => assert!(data.len() <= 125, "ping of {} bytes", data.len()),
        Message::Pong | Message::Close { .. } => {}
    }
}

/// A client's masked WebSocket frame, as a browser writes it (for tests
/// and round trips; the server never sends masked frames).
pub fn client_frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(fin as u8) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An Engine.IO packet from arbitrary bytes (as a text message carries it).
///
/// Properties: the packet's data is the text after the type digit; only
/// the empty text is `Empty`, only a type outside `0`–`6` is unknown.
pub fn engineio_packet(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_engineio(text);
}

fn check_engineio(text: &str) {
    use engineio::{Packet, PacketError};
    match engineio::decode(text) {
        Ok(Packet::Ping(data) | Packet::Pong(data) | Packet::Message(data)) => {
            assert_eq!(&text[1..], data, "the data of {text:?} is not the text after its type");
            if let Ok(Packet::Message(data)) = engineio::decode(text) {
                check_socketio(data);
            }
        }
        Ok(_) => assert!(matches!(text.as_bytes()[0], b'0' | b'1' | b'5' | b'6')),
        Err(PacketError::Empty) => assert!(text.is_empty()),
        Err(PacketError::UnknownType(kind)) => {
            assert!(text.starts_with(kind) && !('0'..='6').contains(&kind), "{text:?} refused as type {kind:?}")
        }
        Err(PacketError::BadBase64) => panic!("a single packet has no base64 to be bad"),
    }
}

/// A long-polling request body from arbitrary bytes: split into packets,
/// each decoded on as the server does.
///
/// Properties: one packet per record separator; encoding the packets again
/// gives the body back byte for byte (binary packets as canonical base64);
/// a binary packet is never larger than its text.
pub fn polling_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(packets) = engineio::decode_payload(text) else { return };
    assert_eq!(packets.len(), text.split(engineio::RECORD_SEPARATOR).count());
    let mut encoded = Vec::with_capacity(packets.len());
    for packet in &packets {
        match packet {
            PayloadPacket::Text(packet) => {
                assert!(!packet.is_empty() && !packet.starts_with('b') && !packet.contains(engineio::RECORD_SEPARATOR));
                encoded.push(Bytes::copy_from_slice(packet.as_bytes()));
                check_engineio(packet);
            }
            PayloadPacket::Binary(bytes) => {
                let text = format!("b{}", base64::engine::general_purpose::STANDARD.encode(bytes));
                assert!(bytes.len() < text.len());
                encoded.push(Bytes::from(text));
            }
        }
    }
    assert_eq!(&engineio::encode_payload(&encoded)[..], data, "the packets do not encode back to the body");
}

/// A Socket.IO packet from arbitrary bytes (an Engine.IO message's data).
///
/// Properties: at most 16 attachments; an ack id a JavaScript client could
/// have made (at most 2^53); a namespace that starts with `/`; the data is
/// the end of the text and has the shape the type asks for; an event's
/// arguments go on through [`client_event`].
pub fn socketio_packet(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_socketio(text);
}

fn check_socketio(text: &str) {
    let Ok(packet) = socketio::decode(text) else { return };
    assert!(packet.attachments <= 16, "{} attachments", packet.attachments);
    assert!(packet.ack_id.is_none_or(|id| id <= 1 << 53), "ack id {:?}", packet.ack_id);
    assert!(packet.namespace.starts_with('/'), "namespace {:?}", packet.namespace);
    assert!(text.ends_with(packet.data), "data {:?} is not the end of {text:?}", packet.data);
    match packet.kind {
        PacketType::Connect => assert!(packet.data.is_empty() || packet.data.starts_with('{')),
        PacketType::Disconnect => assert!(packet.data.is_empty()),
        PacketType::ConnectError => {}
        PacketType::Event | PacketType::BinaryEvent | PacketType::Ack | PacketType::BinaryAck => {
            assert!(packet.data.starts_with('['));
            if matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent) {
                check_event(packet.data);
            }
        }
    }
}

/// An event's JSON (`["name", args…]`) from arbitrary bytes, through the
/// checks the built-in events make. Properties: every name a check lets
/// through follows SPEC §2 (1–128 bytes, no control characters, not a
/// reserved name for custom events); `message` is never `null` or `""`;
/// `messageType` is one of the four; no token is accepted without the
/// secret's signature, and none makes the JWT check panic.
pub fn client_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_event(text);
}

/// The fields the built-in events read from their payload object.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "roomName")]
    room_name: Option<&'a RawValue>,
    #[serde(borrow, rename = "targetUserId")]
    target_user_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "validate::present")]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "validate::present", rename = "messageType")]
    message_type: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
}

fn check_event(text: &str) {
    let Ok((_name, args)) = socketio::parse_event(text) else { return };
    let Ok(fields) = validate::object::<Fields>(args.first().copied()) else { return };
    for (field, value) in [("userId", fields.user_id), ("roomName", fields.room_name), ("targetUserId", fields.target_user_id)] {
        if let Ok(name) = validate::name(field, value) {
            assert_name(&name);
        }
    }
    if let Ok(message) = validate::message(fields.message) {
        assert!(message.get() != "null" && message.get() != "\"\"");
    }
    if let Ok(kind) = validate::message_type(fields.message_type) {
        assert!(validate::MESSAGE_TYPES.contains(&kind));
    }
    if let Ok(event) = validate::custom_event_name(fields.event) {
        assert_name(&event);
        assert!(!validate::SERVER_EVENTS.contains(&event.as_str()) && !validate::CLIENT_RESERVED_EVENTS.contains(&event.as_str()));
    }
    if let Ok(token) = validate::string("token", fields.token) {
        let jwt = Authenticator::new(Some("fuzzing secret"));
        assert!(jwt.identify(Some(&token), None).is_err(), "an unsigned token was accepted: {token:?}");
    }
}

fn assert_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= validate::MAX_NAME_BYTES, "name of {} bytes", name.len());
    assert!(!name.chars().any(|c| c.is_ascii_control()), "name with a control character: {name:?}");
}

/// The head of a connection's first request, from arbitrary bytes.
///
/// Properties: an upgrade's head ends within the bytes, every shorter
/// prefix of it is `Incomplete` and the head alone reads the same; its
/// answer is a 101 with a 28-character accept key.
pub fn upgrade_head(data: &[u8]) {
    let Head::Upgrade(upgrade) = http_upgrade::parse(data) else { return };
    assert!(upgrade.head_len <= data.len());
    assert_eq!(http_upgrade::parse(&data[..upgrade.head_len]), http_upgrade::parse(data), "the head alone reads differently");
    for cut in [0, upgrade.head_len / 2, upgrade.head_len.saturating_sub(1)] {
        if cut < upgrade.head_len {
            assert_eq!(http_upgrade::parse(&data[..cut]), Head::Incomplete, "prefix of {cut} bytes");
        }
    }
    let response = upgrade.response();
    let text = std::str::from_utf8(&response).expect("the 101 is ASCII");
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n") && text.ends_with("\r\n\r\n"));
    let accept = text.split("sec-websocket-accept: ").nth(1).and_then(|rest| rest.split("\r\n").next());
    assert_eq!(accept.map(str::len), Some(28));
}

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
//!   payload checks of SPEC §2 and the JWT check ([`client_event`]);
//! - a session's frames put together into packets with their binary
//!   attachments ([`socketio_binary`]);
//! - and, for backends, the body of an `/api` publish route ([`api_body`]).

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::{self, Route};
use crate::app::auth::Authenticator;
use crate::app::validate;
use crate::protocol::engineio::{self, PayloadPacket};
use crate::protocol::http_upgrade::{self, Head};
use crate::protocol::socketio::{self, BinaryPacket, Packet, PacketError, PacketType, ReassemblyError, Reassembler, Reply};
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

pub use crate::protocol::wsframe::client_frame;

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

/// A frame of a session, as [`socketio_binary`] reads its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An Engine.IO message's data (a Socket.IO packet).
    Text(String),
    /// A binary attachment.
    Binary(Vec<u8>),
}

/// The bytes [`socketio_binary`] reads as `frames`.
pub fn binary_input(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let (kind, bytes) = match frame {
            Frame::Text(text) => (0, text.as_bytes()),
            Frame::Binary(data) => (1, &data[..]),
        };
        let len = u16::try_from(bytes.len()).expect("frames of at most 64 KiB");
        if len < 127 {
            out.push((len as u8) << 1 | kind);
        } else {
            out.push(127 << 1 | kind);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(bytes);
    }
    out
}

/// A session's frames from arbitrary bytes: each frame is a head byte
/// (bit 0: binary; bits 1–7: the length, 127 meaning "in the next two
/// bytes, big-endian") and then its bytes; the last one may be cut short.
/// A text frame that is not UTF-8 ends the input (the WebSocket layer
/// refuses it before).
fn frames_of(mut data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let [head, rest @ ..] = data {
        let (len, rest) = match (*head >> 1, rest) {
            (127, [hi, lo, rest @ ..]) => (u16::from_be_bytes([*hi, *lo]) as usize, rest),
            (127, _) => break,
            (len, rest) => (len as usize, rest),
        };
        let (bytes, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        if head & 1 == 1 {
            frames.push(Frame::Binary(bytes.to_vec()));
        } else {
            let Ok(text) = std::str::from_utf8(bytes) else { break };
            frames.push(Frame::Text(text.to_string()));
        }
    }
    frames
}

/// A session's frames (see [`binary_input`] for the layout) through the
/// [`Reassembler`], in whatever order and however cut short they arrive.
///
/// Properties, against a model of the rule (a binary packet's header, then
/// exactly its count of binary frames, nothing in between): every packet
/// comes out when the model says and is what the model built; a frame out
/// of turn is refused with the model's error, and the stream ends there;
/// a stream that stops early leaves the reassembler waiting and nothing
/// out; at most 16 attachments; a placeholder is accepted exactly when it
/// names an attachment; and a complete packet encoded again
/// (`payload_frames`) reassembles to the same packet.
pub fn socketio_binary(data: &[u8]) {
    let mut reassembler = Reassembler::default();
    // The model: the header waiting and the attachments it needs.
    let mut waiting: Option<(BinaryPacket, usize)> = None;
    for frame in frames_of(data) {
        match frame {
            Frame::Text(text) => {
                let step = reassembler.text(&text);
                if waiting.is_some() {
                    assert_eq!(step, Err(ReassemblyError::ExpectedAttachment));
                    return;
                }
                match socketio::decode(&text) {
                    Err(error) => {
                        assert_eq!(step, Err(ReassemblyError::Packet(error)));
                        return;
                    }
                    Ok(packet) if matches!(packet.kind, PacketType::BinaryEvent | PacketType::BinaryAck) && packet.attachments > 0 => {
                        assert_eq!(step, Ok(None), "{text:?} is a binary header");
                        let header = BinaryPacket {
                            kind: packet.kind,
                            namespace: packet.namespace.to_string(),
                            ack_id: packet.ack_id,
                            data: packet.data.to_string(),
                            attachments: Vec::new(),
                        };
                        waiting = Some((header, packet.attachments));
                    }
                    Ok(packet) => {
                        assert_eq!(step, Ok(Some(socketio::decode(&text).expect("decoded above"))));
                        check_arguments(&packet, &[]);
                    }
                }
            }
            Frame::Binary(bytes) => {
                let step = reassembler.binary(Bytes::from(bytes.clone()));
                let Some((header, needed)) = waiting.as_mut() else {
                    assert_eq!(step, Err(ReassemblyError::UnexpectedBinary));
                    return;
                };
                header.attachments.push(Bytes::from(bytes));
                if header.attachments.len() < *needed {
                    assert_eq!(step, Ok(None));
                } else {
                    let (expected, _) = waiting.take().expect("checked above");
                    let complete = step.expect("the last attachment completes the packet").expect("a complete packet");
                    assert_eq!(complete, expected);
                    check_arguments(&complete.packet(), &complete.attachments);
                    check_binary_round_trip(&complete);
                }
            }
        }
        assert_eq!(reassembler.is_waiting(), waiting.is_some());
    }
}

/// A packet's arguments as JSON values (an event's without its name), if
/// its data is an event or an ack.
fn arguments(packet: &Packet<'_>) -> Option<(Option<String>, Vec<Value>)> {
    match packet.kind {
        PacketType::Event | PacketType::BinaryEvent => {
            let (name, raw) = socketio::parse_event(packet.data).ok()?;
            let args = raw.iter().map(|raw| serde_json::from_str(raw.get())).collect::<Result<_, _>>().ok()?;
            Some((Some(name), args))
        }
        PacketType::Ack | PacketType::BinaryAck => Some((None, serde_json::from_str(packet.data).ok()?)),
        _ => None,
    }
}

/// Every `num` of a `{"_placeholder":true}` object in `value` (`None`
/// where it is not a whole number).
fn placeholder_nums(value: &Value, out: &mut Vec<Option<u64>>) {
    match value {
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                out.push(map.get("num").and_then(Value::as_u64));
            } else {
                map.values().for_each(|v| placeholder_nums(v, out));
            }
        }
        Value::Array(items) => items.iter().for_each(|v| placeholder_nums(v, out)),
        _ => {}
    }
}

fn check_arguments(packet: &Packet<'_>, attachments: &[Bytes]) {
    assert!(attachments.len() <= socketio::MAX_ATTACHMENTS, "{} attachments", attachments.len());
    assert_eq!(packet.attachments, attachments.len());
    let Some((_, args)) = arguments(packet) else { return };
    let mut nums = Vec::new();
    args.iter().for_each(|arg| placeholder_nums(arg, &mut nums));
    let points_somewhere = nums.iter().all(|num| num.is_some_and(|n| n < attachments.len() as u64));
    let checked = socketio::check_placeholders(&args, attachments.len());
    assert_eq!(checked.is_ok(), points_somewhere, "placeholders {nums:?} with {} attachments", attachments.len());
    if let Err(error) = checked {
        assert_eq!(error, PacketError::BadPlaceholder);
    }
}

/// `complete` encoded as the server encodes a handler's reply, and put
/// together again: the same packet, the same values.
fn check_binary_round_trip(complete: &BinaryPacket) {
    let Some((name, args)) = arguments(&complete.packet()) else { return };
    let reply = match (&name, complete.ack_id) {
        (Some(name), _) => Reply::Event(name),
        (None, Some(id)) => Reply::Ack(id),
        // socket.io-parser would not send an ack without an id; nothing to encode.
        (None, None) => return,
    };
    let frames = socketio::payload_frames(&complete.namespace, reply, &args, &complete.attachments);
    let mut again = Reassembler::default();
    let payload = frames[0].payload();
    let text = std::str::from_utf8(&payload).expect("server frames are UTF-8");
    let Ok(engineio::Packet::Message(inner)) = engineio::decode(text) else { panic!("not a message: {text:?}") };
    assert_eq!(again.text(inner), Ok(None), "the header of {text:?} waits for its attachments");
    let mut out = None;
    for frame in &frames[1..] {
        assert!(out.is_none(), "complete before its last attachment");
        out = again.binary(frame.payload()).expect("attachments in turn");
    }
    let out = out.expect("the last attachment completes the packet");
    assert_eq!((out.kind, &out.namespace, &out.attachments), (complete.kind, &complete.namespace, &complete.attachments));
    // Events carry no ack id when the server emits them.
    assert_eq!(out.ack_id, if name.is_some() { None } else { complete.ack_id });
    assert_eq!(arguments(&out.packet()), Some((name, args)), "the arguments changed on the way");
}

/// The routes [`api_body`] picks from by its first byte.
fn api_route(selector: u8) -> Route {
    match selector % 5 {
        0 => Route::Broadcast,
        1 => Route::RoomBroadcast("general".into()),
        2 => Route::UserSend("user123".into()),
        3 => Route::SocketSend("aBcDeFgHiJkLmNoPqRsTuV".into()),
        _ => Route::Batch,
    }
}

/// The body of an `/api` publish route from arbitrary bytes (the first
/// byte picks the route: broadcast, room, user, socket, batch).
///
/// Properties: a body is either accepted whole or refused 400
/// `VALIDATION_ERROR` (413 `PAYLOAD_TOO_LARGE` only past the size limit);
/// an accepted one holds one publish (a batch: at most 1,000), each with
/// an event name the client rules allow, data that is JSON, `exclude` on
/// broadcasts only; and the publishes written again as a body read back
/// the same.
pub fn api_body(data: &[u8]) {
    let [selector, body @ ..] = data else { return };
    let route = api_route(*selector);
    let _accepted_or_refused = check_api_body(&route, body);
}

/// [`api_body`]'s properties for one route and body; the publishes, if accepted.
pub(crate) fn check_api_body(route: &Route, body: &[u8]) -> Result<usize, (u16, &'static str)> {
    let publishes = match api::parse_publishes(route, body) {
        Ok(publishes) => publishes,
        Err(error) => {
            let expected = if body.len() > api::MAX_BODY_BYTES { (413, "PAYLOAD_TOO_LARGE") } else { (400, "VALIDATION_ERROR") };
            assert_eq!((error.status.as_u16(), error.code), expected, "{}", error.message);
            assert!(!error.message.is_empty());
            return Err(expected);
        }
    };
    assert!(body.len() <= api::MAX_BODY_BYTES);
    if *route == Route::Batch {
        assert!(publishes.len() <= api::MAX_BATCH);
    } else {
        assert_eq!(publishes.len(), 1);
        assert_eq!(&publishes[0].route, route);
    }
    for publish in &publishes {
        assert_name(&publish.event);
        assert!(!validate::CLIENT_RESERVED_EVENTS.contains(&publish.event.as_str()));
        assert!(serde_json::from_str::<&RawValue>(publish.data.get()).is_ok());
        assert!(publish.exclude.is_empty() || matches!(publish.route, Route::Broadcast | Route::RoomBroadcast(_)));
    }
    // Written again (as a batch, or as the one route's body), read back the
    // same; `data` byte for byte, as the server relays it (a comparison of
    // parsed values would fail on serde_json's float parsing, which may
    // differ by one unit in the last place for long literals).
    let again = match route {
        Route::Batch => {
            let entries: Vec<PublishOut> = publishes.iter().map(|p| PublishOut::of(p, true)).collect();
            format!("{{\"publishes\":{}}}", serde_json::to_string(&entries).expect("plain data"))
        }
        _ => serde_json::to_string(&PublishOut::of(&publishes[0], false)).expect("plain data"),
    };
    let reread = api::parse_publishes(route, again.as_bytes()).expect("a body written from accepted publishes is accepted");
    assert_eq!(reread.len(), publishes.len());
    for (a, b) in publishes.iter().zip(&reread) {
        assert_eq!((&a.route, &a.event, &a.exclude, a.data.get()), (&b.route, &b.event, &b.exclude, b.data.get()));
    }
    Ok(publishes.len())
}

/// A publish written back as a body: a batch entry (with its scope) or a
/// route's body.
#[derive(Serialize)]
struct PublishOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'static str>,
    #[serde(rename = "roomName", skip_serializing_if = "Option::is_none")]
    room_name: Option<&'a str>,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "socketId", skip_serializing_if = "Option::is_none")]
    socket_id: Option<&'a str>,
    event: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    exclude: &'a [String],
}

impl<'a> PublishOut<'a> {
    fn of(publish: &'a api::Publish<'a>, in_batch: bool) -> PublishOut<'a> {
        let mut out = PublishOut {
            scope: None,
            room_name: None,
            user_id: None,
            socket_id: None,
            event: &publish.event,
            data: publish.data,
            exclude: &publish.exclude,
        };
        if in_batch {
            out.scope = Some(match &publish.route {
                Route::Broadcast => "all",
                Route::RoomBroadcast(room) => {
                    out.room_name = Some(room);
                    "room"
                }
                Route::UserSend(user) => {
                    out.user_id = Some(user);
                    "user"
                }
                Route::SocketSend(socket) => {
                    out.socket_id = Some(socket);
                    "socket"
                }
                _ => unreachable!("batch entries are single publishes"),
            });
        }
        out
    }
}

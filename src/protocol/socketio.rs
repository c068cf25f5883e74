//! Socket.IO protocol v5 packets, without I/O.
//!
//! A packet is `<type>[<attachments>-][<namespace>,][<ack id>][<json>]`:
//! `0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR,
//! `5` BINARY_EVENT, `6` BINARY_ACK. The namespace is omitted when it is `/`.
//! Encoders write whole Engine.IO message frames (`42…`) so that the result
//! can be shared by every recipient.

use bytes::Bytes;
use fastwebsockets::OpCode;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::engineio;
use super::wsframe::{FrameBuilder, OutFrame};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketType {
    fn digit(self) -> u8 {
        b'0' + self as u8
    }
}

/// A decoded packet, borrowing from the Engine.IO message.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: PacketType,
    pub namespace: &'a str,
    pub ack_id: Option<u64>,
    /// Number of binary frames that follow a BINARY_EVENT / BINARY_ACK.
    pub attachments: usize,
    /// The JSON part, unparsed (may be empty).
    pub data: &'a str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty Socket.IO packet")]
    Empty,
    #[error("unknown Socket.IO packet type {0:?}")]
    UnknownType(char),
    #[error("malformed attachment count")]
    BadAttachments,
    #[error("ack id out of range")]
    BadAckId,
    #[error("packet data is not valid JSON for its type")]
    BadData,
    #[error("a binary placeholder points at no attachment")]
    BadPlaceholder,
}

/// Attachments beyond this are refused outright: nobody sends them, and the
/// count decides how many binary frames we swallow.
pub const MAX_ATTACHMENTS: usize = 16;

pub fn decode(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first().ok_or(PacketError::Empty)? {
        b'0' => PacketType::Connect,
        b'1' => PacketType::Disconnect,
        b'2' => PacketType::Event,
        b'3' => PacketType::Ack,
        b'4' => PacketType::ConnectError,
        b'5' => PacketType::BinaryEvent,
        b'6' => PacketType::BinaryAck,
        _ => return Err(PacketError::UnknownType(text.chars().next().unwrap_or('?'))),
    };
    let mut pos = 1;

    let mut attachments = 0;
    if matches!(kind, PacketType::BinaryEvent | PacketType::BinaryAck) {
        let digits = count_digits(&bytes[pos..]);
        if digits == 0 || digits > 2 || bytes.get(pos + digits) != Some(&b'-') {
            return Err(PacketError::BadAttachments);
        }
        attachments = text[pos..pos + digits].parse().map_err(|_| PacketError::BadAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(PacketError::BadAttachments);
        }
        pos += digits + 1;
    }

    let mut namespace = "/";
    if bytes.get(pos) == Some(&b'/') {
        let end = text[pos..].find(',').map_or(text.len(), |i| pos + i);
        namespace = &text[pos..end];
        pos = (end + 1).min(text.len());
    }

    let digits = count_digits(&bytes[pos..]);
    let mut ack_id = None;
    if digits > 0 {
        // Above 2^53 a JavaScript client could not have produced the id.
        let id: u64 = text[pos..pos + digits].parse().map_err(|_| PacketError::BadAckId)?;
        if id > (1 << 53) {
            return Err(PacketError::BadAckId);
        }
        ack_id = Some(id);
        pos += digits;
    }

    let data = &text[pos..];
    let shape_ok = match kind {
        PacketType::Connect => data.is_empty() || data.starts_with('{'),
        PacketType::Disconnect => data.is_empty(),
        PacketType::Event | PacketType::BinaryEvent | PacketType::Ack | PacketType::BinaryAck => {
            data.starts_with('[')
        }
        PacketType::ConnectError => true,
    };
    if !shape_ok {
        return Err(PacketError::BadData);
    }
    Ok(Packet { kind, namespace, ack_id, attachments, data })
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Why a session's frames cannot be put together into packets. Either ends
/// the session: the peer does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReassemblyError {
    #[error("expected a binary attachment")]
    ExpectedAttachment,
    #[error("binary frame without a binary packet")]
    UnexpectedBinary,
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// A BINARY_EVENT / BINARY_ACK with its attachments, owned: it outlives
/// the frames it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPacket {
    pub kind: PacketType,
    pub namespace: String,
    pub ack_id: Option<u64>,
    pub data: String,
    /// The attachments, in the order they arrived (`num` 0 first).
    pub attachments: Vec<Bytes>,
}

impl BinaryPacket {
    /// The packet as [`decode`] gives it, borrowing from this one.
    pub fn packet(&self) -> Packet<'_> {
        Packet {
            kind: self.kind,
            namespace: &self.namespace,
            ack_id: self.ack_id,
            attachments: self.attachments.len(),
            data: &self.data,
        }
    }
}

/// Puts a session's frames together into packets: a binary packet's header
/// (a text frame) is followed by exactly as many binary frames as it
/// counts, with nothing else in between (as socket.io-parser's decoder).
/// What it holds is bounded by the header's count ([`MAX_ATTACHMENTS`]).
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Boxed: rare, and a reassembler sits in every WebSocket connection's
    /// future (8 bytes there rather than a hundred).
    pending: Option<Box<(BinaryPacket, usize)>>,
}

impl Reassembler {
    /// A text frame: its packet when it is complete, `None` when it is a
    /// binary packet's header (its attachments follow).
    pub fn text<'a>(&mut self, text: &'a str) -> Result<Option<Packet<'a>>, ReassemblyError> {
        if self.pending.is_some() {
            return Err(ReassemblyError::ExpectedAttachment);
        }
        let packet = decode(text)?;
        if matches!(packet.kind, PacketType::BinaryEvent | PacketType::BinaryAck) && packet.attachments > 0 {
            let header = BinaryPacket {
                kind: packet.kind,
                namespace: packet.namespace.to_string(),
                ack_id: packet.ack_id,
                data: packet.data.to_string(),
                attachments: Vec::with_capacity(packet.attachments),
            };
            self.pending = Some(Box::new((header, packet.attachments)));
            return Ok(None);
        }
        Ok(Some(packet))
    }

    /// A binary frame: the packet it completes, if it is the last attachment.
    pub fn binary(&mut self, data: Bytes) -> Result<Option<BinaryPacket>, ReassemblyError> {
        let Some((waiting, needed)) = self.pending.as_deref_mut() else {
            return Err(ReassemblyError::UnexpectedBinary);
        };
        waiting.attachments.push(data);
        if waiting.attachments.len() < *needed {
            return Ok(None);
        }
        Ok(self.pending.take().map(|pending| pending.0))
    }

    /// A binary packet's header came and not all its attachments yet.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }
}

/// Checks that every `{"_placeholder":true,"num":n}` among a binary
/// packet's arguments names one of its `attachments` (socket.io-parser's
/// rule: `num` a number, `0 <= num < attachments`). A placeholder that
/// points nowhere would hand an application a hole where it expects bytes.
pub fn check_placeholders(args: &[Value], attachments: usize) -> Result<(), PacketError> {
    fn walk(value: &Value, attachments: usize) -> bool {
        match value {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
                map.get("num").and_then(Value::as_u64).is_some_and(|num| num < attachments as u64)
            }
            Value::Object(map) => map.values().all(|v| walk(v, attachments)),
            Value::Array(items) => items.iter().all(|v| walk(v, attachments)),
            _ => true,
        }
    }
    if args.iter().all(|arg| walk(arg, attachments)) {
        Ok(())
    } else {
        Err(PacketError::BadPlaceholder)
    }
}

/// Splits EVENT data `["name", arg, …]` into the event name and its
/// arguments, left as raw JSON.
pub fn parse_event(data: &str) -> Result<(String, Vec<&RawValue>), PacketError> {
    let mut items: Vec<&RawValue> = serde_json::from_str(data).map_err(|_| PacketError::BadData)?;
    if items.is_empty() {
        return Err(PacketError::BadData);
    }
    let name: String = serde_json::from_str(items[0].get()).map_err(|_| PacketError::BadData)?;
    items.remove(0);
    Ok((name, items))
}

/// Writes the packet header (`<type>[<n>-][<nsp>,][<id>]`) after the Engine.IO `4`.
fn header(kind: PacketType, attachments: usize, namespace: &str, ack_id: Option<u64>, hint: usize) -> FrameBuilder {
    let mut builder = engineio::message_builder(namespace.len() + 24 + hint);
    let buf = builder.buf();
    buf.push(kind.digit());
    if attachments > 0 {
        buf.extend_from_slice(attachments.to_string().as_bytes());
        buf.push(b'-');
    }
    if namespace != "/" {
        buf.extend_from_slice(namespace.as_bytes());
        buf.push(b',');
    }
    if let Some(id) = ack_id {
        buf.extend_from_slice(id.to_string().as_bytes());
    }
    builder
}

/// `42["event",data]`: an event with one argument.
pub fn event_frame(namespace: &str, event: &str, data: &impl Serialize) -> OutFrame {
    try_event_frame(namespace, event, data).expect("serializing plain data cannot fail")
}

/// Like [`event_frame`], for data whose serialization may fail (maps with
/// non-string keys and the like).
pub fn try_event_frame(namespace: &str, event: &str, data: &impl Serialize) -> Result<OutFrame, serde_json::Error> {
    let mut builder = header(PacketType::Event, 0, namespace, None, event.len() + 64);
    let buf = builder.buf();
    buf.push(b'[');
    serde_json::to_writer(&mut *buf, event)?;
    buf.push(b',');
    serde_json::to_writer(&mut *buf, data)?;
    buf.push(b']');
    Ok(builder.finish(OpCode::Text))
}

/// What a payload answers: an event to emit, or an ack to a client's request.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    Event(&'a str),
    Ack(u64),
}

/// An event or ack with any arguments, and binary attachments if there are
/// any: `45<n>-…` / `46<n>-…` followed by one binary frame per attachment
/// (the arguments already hold the `_placeholder` objects that refer to them).
pub fn payload_frames(namespace: &str, reply: Reply<'_>, args: &[serde_json::Value], attachments: &[bytes::Bytes]) -> Vec<OutFrame> {
    let (kind, ack_id) = match (reply, attachments.is_empty()) {
        (Reply::Event(_), true) => (PacketType::Event, None),
        (Reply::Event(_), false) => (PacketType::BinaryEvent, None),
        (Reply::Ack(id), true) => (PacketType::Ack, Some(id)),
        (Reply::Ack(id), false) => (PacketType::BinaryAck, Some(id)),
    };
    let mut builder = header(kind, attachments.len(), namespace, ack_id, 64);
    let buf = builder.buf();
    let mut items: Vec<&serde_json::Value> = Vec::with_capacity(args.len() + 1);
    let event_name;
    if let Reply::Event(event) = reply {
        event_name = serde_json::Value::String(event.to_string());
        items.push(&event_name);
    }
    items.extend(args);
    serde_json::to_writer(&mut *buf, &items).expect("JSON values always serialize");
    let mut frames = vec![builder.finish(OpCode::Text)];
    frames.extend(attachments.iter().map(|data| OutFrame::new(OpCode::Binary, data)));
    frames
}

/// `42["event",<raw json>]`: relays a client's argument without re-encoding it.
pub fn event_frame_raw(namespace: &str, event: &str, data: &RawValue) -> OutFrame {
    let mut builder = header(PacketType::Event, 0, namespace, None, event.len() + data.get().len() + 8);
    let buf = builder.buf();
    buf.push(b'[');
    serde_json::to_writer(&mut *buf, event).expect("writing JSON to a Vec cannot fail");
    buf.push(b',');
    buf.extend_from_slice(data.get().as_bytes());
    buf.push(b']');
    builder.finish(OpCode::Text)
}

/// `43<id>[data]`: the answer to a client's ack request.
pub fn ack_frame(namespace: &str, ack_id: u64, data: &impl Serialize) -> OutFrame {
    let mut builder = header(PacketType::Ack, 0, namespace, Some(ack_id), 64);
    let buf = builder.buf();
    buf.push(b'[');
    serde_json::to_writer(&mut *buf, data).expect("serializing plain data cannot fail");
    buf.push(b']');
    builder.finish(OpCode::Text)
}

/// `40{"sid":…}`: the CONNECT reply.
pub fn connect_frame(namespace: &str, socket_id: &str) -> OutFrame {
    let mut builder = header(PacketType::Connect, 0, namespace, None, 40);
    #[derive(Serialize)]
    struct Body<'a> {
        sid: &'a str,
    }
    serde_json::to_writer(&mut *builder.buf(), &Body { sid: socket_id })
        .expect("writing JSON to a Vec cannot fail");
    builder.finish(OpCode::Text)
}

/// `44{"message":…}`: a refused CONNECT.
pub fn connect_error_frame(namespace: &str, message: &str) -> OutFrame {
    let mut builder = header(PacketType::ConnectError, 0, namespace, None, message.len() + 16);
    serde_json::to_writer(&mut *builder.buf(), &serde_json::json!({ "message": message }))
        .expect("writing JSON to a Vec cannot fail");
    builder.finish(OpCode::Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &OutFrame) -> String {
        String::from_utf8(frame.payload().to_vec()).unwrap()
    }

    #[test]
    fn decodes_packets_of_every_shape() {
        assert_eq!(
            decode("0").unwrap(),
            Packet { kind: PacketType::Connect, namespace: "/", ack_id: None, attachments: 0, data: "" }
        );
        assert_eq!(decode("0{\"token\":\"t\"}").unwrap().data, "{\"token\":\"t\"}");
        let p = decode("0/admin,{\"a\":1}").unwrap();
        assert_eq!((p.namespace, p.data), ("/admin", "{\"a\":1}"));
        assert_eq!(decode("0/admin").unwrap().namespace, "/admin");
        let p = decode("2/chat,12[\"hi\",1]").unwrap();
        assert_eq!((p.kind, p.namespace, p.ack_id, p.data), (PacketType::Event, "/chat", Some(12), "[\"hi\",1]"));
        let p = decode("21[\"ping\"]").unwrap();
        assert_eq!((p.ack_id, p.data), (Some(1), "[\"ping\"]"));
        let p = decode("51-[\"up\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        assert_eq!(decode("1").unwrap().kind, PacketType::Disconnect);
        assert_eq!(decode("3[\"ok\"]").unwrap().kind, PacketType::Ack);
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(decode(""), Err(PacketError::Empty));
        assert_eq!(decode("9"), Err(PacketError::UnknownType('9')));
        assert_eq!(decode("x[]"), Err(PacketError::UnknownType('x')));
        assert_eq!(decode("5[\"a\"]"), Err(PacketError::BadAttachments));
        assert_eq!(decode("599-[\"a\"]"), Err(PacketError::BadAttachments));
        assert_eq!(decode("299999999999999999999[\"a\"]"), Err(PacketError::BadAckId));
        assert_eq!(decode("2{\"a\":1}"), Err(PacketError::BadData));
        assert_eq!(decode("2"), Err(PacketError::BadData));
        assert_eq!(decode("0[1]"), Err(PacketError::BadData));
        assert_eq!(decode("1garbage"), Err(PacketError::BadData));
    }

    #[test]
    fn splits_event_name_from_arguments() {
        let (name, args) = parse_event("[\"join-room\",{\"roomName\":\"a\"},2]").unwrap();
        assert_eq!(name, "join-room");
        assert_eq!(args.iter().map(|a| a.get()).collect::<Vec<_>>(), vec!["{\"roomName\":\"a\"}", "2"]);
        for bad in ["[]", "[1]", "[\"a\"", "[null,1]"] {
            assert_eq!(parse_event(bad).unwrap_err(), PacketError::BadData, "{bad}");
        }
        assert_eq!(parse_event("[\"\\u00e9\"]").unwrap().0, "é");
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(text(&event_frame("/", "pong", &serde_json::json!({"t":1}))), "42[\"pong\",{\"t\":1}]");
        assert_eq!(text(&event_frame("/chat", "a\"b", &1)), "42/chat,[\"a\\\"b\",1]");
        let raw = RawValue::from_string("{\"x\": [1, 2]}".into()).unwrap();
        assert_eq!(text(&event_frame_raw("/", "relay", &raw)), "42[\"relay\",{\"x\": [1, 2]}]");
        assert_eq!(text(&ack_frame("/", 7, &serde_json::json!({"success":true}))), "437[{\"success\":true}]");
        assert_eq!(text(&connect_frame("/", "S1")), "40{\"sid\":\"S1\"}");
        assert_eq!(text(&connect_error_frame("/x", "Invalid namespace")), "44/x,{\"message\":\"Invalid namespace\"}");
    }

    #[test]
    fn encoded_events_decode_back() {
        let frame = event_frame("/chat", "user-joined", &serde_json::json!({"roomName":"r"}));
        let payload = text(&frame);
        let engine::Packet::Message(inner) = engine::decode(&payload).unwrap() else { panic!() };
        let packet = decode(inner).unwrap();
        assert_eq!(packet.namespace, "/chat");
        assert_eq!(parse_event(packet.data).unwrap().0, "user-joined");
    }

    use super::engineio as engine;

    #[test]
    fn binary_packets_take_their_attachments_in_turn() {
        let mut frames = Reassembler::default();
        assert_eq!(frames.text("21[\"ping\"]").unwrap().map(|p| p.ack_id), Some(Some(1)));
        assert_eq!(frames.text("52-/x,3[\"up\",{\"_placeholder\":true,\"num\":1}]"), Ok(None));
        assert_eq!(frames.binary(Bytes::from_static(b"a")), Ok(None));
        let complete = frames.binary(Bytes::from_static(b"b")).unwrap().unwrap();
        assert_eq!((complete.packet().attachments, complete.packet().namespace, complete.ack_id), (2, "/x", Some(3)));
        assert_eq!(complete.attachments, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(!frames.is_waiting());
        assert_eq!(frames.binary(Bytes::new()), Err(ReassemblyError::UnexpectedBinary));
        let mut frames = Reassembler::default();
        assert_eq!(frames.text("51-[\"up\"]"), Ok(None));
        assert_eq!(frames.text("2[\"x\"]"), Err(ReassemblyError::ExpectedAttachment));
        assert_eq!(Reassembler::default().text("517-[]"), Err(ReassemblyError::Packet(PacketError::BadAttachments)));
    }

    #[test]
    fn placeholders_must_name_an_attachment() {
        let placeholder = |num: serde_json::Value| serde_json::json!({"_placeholder": true, "num": num});
        assert_eq!(check_placeholders(&[placeholder(1.into()), serde_json::json!([placeholder(0.into())])], 2), Ok(()));
        for bad in [2.into(), (-1).into(), 0.5.into(), "0".into(), serde_json::Value::Null] {
            assert_eq!(check_placeholders(&[serde_json::json!({"a": [placeholder(bad.clone())]})], 2), Err(PacketError::BadPlaceholder), "{bad}");
        }
        // Not a placeholder unless `_placeholder` is `true`; plain events may hold anything.
        assert_eq!(check_placeholders(&[serde_json::json!({"_placeholder": 1, "num": 9})], 0), Ok(()));
    }

    #[test]
    fn payload_frames_carry_binary_attachments() {
        let placeholder = serde_json::json!({"_placeholder": true, "num": 0});
        let frames = payload_frames("/", Reply::Event("back"), std::slice::from_ref(&placeholder), &[bytes::Bytes::from_static(&[1, 2])]);
        assert_eq!(text(&frames[0]), "451-[\"back\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!(frames[1].wire()[0], 0x82);
        assert_eq!(&frames[1].payload()[..], &[1, 2]);
        let frames = payload_frames("/x", Reply::Ack(789), &[placeholder], &[bytes::Bytes::from_static(&[3])]);
        assert_eq!(text(&frames[0]), "461-/x,789[{\"_placeholder\":true,\"num\":0}]");
        let frames = payload_frames("/", Reply::Ack(4), &[serde_json::json!(1)], &[]);
        assert_eq!(frames.len(), 1);
        assert_eq!(text(&frames[0]), "434[1]");
    }
}

//! Property tests of the wire codecs (proptest, on stable, in `cargo test`):
//! the decoders of [`crate::fuzzing`] on arbitrary and on mutated input, and
//! round trips — what the server encodes (or a client would) decodes back
//! to what was encoded, however the bytes are split. `PROPTEST_CASES=10000`
//! runs more cases than the default 256.

use bytes::Bytes;
use fastwebsockets::OpCode;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;

use crate::api::{self, Route};
use crate::app::validate;
use crate::fuzzing::{self, client_frame, decode_stream};
use crate::protocol::engineio::{self, PayloadPacket};
use crate::protocol::http_upgrade::{self, Head};
use crate::protocol::socketio::{self, PacketType, Reply};
use crate::protocol::wsframe::{FrameError, Message, OutFrame};

/// A message a client sends, as the test builds it.
#[derive(Debug, Clone)]
enum Sent {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl Sent {
    fn expected(&self) -> Message {
        match self {
            Sent::Text(text) => Message::Text(Bytes::copy_from_slice(text.as_bytes())),
            Sent::Binary(data) => Message::Binary(Bytes::copy_from_slice(data)),
            Sent::Ping(data) => Message::Ping(Bytes::copy_from_slice(data)),
            Sent::Pong(_) => Message::Pong,
            Sent::Close(close) => Message::Close { code: close.as_ref().map(|(code, _)| *code) },
        }
    }
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        3 => ".{0,120}".prop_map(Sent::Text),
        2 => vec(any::<u8>(), 0..300).prop_map(Sent::Binary),
        1 => vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
        1 => vec(any::<u8>(), 0..=125).prop_map(Sent::Pong),
        1 => option::of((1000u16..5000, ".{0,30}")).prop_map(Sent::Close),
    ]
}

/// How one message goes on the wire: where its payload is cut into
/// fragments, with a ping between fragments or not, and the frames' masks.
#[derive(Debug, Clone)]
struct Framing {
    cuts: Vec<(usize, Option<Vec<u8>>)>,
    mask: [u8; 4],
}

fn framing() -> impl Strategy<Value = Framing> {
    (vec((any::<usize>(), option::of(vec(any::<u8>(), 0..8))), 0..4), any::<[u8; 4]>())
        .prop_map(|(cuts, mask)| Framing { cuts, mask })
}

/// The client's bytes for `messages`, and the messages the decoder must
/// give for them, in order (a ping between fragments comes out first).
fn encode(messages: &[(Sent, Framing)]) -> (Vec<u8>, Vec<Message>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for (message, framing) in messages {
        let mask = framing.mask;
        let (opcode, payload): (u8, &[u8]) = match message {
            Sent::Text(text) => (1, text.as_bytes()),
            Sent::Binary(data) => (2, data),
            Sent::Ping(data) => (9, data),
            Sent::Pong(data) => (10, data),
            Sent::Close(close) => {
                let payload = close.as_ref().map_or_else(Vec::new, |(code, reason)| [&code.to_be_bytes()[..], reason.as_bytes()].concat());
                wire.extend(client_frame(true, 8, mask, &payload));
                expected.push(message.expected());
                continue;
            }
        };
        if opcode >= 8 {
            wire.extend(client_frame(true, opcode, mask, payload));
        } else {
            let mut points: Vec<usize> = framing.cuts.iter().map(|(at, _)| at % (payload.len() + 1)).collect();
            points.sort_unstable();
            let mut start = 0;
            let mut first = true;
            for ((_, ping), &end) in framing.cuts.iter().zip(&points) {
                wire.extend(client_frame(false, if first { opcode } else { 0 }, mask, &payload[start..end]));
                first = false;
                start = end;
                if let Some(ping) = ping {
                    wire.extend(client_frame(true, 9, mask, ping));
                    expected.push(Message::Ping(Bytes::copy_from_slice(ping)));
                }
            }
            wire.extend(client_frame(true, if first { opcode } else { 0 }, mask, &payload[start..]));
        }
        expected.push(message.expected());
    }
    (wire, expected)
}

/// `bytes` cut at the given points (taken modulo its length).
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut start = 0;
    let mut out = Vec::new();
    for end in points.into_iter().chain([bytes.len()]) {
        out.push(bytes[start..end].to_vec());
        start = end;
    }
    out
}

/// A server frame as a client would send it: the mask bit and a mask added.
fn masked(frame: &OutFrame, mask: [u8; 4]) -> Vec<u8> {
    let wire = frame.wire();
    let payload = frame.payload();
    let head = &wire[..wire.len() - payload.len()];
    let mut out = vec![head[0], head[1] | 0x80];
    out.extend_from_slice(&head[2..]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// JSON values without floats (serde_json does not promise float round trips).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_string()), "/[a-zA-Z0-9_.~-]{1,12}"]
}

/// What a payload answers: an event (`Ok`, its name) or an ack (`Err`, its id).
fn event_or_ack() -> impl Strategy<Value = Result<String, u64>> {
    prop_oneof![".{0,20}".prop_map(Ok), (0u64..=(1 << 53)).prop_map(Err)]
}

/// The Socket.IO packet inside a server frame's Engine.IO message.
fn sio_text(frame: &OutFrame) -> String {
    let text = String::from_utf8(frame.payload().to_vec()).expect("server frames are UTF-8");
    let engineio::Packet::Message(inner) = engineio::decode(&text).expect("an Engine.IO packet") else {
        panic!("not an Engine.IO message: {text:?}")
    };
    inner.to_string()
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).expect("the encoder writes JSON")
}

proptest! {
    // ---- WebSocket frames ----

    #[test]
    fn websocket_decoder_on_arbitrary_bytes(data in vec(any::<u8>(), 0..1500)) {
        fuzzing::websocket_frames(&data);
    }

    /// Valid streams with a few bytes changed reach deeper than random bytes.
    #[test]
    fn websocket_decoder_on_mutated_streams(
        messages in vec((sent(), framing()), 1..6),
        mutations in vec((any::<usize>(), 1u8..=255), 1..4),
        settings in any::<[u8; 3]>(),
    ) {
        let (mut wire, _) = encode(&messages);
        for (at, xor) in mutations {
            if !wire.is_empty() {
                let at = at % wire.len();
                wire[at] ^= xor;
            }
        }
        fuzzing::websocket_frames(&[&settings[..], &wire].concat());
    }

    /// Whatever the fragmentation, interleaved pings, masks and TCP
    /// segmentation, the decoder gives back exactly the messages sent.
    #[test]
    fn websocket_messages_round_trip(messages in vec((sent(), framing()), 0..8), cuts in vec(any::<usize>(), 0..12)) {
        let (wire, expected) = encode(&messages);
        let pieces = pieces(&wire, &cuts);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (got, error) = decode_stream(1000, &pieces);
        prop_assert_eq!(error, None);
        prop_assert_eq!(got, expected);
    }

    /// A message over the limit is refused, however it is fragmented; one
    /// at the limit passes.
    #[test]
    fn the_limit_holds_for_whole_messages(len in 0usize..600, limit in 1usize..600, framing in framing(), binary in any::<bool>()) {
        let message = if binary { Sent::Binary(vec![7; len]) } else { Sent::Text("a".repeat(len)) };
        let (wire, expected) = encode(&[(message, framing)]);
        let (got, error) = decode_stream(limit, &[&wire]);
        if len <= limit {
            prop_assert_eq!(error, None);
            prop_assert_eq!(got, expected);
        } else {
            prop_assert!(matches!(error, Some(FrameError::TooBig { .. })), "{:?}", error);
            // Pings between the fragments may come out before the refusal; the message never does.
            prop_assert!(got.iter().all(|m| matches!(m, Message::Ping(_))));
        }
    }

    /// What the server sends, masked as a client would, decodes to itself;
    /// its head has the shortest length encoding.
    #[test]
    fn server_frames_round_trip(text in ".{0,300}", data in vec(any::<u8>(), 0..70_000), mask in any::<[u8; 4]>()) {
        for (opcode, payload, message) in [
            (OpCode::Text, text.as_bytes(), Message::Text(Bytes::copy_from_slice(text.as_bytes()))),
            (OpCode::Binary, &data[..], Message::Binary(Bytes::copy_from_slice(&data))),
        ] {
            let frame = OutFrame::new(opcode, payload);
            prop_assert_eq!(&frame.payload()[..], payload);
            let head = match payload.len() { n if n < 126 => 2, n if n < 65536 => 4, _ => 10 };
            prop_assert_eq!(frame.wire().len(), head + payload.len());
            prop_assert_eq!(decode_stream(1 << 20, &[&masked(&frame, mask)]), (vec![message], None));
        }
    }

    #[test]
    fn close_frames_round_trip(code in any::<u16>(), reason in ".{0,80}", mask in any::<[u8; 4]>()) {
        let frame = OutFrame::close(code, &reason);
        prop_assert!(frame.payload().len() <= 125);
        prop_assert!(reason.as_bytes().starts_with(&frame.payload()[2..]));
        prop_assert_eq!(decode_stream(1000, &[&masked(&frame, mask)]), (vec![Message::Close { code: Some(code) }], None));
    }

    // ---- Engine.IO ----

    #[test]
    fn engineio_decoder_on_arbitrary_text(text in "(.|[0-6]){0,40}", bytes in vec(any::<u8>(), 0..64)) {
        fuzzing::engineio_packet(text.as_bytes());
        fuzzing::engineio_packet(&bytes);
    }

    #[test]
    fn engineio_control_packets_round_trip(kind in prop_oneof![Just(engineio::PING), Just(engineio::PONG)], data in ".{0,40}") {
        let frame = engineio::control_frame(kind, &data);
        let text = String::from_utf8(frame.payload().to_vec()).unwrap();
        let expected = if kind == engineio::PING { engineio::Packet::Ping(&data) } else { engineio::Packet::Pong(&data) };
        prop_assert_eq!(engineio::decode(&text), Ok(expected));
    }

    #[test]
    fn polling_decoder_on_arbitrary_bodies(text in "(.|\u{1e}|b|4|2){0,80}", bytes in vec(any::<u8>(), 0..128)) {
        fuzzing::polling_body(text.as_bytes());
        fuzzing::polling_body(&bytes);
    }

    /// A polling body of text and binary packets splits back into them.
    #[test]
    fn polling_payloads_round_trip(
        packets in vec(prop_oneof!["[0-6a][^\u{1e}]{0,30}".prop_map(Ok), vec(any::<u8>(), 0..40).prop_map(Err)], 1..10),
    ) {
        use base64::Engine as _;
        let encoded: Vec<Bytes> = packets.iter().map(|p| match p {
            Ok(text) => Bytes::copy_from_slice(text.as_bytes()),
            Err(binary) => Bytes::from(format!("b{}", base64::engine::general_purpose::STANDARD.encode(binary))),
        }).collect();
        let body = engineio::encode_payload(&encoded);
        let text = std::str::from_utf8(&body).unwrap();
        let decoded = engineio::decode_payload(text).unwrap();
        let expected: Vec<PayloadPacket> = packets.iter().map(|p| match p {
            Ok(text) => PayloadPacket::Text(text),
            Err(binary) => PayloadPacket::Binary(binary.clone()),
        }).collect();
        prop_assert_eq!(decoded, expected);
        fuzzing::polling_body(&body);
    }

    // ---- Socket.IO ----

    #[test]
    fn socketio_decoder_on_arbitrary_text(
        text in "[0-7]?[0-9]{0,3}-?(/[a-z,]{0,5},?)?[0-9]{0,20}(\\[|\\{)?.{0,40}",
        other in ".{0,60}",
    ) {
        fuzzing::socketio_packet(text.as_bytes());
        fuzzing::socketio_packet(other.as_bytes());
    }

    #[test]
    fn events_and_acks_round_trip(nsp in namespace(), name in ".{0,40}", data in json(), id in 0u64..=(1 << 53)) {
        let event = sio_text(&socketio::event_frame(&nsp, &name, &data));
        let packet = socketio::decode(&event).unwrap();
        prop_assert_eq!((packet.kind, packet.namespace, packet.ack_id, packet.attachments), (PacketType::Event, nsp.as_str(), None, 0));
        let (decoded_name, args) = socketio::parse_event(packet.data).unwrap();
        prop_assert_eq!(decoded_name, name);
        prop_assert_eq!(args.iter().map(|a| parse_json(a.get())).collect::<Vec<_>>(), vec![data.clone()]);

        let ack = sio_text(&socketio::ack_frame(&nsp, id, &data));
        let packet = socketio::decode(&ack).unwrap();
        prop_assert_eq!((packet.kind, packet.namespace, packet.ack_id), (PacketType::Ack, nsp.as_str(), Some(id)));
        prop_assert_eq!(parse_json(packet.data), Value::Array(vec![data]));
    }

    #[test]
    fn connect_replies_round_trip(nsp in namespace(), text in ".{0,40}") {
        let packet_text = sio_text(&socketio::connect_frame(&nsp, &text));
        let packet = socketio::decode(&packet_text).unwrap();
        prop_assert_eq!((packet.kind, packet.namespace), (PacketType::Connect, nsp.as_str()));
        prop_assert_eq!(parse_json(packet.data), serde_json::json!({ "sid": text }));
        let packet_text = sio_text(&socketio::connect_error_frame(&nsp, &text));
        let packet = socketio::decode(&packet_text).unwrap();
        prop_assert_eq!((packet.kind, packet.namespace), (PacketType::ConnectError, nsp.as_str()));
        prop_assert_eq!(parse_json(packet.data), serde_json::json!({ "message": text }));
    }

    /// Events and acks with binary attachments: the header counts them and
    /// the attachments follow as binary frames, in order.
    #[test]
    fn binary_payloads_round_trip(
        nsp in namespace(),
        reply in event_or_ack(),
        args in vec(json(), 0..3),
        attachments in vec(vec(any::<u8>(), 0..50), 0..=16),
    ) {
        let attachments: Vec<Bytes> = attachments.into_iter().map(Bytes::from).collect();
        let as_reply = match &reply { Ok(name) => Reply::Event(name), Err(id) => Reply::Ack(*id) };
        let frames = socketio::payload_frames(&nsp, as_reply, &args, &attachments);
        prop_assert_eq!(frames.len(), 1 + attachments.len());
        let text = sio_text(&frames[0]);
        let packet = socketio::decode(&text).unwrap();
        let kind = match (&reply, attachments.is_empty()) {
            (Ok(_), true) => PacketType::Event,
            (Ok(_), false) => PacketType::BinaryEvent,
            (Err(_), true) => PacketType::Ack,
            (Err(_), false) => PacketType::BinaryAck,
        };
        prop_assert_eq!((packet.kind, packet.namespace, packet.attachments), (kind, nsp.as_str(), attachments.len()));
        prop_assert_eq!(packet.ack_id, reply.as_ref().err().copied());
        let mut items = vec![];
        if let Ok(name) = &reply { items.push(Value::String(name.clone())); }
        items.extend(args);
        prop_assert_eq!(parse_json(packet.data), Value::Array(items));
        for (frame, attachment) in frames[1..].iter().zip(&attachments) {
            prop_assert_eq!(frame.wire()[0], 0x82);
            prop_assert_eq!(&frame.payload(), attachment);
        }
    }

    /// A binary packet's frames, arriving whole, cut short, with a text
    /// frame among its attachments or a binary frame too many: whole, it
    /// comes back as it was sent; cut short, nothing comes out and the
    /// reassembler waits; out of turn, the reassembler refuses.
    #[test]
    fn binary_packets_reassemble_only_in_turn(
        nsp in namespace(),
        reply in event_or_ack(),
        extra in vec(json(), 0..3),
        attachments in vec(vec(any::<u8>(), 0..50), 1..=16),
        mishap in (0usize..4, any::<usize>()),
    ) {
        let attachments: Vec<Bytes> = attachments.into_iter().map(Bytes::from).collect();
        // A placeholder for every attachment, in reverse order, among other arguments.
        let mut args: Vec<Value> = (0..attachments.len()).rev().map(|n| serde_json::json!({ "_placeholder": true, "num": n })).collect();
        args.extend(extra);
        let as_reply = match &reply { Ok(name) => Reply::Event(name), Err(id) => Reply::Ack(*id) };
        let frames = socketio::payload_frames(&nsp, as_reply, &args, &attachments);
        let mut sent: Vec<fuzzing::Frame> = vec![fuzzing::Frame::Text(sio_text(&frames[0]))];
        sent.extend(frames[1..].iter().map(|f| fuzzing::Frame::Binary(f.payload().to_vec())));
        let (what, at) = mishap;
        let at = 1 + at % attachments.len();
        let expected_error = match what {
            0 => None,
            1 => { sent.truncate(at); None }
            2 => { sent.insert(at, fuzzing::Frame::Text("2[\"x\"]".into())); Some(socketio::ReassemblyError::ExpectedAttachment) }
            _ => { sent.push(fuzzing::Frame::Binary(vec![1])); Some(socketio::ReassemblyError::UnexpectedBinary) }
        };
        fuzzing::socketio_binary(&fuzzing::binary_input(&sent));
        let mut reassembler = socketio::Reassembler::default();
        let mut out = Vec::new();
        let mut error = None;
        for frame in &sent {
            let step = match frame {
                fuzzing::Frame::Text(text) => reassembler.text(text).map(|p| p.map(|_| unreachable!("a header first"))),
                fuzzing::Frame::Binary(data) => reassembler.binary(Bytes::copy_from_slice(data)),
            };
            match step {
                Ok(Some(packet)) => out.push(packet),
                Ok(None) => {}
                Err(e) => { error = Some(e); break; }
            }
        }
        prop_assert_eq!(&error, &expected_error);
        if what == 1 {
            prop_assert!(out.is_empty() && reassembler.is_waiting());
        }
        if what == 0 || what == 3 {
            prop_assert_eq!(out.len(), 1);
            let packet = &out[0];
            prop_assert_eq!(&packet.attachments, &attachments);
            prop_assert_eq!(socketio::check_placeholders(&args, attachments.len()), Ok(()));
            prop_assert_eq!((packet.namespace.as_str(), packet.ack_id), (nsp.as_str(), reply.as_ref().err().copied()));
            let mut items = vec![];
            if let Ok(name) = &reply { items.push(Value::String(name.clone())); }
            items.extend(args);
            prop_assert_eq!(parse_json(&packet.data), Value::Array(items));
        }
    }

    /// A placeholder whose `num` names no attachment (too large, negative,
    /// not a whole number, missing) is refused, wherever it sits.
    #[test]
    fn placeholders_that_point_nowhere_are_refused(
        count in 0usize..=16,
        num in prop_oneof![
            // Around the edge (`count` itself) most of the time.
            4 => (0u64..=17).prop_map(Value::from),
            1 => (0u64..1000).prop_map(Value::from),
            1 => (-1000i64..0).prop_map(Value::from),
            1 => Just(serde_json::json!(0.5)),
            1 => Just(serde_json::json!("0")),
            1 => Just(Value::Null),
        ],
        depth in 0usize..4,
        others in vec(json(), 0..3),
    ) {
        let mut bad = serde_json::json!({ "_placeholder": true, "num": num });
        for _ in 0..depth { bad = serde_json::json!({ "nested": [bad] }); }
        let mut args = others;
        args.push(bad);
        let points = num.as_u64().is_some_and(|n| n < count as u64);
        let mut nums = Vec::new();
        for arg in &args[..args.len() - 1] { collect_nums(arg, &mut nums); }
        let others_point = nums.iter().all(|n| n.is_some_and(|n| n < count as u64));
        let checked = socketio::check_placeholders(&args, count);
        prop_assert_eq!(checked.is_ok(), points && others_point);
        // The same through the reassembler and the fuzz target's model, when it fits one frame.
        let text = format!("5{count}-[\"e\",{}]", args.iter().map(Value::to_string).collect::<Vec<_>>().join(","));
        let mut sent = vec![fuzzing::Frame::Text(text)];
        sent.extend((0..count).map(|i| fuzzing::Frame::Binary(vec![i as u8])));
        fuzzing::socketio_binary(&fuzzing::binary_input(&sent));
    }

    // ---- API bodies ----

    #[test]
    fn api_bodies_on_arbitrary_bytes(data in vec(any::<u8>(), 0..300), text in "[0-4](\\{|\"|event|publishes|scope|:|,|\\[|\\]|\\}|.){0,60}") {
        fuzzing::api_body(&data);
        fuzzing::api_body(text.as_bytes());
    }

    /// Valid bodies of every route are accepted and read as written.
    #[test]
    fn valid_api_bodies_round_trip(publishes in vec(api_publish(), 1..6), batch in any::<bool>()) {
        let (route, body) = if batch {
            let entries: Vec<Value> = publishes.iter().map(|(_, entry)| entry.clone()).collect();
            (Route::Batch, serde_json::json!({ "publishes": entries }))
        } else {
            let (route, mut entry) = publishes[0].clone();
            for key in ["scope", "roomName", "userId", "socketId"] { entry.as_object_mut().unwrap().remove(key); }
            (route, entry)
        };
        let text = body.to_string();
        let parsed = api::parse_publishes(&route, text.as_bytes()).map_err(|e| TestCaseError::fail(e.message))?;
        let expected = if batch { &publishes[..] } else { &publishes[..1] };
        prop_assert_eq!(parsed.len(), expected.len());
        for (got, (want_route, entry)) in parsed.iter().zip(expected) {
            prop_assert_eq!(&got.route, want_route);
            prop_assert_eq!(&got.event, entry["event"].as_str().unwrap());
            prop_assert_eq!(parse_json(got.data.get()), entry.get("data").cloned().unwrap_or(Value::Null));
            let exclude: Vec<String> = entry.get("exclude").map(|e| serde_json::from_value(e.clone()).unwrap()).unwrap_or_default();
            prop_assert_eq!(&got.exclude, &exclude);
        }
        prop_assert_eq!(fuzzing::check_api_body(&route, text.as_bytes()), Ok(expected.len()));
    }

    /// One thing wrong in an otherwise valid body refuses it, 400
    /// `VALIDATION_ERROR` (a batch whole).
    #[test]
    fn invalid_api_bodies_are_validation_errors(publishes in vec(api_publish(), 1..4), spoil in 0usize..10, which in any::<usize>(), batch in any::<bool>()) {
        let mut entries: Vec<Value> = publishes.iter().map(|(_, entry)| entry.clone()).collect();
        let i = which % entries.len();
        let entry = entries[i].as_object_mut().unwrap();
        match spoil {
            0 => { entry.remove("event"); }
            1 => { entry.insert("event".into(), serde_json::json!(7)); }
            2 => { entry.insert("event".into(), "".into()); }
            3 => { entry.insert("event".into(), "x".repeat(validate::MAX_NAME_BYTES + 1).into()); }
            4 => { entry.insert("event".into(), "disconnect".into()); }
            5 => { entry.insert("event".into(), "a\u{7}b".into()); }
            6 => { entry.insert("exclude".into(), serde_json::json!([1])); }
            7 => { entry.insert("scope".into(), "user".into()); entry.insert("userId".into(), "u".into()); entry.insert("exclude".into(), serde_json::json!(["x"])); }
            8 => { entry.insert("scope".into(), "room".into()); entry.insert("roomName".into(), "".into()); }
            _ => { entry.insert("scope".into(), "everyone".into()); }
        }
        let (route, text) = if batch || spoil >= 7 {
            (Route::Batch, serde_json::json!({ "publishes": entries }).to_string())
        } else {
            let mut entry = entries[i].clone();
            for key in ["scope", "roomName", "userId", "socketId"] { entry.as_object_mut().unwrap().remove(key); }
            (publishes[i].0.clone(), entry.to_string())
        };
        let error = api::parse_publishes(&route, text.as_bytes()).err();
        prop_assert_eq!(error.as_ref().map(|e| (e.status.as_u16(), e.code)), Some((400, "VALIDATION_ERROR")), "{}", text);
        prop_assert_eq!(fuzzing::check_api_body(&route, text.as_bytes()), Err((400, "VALIDATION_ERROR")));
    }

    // ---- Event payloads ----

    #[test]
    fn payload_checks_on_arbitrary_events(
        name in prop_oneof![Just("join-room".to_string()), ".{0,10}"],
        payload in btree_map(
            prop_oneof![Just("userId"), Just("roomName"), Just("targetUserId"), Just("message"), Just("messageType"), Just("event"), Just("token")],
            prop_oneof![json(), ".{0,140}".prop_map(Value::String)],
            0..5,
        ),
        raw in ".{0,80}",
    ) {
        let payload: serde_json::Map<String, Value> = payload.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let event = serde_json::to_string(&serde_json::json!([name, payload])).unwrap();
        fuzzing::client_event(event.as_bytes());
        fuzzing::client_event(raw.as_bytes());
    }

    /// The name rule of SPEC §2, exactly.
    #[test]
    fn names_are_checked_exactly(name in prop_oneof![".{0,140}", "[a-z\u{0}-\u{1f}\u{7f}é]{0,130}"]) {
        let valid = !name.is_empty() && name.len() <= 128 && !name.chars().any(|c| c.is_ascii_control());
        prop_assert_eq!(validate::check_name("roomName", &name).is_ok(), valid, "{:?}", name);
    }

    // ---- The upgrade request ----

    #[test]
    fn upgrade_parser_on_arbitrary_bytes(data in vec(any::<u8>(), 0..600), text in "(GET|get|POST)? ?[ -~\r\n]{0,300}") {
        fuzzing::upgrade_head(&data);
        fuzzing::upgrade_head(text.as_bytes());
    }

    /// An upgrade request, its headers in any order and any case, with
    /// others among them, is read as the upgrade it is; bytes after its
    /// head are not part of it.
    #[test]
    fn upgrade_requests_are_recognised(
        path in "/[a-z.]{0,12}/?",
        query in "[a-zA-Z0-9=&]{0,30}",
        key in "[A-Za-z0-9+/]{22}==",
        origin in option::of("https?://[a-z]{1,10}(:[0-9]{1,5})?"),
        extra in vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..20),
        order in any::<u64>(),
        upper in any::<u64>(),
        tail in vec(any::<u8>(), 0..40),
    ) {
        let mut headers: Vec<(String, String)> = vec![
            ("Upgrade".into(), "websocket".into()),
            ("Connection".into(), "keep-alive, Upgrade".into()),
            ("Sec-WebSocket-Version".into(), "13".into()),
            ("Sec-WebSocket-Key".into(), key.clone()),
            ("Host".into(), "localhost".into()),
        ];
        if let Some(origin) = &origin { headers.push(("Origin".into(), origin.clone())); }
        headers.extend(extra.into_iter().map(|(n, v)| (n, v.trim().to_string())));
        // A deterministic shuffle and case change from the two seeds.
        let mut rng = fastrand::Rng::with_seed(order);
        rng.shuffle(&mut headers);
        let mut case = fastrand::Rng::with_seed(upper);
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut request = format!("GET {target} HTTP/1.1\r\n");
        for (name, value) in &headers {
            let name: String = name.chars().map(|c| if case.bool() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect();
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let head_len = request.len();
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&tail);
        let Head::Upgrade(upgrade) = http_upgrade::parse(&bytes) else { panic!("not read as an upgrade") };
        prop_assert_eq!((upgrade.path, upgrade.query, upgrade.origin, upgrade.head_len), (path.as_str(), query.as_str(), origin.as_deref(), head_len));
        let response = String::from_utf8(upgrade.response()).unwrap();
        let accept = format!("sec-websocket-accept: {}\r\n", http_upgrade::accept_key(key.as_bytes()));
        prop_assert!(response.contains(&accept));
        fuzzing::upgrade_head(&bytes);
    }
}

/// Every `num` of the placeholders in `value` (as the fuzz target's model counts them).
fn collect_nums(value: &Value, out: &mut Vec<Option<u64>>) {
    match value {
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => out.push(map.get("num").and_then(Value::as_u64)),
        Value::Object(map) => map.values().for_each(|v| collect_nums(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_nums(v, out)),
        _ => {}
    }
}

/// A name the client rules allow and the client does not reserve.
fn api_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é:_ -]{1,40}".prop_filter("not reserved", |n| !validate::CLIENT_RESERVED_EVENTS.contains(&n.as_str()))
}

/// A valid publish: its route and its body as a batch entry.
fn api_publish() -> impl Strategy<Value = (Route, Value)> {
    (0u8..4, api_name(), api_name(), option::of(json()), option::of(vec(".{0,10}", 0..3))).prop_map(|(scope, event, name, data, exclude)| {
        let (route, mut entry) = match scope {
            0 => (Route::Broadcast, serde_json::json!({ "scope": "all" })),
            1 => (Route::RoomBroadcast(name.clone()), serde_json::json!({ "scope": "room", "roomName": name })),
            2 => (Route::UserSend(name.clone()), serde_json::json!({ "scope": "user", "userId": name })),
            _ => (Route::SocketSend(name.clone()), serde_json::json!({ "scope": "socket", "socketId": name })),
        };
        entry["event"] = event.into();
        if let Some(data) = data {
            entry["data"] = data;
        }
        if let (Some(exclude), 0 | 1) = (exclude, scope) {
            entry["exclude"] = exclude.into();
        }
        (route, entry)
    })
}

/// The size limit: a valid body of exactly 8 MiB is accepted, one byte
/// more is 413 `PAYLOAD_TOO_LARGE` (whatever it holds).
#[test]
fn api_bodies_stop_at_the_size_limit() {
    let body = br#"{"event":"big","data":"#;
    let mut at_limit = body.to_vec();
    at_limit.resize(api::MAX_BODY_BYTES - 2, b' ');
    at_limit.extend_from_slice(b"1}");
    assert_eq!(fuzzing::check_api_body(&Route::Broadcast, &at_limit), Ok(1));
    let mut over = at_limit.clone();
    over.insert(body.len(), b' ');
    assert_eq!(fuzzing::check_api_body(&Route::Broadcast, &over), Err((413, "PAYLOAD_TOO_LARGE")));
    assert_eq!(fuzzing::check_api_body(&Route::Batch, &vec![b'x'; api::MAX_BODY_BYTES + 1]), Err((413, "PAYLOAD_TOO_LARGE")));
    let batch = serde_json::json!({ "publishes": vec![serde_json::json!({ "scope": "all", "event": "e" }); api::MAX_BATCH + 1] }).to_string();
    assert_eq!(fuzzing::check_api_body(&Route::Batch, batch.as_bytes()), Err((400, "VALIDATION_ERROR")));
}

/// Every input the fuzzer crashed on (`fuzz/regressions/<target>/`, kept
/// when found) passes its target's checks now.
#[test]
fn fuzzer_crashers_stay_fixed() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 8] = [
        ("websocket_frames", fuzzing::websocket_frames),
        ("upgrade_head", fuzzing::upgrade_head),
        ("polling_body", fuzzing::polling_body),
        ("engineio_packet", fuzzing::engineio_packet),
        ("socketio_packet", fuzzing::socketio_packet),
        ("client_event", fuzzing::client_event),
        ("socketio_binary", fuzzing::socketio_binary),
        ("api_body", fuzzing::api_body),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut checked = 0;
    for (target, check) in targets {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            check(&std::fs::read(&path).unwrap());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no crasher found under {}", root.display());
}

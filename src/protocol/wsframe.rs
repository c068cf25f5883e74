//! WebSocket framing (RFC 6455) for the server side, without I/O.
//!
//! Encoding: server frames are never masked, so one encoded frame is
//! byte-identical for every recipient. [`FrameBuilder`] writes the payload
//! once and puts the header in front of it in the same allocation, giving an
//! [`OutFrame`] that every connection's writer sends as is.
//!
//! Decoding: [`FrameDecoder`] turns the bytes a client sent into whole
//! messages. We decode frames ourselves instead of using fastwebsockets'
//! `WebSocketRead` (we still use fastwebsockets for the upgrade handshake and
//! for frame heads) because that reader holds an 8 KiB buffer per connection
//! from the handshake on — more than our whole per-connection budget — its
//! `read_frame` is not cancel-safe, and its size limit applies per frame, not
//! to the reassembled message. This decoder owns no buffer: the caller's
//! buffer can be released while a connection is idle.

use super::truncate_utf8;
use bytes::{Buf, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};

/// The largest server frame header: no mask, 64-bit length.
pub const MAX_HEAD: usize = 10;

/// A complete, encoded server → client WebSocket frame.
///
/// Cloning is a reference-count increment: a broadcast clones one `OutFrame`
/// into every recipient's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    bytes: Bytes,
    head_len: u8,
}

impl OutFrame {
    /// The bytes to put on the wire: header then payload.
    pub fn wire(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload alone (an Engine.IO packet for text frames).
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(self.head_len as usize..)
    }

    /// A frame with the given opcode around a copy of `payload`.
    pub fn new(opcode: OpCode, payload: &[u8]) -> OutFrame {
        let mut builder = FrameBuilder::with_capacity(payload.len());
        builder.buf().extend_from_slice(payload);
        builder.finish(opcode)
    }

    /// A close frame with a status code and a short reason.
    pub fn close(code: u16, reason: &str) -> OutFrame {
        // Control frame payloads are limited to 125 bytes.
        let reason = truncate_utf8(reason, 123);
        let mut builder = FrameBuilder::with_capacity(2 + reason.len());
        builder.buf().extend_from_slice(&code.to_be_bytes());
        builder.buf().extend_from_slice(reason.as_bytes());
        builder.finish(OpCode::Close)
    }
}


/// Writes a payload with room reserved for the header, then closes it into
/// an [`OutFrame`] without copying the payload again.
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub fn with_capacity(payload_hint: usize) -> FrameBuilder {
        let mut buf = Vec::with_capacity(MAX_HEAD + payload_hint);
        buf.resize(MAX_HEAD, 0);
        FrameBuilder { buf }
    }

    /// The buffer to append payload bytes to (the header space is already in it).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn finish(mut self, opcode: OpCode) -> OutFrame {
        let mut head = [0u8; MAX_HEAD];
        let head_len =
            Frame::new(true, opcode, None, Payload::Borrowed(&self.buf[MAX_HEAD..])).fmt_head(&mut head);
        let start = MAX_HEAD - head_len;
        self.buf[start..MAX_HEAD].copy_from_slice(&head[..head_len]);
        OutFrame { bytes: Bytes::from(self.buf).slice(start..), head_len: head_len as u8 }
    }
}

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message, already checked to be UTF-8.
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close { code: Option<u16> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("client frame is not masked")]
    Unmasked,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new message started before the fragmented one ended")]
    UnfinishedMessage,
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooBig { size: u64, limit: usize },
    /// In a text message or a close frame's reason.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("malformed close frame")]
    BadClose,
    #[error("64-bit payload length with its most significant bit set")]
    BadLength,
}

/// The most a decoder reserves ahead of the bytes it has, for a frame whose
/// head announced more: a large frame's buffer then grows as its bytes
/// arrive (doubling, so the copies stay linear in its size).
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Reassembles client frames into messages, enforcing a limit on the whole
/// message (not just on each frame).
#[derive(Debug)]
pub struct FrameDecoder {
    max_message: usize,
    partial: Option<(OpCode, BytesMut)>,
}

impl FrameDecoder {
    pub fn new(max_message: usize) -> FrameDecoder {
        FrameDecoder { max_message, partial: None }
    }

    /// Takes the next whole message off the front of `buf`, or returns
    /// `Ok(None)` when more bytes are needed. Errors are fatal for the
    /// connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(head) = parse_head(buf)? else { return Ok(None) };
            let partial_len = self.partial.as_ref().map_or(0, |(_, data)| data.len());
            let size = (partial_len as u64).saturating_add(head.payload_len);
            if !head.opcode_is_control() && size > self.max_message as u64 {
                return Err(FrameError::TooBig { size, limit: self.max_message });
            }
            let total = head.head_len + head.payload_len as usize;
            if buf.len() < total {
                // Room for the rest of the frame, but no more than
                // `RESERVE_AHEAD` on the strength of its length field alone:
                // memory follows the bytes that arrive, not those announced
                // (a 14-byte head claiming a whole `MAX_PAYLOAD_BYTES` frame
                // would otherwise cost that much per connection).
                buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
                return Ok(None);
            }
            let mut payload = buf.split_to(total);
            payload.advance(head.head_len);
            fastwebsockets::unmask(&mut payload, head.mask);

            match head.opcode {
                0x0 => {
                    let Some((_, data)) = self.partial.as_mut() else {
                        return Err(FrameError::UnexpectedContinuation);
                    };
                    data.extend_from_slice(&payload);
                    if head.fin {
                        let (opcode, data) = self.partial.take().expect("checked above");
                        return data_message(opcode, data).map(Some);
                    }
                }
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err(FrameError::UnfinishedMessage);
                    }
                    let opcode = if head.opcode == 0x1 { OpCode::Text } else { OpCode::Binary };
                    if head.fin {
                        return data_message(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                0x8 => {
                    return match payload.len() {
                        0 => Ok(Some(Message::Close { code: None })),
                        1 => Err(FrameError::BadClose),
                        _ => {
                            if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                                return Err(FrameError::InvalidUtf8);
                            }
                            Ok(Some(Message::Close { code: Some(u16::from_be_bytes([payload[0], payload[1]])) }))
                        }
                    };
                }
                0x9 => return Ok(Some(Message::Ping(payload.freeze()))),
                0xA => return Ok(Some(Message::Pong)),
                other => return Err(FrameError::UnknownOpcode(other)),
            }
        }
    }
}

fn data_message(opcode: OpCode, data: BytesMut) -> Result<Message, FrameError> {
    if opcode == OpCode::Text {
        if simdutf8::basic::from_utf8(&data).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Message::Text(data.freeze()))
    } else {
        Ok(Message::Binary(data.freeze()))
    }
}

struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    head_len: usize,
    payload_len: u64,
}

impl Head {
    fn opcode_is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            // RFC 6455 §5.2: the most significant bit must be 0.
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    if opcode & 0x8 != 0 && (!fin || payload_len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    let head_len = 2 + len_bytes + 4;
    if buf.len() < head_len {
        return Ok(None);
    }
    let mask = buf[2 + len_bytes..head_len].try_into().expect("4 bytes");
    Ok(Some(Head { fin, opcode, mask, head_len, payload_len }))
}

/// A client's masked WebSocket frame, as a browser writes it: for tests,
/// fuzzing and round trips (the server never sends masked frames).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame with a fixed mask.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        super::client_frame(fin, opcode, [0x11, 0x22, 0x33, 0x44], payload)
    }

    fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(msg) = decoder.decode(&mut buf)? {
            out.push(msg);
        }
        Ok(out)
    }

    #[test]
    fn server_frames_have_minimal_heads() {
        for (len, head) in [(5usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let frame = OutFrame::new(OpCode::Text, &vec![b'a'; len]);
            assert_eq!(frame.wire().len(), len + head);
            assert_eq!(frame.wire()[0], 0x81);
            assert_eq!(frame.payload().len(), len);
        }
        let close = OutFrame::close(1009, "too big");
        assert_eq!(&close.wire()[..4], &[0x88, 9, 0x03, 0xF1]);
    }

    #[test]
    fn decodes_text_binary_and_control_frames() {
        let mut bytes = client_frame(true, 1, b"42[\"a\"]");
        bytes.extend(client_frame(true, 2, &[1, 2, 3]));
        bytes.extend(client_frame(true, 9, b"hi"));
        bytes.extend(client_frame(true, 0xA, b""));
        bytes.extend(client_frame(true, 8, &[0x03, 0xE8]));
        let msgs = decode_all(&mut FrameDecoder::new(1000), &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Text(Bytes::from_static(b"42[\"a\"]")),
                Message::Binary(Bytes::from_static(&[1, 2, 3])),
                Message::Ping(Bytes::from_static(b"hi")),
                Message::Pong,
                Message::Close { code: Some(1000) },
            ]
        );
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut bytes = client_frame(false, 1, b"hel");
        bytes.extend(client_frame(true, 9, b""));
        bytes.extend(client_frame(false, 0, b"lo "));
        bytes.extend(client_frame(true, 0, b"world"));
        let msgs = decode_all(&mut FrameDecoder::new(1000), &bytes).unwrap();
        assert_eq!(msgs, vec![Message::Ping(Bytes::new()), Message::Text(Bytes::from_static(b"hello world"))]);
    }

    #[test]
    fn waits_for_more_bytes_at_every_split_point() {
        let bytes = client_frame(true, 1, &vec![b'x'; 300]);
        for split in 0..bytes.len() {
            let mut decoder = FrameDecoder::new(1000);
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "split at {split}");
            buf.extend_from_slice(&bytes[split..]);
            assert!(matches!(decoder.decode(&mut buf), Ok(Some(Message::Text(t))) if t.len() == 300));
        }
    }

    #[test]
    fn limit_applies_to_the_whole_message_before_buffering() {
        let mut decoder = FrameDecoder::new(10);
        let mut bytes = client_frame(false, 1, b"123456");
        bytes.extend(client_frame(true, 0, b"789012"));
        assert_eq!(decode_all(&mut decoder, &bytes), Err(FrameError::TooBig { size: 12, limit: 10 }));
        // A huge declared length is refused from the header alone.
        let mut head = BytesMut::from(&[0x81u8, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4][..]);
        assert!(matches!(FrameDecoder::new(10).decode(&mut head), Err(FrameError::TooBig { .. })));
    }

    /// Found by `fuzz/` (websocket_frames): the continuation of a fragmented
    /// message announcing a length near 2^64 overflowed the size check.
    #[test]
    fn a_continuation_announcing_almost_2_to_the_64_is_refused_not_an_overflow() {
        let mut fragment = client_frame(false, 1, b"a");
        let mut huge = vec![0x80, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        fragment.extend_from_slice(&huge);
        assert_eq!(decode_all(&mut FrameDecoder::new(1000), &fragment), Err(FrameError::BadLength));
        // Just under the top bit: too big, not a wrapped sum.
        let mut fragment = client_frame(false, 1, b"a");
        let mut huge = vec![0x80, 0xFF];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        fragment.extend_from_slice(&huge);
        assert!(matches!(decode_all(&mut FrameDecoder::new(1000), &fragment), Err(FrameError::TooBig { .. })));
    }

    #[test]
    fn an_announced_length_reserves_no_more_than_reserve_ahead() {
        let frame = client_frame(true, 2, &vec![7; 1 << 20]);
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::from(&frame[..14]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= 14 + RESERVE_AHEAD, "reserved {} bytes for a head", buf.capacity());
        // The frame still decodes as its bytes arrive.
        for piece in frame[14..].chunks(100_000) {
            buf.extend_from_slice(piece);
            if let Some(message) = decoder.decode(&mut buf).unwrap() {
                assert_eq!(message, Message::Binary(Bytes::from(vec![7; 1 << 20])));
                return;
            }
        }
        panic!("the whole frame did not decode");
    }

    #[test]
    fn rejects_protocol_violations() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0x81, 0x01, b'a'], FrameError::Unmasked),
            (client_frame(true, 0x3, b""), FrameError::UnknownOpcode(3)),
            (client_frame(true, 0x0, b"x"), FrameError::UnexpectedContinuation),
            (client_frame(false, 0x9, b""), FrameError::BadControlFrame),
            (client_frame(true, 0x9, &[0; 126]), FrameError::BadControlFrame),
            (client_frame(true, 0x1, &[0xC3, 0x28]), FrameError::InvalidUtf8),
            (client_frame(true, 0x8, &[3]), FrameError::BadClose),
            (client_frame(true, 0x8, &[0x03, 0xE8, 0xFF]), FrameError::InvalidUtf8),
            ({
                let mut f = client_frame(true, 1, b"x");
                f[0] |= 0x40;
                f
            }, FrameError::ReservedBits),
            ({
                let mut f = client_frame(false, 1, b"a");
                f.extend(client_frame(true, 1, b"b"));
                f
            }, FrameError::UnfinishedMessage),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_all(&mut FrameDecoder::new(1000), &bytes), Err(expected));
        }
    }
}

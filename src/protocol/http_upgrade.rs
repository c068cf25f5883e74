//! The WebSocket opening handshake (RFC 6455 §4.2) for the one request the
//! listener answers without hyper: a client opening a new session over
//! WebSocket. Bytes in, a decision and the 101 response out; no I/O.
//!
//! Why not hyper for this one request: through hyper a handshake costs a
//! request with a header map, a response, the upgrade hand-off (a oneshot
//! and a boxed stream) and a second task, and the 101 leaves in a write of
//! its own. Answered here, the 101 and the Engine.IO open packet leave in
//! one `send` as soon as the request is read. The parser is strict: anything
//! it is not sure of (a sid, a body, an odd header, an incomplete head that
//! fills the buffer) is left to hyper, which answers it as before.

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// The request head has not fully arrived.
    Incomplete,
    /// A well-formed WebSocket upgrade request.
    Upgrade(Upgrade<'a>),
    /// Anything else: for hyper to answer.
    Other,
}

/// A WebSocket upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade<'a> {
    pub path: &'a str,
    /// The query string, without the `?` (empty when there is none).
    pub query: &'a str,
    pub origin: Option<&'a str>,
    key: &'a [u8],
    /// Length of the request head: what follows is the client's first frames.
    pub head_len: usize,
}

/// More headers than this and hyper takes the request (browsers send ~15).
const MAX_HEADERS: usize = 32;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Reads the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Head<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(_) => return Head::Other,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Head::Other;
    }
    let Some(target) = request.path else { return Head::Other };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (mut upgrade, mut connection, mut version, mut key, mut origin) = (false, false, false, None, None);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(header.value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(header.value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = header.value == b"13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Head::Other;
            }
            key = Some(header.value);
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_some() {
                return Head::Other;
            }
            origin = Some(std::str::from_utf8(header.value).ok());
        } else if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
            // A GET with a body is legal but odd; hyper knows how to skip it.
            return Head::Other;
        }
    }
    match (upgrade && connection && version, key, origin) {
        (true, Some(key), None) => Head::Upgrade(Upgrade { path, query, origin: None, key, head_len }),
        (true, Some(key), Some(Some(origin))) => Head::Upgrade(Upgrade { path, query, origin: Some(origin), key, head_len }),
        _ => Head::Other,
    }
}

/// The path (without its query) of the request whose request line starts
/// `buf`, once that line has arrived whole; `None` when it has not or does
/// not read as `METHOD SP target SP version`. Only the line is looked at, so
/// it answers for heads that [`parse`] leaves to hyper too.
pub fn request_path(buf: &[u8]) -> Option<&str> {
    let end = buf.windows(2).position(|pair| pair == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let mut parts = line.split(' ');
    let (_method, target, _version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(target.split_once('?').map_or(target, |(path, _)| path))
}

impl Upgrade<'_> {
    /// The `101 Switching Protocols` answer. (A 1xx response carries no
    /// `Date`: RFC 9110 §6.6.1 asks for it on 2xx–4xx only.)
    pub fn response(&self) -> Vec<u8> {
        let accept = accept_key(self.key);
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ");
        out.extend_from_slice(accept.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What socket.io-client (through `ws`) sends.
    const CLIENT: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Connection: Upgrade\r\n\
        Upgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Host: 127.0.0.1:3000\r\n\r\n";

    fn with_headers(headers: &str) -> Vec<u8> {
        format!("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: h\r\n{headers}\r\n").into_bytes()
    }

    const UPGRADE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\n";

    #[test]
    fn request_path_reads_the_request_line_alone() {
        assert_eq!(request_path(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"), Some("/socket.io/"));
        assert_eq!(request_path(b"POST /api/broadcast HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"), Some("/api/broadcast"));
        assert_eq!(request_path(b"GET /health HTTP/1.1"), None, "the line has not ended");
        assert_eq!(request_path(b"GET /a b HTTP/1.1\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe\r\n"), None);
    }

    #[test]
    fn reads_the_client_request() {
        let Head::Upgrade(upgrade) = parse(CLIENT) else { panic!("not an upgrade") };
        assert_eq!(upgrade.path, "/socket.io/");
        assert_eq!(upgrade.query, "EIO=4&transport=websocket");
        assert_eq!(upgrade.origin, None);
        assert_eq!(upgrade.head_len, CLIENT.len());
    }

    #[test]
    fn answers_with_the_rfc_accept_key() {
        // The example of RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let Head::Upgrade(upgrade) = parse(CLIENT) else { panic!("not an upgrade") };
        let response = String::from_utf8(upgrade.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }

    #[test]
    fn says_incomplete_until_the_blank_line() {
        for cut in [0, 1, 20, CLIENT.len() - 2, CLIENT.len() - 1] {
            assert_eq!(parse(&CLIENT[..cut]), Head::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let mut bytes = CLIENT.to_vec();
        bytes.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, 0x34, 0x30]);
        let Head::Upgrade(upgrade) = parse(&bytes) else { panic!("not an upgrade") };
        assert_eq!(upgrade.head_len, CLIENT.len());
    }

    #[test]
    fn accepts_token_lists_and_any_case() {
        let request = with_headers(
            "upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: k\r\nOrigin: https://app.example\r\n",
        );
        let Head::Upgrade(upgrade) = parse(&request) else { panic!("not an upgrade") };
        assert_eq!(upgrade.origin, Some("https://app.example"));
    }

    #[test]
    fn leaves_everything_else_to_hyper() {
        let cases = [
            b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            b"GET /health HTTP/1.0\r\n\r\n".to_vec(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            with_headers(&UPGRADE_HEADERS.replace("Upgrade: websocket", "Upgrade: h2c")),
            with_headers(&UPGRADE_HEADERS.replace("Connection: Upgrade", "Connection: keep-alive")),
            with_headers(&UPGRADE_HEADERS.replace("Version: 13", "Version: 8")),
            with_headers(&UPGRADE_HEADERS.replace("Sec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\n", "")),
            with_headers(&format!("{UPGRADE_HEADERS}Sec-WebSocket-Key: second\r\n")),
            with_headers(&format!("{UPGRADE_HEADERS}Content-Length: 3\r\n")),
            with_headers(&format!("{UPGRADE_HEADERS}Origin: a\r\nOrigin: b\r\n")),
            [with_headers(UPGRADE_HEADERS).strip_suffix(b"\r\n").unwrap(), b"Origin: \xff\r\n\r\n"].concat(),
            with_headers(&format!("{UPGRADE_HEADERS}{}", "X-Pad: 1\r\n".repeat(MAX_HEADERS))),
        ];
        for (i, request) in cases.iter().enumerate() {
            assert_eq!(parse(request), Head::Other, "case {i}: {}", String::from_utf8_lossy(request));
        }
        // Sanity: the headers used above make an upgrade on their own.
        assert!(matches!(parse(&with_headers(UPGRADE_HEADERS)), Head::Upgrade(_)));
    }
}

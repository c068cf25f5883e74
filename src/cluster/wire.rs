//! What cluster nodes put on Redis, as pure functions over bytes (no I/O):
//! channel and key names, the socket.io Redis adapter's message (msgpack),
//! and shardcast's own messages (JSON).
//!
//! Room broadcasts and broadcasts to all speak the classic socket.io Redis
//! adapter (`@socket.io/redis-adapter` 8, `@socket.io/redis-emitter` 5):
//! channel `<key>#<nsp>#` (to all, or several rooms) or `<key>#<nsp>#<room>#`
//! (one room), message `[uid, {type: 2, data: [event, ...args], nsp},
//! {rooms, except, flags}]`. What socket.io has no word for (excluded users,
//! the publish time, a request for counts) rides in an extra `shardcast`
//! field of the options, which socket.io ignores.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Channel and key names for one deployment.
#[derive(Debug, Clone)]
pub struct Names {
    /// `REDIS_ADAPTER_KEY`#`namespace`# — the socket.io adapter's broadcast channel.
    adapter_all: String,
    /// `REDIS_PREFIX`.
    prefix: String,
}

impl Names {
    pub fn new(adapter_key: &str, namespace: &str, prefix: &str) -> Names {
        Names { adapter_all: format!("{adapter_key}#{namespace}#"), prefix: prefix.to_string() }
    }

    /// The socket.io adapter's channel for broadcasts to all (or to several rooms).
    pub fn adapter_all(&self) -> &str {
        &self.adapter_all
    }

    /// The socket.io adapter's channel for one room.
    pub fn adapter_room(&self, room: &str) -> String {
        format!("{}{room}#", self.adapter_all)
    }

    /// Whether `channel` is one of the adapter's (vs. shardcast's own).
    pub fn is_adapter_channel(&self, channel: &str) -> bool {
        channel.starts_with(&self.adapter_all)
    }

    /// Messages for one node (targeted sends, answers).
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}#node#{node}", self.prefix)
    }

    /// Messages for every node (presence, queries).
    pub fn all_channel(&self) -> String {
        format!("{}#all", self.prefix)
    }

    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    pub fn set(&self, kind: &str) -> String {
        format!("{}:{kind}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A node's default name (`NODE_ID` unset), and the key of its socket
/// ids' node tag in the tags hash: the tag in hex.
pub fn node_name(tag: u32) -> String {
    format!("{tag:08x}")
}

/// What shardcast adds to a socket.io adapter message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// Publish time at the origin, in milliseconds since the epoch.
    #[serde(default)]
    pub ts: u64,
    /// The origin wants a count back (on its node channel) under this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<u64>,
    /// Users whose sockets must not receive it.
    #[serde(default, rename = "exceptUsers", skip_serializing_if = "Vec::is_empty")]
    pub except_users: Vec<String>,
    /// A join or leave announcement the origin waits to see come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<u64>,
}

/// A socket.io adapter broadcast, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterMessage {
    /// The publishing server's uid (a shardcast node's name, `emitter`, or a
    /// socket.io server's random uid).
    pub uid: String,
    pub nsp: String,
    /// The Engine.IO packet to send as is: `42["event",...]`, with the
    /// namespace when it is not `/`.
    pub packet: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub extension: Option<Extension>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("not a socket.io adapter message: {0}")]
    Adapter(&'static str),
    #[error("a value JSON cannot carry (binary or extension)")]
    Unrepresentable,
    #[error("not a Socket.IO event packet")]
    NotAnEvent,
    #[error("bad msgpack: {0}")]
    Msgpack(String),
    #[error("bad JSON: {0}")]
    Json(String),
}

/// Encodes an adapter message from an Engine.IO event packet as shardcast
/// builds it (`42["event",...]`, `42/nsp,[...]`).
pub fn encode_adapter(
    uid: &str,
    nsp: &str,
    engine_packet: &[u8],
    rooms: &[&str],
    except: &[String],
    extension: &Extension,
) -> Result<Vec<u8>, WireError> {
    let data = event_array(engine_packet)?;
    let data: Json = serde_json::from_slice(data).map_err(|e| WireError::Json(e.to_string()))?;
    use rmpv::Value as M;
    let packet = M::Map(vec![
        (M::from("type"), M::from(2)),
        (M::from("data"), json_to_msgpack(&data)),
        (M::from("nsp"), M::from(nsp)),
    ]);
    let strings = |items: &mut dyn Iterator<Item = &str>| M::Array(items.map(M::from).collect());
    let extension = serde_json::to_value(extension).map_err(|e| WireError::Json(e.to_string()))?;
    let options = M::Map(vec![
        (M::from("rooms"), strings(&mut rooms.iter().copied())),
        (M::from("except"), strings(&mut except.iter().map(String::as_str))),
        (M::from("flags"), M::Map(Vec::new())),
        (M::from("shardcast"), json_to_msgpack(&extension)),
    ]);
    let message = M::Array(vec![M::from(uid), packet, options]);
    let mut out = Vec::with_capacity(engine_packet.len() + 64);
    rmpv::encode::write_value(&mut out, &message).map_err(|e| WireError::Msgpack(e.to_string()))?;
    Ok(out)
}

/// The JSON array of an Engine.IO event packet (`42`, an optional
/// `/nsp,`, then `[...]`).
fn event_array(engine_packet: &[u8]) -> Result<&[u8], WireError> {
    let rest = engine_packet.strip_prefix(b"42").ok_or(WireError::NotAnEvent)?;
    let rest = match rest.first() {
        Some(b'/') => {
            let comma = rest.iter().position(|&b| b == b',').ok_or(WireError::NotAnEvent)?;
            &rest[comma + 1..]
        }
        _ => rest,
    };
    if rest.first() != Some(&b'[') {
        return Err(WireError::NotAnEvent);
    }
    Ok(rest)
}

/// Decodes an adapter message; only event packets (type 2) are accepted.
pub fn decode_adapter(bytes: &[u8]) -> Result<AdapterMessage, WireError> {
    use rmpv::Value as M;
    let value = rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| WireError::Msgpack(e.to_string()))?;
    let M::Array(parts) = value else { return Err(WireError::Adapter("not an array")) };
    let mut parts = parts.into_iter();
    let uid = match parts.next() {
        Some(M::String(s)) => s.into_str().ok_or(WireError::Adapter("uid is not UTF-8"))?,
        _ => return Err(WireError::Adapter("no uid")),
    };
    let packet = parts.next().ok_or(WireError::Adapter("no packet"))?;
    let options = parts.next().unwrap_or(M::Nil);
    let field = |map: &M, name: &str| -> Option<M> {
        match map {
            M::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v.clone()),
            _ => None,
        }
    };
    if field(&packet, "type").and_then(|t| t.as_u64()) != Some(2) {
        return Err(WireError::NotAnEvent);
    }
    let nsp = field(&packet, "nsp").and_then(|n| n.as_str().map(str::to_string)).unwrap_or_else(|| "/".to_string());
    let data = match field(&packet, "data") {
        Some(data @ M::Array(_)) => msgpack_to_json(&data)?,
        _ => return Err(WireError::NotAnEvent),
    };
    if !matches!(data.as_array().and_then(|a| a.first()), Some(Json::String(_))) {
        return Err(WireError::NotAnEvent);
    }
    let mut packet_text = String::with_capacity(64);
    packet_text.push_str("42");
    if nsp != "/" {
        let _ = write!(packet_text, "{nsp},");
    }
    packet_text.push_str(&data.to_string());
    let names = |name: &str| -> Vec<String> {
        match field(&options, name) {
            Some(M::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    };
    let extension = field(&options, "shardcast")
        .and_then(|ext| msgpack_to_json(&ext).ok())
        .and_then(|ext| serde_json::from_value(ext).ok());
    Ok(AdapterMessage { uid, nsp, packet: packet_text, rooms: names("rooms"), except: names("except"), extension })
}

pub fn json_to_msgpack(value: &Json) -> rmpv::Value {
    use rmpv::Value as M;
    match value {
        Json::Null => M::Nil,
        Json::Bool(b) => M::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                M::from(i)
            } else if let Some(u) = n.as_u64() {
                M::from(u)
            } else {
                M::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => M::from(s.as_str()),
        Json::Array(items) => M::Array(items.iter().map(json_to_msgpack).collect()),
        Json::Object(map) => M::Map(map.iter().map(|(k, v)| (M::from(k.as_str()), json_to_msgpack(v))).collect()),
    }
}

pub fn msgpack_to_json(value: &rmpv::Value) -> Result<Json, WireError> {
    use rmpv::Value as M;
    Ok(match value {
        M::Nil => Json::Null,
        M::Boolean(b) => Json::Bool(*b),
        M::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(i), _) => Json::from(i),
            (_, Some(u)) => Json::from(u),
            _ => return Err(WireError::Unrepresentable),
        },
        M::F32(f) => serde_json::Number::from_f64(*f as f64).map_or(Json::Null, Json::Number),
        M::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        M::String(s) => Json::String(s.as_str().ok_or(WireError::Unrepresentable)?.to_string()),
        M::Array(items) => Json::Array(items.iter().map(msgpack_to_json).collect::<Result<_, _>>()?),
        M::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let key = k.as_str().ok_or(WireError::Unrepresentable)?;
                map.insert(key.to_string(), msgpack_to_json(v)?);
            }
            Json::Object(map)
        }
        // notepack encodes `undefined` as extension 0 with no data.
        M::Ext(0, data) if data.is_empty() => Json::Null,
        M::Binary(_) | M::Ext(..) => return Err(WireError::Unrepresentable),
    })
}

/// Who a targeted shardcast message is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum To {
    User(String),
    Socket(String),
}

/// A cluster-wide question on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "lowercase")]
pub enum WireQuery {
    Connections { user: Option<String> },
    Rooms,
    Stats,
}

/// One connection in a node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireConnection {
    pub socket_id: String,
    pub user_id: Option<String>,
    pub rooms: Vec<String>,
    pub transport: String,
    pub shard: usize,
    pub connected_at_ms: u64,
    pub last_activity_ms: u64,
}

/// One room in a node's answer (its part of the room).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireRoom {
    pub name: String,
    pub member_count: u32,
    pub users: Vec<String>,
    pub created_at_ms: u64,
    pub last_activity_ms: u64,
}

/// A node's answer to a [`WireQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "lowercase")]
pub enum WireAnswer {
    Connections { list: Vec<WireConnection> },
    Rooms { list: Vec<WireRoom> },
    Stats { connections: usize, rooms: usize, online_users: usize },
}

/// shardcast's own messages (on `<prefix>#all` and `<prefix>#node#<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum NodeMessage {
    /// An event for a user's or a socket's sockets on the receiving node.
    Deliver { o: String, ts: u64, to: To, packet: String, reply: Option<u64> },
    /// A user came online or went offline across the cluster.
    Presence { o: String, ts: u64, user: String, online: bool },
    /// Sockets reached for the origin's publish `id`.
    Count { o: String, id: u64, delivered: usize },
    Query { o: String, id: u64, query: WireQuery },
    Answer { o: String, id: u64, answer: WireAnswer },
    /// The origin stops cleanly: no answer will come from it.
    Leaving { o: String },
    /// On the origin's own channel, for a join with no announcement: it
    /// comes back at the join's place in Redis's order (see `Node::echo_arrived`).
    Mark { o: String, echo: u64 },
}

impl NodeMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("node messages serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeMessage, WireError> {
        serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))
    }

    /// The node that sent it.
    pub fn origin(&self) -> &str {
        match self {
            NodeMessage::Deliver { o, .. }
            | NodeMessage::Presence { o, .. }
            | NodeMessage::Count { o, .. }
            | NodeMessage::Query { o, .. }
            | NodeMessage::Answer { o, .. }
            | NodeMessage::Leaving { o }
            | NodeMessage::Mark { o, .. } => o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_packet_round_trips_through_the_adapter_format() {
        let extension = Extension { ts: 7, reply: Some(3), except_users: vec!["bob".into()], echo: Some(4) };
        let bytes = encode_adapter(
            "n1",
            "/",
            br#"42["news",{"a":[1,2.5,-3,null,true],"b":"\u00e9"},"x"]"#,
            &["room-1"],
            &["sid1".to_string()],
            &extension,
        )
        .unwrap();
        let decoded = decode_adapter(&bytes).unwrap();
        assert_eq!(decoded.uid, "n1");
        assert_eq!(decoded.nsp, "/");
        assert_eq!(decoded.packet, r#"42["news",{"a":[1,2.5,-3,null,true],"b":"é"},"x"]"#);
        assert_eq!(decoded.rooms, vec!["room-1"]);
        assert_eq!(decoded.except, vec!["sid1"]);
        assert_eq!(decoded.extension, Some(extension));
    }

    #[test]
    fn a_namespaced_packet_keeps_its_namespace() {
        let bytes = encode_adapter("n1", "/chat", br#"42/chat,["hi"]"#, &[], &[], &Extension::default()).unwrap();
        let decoded = decode_adapter(&bytes).unwrap();
        assert_eq!((decoded.nsp.as_str(), decoded.packet.as_str()), ("/chat", r#"42/chat,["hi"]"#));
        assert!(decoded.rooms.is_empty());
    }

    /// What `@socket.io/redis-emitter` 5 sends for `emitter.to("r").emit("ev", 1, {k: "v"})`
    /// (notepack.io encoding, written out by hand).
    #[test]
    fn reads_what_the_socket_io_emitter_publishes() {
        use rmpv::Value as M;
        let message = M::Array(vec![
            M::from("emitter"),
            M::Map(vec![
                (M::from("type"), M::from(2)),
                (M::from("data"), M::Array(vec![M::from("ev"), M::from(1), M::Map(vec![(M::from("k"), M::from("v"))])])),
                (M::from("nsp"), M::from("/")),
            ]),
            M::Map(vec![
                (M::from("rooms"), M::Array(vec![M::from("r")])),
                (M::from("except"), M::Array(vec![])),
                (M::from("flags"), M::Map(vec![])),
            ]),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &message).unwrap();
        let decoded = decode_adapter(&bytes).unwrap();
        assert_eq!(decoded.uid, "emitter");
        assert_eq!(decoded.packet, r#"42["ev",1,{"k":"v"}]"#);
        assert_eq!(decoded.rooms, vec!["r"]);
        assert_eq!(decoded.extension, None);
    }

    #[test]
    fn refuses_what_it_cannot_carry() {
        use rmpv::Value as M;
        let with = |data: M, kind: i64| {
            let message = M::Array(vec![
                M::from("u"),
                M::Map(vec![(M::from("type"), M::from(kind)), (M::from("data"), data), (M::from("nsp"), M::from("/"))]),
                M::Map(vec![]),
            ]);
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &message).unwrap();
            decode_adapter(&bytes)
        };
        assert_eq!(with(M::Array(vec![M::from("ev"), M::Binary(vec![1, 2])]), 2), Err(WireError::Unrepresentable));
        assert_eq!(with(M::Array(vec![M::from("ev")]), 3), Err(WireError::NotAnEvent), "an ack is not a broadcast");
        assert_eq!(with(M::Array(vec![M::from(1)]), 2), Err(WireError::NotAnEvent), "no event name");
        assert!(decode_adapter(b"\xc1garbage").is_err());
        assert!(decode_adapter(b"").is_err());
        assert!(encode_adapter("u", "/", b"43[1]", &[], &[], &Extension::default()).is_err());
    }

    #[test]
    fn node_messages_round_trip() {
        let messages = [
            NodeMessage::Deliver { o: "a".into(), ts: 1, to: To::User("ann".into()), packet: "42[\"x\"]".into(), reply: Some(9) },
            NodeMessage::Presence { o: "a".into(), ts: 2, user: "ann".into(), online: false },
            NodeMessage::Count { o: "b".into(), id: 9, delivered: 4 },
            NodeMessage::Query { o: "a".into(), id: 1, query: WireQuery::Connections { user: None } },
            NodeMessage::Answer { o: "b".into(), id: 1, answer: WireAnswer::Stats { connections: 1, rooms: 2, online_users: 3 } },
            NodeMessage::Leaving { o: "b".into() },
            NodeMessage::Mark { o: "a".into(), echo: 7 },
        ];
        for message in messages {
            assert_eq!(NodeMessage::decode(&message.encode()).unwrap(), message);
        }
        assert!(NodeMessage::decode(b"{\"k\":\"nope\"}").is_err());
    }

    #[test]
    fn names() {
        let names = Names::new("socket.io", "/", "shardcast");
        assert_eq!(names.adapter_all(), "socket.io#/#");
        assert_eq!(names.adapter_room("r1"), "socket.io#/#r1#");
        assert!(names.is_adapter_channel("socket.io#/#r1#"));
        assert!(!names.is_adapter_channel("shardcast#all"));
        assert_eq!(names.node_channel("0000abcd"), "shardcast#node#0000abcd");
        assert_eq!(names.key("user", "ann"), "shardcast:user:ann");
        assert_eq!(node_name(0xbeef), "0000beef");
    }
}

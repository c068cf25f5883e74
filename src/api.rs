//! The HTTP JSON API under `/api` (SPEC §5): the [`Broker`] operations for
//! backends in any language.
//!
//! Access: with `API_KEY` set, every request needs `Authorization: Bearer
//! <API_KEY>`; without it, only loopback clients are answered. Client
//! mistakes get a 4xx with `{ "error", "code" }`, never a 5xx.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION};
use hyper::{Method, Request, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::app::validate;
use crate::broker::{check_publish, BroadcastOptions, Broker, PublishError, Scope, Sent};
use crate::clock::iso8601;
use crate::config::Config;
use crate::limits::ConnectionBudget;
use crate::http::{self, json_response, BodyError, HttpResponse};
use crate::shard::{ConnectionInfo, RoomInfo};

/// Largest request body accepted, in bytes (a batch can hold many events).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Most publishes in one batch.
pub const MAX_BATCH: usize = 1000;

/// Every route: method and path template. The router and the OpenAPI
/// document are both checked against this list (in the tests).
#[cfg(test)]
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/broadcast"),
    ("POST", "/api/rooms/{room}/broadcast"),
    ("POST", "/api/users/{userId}/send"),
    ("POST", "/api/sockets/{socketId}/send"),
    ("POST", "/api/batch"),
    ("GET", "/api/connections"),
    ("GET", "/api/rooms"),
    ("GET", "/api/stats"),
    ("GET", "/api/users/{userId}"),
];

/// An API failure: HTTP status, SPEC-style code, message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }
}

impl From<crate::app::errors::RequestError> for ApiError {
    fn from(error: crate::app::errors::RequestError) -> ApiError {
        ApiError::invalid(error.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> ApiError {
        ApiError::invalid(error.to_string())
    }
}


fn error_response(error: ApiError) -> HttpResponse {
    json_response(error.status, json!({ "error": error.message, "code": error.code }).to_string())
}

/// A matched route, with its path parameters decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Broadcast,
    RoomBroadcast(String),
    UserSend(String),
    SocketSend(String),
    Batch,
    Connections,
    Rooms,
    Stats,
    User(String),
}

/// Finds the route for a path; `Err(allowed)` when the path exists with other methods.
fn match_route(method: &Method, path: &str) -> Result<Option<Route>, &'static str> {
    let segments: Vec<&str> = path.trim_start_matches("/api").trim_matches('/').split('/').collect();
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (route, allowed) = match segments.as_slice() {
        ["broadcast"] => (Route::Broadcast, "POST"),
        ["rooms", room, "broadcast"] => (Route::RoomBroadcast(decode(room)), "POST"),
        ["users", user, "send"] => (Route::UserSend(decode(user)), "POST"),
        ["sockets", socket, "send"] => (Route::SocketSend(decode(socket)), "POST"),
        ["batch"] => (Route::Batch, "POST"),
        ["connections"] => (Route::Connections, "GET"),
        ["rooms"] => (Route::Rooms, "GET"),
        ["stats"] => (Route::Stats, "GET"),
        ["users", user] => (Route::User(decode(user)), "GET"),
        _ => return Ok(None),
    };
    if method.as_str() == allowed {
        Ok(Some(route))
    } else {
        Err(allowed)
    }
}

/// The route template a path matches (whatever the method), for metrics labels.
pub fn route_template(path: &str) -> Option<&'static str> {
    let route = match match_route(&Method::GET, path) {
        Ok(Some(route)) => route,
        Ok(None) => return None,
        Err(_) => match match_route(&Method::POST, path) {
            Ok(Some(route)) => route,
            _ => return None,
        },
    };
    Some(match route {
        Route::Broadcast => "/api/broadcast",
        Route::RoomBroadcast(_) => "/api/rooms/{room}/broadcast",
        Route::UserSend(_) => "/api/users/{userId}/send",
        Route::SocketSend(_) => "/api/sockets/{socketId}/send",
        Route::Batch => "/api/batch",
        Route::Connections => "/api/connections",
        Route::Rooms => "/api/rooms",
        Route::Stats => "/api/stats",
        Route::User(_) => "/api/users/{userId}",
    })
}

/// Answers one `/api` request. `budget`: the broker's connection capacity
/// (for `/api/stats`).
pub async fn handle(
    broker: &Broker,
    config: &Config,
    budget: &ConnectionBudget,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    if let Err(error) = authorize(config, peer, &request) {
        return error_response(error);
    }
    let route = match match_route(request.method(), request.uri().path()) {
        Ok(Some(route)) => route,
        Ok(None) => {
            return error_response(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API route"));
        }
        Err(allowed) => {
            let mut response = error_response(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("this route takes {allowed}"),
            ));
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
    };
    let result = match route {
        Route::Connections => {
            let (list, partial) = broker.connections_view(None).await;
            Ok(with_partial(broker, connections_body(list), partial))
        }
        Route::Rooms => {
            let (list, partial) = broker.rooms_view().await;
            Ok(with_partial(broker, rooms_body(list), partial))
        }
        Route::Stats => {
            let stats = broker.stats().await;
            let mut body = json!({
                "connections": stats.connections,
                "rooms": stats.rooms,
                "onlineUsers": stats.online_users,
                "connectionsPerShard": stats.connections_per_shard,
                "connectionCapacity": budget.capacity.connections,
            });
            if let Some(cluster) = &stats.cluster {
                body["node"] = json!({
                    "id": cluster.node,
                    "connections": cluster.node_connections,
                    "rooms": cluster.node_rooms,
                    "onlineUsers": cluster.node_online_users,
                    "connectionsPerShard": stats.connections_per_shard,
                });
                body["cluster"] = json!({ "nodes": cluster.nodes, "answered": cluster.answered, "partial": cluster.partial });
            }
            Ok(body)
        }
        Route::User(user) => {
            let (connections, partial) = broker.connections_view(Some(&user)).await;
            let online = !connections.is_empty() || broker.is_user_online(&user).await;
            let body = json!({
                "userId": user,
                "online": online,
                "connections": connections.iter().map(connection_json).collect::<Vec<_>>(),
            });
            Ok(with_partial(broker, body, partial))
        }
        publish => match read_body(request, config.request_timeout()).await {
            Ok(body) => run_publish_route(broker, publish, &body).await,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, body.to_string()),
        Err(error) => error_response(error),
    }
}

fn authorize(config: &Config, peer: SocketAddr, request: &Request<Incoming>) -> Result<(), ApiError> {
    match &config.api_key {
        Some(key) => {
            let given = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), key.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "missing or wrong API key (Authorization: Bearer <API_KEY>)"))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "the API answers loopback clients only while API_KEY is unset",
        )),
    }
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", format!("request body over {MAX_BODY_BYTES} bytes"))
}

async fn read_body(request: Request<Incoming>, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    match http::read_body(request.into_body(), MAX_BODY_BYTES, timeout).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(too_large()),
        Err(BodyError::Unreadable) => Err(ApiError::invalid("the request body could not be read")),
        Err(BodyError::TimedOut) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body did not arrive in time (REQUEST_TIMEOUT_MS)",
        )),
    }
}

#[derive(Deserialize)]
struct PublishIn<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    exclude: Option<&'a RawValue>,
}

/// One publish a body asks for, checked: where it goes and what it carries.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    pub(crate) route: Route,
    pub(crate) event: String,
    /// Relayed byte for byte; `null` when the body has none.
    pub(crate) data: &'a RawValue,
    pub(crate) exclude: Vec<String>,
}

impl Route {
    /// Who a publish on this route is for.
    fn scope(&self) -> Scope<'_> {
        match self {
            Route::Broadcast => Scope::All,
            Route::RoomBroadcast(room) => Scope::Room(room),
            Route::UserSend(user) => Scope::User(user),
            Route::SocketSend(socket) => Scope::Socket(socket),
            _ => unreachable!("only publish routes have a scope"),
        }
    }
}

fn parse_publish<'a>(route: Route, fields: &PublishIn<'a>) -> Result<Publish<'a>, ApiError> {
    let event = match fields.event {
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| ApiError::invalid("event must be a string"))?,
        None => return Err(ApiError::invalid("event is required")),
    };
    let allow_exclude = matches!(route, Route::Broadcast | Route::RoomBroadcast(_));
    let exclude = match fields.exclude {
        None => Vec::new(),
        Some(_) if !allow_exclude => return Err(ApiError::invalid("exclude applies to broadcasts only")),
        Some(raw) => serde_json::from_str::<Option<Vec<String>>>(raw.get())
            .map_err(|_| ApiError::invalid("exclude must be an array of user ids (strings)"))?
            .unwrap_or_default(),
    };
    check_publish(route.scope(), &event)?;
    Ok(Publish { route, event, data: fields.data.unwrap_or(RawValue::NULL), exclude })
}

/// The publishes the body of a publish route asks for (one, or a batch's),
/// checked whole without a broker: SPEC §5's `VALIDATION_ERROR` for a body
/// that is not UTF-8, not the route's JSON shape, or names what the broker
/// would refuse; `PAYLOAD_TOO_LARGE` over [`MAX_BODY_BYTES`] (the body
/// reader stops there already; this says what a body may be in one place).
pub(crate) fn parse_publishes<'a>(route: &Route, body: &'a [u8]) -> Result<Vec<Publish<'a>>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let text = std::str::from_utf8(body).map_err(|_| ApiError::invalid("the body is not UTF-8"))?;
    if let Route::Batch = route {
        return parse_batch(text);
    }
    let fields: PublishIn = validate::json_object("body", text)?;
    Ok(vec![parse_publish(route.clone(), &fields)?])
}

async fn run_publish_route(broker: &Broker, route: Route, body: &[u8]) -> Result<Value, ApiError> {
    let publishes = parse_publishes(&route, body)?;
    // Every entry is encoded before anything is sent: a batch goes out whole or not at all.
    let mut planned = Vec::with_capacity(publishes.len());
    for (i, publish) in publishes.iter().enumerate() {
        let options = BroadcastOptions { exclude: publish.exclude.clone() };
        let publication = broker.prepare(publish.route.scope(), &publish.event, &publish.data, options).map_err(|e| {
            let error = ApiError::from(e);
            if route == Route::Batch { ApiError::invalid(format!("publishes[{i}]: {}", error.message)) } else { error }
        })?;
        planned.push((&publish.route, publication));
    }
    let mut results = Vec::with_capacity(planned.len());
    let (mut total, mut partial) = (0, false);
    for (route, publication) in planned {
        let sent = broker.send_counted(publication).await;
        total += sent.delivered;
        partial |= sent.partial;
        results.push(publish_result(route, sent));
    }
    if route != Route::Batch {
        return Ok(results.pop().expect("a publish route's body holds one publish"));
    }
    let mut body = json!({ "success": true, "delivered": total, "results": results });
    if partial {
        body["partial"] = json!(true);
    }
    Ok(body)
}

fn publish_result(route: &Route, sent: Sent) -> Value {
    let delivered = sent.delivered;
    let mut result = match route {
        Route::RoomBroadcast(room) => json!({ "success": true, "delivered": delivered, "roomName": room }),
        Route::UserSend(user) => json!({ "success": true, "delivered": delivered, "userId": user, "online": delivered > 0 }),
        Route::SocketSend(socket) => json!({ "success": true, "delivered": delivered, "socketId": socket }),
        _ => json!({ "success": true, "delivered": delivered }),
    };
    if sent.partial {
        result["partial"] = json!(true);
    }
    result
}

/// In cluster mode, says whether every node's part is in the answer.
fn with_partial(broker: &Broker, mut body: Value, partial: bool) -> Value {
    if broker.cluster_status().is_some() {
        body["partial"] = json!(partial);
    }
    body
}

#[derive(Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    publishes: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct BatchEntryIn<'a> {
    #[serde(borrow)]
    scope: Option<&'a RawValue>,
    #[serde(borrow, rename = "roomName")]
    room_name: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "socketId")]
    socket_id: Option<&'a RawValue>,
    // Not `#[serde(flatten)]`: raw values cannot pass through it.
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    exclude: Option<&'a RawValue>,
}

/// `POST /api/batch`: `{ "publishes": [ { scope, roomName?|userId?|socketId?, event, data, exclude? } ] }`.
/// Each entry is checked; one invalid entry refuses the whole batch.
fn parse_batch(text: &str) -> Result<Vec<Publish<'_>>, ApiError> {
    let batch: BatchIn = validate::json_object("body", text)?;
    let entries = batch.publishes.ok_or_else(|| ApiError::invalid("publishes is required (an array)"))?;
    if entries.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!("publishes holds {} entries; the limit is {MAX_BATCH}", entries.len())));
    }
    let mut publishes = Vec::with_capacity(entries.len());
    for (i, raw) in entries.iter().enumerate() {
        let at = |e: ApiError| ApiError::invalid(format!("publishes[{i}]: {}", e.message));
        let entry: BatchEntryIn = validate::json_object("entry", raw.get()).map_err(|e| at(e.into()))?;
        let string = |field: &str, raw: Option<&RawValue>| -> Result<String, ApiError> {
            let raw = raw.ok_or_else(|| ApiError::invalid(format!("{field} is required for this scope")))?;
            serde_json::from_str::<String>(raw.get()).map_err(|_| ApiError::invalid(format!("{field} must be a string")))
        };
        let scope = string("scope", entry.scope).map_err(at)?;
        let route = match scope.as_str() {
            "all" => Route::Broadcast,
            "room" => Route::RoomBroadcast(string("roomName", entry.room_name).map_err(at)?),
            "user" => Route::UserSend(string("userId", entry.user_id).map_err(at)?),
            "socket" => Route::SocketSend(string("socketId", entry.socket_id).map_err(at)?),
            _ => return Err(at(ApiError::invalid("scope must be one of all, room, user, socket"))),
        };
        let fields = PublishIn { event: entry.event, data: entry.data, exclude: entry.exclude };
        publishes.push(parse_publish(route, &fields).map_err(at)?);
    }
    Ok(publishes)
}

fn connection_json(info: &ConnectionInfo) -> Value {
    let mut json = json!({
        "socketId": info.socket_id,
        "userId": info.user_id,
        "rooms": info.rooms,
        "transport": info.transport,
        "shard": info.shard,
        "connectedAt": iso8601(info.connected_at),
        "lastActivity": iso8601(info.last_activity),
    });
    if let Some(node) = &info.node {
        json["node"] = json!(node);
    }
    json
}

fn connections_body(list: Vec<ConnectionInfo>) -> Value {
    json!({ "count": list.len(), "connections": list.iter().map(connection_json).collect::<Vec<_>>() })
}

fn rooms_body(list: Vec<RoomInfo>) -> Value {
    let rooms: Vec<Value> = list
        .iter()
        .map(|room| {
            json!({
                "name": room.name,
                "memberCount": room.member_count,
                "users": room.users,
                "createdAt": iso8601(room.created_at),
                "lastActivity": iso8601(room.last_activity),
            })
        })
        .collect();
    json!({ "count": rooms.len(), "rooms": rooms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_route_table() {
        for (method, template) in ROUTES {
            let path = template.replace("{room}", "r%201").replace("{userId}", "u").replace("{socketId}", "s");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(matches!(match_route(&method, &path), Ok(Some(_))), "{method} {path}");
            assert_eq!(route_template(&path), Some(*template));
            let other = if method == Method::GET { Method::POST } else { Method::GET };
            assert!(match_route(&other, &path).is_err(), "{other} {path} should be 405");
        }
        assert!(matches!(match_route(&Method::GET, "/api/nope"), Ok(None)));
        assert!(matches!(match_route(&Method::GET, "/api/users/a/b/c"), Ok(None)));
        match match_route(&Method::POST, "/api/rooms/r%201/broadcast") {
            Ok(Some(Route::RoomBroadcast(room))) => assert_eq!(room, "r 1"),
            _ => panic!("room route"),
        }
    }

    /// docs/openapi.yaml documents exactly the routes the server serves.
    #[test]
    fn openapi_document_lists_every_route_and_no_other() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
        let mut documented = Vec::new();
        let mut current_path: Option<String> = None;
        let mut in_paths = false;
        for line in text.lines() {
            if line.starts_with("paths:") {
                in_paths = true;
                continue;
            }
            if in_paths && !line.starts_with(' ') && !line.trim().is_empty() {
                in_paths = false;
            }
            if !in_paths {
                continue;
            }
            if let Some(path) = line.strip_prefix("  ").filter(|l| l.starts_with('/')) {
                current_path = Some(path.trim_end_matches(':').trim_matches('\'').to_string());
            } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
                if ["get", "post", "put", "delete", "patch"].contains(&method) {
                    documented.push((method.to_uppercase(), current_path.clone().unwrap()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}

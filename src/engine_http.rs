//! The HTTP side of Engine.IO at `/socket.io/`: handshakes, long-polling
//! requests, WebSocket upgrades, CORS, and the Engine.IO error answers.
//!
//! A session lives on the shard its sid names. A request that reaches
//! another shard's listener is carried out on the session's shard (as
//! [`Router::run_on`](crate::shard::Router::run_on) work) and answered from here; an upgrading WebSocket's
//! TCP stream moves to the session's shard.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, CONNECTION, CONTENT_TYPE, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::app::session::{AppContext, EngineSession};
use crate::config::Config;
use crate::limits::ConnectionSlot;
use crate::protocol::engineio::HandshakeError;
use crate::protocol::http_upgrade::Upgrade;
use crate::http::{json_response, read_body, request_timed_out, BodyError, HttpResponse, PrefixedStream};
use crate::shard::{Shard, SocketId};
use crate::transport::engine::{AppSession, EngineAppFactory, Settings};
use crate::transport::polling::PollError;
use crate::transport::websocket::Opening;

/// An Engine.IO endpoint: what it serves, and the settings of its HTTP side.
#[derive(Clone)]
pub struct Endpoint {
    pub handler: Handler,
    pub config: Arc<Config>,
    /// Shared, not copied into each session: a WebSocket session's future
    /// holds a pointer to it rather than 80 bytes.
    pub engine: Arc<Settings>,
}

/// What an Engine.IO endpoint serves.
#[derive(Clone)]
pub enum Handler {
    /// Socket.IO (`/socket.io/`): the namespaces of the [`AppContext`].
    SocketIo(Arc<AppContext>),
    /// A bare Engine.IO application at another path.
    App(EngineAppFactory),
}

/// The answer to a polling request, made on the session's shard and sent
/// to whichever shard holds the HTTP connection.
#[derive(Debug)]
enum PollReply {
    Payload(Bytes),
    Ok,
    UnknownSession,
    Refused(PollError),
}

/// Answers one Engine.IO request that arrived on the connection `slot`
/// counts (which decides whether it may open a new session).
pub async fn handle(shard: &Rc<Shard>, endpoint: &Endpoint, slot: &ConnectionSlot, request: Request<Incoming>) -> HttpResponse {
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if !origin_allowed(&endpoint.config, origin.as_deref()) {
        return engine_error(HandshakeError::Forbidden);
    }
    let mut response = dispatch(shard, endpoint, slot, request).await;
    if let Some(origin) = origin {
        // Credentials (cookies behind a load balancer) need the origin echoed, not `*`.
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            headers.insert(VARY, HeaderValue::from_static("Origin"));
        }
    }
    response
}

async fn dispatch(shard: &Rc<Shard>, endpoint: &Endpoint, slot: &ConnectionSlot, request: Request<Incoming>) -> HttpResponse {
    if request.method() == Method::OPTIONS {
        return preflight(&request);
    }
    let config = &endpoint.config;
    let query = request.uri().query().unwrap_or("").to_owned();
    if query_param(&query, "EIO") != Some("4") {
        return engine_error(HandshakeError::UnsupportedProtocolVersion);
    }
    let sid = query_param(&query, "sid").map(str::to_owned);
    match query_param(&query, "transport") {
        Some("polling") if config.websocket_transports.polling => polling(shard, endpoint, slot, request, sid).await,
        Some("websocket") if config.websocket_transports.websocket => websocket(shard, endpoint, slot, request, sid).await,
        _ => engine_error(HandshakeError::UnknownTransport),
    }
}

fn preflight(request: &Request<Incoming>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    let requested = request.headers().get(ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.unwrap_or(HeaderValue::from_static("content-type")));
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

async fn polling(
    shard: &Rc<Shard>,
    endpoint: &Endpoint,
    slot: &ConnectionSlot,
    request: Request<Incoming>,
    sid: Option<String>,
) -> HttpResponse {
    let method = request.method().clone();
    match (method, sid) {
        (Method::GET, None) => {
            if shard.is_shutting_down() {
                return shutting_down();
            }
            if !slot.admits_new_session() {
                return at_capacity(shard);
            }
            text_response(open_polling(shard, endpoint))
        }
        (_, None) => engine_error(HandshakeError::BadHandshakeMethod),
        (Method::GET, Some(sid)) => {
            reply(on_session_shard(shard, &sid, |owner, sid| async move { poll_get(&owner, &sid).await }).await)
        }
        (Method::POST, Some(sid)) => {
            // One byte over the limit is enough to know it is too much.
            let limit = endpoint.engine.max_payload + 1;
            let body = match read_body(request.into_body(), limit, endpoint.config.request_timeout()).await {
                Ok(body) => Some(body),
                Err(BodyError::TooLarge) => None,
                Err(BodyError::Unreadable) => return engine_error(HandshakeError::BadRequest),
                // The session is left as it is: only this request failed.
                Err(BodyError::TimedOut) => return request_timed_out(),
            };
            reply(
                on_session_shard(shard, &sid, move |owner, sid| async move { poll_post(&owner, &sid, body).await })
                    .await,
            )
        }
        _ => engine_error(HandshakeError::BadRequest),
    }
}

async fn websocket(
    shard: &Rc<Shard>,
    endpoint: &Endpoint,
    slot: &ConnectionSlot,
    mut request: Request<Incoming>,
    sid: Option<String>,
) -> HttpResponse {
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return engine_error(HandshakeError::BadRequest);
    }
    if shard.is_shutting_down() {
        return shutting_down();
    }
    // A new session must fit the capacity; an upgrade of an existing one is
    // never refused (the reserve has room for it).
    if sid.is_none() && !slot.admits_new_session() {
        return at_capacity(shard);
    }
    // A sid must name a polling session; one that is already upgrading or
    // upgraded gets its WebSocket accepted and closed at once, as the
    // reference server does.
    let mut taken = false;
    if let Some(sid) = &sid {
        let check = on_session_shard(shard, sid, |owner, sid| async move {
            match owner.polling_session(&sid) {
                None => PollReply::UnknownSession,
                Some(session) if session.begin_upgrade() => PollReply::Ok,
                Some(_) => PollReply::Refused(PollError::Upgraded),
            }
        });
        match check.await {
            PollReply::UnknownSession => return engine_error(HandshakeError::UnknownSid),
            PollReply::Refused(_) => taken = true,
            _ => {}
        }
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(_) => return engine_error(HandshakeError::BadRequest),
    };
    let shard = shard.clone();
    let endpoint = endpoint.clone();
    // The upgraded socket outlives hyper's connection (and its slot): it is
    // counted from here until it closes, on whichever shard serves it.
    let upgraded_slot = slot.budget().open_slot();
    tokio::task::spawn_local(async move {
        let slot = upgraded_slot;
        let upgraded = match upgrade.await {
            Ok(websocket) => websocket.into_inner().into_inner(),
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                if let (Some(sid), false) = (sid, taken) {
                    on_session_shard(&shard, &sid, |owner, sid| async move {
                        if let Some(session) = owner.polling_session(&sid) {
                            session.abandon_upgrade();
                        }
                        PollReply::Ok
                    })
                    .await;
                }
                return;
            }
        };
        // Take the TCP stream back from hyper, with whatever was read past the handshake.
        let Ok(parts) = upgraded.downcast::<TokioIo<PrefixedStream>>() else {
            tracing::error!("upgraded connection is not a TCP stream");
            return;
        };
        let (mut stream, unread) = parts.io.into_inner().into_parts();
        // A copy: `read_buf` is a view into hyper's whole read buffer, which
        // would otherwise stay allocated for the life of the connection.
        let already_read = Bytes::from([&parts.read_buf[..], &unread[..]].concat());
        drop(parts.read_buf);
        if taken {
            use tokio::io::AsyncWriteExt;
            let close = crate::protocol::wsframe::OutFrame::close(1008, "session already upgraded");
            let _ = stream.write_all(close.wire()).await;
            return;
        }
        // The session runs as a task of its own: this one (which held the
        // handshake's state) ends, and an idle connection keeps only the
        // session's future, not the largest of every branch here.
        match sid {
            None => {
                tokio::task::spawn_local(serve_websocket(&shard, &endpoint, stream, already_read, Vec::new(), slot));
            }
            Some(sid) => {
                let owner = SocketId::parse(&sid).map_or(shard.index, SocketId::shard);
                if owner == shard.index {
                    tokio::task::spawn_local(async move {
                        let _slot = slot;
                        upgrade_polling(shard, sid, stream, already_read).await
                    });
                    return;
                }
                // The session lives on another shard: move the socket there.
                let Ok(stream) = stream.into_std() else { return };
                let work = move |owner: &Rc<Shard>| {
                    let owner = owner.clone();
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        tokio::task::spawn_local(async move {
                            let _slot = slot;
                            upgrade_polling(owner, sid, stream, already_read).await
                        });
                    }
                };
                shard.shared.router.run_on(owner, work);
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Whether the listener may open a session for this WebSocket upgrade
/// itself (see `protocol::http_upgrade`): a new session that hyper's path
/// would accept as it is. Anything else — a sid to look up, an error to
/// answer, a refused origin — is left to [`handle`].
pub fn opens_directly(shard: &Shard, endpoint: &Endpoint, request: &Upgrade<'_>) -> bool {
    let config = &endpoint.config;
    query_param(request.query, "EIO") == Some("4")
        && query_param(request.query, "transport") == Some("websocket")
        && query_param(request.query, "sid").is_none()
        && config.websocket_transports.websocket
        && !shard.is_shutting_down()
        && origin_allowed(config, request.origin)
}

/// A session that starts on WebSocket, served until it ends. `preamble`:
/// the 101 response when the listener answered the upgrade, else empty.
///
/// The future is the session's alone — one handler's, holding neither the
/// endpoint nor anything moved into it — because it is what an idle
/// connection costs: spawn it as it is. `slot` counts the connection until
/// the session ends.
pub(crate) fn serve_websocket(
    shard: &Rc<Shard>,
    endpoint: &Endpoint,
    stream: TcpStream,
    already_read: Bytes,
    preamble: Vec<u8>,
    slot: ConnectionSlot,
) -> Pin<Box<dyn Future<Output = ()>>> {
    let settings = endpoint.engine.clone();
    let opening = Box::new(Opening { stream, already_read, preamble });
    match &endpoint.handler {
        Handler::SocketIo(context) => {
            let session = EngineSession::new(shard.clone(), context.clone());
            Box::pin(shard.clone().serve_websocket(session, settings, opening, slot))
        }
        Handler::App(factory) => {
            let session = AppSession::new(factory(), settings.outbox_limit);
            Box::pin(shard.clone().serve_websocket(session, settings, opening, slot))
        }
    }
}

/// Opens a polling session on this shard; returns the handshake body.
fn open_polling(shard: &Rc<Shard>, endpoint: &Endpoint) -> Bytes {
    let settings = Settings::clone(&endpoint.engine);
    match &endpoint.handler {
        Handler::SocketIo(context) => shard.open_polling(EngineSession::new(shard.clone(), context.clone()), settings),
        Handler::App(factory) => {
            let outbox_limit = settings.outbox_limit;
            shard.open_polling(AppSession::new(factory(), outbox_limit), settings)
        }
    }
}

async fn poll_get(shard: &Shard, sid: &str) -> PollReply {
    match shard.polling_session(sid) {
        None => PollReply::UnknownSession,
        Some(session) => {
            let mut watch = GetWatch { sid, answered: false };
            tracing::debug!(session = %sid, "long-polling GET waiting");
            let reply = match session.get(&shard.counters.traffic).await {
                Ok(body) => PollReply::Payload(body),
                Err(error) => PollReply::Refused(error),
            };
            watch.answered = true;
            reply
        }
    }
}

/// Logs (debug) a long-poll GET dropped before it answered: its client
/// left, and packets queued from now on go to the next GET. Said so that
/// an operator, or a test, can see when the server noticed rather than
/// guess how long that takes.
struct GetWatch<'a> {
    sid: &'a str,
    answered: bool,
}

impl Drop for GetWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::debug!(session = %self.sid, "long-polling GET abandoned by its client; stopped waiting");
        }
    }
}

/// `body` is `None` when it was over the limit (and not kept).
async fn poll_post(shard: &Shard, sid: &str, body: Option<Bytes>) -> PollReply {
    let Some(session) = shard.polling_session(sid) else { return PollReply::UnknownSession };
    let result = match body {
        Some(body) => session.post(body, &shard.counters.traffic).await,
        None => {
            session.abort(crate::transport::CloseReason::PayloadTooLarge);
            Err(PollError::TooLarge)
        }
    };
    match result {
        Ok(()) => PollReply::Ok,
        Err(error) => PollReply::Refused(error),
    }
}

/// Serves the WebSocket that takes over the polling session `sid` (on its shard).
async fn upgrade_polling(shard: Rc<Shard>, sid: String, stream: TcpStream, already_read: Bytes) {
    // Reserved by `begin_upgrade` when the WebSocket was accepted.
    let Some(session) = shard.polling_session(&sid) else { return };
    let reason = session.upgrade(stream, already_read, &shard.counters.traffic).await;
    tracing::debug!(session = %sid, reason = reason.label(), "upgraded transport ended");
}

/// Runs `work` on the shard that owns session `sid` and returns its reply.
async fn on_session_shard<F, Fut>(shard: &Rc<Shard>, sid: &str, work: F) -> PollReply
where
    F: FnOnce(Rc<Shard>, String) -> Fut + Send + 'static,
    Fut: Future<Output = PollReply> + 'static,
{
    let Some(owner) = SocketId::parse(sid).map(SocketId::shard).filter(|s| *s < shard.shared.router.shard_count()) else {
        return PollReply::UnknownSession;
    };
    let sid = sid.to_owned();
    if owner == shard.index {
        return work(shard.clone(), sid).await;
    }
    let (mut tx, rx) = oneshot::channel();
    let run = move |owner: &Rc<Shard>| {
        let owner = owner.clone();
        tokio::task::spawn_local(async move {
            let (lost_sid, lost_owner) = (sid.clone(), owner.clone());
            // If the client drops its request, stop waiting on its behalf
            // (a GET left waiting would take packets meant for the next one).
            let reply = tokio::select! {
                reply = work(owner, sid) => reply,
                _ = tx.closed() => return,
            };
            if let Err(PollReply::Payload(_)) = tx.send(reply) {
                // Packets were taken for a response nobody will read: end the
                // session rather than lose them silently.
                if let Some(session) = lost_owner.polling_session(&lost_sid) {
                    session.abort(crate::transport::CloseReason::TransportError);
                }
            }
        });
    };
    shard.shared.router.run_on(owner, run);
    rx.await.unwrap_or(PollReply::UnknownSession)
}

fn reply(reply: PollReply) -> HttpResponse {
    match reply {
        PollReply::Payload(body) => text_response(body),
        PollReply::Ok => text_response(Bytes::from_static(b"ok")),
        PollReply::UnknownSession => engine_error(HandshakeError::UnknownSid),
        PollReply::Refused(PollError::TooLarge) => {
            let mut response = engine_error(HandshakeError::BadRequest);
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            response
        }
        PollReply::Refused(PollError::Closed) => engine_error(HandshakeError::UnknownSid),
        PollReply::Refused(_) => engine_error(HandshakeError::BadRequest),
    }
}

fn text_response(body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    response
}

/// A new session over the connection capacity: 503, counted, and the
/// connection closed after the answer so that its descriptor is freed.
fn at_capacity(shard: &Shard) -> HttpResponse {
    shard.counters.connection_refused("capacity");
    let mut response =
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"code":3,"message":"Server at connection capacity"}"#.into());
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn shutting_down() -> HttpResponse {
    json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"code":3,"message":"Server shutting down"}"#.into())
}

fn engine_error(error: HandshakeError) -> HttpResponse {
    let status = if error == HandshakeError::Forbidden { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
    json_response(status, error.to_json())
}

/// A query parameter's value (values we read are plain tokens; no decoding needed).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// `CORS_ORIGIN` unset allows every origin; set, it is an allow-list.
/// Requests without `Origin` (native and mobile clients) always pass.
fn origin_allowed(config: &Config, origin: Option<&str>) -> bool {
    let (Some(allowed), Some(origin)) = (config.allowed_origins(), origin) else { return true };
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|a| a == "*" || a == origin)
}
